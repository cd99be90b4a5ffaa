//! payment-worker: captures or declines reserved orders, and relays payment events.

use clap::Parser;
use conveyor_payment::{Faults, MIGRATOR, SERVICE, handlers};
use conveyor_platform::{RelayArgs, WorkerArgs};

/// Conveyor payment worker: handles stock.reserved (capture or decline, with optional
/// simulated faults); relays payment.captured / payment.declined to their subscribers.
#[derive(Parser)]
#[command(name = "payment-worker", version)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    relay: RelayArgs,
    #[command(flatten)]
    faults: Faults,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (relay, faults) = (args.relay, args.faults);
    conveyor_platform::run_worker(SERVICE, "payment-worker", args.worker, &MIGRATOR, |worker| async move {
        tracing::info!(decline_rate = faults.decline_rate, error_rate = faults.error_rate, latency = ?faults.latency, "simulated faults");
        let consumer = handlers::subscribe(worker.consumer(), faults);
        worker.with_consumer(consumer).with_relay(conveyor_contracts::routes(SERVICE), &relay)
    })
    .await
}
