//! stock-api: the stock service's HTTP API.

use clap::Parser;
use conveyor_platform::ApiArgs;
use conveyor_stock::{MIGRATOR, SERVICE, http};

/// Conveyor stock API: item levels, restocking, reservations. Docs at /docs.
#[derive(Parser)]
#[command(name = "stock-api", version)]
struct Args {
    #[command(flatten)]
    api: ApiArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    conveyor_platform::run_api(SERVICE, "stock-api", args.api, &MIGRATOR, |pool| Ok((http::router(), pool))).await
}
