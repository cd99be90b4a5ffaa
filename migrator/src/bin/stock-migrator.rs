fn main() -> anyhow::Result<()> {
    conveyor_migrator::main(conveyor_stock::SERVICE, "stock-migrator", &conveyor_stock::MIGRATOR)
}
