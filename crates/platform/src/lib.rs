//! What every Conveyor binary shares, used the same way by every service:
//!
//! - [`config`]: command-line flags with environment fallbacks (clap), grouped so that each
//!   binary flattens the groups it needs;
//! - [`telemetry`]: logs (JSON or text) and the Prometheus recorder;
//! - [`db`]: pools, the "is this database migrated?" check, and the migrator's body;
//! - [`http`]: the API server (health, metrics, OpenAPI document and docs page, admin routes,
//!   `application/problem+json` errors, body limits) and the extractors handlers use;
//! - [`worker`]: the worker process (consumers, relay, pruner, health and metrics);
//! - [`shutdown`]: SIGINT/SIGTERM as a cancellation token.

pub mod config;
pub mod db;
pub mod http;
pub mod shutdown;
pub mod telemetry;
pub mod worker;

pub use config::{ApiArgs, DbArgs, HttpArgs, LogArgs, RelayArgs, WorkerArgs};
pub use http::{ApiError, ApiResult, Json, Path, Query};
