use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use super::error::problem;
use super::{ApiError, ApiResult};
use crate::config::{ApiArgs, HttpArgs};

/// Serves a service's API until `shutdown`: its routes (documented with utoipa) plus the
/// shared admin routes, `/openapi.json`, the docs page at `/docs`, `/health/live`,
/// `/health/ready` and `/metrics`; every error, including unknown routes, oversized bodies
/// and panics, is `application/problem+json`.
pub async fn serve_api<S>(service: &'static str, args: &ApiArgs, pool: PgPool, api: OpenApiRouter<S>, state: S, shutdown: CancellationToken) -> anyhow::Result<()>
where
    S: Clone + Send + Sync + 'static,
    PgPool: FromRef<S>,
{
    let verifier = crate::auth::Verifier::new(&args.auth).await?;
    let app = with_verifier(api_router(service, args.max_body_bytes, pool, api, state), verifier);
    serve(service, &args.http, app, shutdown).await
}

/// Gives the routes of `app` the token verifier that [`crate::auth::Caller`] uses.
pub fn with_verifier(app: Router, verifier: std::sync::Arc<crate::auth::Verifier>) -> Router {
    app.layer(axum::Extension(verifier))
}

/// The router [`serve_api`] serves, for tests that drive it without a socket.
pub fn api_router<S>(service: &'static str, max_body_bytes: usize, pool: PgPool, api: OpenApiRouter<S>, state: S) -> Router
where
    S: Clone + Send + Sync + 'static,
    PgPool: FromRef<S>,
{
    let (routes, mut openapi) = api.merge(super::admin_router()).split_for_parts();
    super::docs::describe(service, &mut openapi);
    super::problems::document(&mut openapi);
    // Routes that take a `Caller` or `Operator` list `security(("bearer" = []))`.
    openapi.components.get_or_insert_with(Default::default).add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").description(Some("A JWT from the identity provider: a customer's (`sub` = customer id) or an operator's (role `operator`).")).build()),
    );
    routes
        .with_state(state)
        .route("/openapi.json", get(move || async move { axum::Json(openapi) }))
        .merge(super::docs::router(service))
        .merge(ops_routes(pool))
        .fallback(|| async { ApiError::NotFound("no such route; the API is described at /openapi.json and /docs".into()) })
        .method_not_allowed_fallback(|| async { ApiError::Status(StatusCode::METHOD_NOT_ALLOWED, "this route does not accept that method; see /openapi.json".into()) })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(crate::metrics::track_http))
        .layer(CatchPanicLayer::custom(|_| problem(StatusCode::INTERNAL_SERVER_ERROR, "an internal error occurred; it has been logged".into())))
        .layer(super::trace::layer())
        .layer(super::headers::layer())
}

/// Serves what a worker shows: `/health/live`, `/health/ready`, `/metrics`.
pub async fn serve_ops(service: &'static str, http: &HttpArgs, pool: PgPool, shutdown: CancellationToken) -> anyhow::Result<()> {
    serve(service, http, ops_router(pool), shutdown).await
}

/// The router [`serve_ops`] serves, for tests that drive it without a socket.
pub fn ops_router(pool: PgPool) -> Router {
    ops_routes(pool)
        .fallback(|| async { ApiError::NotFound("a worker serves only /health/live, /health/ready and /metrics".into()) })
        .layer(super::headers::layer())
}

async fn serve(service: &'static str, http: &HttpArgs, app: Router, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(http.listen).await.with_context(|| format!("cannot listen on {}", http.listen))?;
    tracing::info!(service, address = %listener.local_addr()?, "listening");
    // Requests hyper refuses before routing get a problem too (`conn.rs`).
    axum::serve(super::conn::Listener(listener), app).with_graceful_shutdown(shutdown.cancelled_owned()).await.context("HTTP server failed")
}

fn ops_routes(pool: PgPool) -> Router {
    Router::new()
        .route("/health/live", get(|| async { axum::Json(serde_json::json!({"status": "live"})) }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(pool)
}

/// Ready when the database answers within a second.
async fn ready(State(pool): State<PgPool>) -> Response {
    let check = tokio::time::timeout(Duration::from_secs(1), sqlx::query("SELECT 1").execute(&pool)).await;
    match check {
        Ok(Ok(_)) => axum::Json(serde_json::json!({"status": "ready"})).into_response(),
        Ok(Err(e)) => problem(StatusCode::SERVICE_UNAVAILABLE, format!("database unreachable: {e}")),
        Err(_) => problem(StatusCode::SERVICE_UNAVAILABLE, "database did not answer within 1 s".into()),
    }
}

async fn metrics(State(pool): State<PgPool>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::scrape(&pool).await)
}

/// `?limit=&after=`: keyset paging over ids, newest first or by id, as each list says.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The `next` cursor of the previous page.
    pub after: Option<uuid::Uuid>,
}

impl PageQuery {
    pub fn limit(&self) -> ApiResult<i64> {
        match self.limit {
            None => Ok(20),
            Some(n) if (1..=100).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::BadRequest(format!("limit must be between 1 and 100, not {n}"))),
        }
    }
}

/// One page of a list, and the cursor of the next one when there is more.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<uuid::Uuid>,
}

impl<T> Page<T> {
    /// A page from up to `limit + 1` fetched items: the extra one only says there is more.
    pub fn from_fetched(mut items: Vec<T>, limit: i64, id: impl Fn(&T) -> uuid::Uuid) -> Self {
        let more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        let next = if more { items.last().map(id) } else { None };
        Page { items, next }
    }
}
