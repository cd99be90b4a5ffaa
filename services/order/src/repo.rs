//! The order service's SQL: the local product copy, orders with their lines and history,
//! and idempotency keys.

use chrono::{DateTime, Utc};
use conveyor_contracts::{CancelReason, Currency, Money, Product, SagaMode};
use serde_json::Value;
use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::{KnownProduct, OrderStatus, Priced, PricedLine, saga_mode_from_db};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProductRow {
    pub id: Uuid,
    pub name: String,
    pub price_minor: i64,
    pub currency: String,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

impl ProductRow {
    pub fn price(&self) -> Money {
        money(self.price_minor, &self.currency)
    }

    pub fn known(&self) -> KnownProduct {
        KnownProduct { name: self.name.clone(), price: self.price() }
    }
}

fn money(amount_minor: i64, currency: &str) -> Money {
    Money { amount_minor, currency: currency.parse::<Currency>().expect("stored currencies came from typed events") }
}

/// Keeps `p` unless the copy already has this version or a newer one; true if it was kept.
pub async fn upsert_product(conn: &mut PgConnection, p: &Product) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO products (id, name, price_minor, currency, version, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, price_minor = excluded.price_minor, currency = excluded.currency,
             version = excluded.version, updated_at = excluded.updated_at
         WHERE products.version < excluded.version",
    )
    .bind(p.id)
    .bind(&p.name)
    .bind(p.price.amount_minor)
    .bind(p.price.currency.as_str())
    .bind(p.version)
    .bind(p.updated_at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get_product(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<ProductRow>> {
    sqlx::query_as("SELECT id, name, price_minor, currency, version, updated_at FROM products WHERE id = $1").bind(id).fetch_optional(conn).await
}

pub const PRODUCTS: &str = "SELECT id, name, price_minor, currency, version, updated_at FROM products WHERE id = ANY($1)";

pub async fn products(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<ProductRow>> {
    sqlx::query_as(PRODUCTS).bind(ids).fetch_all(conn).await
}

pub const CLAIM_KEY: &str =
    "INSERT INTO idempotency_keys (key, request, order_id) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING RETURNING created_at";

/// Inserts the key for `order_id`; `None` if the key exists (after waiting for the
/// transaction that inserted it, if it is still open). Returns the transaction's `now()`,
/// which every timestamp of the new order shares.
pub async fn claim_key(conn: &mut PgConnection, key: &str, request: &str, order_id: Uuid) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(CLAIM_KEY)
        .bind(key)
        .bind(request)
        .bind(order_id)
        .fetch_optional(conn)
        .await
}

#[derive(Debug, sqlx::FromRow)]
pub struct StoredKey {
    pub request: String,
    pub order_id: Uuid,
    pub response_status: Option<i16>,
    pub response_body: Option<Json<Value>>,
}

pub async fn stored_key(conn: &mut PgConnection, key: &str) -> sqlx::Result<Option<StoredKey>> {
    sqlx::query_as("SELECT request, order_id, response_status, response_body FROM idempotency_keys WHERE key = $1").bind(key).fetch_optional(conn).await
}

pub const SAVE_RESPONSE: &str = "UPDATE idempotency_keys SET response_status = $2, response_body = $3 WHERE key = $1";

pub async fn save_response(conn: &mut PgConnection, key: &str, status: u16, body: &Value) -> sqlx::Result<()> {
    sqlx::query(SAVE_RESPONSE)
        .bind(key)
        .bind(status as i16)
        .bind(Json(body))
        .execute(conn)
        .await?;
    Ok(())
}

pub const INSERT_ORDER: &str = "WITH o AS (
             INSERT INTO orders (id, customer_id, status, total_minor, currency, saga_mode) VALUES ($1, $2, 'placed', $3, $4, $5) RETURNING id),
         l AS (
             INSERT INTO order_lines (order_id, line_no, product_id, product_name, quantity, unit_price_minor)
             SELECT o.id, l.n, l.product_id, l.name, l.quantity, l.price
             FROM o, UNNEST($6::uuid[], $7::text[], $8::int[], $9::bigint[]) WITH ORDINALITY AS l(product_id, name, quantity, price, n))
         INSERT INTO order_status_history (order_id, status) SELECT id, 'placed' FROM o";

/// The order (run in `saga_mode`), its lines and its first history entry, in one statement.
#[tracing::instrument(level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "INSERT", db.collection.name = "orders"))]
pub async fn insert_order(conn: &mut PgConnection, id: Uuid, customer_id: Uuid, priced: &Priced, saga_mode: SagaMode) -> sqlx::Result<()> {
    let ls = &priced.lines;
    sqlx::query(INSERT_ORDER)
        .bind(id)
        .bind(customer_id)
        .bind(priced.total.amount_minor)
        .bind(priced.total.currency.as_str())
        .bind(saga_mode.as_str())
        .bind(ls.iter().map(|l| l.product_id).collect::<Vec<_>>())
        .bind(ls.iter().map(|l| l.name.as_str()).collect::<Vec<_>>())
        .bind(ls.iter().map(|l| l.quantity).collect::<Vec<_>>())
        .bind(ls.iter().map(|l| l.unit_price.amount_minor).collect::<Vec<_>>())
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub status: String,
    pub reason: Option<String>,
    pub reason_detail: Option<String>,
    pub total_minor: i64,
    pub currency: String,
    pub saga_mode: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl OrderRow {
    pub fn total(&self) -> Money {
        money(self.total_minor, &self.currency)
    }

    pub fn saga_mode(&self) -> SagaMode {
        saga_mode_from_db(&self.saga_mode)
    }
}


#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LineRow {
    pub order_id: Uuid,
    pub product_id: Uuid,
    pub product_name: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

impl LineRow {
    /// Unit prices are in the order's currency: placing refuses mixed currencies.
    pub fn priced(&self, currency: &str) -> PricedLine {
        PricedLine { product_id: self.product_id, name: self.product_name.clone(), quantity: self.quantity, unit_price: money(self.unit_price_minor, currency) }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HistoryRow {
    pub order_id: Uuid,
    pub status: String,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

macro_rules! order_columns {
    () => {
        "id, customer_id, status, reason, reason_detail, total_minor, currency, saga_mode, created_at, updated_at"
    };
}

pub const GET_ORDER: &str = concat!("SELECT ", order_columns!(), " FROM orders WHERE id = $1");

pub async fn get_order(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query_as(GET_ORDER).bind(id).fetch_optional(conn).await
}

/// A customer's orders newest first (ids are UUID v7), those older than `before`.
pub async fn customer_orders(conn: &mut PgConnection, customer_id: Uuid, before: Option<Uuid>, limit: i64) -> sqlx::Result<Vec<OrderRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders WHERE customer_id = $1 AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
    ))
    .bind(customer_id)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub const LINES_OF: &str =
    "SELECT order_id, product_id, product_name, quantity, unit_price_minor FROM order_lines WHERE order_id = ANY($1) ORDER BY order_id, line_no";

pub async fn lines_of(conn: &mut PgConnection, order_ids: &[Uuid]) -> sqlx::Result<Vec<LineRow>> {
    sqlx::query_as(LINES_OF).bind(order_ids).fetch_all(conn).await
}

pub const HISTORY_OF: &str =
    "SELECT order_id, status, reason, at FROM order_status_history WHERE order_id = ANY($1) ORDER BY order_id, at, status <> 'placed'";

/// History oldest first; `placed` first should a transition share its timestamp.
pub async fn history_of(conn: &mut PgConnection, order_ids: &[Uuid]) -> sqlx::Result<Vec<HistoryRow>> {
    sqlx::query_as(HISTORY_OF).bind(order_ids).fetch_all(conn).await
}

pub const SETTLE: &str = concat!(
    "WITH o AS (
             UPDATE orders SET status = $2, reason = $3, reason_detail = $4, updated_at = now()
             WHERE id = $1 AND status = 'placed' RETURNING ",
    order_columns!(),
    "), h AS (
             INSERT INTO order_status_history (order_id, status, reason) SELECT id, status, reason FROM o)
         SELECT * FROM o"
);

/// Moves a `placed` order to `to` and records it in the history; `None` if the order is
/// not `placed` (already settled, or unknown). The status guard is what makes a repeated
/// event a no-op.
#[tracing::instrument(level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE", db.collection.name = "orders"))]
pub async fn settle(conn: &mut PgConnection, id: Uuid, to: OrderStatus, reason: Option<CancelReason>, detail: Option<&str>) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query_as(SETTLE)
        .bind(id)
        .bind(to.as_str())
        .bind(reason.map(|r| r.as_str()))
        .bind(detail)
        .fetch_optional(conn)
        .await
}

/// The order's status and the saga mode it runs in.
pub async fn status_of(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<(String, String)>> {
    sqlx::query_as("SELECT status, saga_mode FROM orders WHERE id = $1").bind(id).fetch_optional(conn).await
}
