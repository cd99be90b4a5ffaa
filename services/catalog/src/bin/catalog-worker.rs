//! catalog-worker: delivers the catalog's outbox (product events) to stock and order.

use clap::Parser;
use conveyor_catalog::{MIGRATOR, SERVICE};
use conveyor_platform::{DeliveryArgs, WorkerArgs};

/// Conveyor catalog worker: delivers product.created / product.updated to their subscribers.
#[derive(Parser)]
#[command(name = "catalog-worker", version)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    delivery: DeliveryArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let delivery = args.delivery;
    conveyor_platform::run_worker(SERVICE, "catalog-worker", args.worker, &MIGRATOR, |worker| async move {
        worker.with_delivery(conveyor_contracts::routes(SERVICE), &conveyor_contracts::publishers_to(SERVICE), &delivery)
    })
    .await
}
