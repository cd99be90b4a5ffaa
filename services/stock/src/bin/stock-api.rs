//! stock-api: the stock service's HTTP API.

use clap::Parser;
use conveyor_platform::ApiArgs;
use conveyor_platform::faults::Faults;
use conveyor_stock::{FLAGS, MIGRATOR, SERVICE, http};

/// Conveyor stock API: item levels, restocking, reservations, and the worker's fault flag
/// (/admin/faults). Docs at /docs.
#[derive(Parser)]
#[command(name = "stock-api", version)]
struct Args {
    #[command(flatten)]
    api: ApiArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    conveyor_platform::run_api(SERVICE, "stock-api", args.api, &MIGRATOR, |pool| {
        let faults = Faults::watch(pool.clone(), &FLAGS);
        Ok((http::router().merge(conveyor_platform::http::faults_router(faults)), pool))
    })
    .await
}
