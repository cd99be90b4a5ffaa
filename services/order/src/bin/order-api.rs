//! order-api: the order service's HTTP API.

use clap::Parser;
use conveyor_contracts::SagaMode;
use conveyor_order::{MIGRATOR, SERVICE, http};
use conveyor_platform::ApiArgs;

/// Conveyor order API: place orders (with an Idempotency-Key), read them, list a
/// customer's, see the local product copy. Docs at /docs.
#[derive(Parser)]
#[command(name = "order-api", version)]
struct Args {
    #[command(flatten)]
    api: ApiArgs,
    /// How the saga of each new order runs: `choreography` (publishes order.placed) or
    /// `orchestration` (publishes saga.start to the coordinator). Recorded on the order,
    /// which ends in the mode it started in.
    #[arg(long, env = "CONVEYOR_SAGA_MODE", default_value_t = SagaMode::Choreography)]
    saga_mode: SagaMode,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let saga_mode = args.saga_mode;
    conveyor_platform::run_api(SERVICE, "order-api", args.api, &MIGRATOR, |pool| Ok((http::router(), http::ApiState::new(pool, saga_mode)))).await
}
