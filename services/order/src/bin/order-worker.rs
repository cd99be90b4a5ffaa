//! order-worker: keeps the product copy, settles orders (appending to their event streams),
//! projects the streams into the order views, and delivers the order events.

use std::time::Duration;

use clap::Parser;
use conveyor_order::{MIGRATOR, SERVICE, handlers, keys, projection};
use conveyor_platform::config::parse_duration;
use conveyor_platform::{DeliveryArgs, WorkerArgs};

/// Conveyor order worker: consumes product.created/updated, stock.rejected,
/// payment.captured and payment.declined (the choreography), order.confirm and order.cancel
/// (the coordinator's commands), and records stock.reserved, stock.replied, payment.replied
/// and notification.sent in each order's event stream; projects the streams into the
/// customers' order views (the read model); delivers order.placed/confirmed/cancelled,
/// saga.start and order.replied.
#[derive(Parser)]
#[command(name = "order-worker", version)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    delivery: DeliveryArgs,
    /// How long an Idempotency-Key is remembered; older keys are deleted.
    #[arg(long, env = "ORDER_IDEMPOTENCY_RETENTION", value_parser = parse_duration, default_value = "24h")]
    idempotency_retention: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (delivery, retention) = (args.delivery, args.idempotency_retention);
    conveyor_platform::run_worker(SERVICE, "order-worker", args.worker, &MIGRATOR, |worker| async move {
        let consumer = handlers::subscribe(worker.consumer());
        let (pool, projector_pool) = (worker.pool().clone(), worker.pool().clone());
        worker
            .with_consumer(consumer)
            .with_task("idempotency-key expiry", move |stop| Box::pin(keys::prune_loop(pool, retention, stop)))
            .with_task("projector", move |stop| Box::pin(projection::run(projector_pool, projection::ORDER_VIEWS, stop)))
            .with_delivery(conveyor_contracts::routes(SERVICE), &conveyor_contracts::publishers_to(SERVICE), &delivery)
    })
    .await
}
