//! order-api: the order service's HTTP API.

use clap::Parser;
use conveyor_order::{MIGRATOR, SERVICE, http};
use conveyor_platform::ApiArgs;

/// Conveyor order API: place orders (with an Idempotency-Key), read them, list a
/// customer's, see the local product copy. Docs at /docs.
#[derive(Parser)]
#[command(name = "order-api", version)]
struct Args {
    #[command(flatten)]
    api: ApiArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    conveyor_platform::run_api(SERVICE, "order-api", args.api, &MIGRATOR, |pool| Ok((http::router(), pool))).await
}
