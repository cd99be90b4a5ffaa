//! The stock API: read levels and reservations, restock an item.

use axum::extract::State;
use chrono::{DateTime, Utc};
use conveyor_contracts::limits;
use conveyor_platform::auth::{AuthErrors, Operator};
use conveyor_platform::http::{Page, PageQuery, Problem};
use conveyor_platform::{ApiError, ApiResult, Json, Path, Query};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::repo::{self, ItemRow, ReservationRow, ReservedLine};

/// What `/openapi.json` and `/docs` say this API is.
const DESCRIPTION: &str = "Stock: the levels of each product's item, restocking, and the reservation each order holds (all its lines or none).";

pub fn router() -> OpenApiRouter<PgPool> {
    conveyor_platform::http::api_routes(DESCRIPTION).routes(routes!(list_items)).routes(routes!(get_item)).routes(routes!(restock)).routes(routes!(get_reservation))
}

/// An item's stock levels.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ItemView {
    pub product_id: Uuid,
    /// Units new orders can reserve.
    pub available: i64,
    /// Units held for orders.
    pub reserved: i64,
    pub updated_at: DateTime<Utc>,
}

impl From<ItemRow> for ItemView {
    fn from(r: ItemRow) -> Self {
        ItemView { product_id: r.product_id, available: r.available, reserved: r.reserved, updated_at: r.updated_at }
    }
}

/// Units to add to an item's available stock.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Restock {
    /// 1 to 10^9; the item's units on hand (available + reserved) must stay within 10^9.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub quantity: i64,
}

/// What stock did with an order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReservationView {
    pub order_id: Uuid,
    /// `reserved`, `rejected` (nothing was held) or `released` (held, then given back; or,
    /// with no lines, released by the coordinator before stock saw the order, which then
    /// reserves nothing).
    pub state: String,
    /// Units per product, the order's lines summed; none for an order released before it
    /// was seen.
    pub lines: Vec<ReservedLine>,
    /// Why it was rejected.
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<ReservationRow> for ReservationView {
    fn from(r: ReservationRow) -> Self {
        ReservationView {
            order_id: r.order_id,
            state: r.state,
            lines: r.lines.0,
            reason: r.reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Items in product id order, a page at a time.
#[utoipa::path(get, path = "/items", tag = "items", params(PageQuery),
    responses((status = 200, body = Page<ItemView>), (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn list_items(State(pool): State<PgPool>, Query(page): Query<PageQuery>) -> ApiResult<Json<Page<ItemView>>> {
    let limit = page.limit()?;
    let mut conn = pool.acquire().await?;
    let rows = repo::list_items(&mut conn, page.after, limit + 1).await?;
    let page = Page::from_fetched(rows, limit, |r| r.product_id);
    Ok(Json(Page { items: page.items.into_iter().map(Into::into).collect(), next: page.next }))
}

/// One item's levels.
#[utoipa::path(get, path = "/items/{product_id}", tag = "items", params(("product_id" = Uuid, Path)),
    responses(
        (status = 200, body = ItemView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_item(State(pool): State<PgPool>, Path(product_id): Path<Uuid>) -> ApiResult<Json<ItemView>> {
    let mut conn = pool.acquire().await?;
    let row = repo::get_item(&mut conn, product_id).await?.ok_or_else(|| item_not_found(product_id))?;
    Ok(Json(row.into()))
}

/// Adds units to an item's available stock; answers its new levels. Operators only.
#[utoipa::path(post, path = "/items/{product_id}/restock", tag = "items", params(("product_id" = Uuid, Path)), request_body = Restock, security(("bearer" = [])),
    responses(AuthErrors,
        (status = 200, body = ItemView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn restock(_: Operator, State(pool): State<PgPool>, Path(product_id): Path<Uuid>, Json(req): Json<Restock>) -> ApiResult<Json<ItemView>> {
    let quantity = req.quantity;
    if !(1..=limits::MAX_STOCK).contains(&quantity) {
        return Err(ApiError::Unprocessable(format!("quantity must be between 1 and {}, not {quantity}", limits::MAX_STOCK)));
    }
    let mut tx = pool.begin().await?;
    // Locked, so that the cap checked here is the one the update sees.
    let item = repo::lock_items(&mut tx, &[product_id]).await?.pop().ok_or_else(|| item_not_found(product_id))?;
    let on_hand = item.available + item.reserved;
    if on_hand.checked_add(quantity).is_none_or(|n| n > limits::MAX_STOCK) {
        return Err(ApiError::Unprocessable(format!(
            "restocking {quantity} would take product {product_id} from {on_hand} units on hand past the limit of {}",
            limits::MAX_STOCK
        )));
    }
    let row = repo::restock(&mut tx, product_id, quantity).await?;
    tx.commit().await?;
    tracing::info!(%product_id, quantity, available = row.available, "restocked");
    Ok(Json(row.into()))
}

/// What stock did with an order: reserved, rejected (and why) or released (with no lines if
/// the release came first). Operators only
/// (stock does not know whose order it is; a customer sees the outcome on the order).
#[utoipa::path(get, path = "/reservations/{order_id}", tag = "reservations", params(("order_id" = Uuid, Path)), security(("bearer" = [])),
    responses(AuthErrors,
        (status = 200, body = ReservationView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_reservation(_: Operator, State(pool): State<PgPool>, Path(order_id): Path<Uuid>) -> ApiResult<Json<ReservationView>> {
    let mut conn = pool.acquire().await?;
    let row = repo::get_reservation(&mut conn, order_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no reservation for order {order_id}: stock has not seen it")))?;
    Ok(Json(row.into()))
}

fn item_not_found(product_id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no stock item for product {product_id}"))
}
