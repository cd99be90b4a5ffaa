fn main() -> anyhow::Result<()> {
    conveyor_migrator::main(conveyor_coordinator::SERVICE, "coordinator-migrator", &conveyor_coordinator::MIGRATOR)
}
