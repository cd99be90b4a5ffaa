//! stock-worker: creates items, reserves and releases stock, and relays stock events and
//! replies.

use clap::Parser;
use conveyor_platform::faults::Faults;
use conveyor_platform::{RelayArgs, WorkerArgs};
use conveyor_stock::{FLAGS, MIGRATOR, SERVICE, faults, handlers};

/// Conveyor stock worker: handles product.created / product.updated, order.placed and
/// payment.declined, and the commands stock.reserve / stock.release; relays stock.reserved /
/// stock.rejected and the replies (stock.replied) to their subscribers. An operator
/// can slow it down while it runs (`PATCH /admin/faults` of the stock API: slowdown_ms).
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
        let flags = Faults::watch(worker.pool().clone(), &FLAGS);
        let consumer = faults::slowed(handlers::subscribe(worker.consumer()), flags);
        worker.with_consumer(consumer).with_relay(conveyor_contracts::routes(SERVICE), &relay)
    })
    .await
}
