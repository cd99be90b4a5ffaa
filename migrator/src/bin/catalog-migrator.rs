fn main() -> anyhow::Result<()> {
    conveyor_migrator::main(conveyor_catalog::SERVICE, "catalog-migrator", &conveyor_catalog::MIGRATOR)
}
