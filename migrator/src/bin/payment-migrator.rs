fn main() -> anyhow::Result<()> {
    conveyor_migrator::main(conveyor_payment::SERVICE, "payment-migrator", &conveyor_payment::MIGRATOR)
}
