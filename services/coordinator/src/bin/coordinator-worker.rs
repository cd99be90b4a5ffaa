//! coordinator-worker: runs the orchestrated sagas and delivers their commands.

use std::time::Duration;

use clap::Parser;
use conveyor_coordinator::{MIGRATOR, SERVICE, Settings, saga};
use conveyor_platform::{DeliveryArgs, WorkerArgs};
use futures::FutureExt;

/// Conveyor coordinator worker: handles saga.start and the replies stock.replied,
/// payment.replied and order.replied, and each step's saga.deadline; delivers the commands
/// (stock.reserve/release, payment.capture/refund, order.confirm/cancel) to their services.
#[derive(Parser)]
#[command(name = "coordinator-worker", version)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    delivery: DeliveryArgs,
    /// How long stock and payment each have to answer their command before the saga is
    /// compensated and the order cancelled with reason `timeout` (e.g. 30s, 500ms).
    #[arg(long, env = "CONVEYOR_STEP_TIMEOUT", default_value = "30s", value_parser = conveyor_platform::config::parse_duration)]
    step_timeout: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (delivery, settings) = (args.delivery, Settings { step_timeout: args.step_timeout });
    conveyor_platform::run_worker(SERVICE, "coordinator-worker", args.worker, &MIGRATOR, |worker| async move {
        let pool = worker.pool().clone();
        // A saga that has not moved for two step timeouts is overdue: its deadline should have moved it.
        let overdue = settings.step_timeout * 2;
        let consumer = saga::subscribe(worker.consumer(), settings);
        worker
            .with_consumer(consumer)
            .with_task("in-flight", move |stop| conveyor_coordinator::watch_in_flight(pool, Duration::from_secs(5), overdue, stop).boxed())
            .with_delivery(conveyor_contracts::routes(SERVICE), &conveyor_contracts::publishers_to(SERVICE), &delivery)
    })
    .await
}
