//! The catalog API: create, list, get and update products.

use axum::extract::State;
use axum::http::{StatusCode, header};
use chrono::{DateTime, Utc};
use conveyor_contracts::{Money, ProductCreated, ProductUpdated, limits};
use conveyor_platform::auth::{AuthErrors, Operator};
use conveyor_platform::http::{Page, PageQuery, Problem};
use conveyor_platform::{ApiError, ApiResult, Json, Path, Query};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::repo::{self, ProductRow};

/// What `/openapi.json` and `/docs` say this API is.
const DESCRIPTION: &str = "The catalog: products with a name, a price and the stock they start with. Every change is published (`product.created`, `product.updated`); stock and order keep their own copies from those events.";

pub fn router() -> OpenApiRouter<PgPool> {
    conveyor_platform::http::api_routes(DESCRIPTION).routes(routes!(create_product, list_products)).routes(routes!(get_product, update_product))
}

/// A product to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Unit price; 0 to 10^12 minor units.
    pub price: Money,
    /// Units the stock service starts with (default 100).
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub initial_stock: Option<i64>,
}

/// Fields to change; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    /// 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    pub price: Option<Money>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProductView {
    pub id: Uuid,
    pub name: String,
    pub price: Money,
    pub initial_stock: i64,
    /// Grows by one with every update.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<ProductRow> for ProductView {
    fn from(r: ProductRow) -> Self {
        let price = r.to_contract().price;
        ProductView { id: r.id, name: r.name, price, initial_stock: r.initial_stock, version: r.version, created_at: r.created_at, updated_at: r.updated_at }
    }
}

fn parse_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > limits::MAX_NAME_CHARS {
        return Err(ApiError::Unprocessable(format!("name must have 1 to {} characters, not {chars}", limits::MAX_NAME_CHARS)));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::Unprocessable("name must not contain control characters".into()));
    }
    Ok(name.to_owned())
}

fn parse_price(price: Money) -> ApiResult<Money> {
    if !(0..=limits::MAX_PRICE_MINOR).contains(&price.amount_minor) {
        return Err(ApiError::Unprocessable(format!(
            "price.amount_minor must be between 0 and {}, not {}",
            limits::MAX_PRICE_MINOR,
            price.amount_minor
        )));
    }
    Ok(price)
}

/// Creates a product and publishes `product.created`. Operators only.
#[utoipa::path(post, path = "/products", tag = "products", request_body = NewProduct, security(("bearer" = [])),
    responses(AuthErrors,
        (status = 201, body = ProductView, description = "created; `Location` names it"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn create_product(_: Operator, State(pool): State<PgPool>, Json(req): Json<NewProduct>) -> ApiResult<(StatusCode, [(header::HeaderName, String); 1], Json<ProductView>)> {
    let name = parse_name(&req.name)?;
    let price = parse_price(req.price)?;
    let initial_stock = req.initial_stock.unwrap_or(100);
    if !(0..=limits::MAX_STOCK).contains(&initial_stock) {
        return Err(ApiError::Unprocessable(format!("initial_stock must be between 0 and {}, not {initial_stock}", limits::MAX_STOCK)));
    }
    let mut tx = pool.begin().await?;
    let row = repo::insert(&mut tx, Uuid::now_v7(), &name, price, initial_stock).await?;
    conveyor_queue::publish_event(&mut tx, &ProductCreated { product: row.to_contract() }).await?;
    tx.commit().await?;
    tracing::info!(product_id = %row.id, "product created");
    let location = format!("/products/{}", row.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(row.into())))
}

/// Products in creation order, a page at a time.
#[utoipa::path(get, path = "/products", tag = "products", params(PageQuery),
    responses((status = 200, body = Page<ProductView>), (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn list_products(State(pool): State<PgPool>, Query(page): Query<PageQuery>) -> ApiResult<Json<Page<ProductView>>> {
    let limit = page.limit()?;
    let mut conn = pool.acquire().await?;
    let rows = repo::list(&mut conn, page.after, limit + 1).await?;
    let page = Page::from_fetched(rows, limit, |r| r.id);
    Ok(Json(Page { items: page.items.into_iter().map(Into::into).collect(), next: page.next }))
}

/// One product.
#[utoipa::path(get, path = "/products/{id}", tag = "products", params(("id" = Uuid, Path)),
    responses((status = 200, body = ProductView), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_product(State(pool): State<PgPool>, Path(id): Path<Uuid>) -> ApiResult<Json<ProductView>> {
    let mut conn = pool.acquire().await?;
    let row = repo::get(&mut conn, id).await?.ok_or_else(|| not_found(id))?;
    Ok(Json(row.into()))
}

/// Changes a product's name or price and publishes `product.updated`. Operators only.
#[utoipa::path(patch, path = "/products/{id}", tag = "products", params(("id" = Uuid, Path)), request_body = ProductPatch, security(("bearer" = [])),
    responses(AuthErrors,
        (status = 200, body = ProductView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn update_product(_: Operator, State(pool): State<PgPool>, Path(id): Path<Uuid>, Json(req): Json<ProductPatch>) -> ApiResult<Json<ProductView>> {
    let name = req.name.as_deref().map(parse_name).transpose()?;
    let price = req.price.map(parse_price).transpose()?;
    if name.is_none() && price.is_none() {
        return Err(ApiError::Unprocessable("nothing to change: give `name`, `price` or both".into()));
    }
    let mut tx = pool.begin().await?;
    let row = repo::update(&mut tx, id, name.as_deref(), price).await?.ok_or_else(|| not_found(id))?;
    conveyor_queue::publish_event(&mut tx, &ProductUpdated { product: row.to_contract() }).await?;
    tx.commit().await?;
    Ok(Json(row.into()))
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no product with id {id}"))
}
