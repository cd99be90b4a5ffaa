//! The order API: place an order (idempotently), read one, list a customer's, and show the
//! local copy of a product.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use conveyor_contracts::{OrderPlaced, SagaMode, StartSaga};
use conveyor_queue::Outgoing;
use conveyor_platform::auth::{AuthErrors, Caller};
use conveyor_platform::http::{Page, PageQuery, Problem};
use serde::Deserialize;
use utoipa::IntoParams;
use conveyor_platform::{ApiError, ApiResult, Json, Path, Query};
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::{self, OrderStatus, PlaceOrder};
use crate::stream::{self, OrderEvent};
use crate::views::{OrderView, ProductView};
use crate::repo;

/// What `/openapi.json` and `/docs` say this API is.
const DESCRIPTION: &str = "Orders: place one (idempotently, with an `Idempotency-Key`), read one, list a customer's, and see the local copy of a product that prices them. An order is confirmed or cancelled once stock and payment have answered; its `saga_mode` says whether they answered each other (choreography) or a coordinator (orchestration).";

/// What the handlers share: the pool, the saga mode new orders run in (`--saga-mode`), and
/// the products orders were priced from lately.
#[derive(Clone)]
pub struct ApiState {
    pub pool: PgPool,
    pub saga_mode: SagaMode,
    pub products: Arc<repo::ProductCache>,
}

impl ApiState {
    pub fn new(pool: PgPool, saga_mode: SagaMode) -> ApiState {
        ApiState { pool, saga_mode, products: Arc::default() }
    }
}

impl FromRef<ApiState> for Arc<repo::ProductCache> {
    fn from_ref(state: &ApiState) -> Arc<repo::ProductCache> {
        state.products.clone()
    }
}

impl FromRef<ApiState> for PgPool {
    fn from_ref(state: &ApiState) -> PgPool {
        state.pool.clone()
    }
}

impl FromRef<ApiState> for SagaMode {
    fn from_ref(state: &ApiState) -> SagaMode {
        state.saga_mode
    }
}

pub fn router() -> OpenApiRouter<ApiState> {
    metrics::counter!("conveyor_orders_placed_total").increment(0);
    conveyor_platform::http::api_routes(DESCRIPTION)
        .routes(routes!(place_order))
        .routes(routes!(get_order))
        .routes(routes!(customer_orders))
        .routes(routes!(get_product))
}

/// The `Idempotency-Key` header, required by `POST /orders`. An extractor rather than a
/// check in the handler so that a missing key is reported before the body is read.
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all("idempotency-key").iter();
        match (values.next(), values.next()) {
            (Some(v), None) => domain::parse_idempotency_key(v.as_bytes()).map(IdempotencyKey),
            (None, _) => Err(ApiError::BadRequest("the Idempotency-Key header is required: a retried request with the same key returns the first result".into())),
            (Some(_), Some(_)) => Err(ApiError::BadRequest("give the Idempotency-Key header once".into())),
        }
    }
}

/// Places an order priced from the local copy of the catalog and starts its saga in the
/// shop's mode, recorded on the order: publishes `order.placed` (choreography) or
/// `saga.start` (orchestration: the coordinator takes it from there). The same `Idempotency-Key` with the same request returns the first response and
/// creates nothing; with a different request it is a 409. Only the customer themself may
/// place their order: the token's subject must be the body's `customer_id`.
#[utoipa::path(post, path = "/orders", tag = "orders", request_body = PlaceOrder,
    params(("Idempotency-Key" = String, Header, description = "1 to 255 visible ASCII characters, unique per order attempt")),
    security(("bearer" = [])),
    responses(AuthErrors,
        (status = 201, body = OrderView, description = "placed (or the replay of the first response); `Location` names it"),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "no or a malformed Idempotency-Key, or a body that is not JSON"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "the key was used with another request"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "a rule is broken: lines, quantities, unknown products, currencies")))]
async fn place_order(
    caller: Caller,
    State(pool): State<PgPool>,
    State(mode): State<SagaMode>,
    State(cache): State<Arc<repo::ProductCache>>,
    IdempotencyKey(key): IdempotencyKey,
    Json(req): Json<PlaceOrder>,
) -> ApiResult<Response> {
    caller.require_self(req.customer_id)?;
    let order = req.validate()?;
    let request = req.canonical();
    let id = Uuid::now_v7();
    let ids = order.product_ids();
    let mut conn = pool.acquire().await?;
    // One statement, no transaction (`repo::PLACE`: key, event and message together, or
    // nothing), priced from the products as this process last read them, its timestamps
    // this process's clock. Only if one of them is not kept, or changed since (PLACE then
    // writes nothing), or the kept ones cannot price the order, are they read first; the
    // timestamps are then the database's clock at that read.
    for _ in 0..PRICINGS {
        let (products, now, kept) = match cache.get_all(&ids) {
            Some(kept) => (kept, Utc::now(), true),
            None => {
                let (read, read_at) = repo::products(&mut conn, &ids).await?;
                cache.put(&read);
                (read, read_at.unwrap_or_else(Utc::now), false)
            }
        };
        let known = products.iter().map(|p| (p.id, p.known())).collect::<HashMap<_, _>>();
        let priced = match order.price(&known) {
            Ok(priced) => priced,
            // Kept products may have changed since: only the copy as it is now refuses.
            Err(_) if kept => {
                cache.forget(&ids);
                continue;
            }
            // A key used before answers as it did (its first response, or a 409 for another
            // request), even if the product copy has changed since (a currency, say).
            Err(e) => match repo::stored_key(&mut conn, &key).await? {
                None => return Err(e),
                stored => return replay(stored, &key, &request),
            },
        };
        let placed = OrderEvent::Placed { customer_id: order.customer_id, lines: priced.lines.clone(), total: priced.total, saga_mode: mode };
        let summary = priced.summary(id, order.customer_id, now);
        let message = match mode {
            SagaMode::Choreography => Outgoing::event(&OrderPlaced { order: summary }),
            SagaMode::Orchestration => Outgoing::event(&StartSaga { order: summary }),
        }
        .map_err(anyhow::Error::from)?;
        let view = OrderView::placed(id, order.customer_id, &priced, mode, now);
        let body = serde_json::to_value(&view).map_err(anyhow::Error::from)?;
        let new = repo::NewOrder { id, key: &key, request: &request, status: StatusCode::CREATED.as_u16(), body: &body, events: &[placed], at: now, message, priced_from: &products };
        if repo::place(&mut conn, &new).await? {
            metrics::counter!("conveyor_orders_placed_total").increment(1);
            tracing::info!(order_id = %id, customer_id = %order.customer_id, total = %priced.total, lines = priced.lines.len(), saga_mode = %mode, "order placed");
            return Ok(created(id, StatusCode::CREATED, body));
        }
        // A concurrent request with the same key waited in `place` for the first one's
        // statement: answer from what it stored (or go on if that one failed).
        let stored = repo::stored_key(&mut conn, &key).await?;
        if stored.is_some() {
            return replay(stored, &key, &request);
        }
        // Or a product changed since it was read: forget them, so the next pricing reads.
        cache.forget(&ids);
    }
    Err(ApiError::Conflict(format!("the products of this order changed {PRICINGS} times while it was being placed, or Idempotency-Key {key:?} is in use by another request; retry")))
}

/// How often an order is priced before its request is answered with a 409.
const PRICINGS: usize = 3;

/// The answer to a key seen before, from what it holds (`stored`): its stored response if
/// the request is the same.
fn replay(stored: Option<repo::StoredKey>, key: &str, request: &str) -> ApiResult<Response> {
    let Some(stored) = stored else {
        // The row that stopped our insert is gone only if the pruner just removed it.
        return Err(ApiError::Conflict(format!("Idempotency-Key {key:?} is in use by another request; retry")));
    };
    if stored.request != request {
        // The detail names no order: the key may be another customer's.
        return Err(ApiError::Conflict(format!(
            "Idempotency-Key {key:?} was already used with a different request; use a new key for a new order"
        )));
    }
    let (Some(status), Some(body)) = (stored.response_status, stored.response_body) else {
        return Err(ApiError::Internal(anyhow::anyhow!("idempotency key {key:?} committed without its response")));
    };
    let status = StatusCode::from_u16(status as u16).map_err(anyhow::Error::from)?;
    tracing::info!(order_id = %stored.order_id, "idempotent replay");
    Ok(created(stored.order_id, status, body.0))
}

fn created(id: Uuid, status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::LOCATION, format!("/orders/{id}"))], Json(body)).into_response()
}

/// One order with its lines, history and timeline (the read model): its customer's, or any
/// for an operator. An order placed a moment ago that the projector has not reached yet is
/// answered from its events.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses(AuthErrors,
        (status = 200, body = OrderView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_order(caller: Caller, State(pool): State<PgPool>, Path(id): Path<Uuid>) -> ApiResult<Json<OrderView>> {
    let mut conn = pool.acquire().await?;
    let view = match repo::get_view(&mut conn, id).await? {
        Some(view) => view,
        None => OrderView::from_stream(&stream::stream_of(&mut conn, id).await?).ok_or_else(|| ApiError::NotFound(format!("no order with id {id}")))?,
    };
    caller.require_customer(view.customer_id)?;
    Ok(Json(view))
}

/// `?status=&limit=&after=`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OrdersQuery {
    /// Only orders in this status: `placed`, `confirmed` or `cancelled`.
    pub status: Option<String>,
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The `next` cursor of the previous page.
    pub after: Option<Uuid>,
}

/// A customer's orders with their timelines, newest first, a page at a time (`after` = the
/// `next` of the previous page), optionally in one status. The customer's own, or anyone's
/// for an operator. Answered from the read model, which follows the orders' events within
/// moments (`conveyor_projection_oldest_unapplied_age_seconds`).
#[utoipa::path(get, path = "/customers/{customer_id}/orders", tag = "orders", params(("customer_id" = Uuid, Path), OrdersQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<OrderView>), (status = 400, body = Problem, content_type = "application/problem+json"), AuthErrors))]
async fn customer_orders(caller: Caller, State(pool): State<PgPool>, Path(customer_id): Path<Uuid>, Query(q): Query<OrdersQuery>) -> ApiResult<Json<Page<OrderView>>> {
    caller.require_customer(customer_id)?;
    let limit = PageQuery { limit: q.limit, after: q.after }.limit()?;
    let status = q.status.as_deref().map(parse_status).transpose()?;
    let mut conn = pool.acquire().await?;
    let views = repo::customer_views(&mut conn, customer_id, status, q.after, limit + 1).await?;
    Ok(Json(Page::from_fetched(views, limit, |v| v.id)))
}

fn parse_status(s: &str) -> ApiResult<OrderStatus> {
    OrderStatus::parse(s).ok_or_else(|| {
        let shown: String = s.chars().take(40).collect();
        ApiError::BadRequest(format!("status must be one of placed, confirmed, cancelled, not {shown:?}"))
    })
}

/// The order service's copy of a catalog product: what orders are priced from.
#[utoipa::path(get, path = "/products/{id}", tag = "products", params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = ProductView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_product(State(pool): State<PgPool>, Path(id): Path<Uuid>) -> ApiResult<Json<ProductView>> {
    let mut conn = pool.acquire().await?;
    let row = repo::get_product(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no product with id {id} here (it may not be synchronized from the catalog yet)")))?;
    Ok(Json(row.into()))
}
