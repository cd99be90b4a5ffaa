//! notification-api: the notification service's HTTP API.

use clap::Parser;
use conveyor_notification::{FLAGS, MIGRATOR, SERVICE, http};
use conveyor_platform::ApiArgs;
use conveyor_platform::faults::Faults;

/// Conveyor notification API: notifications sent per order, and the templates they are
/// rendered from, and the worker's fault flag (/admin/faults). Docs at /docs.
#[derive(Parser)]
#[command(name = "notification-api", version)]
struct Args {
    #[command(flatten)]
    api: ApiArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    conveyor_platform::run_api(SERVICE, "notification-api", args.api, &MIGRATOR, |pool| {
        let faults = Faults::watch(pool.clone(), &FLAGS);
        Ok((http::router().merge(conveyor_platform::http::faults_router(faults)), pool))
    })
    .await
}
