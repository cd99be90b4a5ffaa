//! notification-worker: delivers a notification for every order.confirmed and
//! order.cancelled, and delivers notification.sent.

use std::sync::Arc;

use clap::Parser;
use conveyor_notification::{FLAGS, MIGRATOR, Notifier, NotifierArgs, SERVICE};
use conveyor_platform::faults::Faults;
use conveyor_platform::{DeliveryArgs, WorkerArgs};

/// Conveyor notification worker: renders the stored template of each order.confirmed /
/// order.cancelled (enriched by the order API when it answers) and POSTs it to the webhook,
/// once per order and event, behind timeouts and circuit breakers; delivers notification.sent,
/// published as each delivery is recorded, to its subscribers. An operator can make it
/// treat the receiver as down while it runs (`PATCH /admin/faults` of the notification API:
/// receiver_down).
#[derive(Parser)]
#[command(name = "notification-worker", version)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    delivery: DeliveryArgs,
    #[command(flatten)]
    notifier: NotifierArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (delivery, notifier) = (args.delivery, args.notifier);
    conveyor_platform::run_worker(SERVICE, "notification-worker", args.worker, &MIGRATOR, |worker| async move {
        let pool = worker.pool().clone();
        let faults = Faults::watch(pool.clone(), &FLAGS);
        let consumer = Arc::new(Notifier::new(pool, &notifier)?.with_faults(faults)).subscribe(worker.consumer(), &notifier);
        worker.with_consumer(consumer).with_delivery(conveyor_contracts::routes(SERVICE), &conveyor_contracts::publishers_to(SERVICE), &delivery)
    })
    .await
}
