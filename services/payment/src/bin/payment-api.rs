//! payment-api: the payment service's HTTP API.

use clap::Parser;
use conveyor_payment::{FLAGS, MIGRATOR, SERVICE, http};
use conveyor_platform::ApiArgs;
use conveyor_platform::faults::Faults;

/// Conveyor payment API: customers, balances, top-ups, the payments of an order, and the
/// simulated processor's fault flags (/admin/faults). Docs at /docs.
#[derive(Parser)]
#[command(name = "payment-api", version)]
struct Args {
    #[command(flatten)]
    api: ApiArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    conveyor_platform::run_api(SERVICE, "payment-api", args.api, &MIGRATOR, |pool| {
        let faults = Faults::watch(pool.clone(), &FLAGS);
        Ok((http::router().merge(conveyor_platform::http::faults_router(faults)), pool))
    })
    .await
}
