//! notification-worker: delivers a notification for every order.confirmed and
//! order.cancelled. It publishes nothing, so it runs no relay.

use std::sync::Arc;

use clap::Parser;
use conveyor_notification::{MIGRATOR, NotifierArgs, Notifier, SERVICE};
use conveyor_platform::WorkerArgs;

/// Conveyor notification worker: renders the stored template of each order.confirmed /
/// order.cancelled (enriched by the order API when it answers) and POSTs it to the webhook,
/// once per order and event, behind timeouts and circuit breakers.
#[derive(Parser)]
#[command(name = "notification-worker", version)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    notifier: NotifierArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let notifier = args.notifier;
    conveyor_platform::run_worker(SERVICE, "notification-worker", args.worker, &MIGRATOR, |worker| async move {
        let pool = worker.pool().clone();
        let consumer = Arc::new(Notifier::new(pool, &notifier)?).subscribe(worker.consumer(), &notifier);
        Ok(worker.with_consumer(consumer))
    })
    .await
}
