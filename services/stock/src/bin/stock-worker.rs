//! stock-worker: creates items, reserves and releases stock, and delivers stock events and
//! replies.

use clap::Parser;
use conveyor_platform::faults::Faults;
use conveyor_platform::{DeliveryArgs, WorkerArgs};
use conveyor_stock::{FLAGS, MIGRATOR, SERVICE, faults, handlers};

/// Conveyor stock worker: handles product.created / product.updated, order.placed and
/// payment.declined, and the commands stock.reserve / stock.release; delivers stock.reserved /
/// stock.rejected and the replies (stock.replied) to their subscribers. An operator
/// can slow it down while it runs (`PATCH /admin/faults` of the stock API: slowdown_ms).
#[derive(Parser)]
#[command(name = "stock-worker", version)]
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
    conveyor_platform::run_worker(SERVICE, "stock-worker", args.worker, &MIGRATOR, |worker| async move {
        let flags = Faults::watch(worker.pool().clone(), &FLAGS);
        let consumer = faults::slowed(handlers::subscribe(worker.consumer()), flags);
        worker.with_consumer(consumer).with_delivery(conveyor_contracts::routes(SERVICE), &conveyor_contracts::publishers_to(SERVICE), &delivery)
    })
    .await
}
