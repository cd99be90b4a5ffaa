fn main() -> anyhow::Result<()> {
    conveyor_migrator::main(conveyor_notification::SERVICE, "notification-migrator", &conveyor_notification::MIGRATOR)
}
