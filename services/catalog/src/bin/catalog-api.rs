//! catalog-api: the catalog's HTTP API.

use clap::Parser;
use conveyor_catalog::{MIGRATOR, SERVICE, http};
use conveyor_platform::ApiArgs;

/// Conveyor catalog API: create, list, read and update products. Docs at /docs.
#[derive(Parser)]
#[command(name = "catalog-api", version)]
struct Args {
    #[command(flatten)]
    api: ApiArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    conveyor_platform::run_api(SERVICE, "catalog-api", args.api, &MIGRATOR, |pool| Ok((http::router(), pool))).await
}
