//! notification-api: the notification service's HTTP API.

use clap::Parser;
use conveyor_notification::{MIGRATOR, SERVICE, http};
use conveyor_platform::ApiArgs;

/// Conveyor notification API: notifications sent per order, and the templates they are
/// rendered from. Docs at /docs.
#[derive(Parser)]
#[command(name = "notification-api", version)]
struct Args {
    #[command(flatten)]
    api: ApiArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    conveyor_platform::run_api(SERVICE, "notification-api", args.api, &MIGRATOR, |pool| Ok((http::router(), pool))).await
}
