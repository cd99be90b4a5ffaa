//! payment-worker: captures or declines reserved orders, refunds on command, and delivers
//! payment events and replies.

use clap::Parser;
use conveyor_payment::{FLAGS, MIGRATOR, SERVICE, handlers};
use conveyor_platform::faults::Faults;
use conveyor_platform::{DeliveryArgs, WorkerArgs};

/// Conveyor payment worker: handles stock.reserved and the command payment.capture (capture
/// or decline, with the simulated faults an operator switched on through `PATCH
/// /admin/faults` of the payment API) and payment.refund; delivers payment.captured /
/// payment.declined and the replies (payment.replied) to their subscribers.
#[derive(Parser)]
#[command(name = "payment-worker", version)]
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
    conveyor_platform::run_worker(SERVICE, "payment-worker", args.worker, &MIGRATOR, |worker| async move {
        let faults = Faults::watch(worker.pool().clone(), &FLAGS);
        let consumer = handlers::subscribe(worker.consumer(), faults);
        worker.with_consumer(consumer).with_delivery(conveyor_contracts::routes(SERVICE), &conveyor_contracts::publishers_to(SERVICE), &delivery)
    })
    .await
}
