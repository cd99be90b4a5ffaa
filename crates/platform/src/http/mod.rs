//! The HTTP side of every binary: errors as `application/problem+json` ([`ApiError`]),
//! extractors whose rejections are problems too ([`Json`], [`Path`], [`Query`]), the API
//! server with health, metrics, OpenAPI and admin routes ([`serve_api`]), and the small
//! server a worker runs for health and metrics ([`serve_ops`]); outgoing requests in client
//! spans that carry the trace on ([`client::send`]). Both servers send the security headers
//! of `headers.rs` on every response; `docs.rs` serves the docs page and fills in what
//! `/openapi.json` says about the service.

mod admin;
pub mod client;
mod conn;
mod docs;
mod error;
mod extract;
mod faults;
mod headers;
mod problems;
mod server;
mod strict;
mod trace;

pub use admin::router as admin_router;
pub use faults::router as faults_router;
pub use error::{ApiError, ApiResult, PROBLEM_JSON};
pub use extract::{Json, Path, Query};
pub use error::Problem;
pub use docs::api_routes;
pub use server::{Page, PageQuery, api_router, ops_router, serve_api, serve_ops, with_verifier};
