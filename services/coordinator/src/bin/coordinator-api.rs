//! coordinator-api: the saga coordinator's HTTP API.

use clap::Parser;
use conveyor_coordinator::{MIGRATOR, SERVICE, http};
use conveyor_platform::ApiArgs;

/// Conveyor coordinator API: each orchestrated order's saga (state, steps, timings,
/// compensations) and a search for stuck ones. Operators only. Docs at /docs.
#[derive(Parser)]
#[command(name = "coordinator-api", version)]
struct Args {
    #[command(flatten)]
    api: ApiArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    conveyor_platform::run_api(SERVICE, "coordinator-api", args.api, &MIGRATOR, |pool| Ok((http::router(), pool))).await
}
