//! stock-worker: creates items, reserves and releases stock, and relays stock events.

use clap::Parser;
use conveyor_platform::{RelayArgs, WorkerArgs};
use conveyor_stock::{MIGRATOR, SERVICE, handlers};

/// Conveyor stock worker: handles product.created / product.updated, order.placed and
/// payment.declined; relays stock.reserved / stock.rejected to their subscribers.
#[derive(Parser)]
#[command(name = "stock-worker", version)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    relay: RelayArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let relay = args.relay;
    conveyor_platform::run_worker(SERVICE, "stock-worker", args.worker, &MIGRATOR, |worker| async move {
        let consumer = handlers::subscribe(worker.consumer());
        worker.with_consumer(consumer).with_relay(conveyor_contracts::routes(SERVICE), &relay)
    })
    .await
}
