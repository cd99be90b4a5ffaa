//! catalog-worker: relays the catalog's outbox (product events) to stock and order.

use clap::Parser;
use conveyor_catalog::{MIGRATOR, SERVICE};
use conveyor_platform::{RelayArgs, WorkerArgs};

/// Conveyor catalog worker: relays product.created / product.updated to their subscribers.
#[derive(Parser)]
#[command(name = "catalog-worker", version)]
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
    conveyor_platform::run_worker(SERVICE, "catalog-worker", args.worker, &MIGRATOR, |worker| async move {
        worker.with_relay(conveyor_contracts::routes(SERVICE), &relay)
    })
    .await
}
