fn main() -> anyhow::Result<()> {
    conveyor_migrator::main(conveyor_order::SERVICE, "order-migrator", &conveyor_order::MIGRATOR)
}
