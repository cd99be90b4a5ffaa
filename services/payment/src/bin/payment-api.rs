//! payment-api: the payment service's HTTP API.

use clap::Parser;
use conveyor_payment::{MIGRATOR, SERVICE, http};
use conveyor_platform::ApiArgs;

/// Conveyor payment API: customers, balances, top-ups and the payments of an order. Docs at /docs.
#[derive(Parser)]
#[command(name = "payment-api", version)]
struct Args {
    #[command(flatten)]
    api: ApiArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    conveyor_platform::run_api(SERVICE, "payment-api", args.api, &MIGRATOR, |pool| Ok((http::router(), pool))).await
}
