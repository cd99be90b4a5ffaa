//! What every Conveyor binary shares, used the same way by every service:
//!
//! - [`auth`]: bearer tokens (JWT against a JWKS), the caller they name, a local issuer;
//! - [`config`]: command-line flags with environment fallbacks (clap), grouped so that each
//!   binary flattens the groups it needs;
//! - [`telemetry`]: logs (JSON or text, with trace ids), OpenTelemetry traces (from the
//!   `OTEL_*` variables) and the Prometheus recorder;
//! - [`db`]: pools, the "is this database migrated?" check, and the migrator's body;
//! - [`faults`]: fault flags switched at run time (declared per service, stored in its
//!   database, read by every process, set through `/admin/faults`);
//! - [`grants`]: the privileges a migrator gives the runtime and relay roles;
//! - [`http`]: the API server (health, metrics, OpenAPI document and docs page, admin routes,
//!   `application/problem+json` errors, body limits) and the extractors handlers use;
//! - [`worker`]: the worker process (consumers, relay, pruner, health and metrics);
//! - [`shutdown`]: SIGINT/SIGTERM as a cancellation token.

pub mod auth;
pub mod config;
pub mod db;
pub mod faults;
pub mod grants;
pub mod http;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
pub mod worker;

pub use config::{ApiArgs, DbArgs, Delivery, DeliveryArgs, GrantArgs, HttpArgs, LogArgs, WorkerArgs};
pub use http::{ApiError, ApiResult, Json, Path, Query};

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use utoipa_axum::router::OpenApiRouter;

/// The whole body of an `<svc>-api` binary: logging and metrics, the pool, the refusal to
/// run on an unmigrated database, then the API until SIGINT/SIGTERM. `build` makes the
/// service's documented routes and their state from the pool.
pub async fn run_api<S, F>(service: &'static str, process: &'static str, args: ApiArgs, migrator: &Migrator, build: F) -> anyhow::Result<()>
where
    S: Clone + Send + Sync + 'static,
    PgPool: axum::extract::FromRef<S>,
    F: FnOnce(PgPool) -> anyhow::Result<(OpenApiRouter<S>, S)>,
{
    telemetry::init(service, process, &args.log);
    let pool = db::connect(&args.db).await?;
    db::require_migrated(&pool, service, migrator).await?;
    let (router, state) = build(pool.clone())?;
    let served = http::serve_api(service, &args, pool, router, state, shutdown::on_signal()).await;
    telemetry::shutdown().await;
    served
}

/// The whole body of an `<svc>-worker` binary: like [`run_api`], then the [`worker::Worker`]
/// that `build` assembles (consumers, relay, extra loops) until SIGINT/SIGTERM.
pub async fn run_worker<F, Fut>(service: &'static str, process: &'static str, args: WorkerArgs, migrator: &Migrator, build: F) -> anyhow::Result<()>
where
    F: FnOnce(worker::Worker) -> Fut,
    Fut: Future<Output = anyhow::Result<worker::Worker>>,
{
    telemetry::init(service, process, &args.log);
    let pool = db::connect(&args.db).await?;
    db::require_migrated(&pool, service, migrator).await?;
    let worker = build(worker::Worker::new(service, pool, args)).await?;
    let ran = worker.run(shutdown::on_signal()).await;
    telemetry::shutdown().await;
    ran
}

/// The whole body of an `<svc>-migrator` binary: migrate, then grant (see [`grants`]).
pub async fn run_migrator(service: &'static str, process: &'static str, db: DbArgs, grants: GrantArgs, log: LogArgs, migrator: &Migrator) -> anyhow::Result<()> {
    telemetry::init(service, process, &log);
    let migrated = db::migrate(&db, &grants, service, migrator).await;
    telemetry::shutdown().await;
    migrated
}

#[cfg(feature = "testing")]
pub mod testing;
