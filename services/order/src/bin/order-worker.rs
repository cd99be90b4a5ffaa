//! order-worker: keeps the product copy, settles orders, and relays the order events.

use clap::Parser;
use conveyor_order::{MIGRATOR, SERVICE, handlers};
use conveyor_platform::{RelayArgs, WorkerArgs};

/// Conveyor order worker: consumes product.created/updated, stock.rejected,
/// payment.captured and payment.declined; relays order.placed/confirmed/cancelled.
#[derive(Parser)]
#[command(name = "order-worker", version)]
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
    conveyor_platform::run_worker(SERVICE, "order-worker", args.worker, &MIGRATOR, |worker| async move {
        let consumer = handlers::subscribe(worker.consumer());
        worker.with_consumer(consumer).with_relay(conveyor_contracts::routes(SERVICE), &relay)
    })
    .await
}
