//! The order service's SQL: the local product copy, placing an order (its key, first event
//! and message in one statement), idempotency keys, and the reads of the order views (the event store's own SQL is in `stream`, the projector's in `projection`).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use chrono::{DateTime, Utc};
use conveyor_contracts::{Currency, Money, Product};
use conveyor_queue::Outgoing;
use serde_json::Value;
use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::{KnownProduct, OrderStatus};
use crate::stream::{OrderEvent, append_insert};
use crate::views::OrderView;

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

/// The products an order names, each with the time it was read (the database's clock: the
/// new order's events are recorded at it).
pub const PRODUCTS: &str = "SELECT id, name, price_minor, currency, version, updated_at, now() AS read_at FROM products WHERE id = ANY($1)";

#[derive(sqlx::FromRow)]
struct ProductRead {
    #[sqlx(flatten)]
    product: ProductRow,
    read_at: DateTime<Utc>,
}

/// The products of `ids` that the copy has, and when they were read (`None` if none was).
pub async fn products(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<(Vec<ProductRow>, Option<DateTime<Utc>>)> {
    let rows: Vec<ProductRead> = sqlx::query_as(PRODUCTS).bind(ids).fetch_all(conn).await?;
    let read_at = rows.first().map(|r| r.read_at);
    Ok((rows.into_iter().map(|r| r.product).collect(), read_at))
}

/// The products orders were priced from lately, by id, as this process last read them. An
/// order priced from them is placed only if each still has the version it was priced at
/// ([`PLACE`] checks), so a stale entry costs a read again, never a wrong price.
#[derive(Debug, Default)]
pub struct ProductCache {
    rows: Mutex<HashMap<Uuid, ProductRow>>,
}

/// The most products a [`ProductCache`] keeps; past it, it starts again empty.
const CACHED_PRODUCTS: usize = 65_536;

impl ProductCache {
    /// Every product of `ids`, or `None` unless all of them are kept.
    pub fn get_all(&self, ids: &[Uuid]) -> Option<Vec<ProductRow>> {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter().map(|id| rows.get(id).cloned()).collect()
    }

    /// Keeps `read` (as just read from the copy).
    pub fn put(&self, read: &[ProductRow]) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        if rows.len() + read.len() > CACHED_PRODUCTS {
            rows.clear();
        }
        rows.extend(read.iter().map(|p| (p.id, p.clone())));
    }

    /// Forgets the products of `ids`.
    pub fn forget(&self, ids: &[Uuid]) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            rows.remove(id);
        }
    }
}

/// Places an order in one statement, a transaction of its own: the idempotency key with
/// the order it made and the response to replay, the order's first events, and its message
/// (the engine's `$1` to `$5`), all or nothing. `$6` to `$10` are the key, its request, the
/// order, the response's status and body; `$11` to `$15` the events, as `stream::APPEND`
/// has them; `$16` and `$17` the products the order was priced from and their versions.
/// Nothing is written when the key exists (after waiting for the transaction that inserted
/// it, if it is still open) or when one of those products has another version now.
pub static PLACE: LazyLock<String> = LazyLock::new(|| {
    conveyor_queue::statement_with(
        concat!(
            "k AS (INSERT INTO idempotency_keys (key, request, order_id, response_status, response_body) SELECT $6, $7, $8, $9, $10\n",
            "     WHERE NOT EXISTS (SELECT FROM unnest($16::uuid[], $17::bigint[]) AS v(id, version)\n",
            "         WHERE NOT EXISTS (SELECT FROM products AS p WHERE p.id = v.id AND p.version = v.version))\n",
            "     ON CONFLICT (key) DO NOTHING RETURNING true),\n",
            "placed AS (",
            append_insert!("$11", "$12", "$13", "$14", "$15"),
            "\n     WHERE EXISTS (SELECT FROM k))"
        ),
        "EXISTS (SELECT FROM k)",
    )
});

/// A new order as [`place`] writes it.
pub struct NewOrder<'a> {
    pub id: Uuid,
    pub key: &'a str,
    /// The request, canonical, that the key stands for.
    pub request: &'a str,
    pub status: u16,
    pub body: &'a Value,
    pub events: &'a [OrderEvent],
    /// When its events are recorded.
    pub at: DateTime<Utc>,
    pub message: Outgoing,
    /// The products it was priced from, at the versions it was priced at.
    pub priced_from: &'a [ProductRow],
}

/// Writes `order` ([`PLACE`]); false if its key was taken or a product it was priced from
/// changed since (nothing written: answer from what the key holds, [`stored_key`], or price
/// it again).
pub async fn place(conn: &mut PgConnection, order: &NewOrder<'_>) -> Result<bool, conveyor_queue::Error> {
    let ids = vec![order.id; order.events.len()];
    let versions: Vec<i32> = (1..=order.events.len() as i32).collect();
    let kinds: Vec<&str> = order.events.iter().map(OrderEvent::kind).collect();
    let data: Vec<Json<&OrderEvent>> = order.events.iter().map(Json).collect();
    let published = conveyor_queue::publish_with(conn, PLACE.as_str(), std::slice::from_ref(&order.message), |q| {
        q.bind(order.key)
            .bind(order.request)
            .bind(order.id)
            .bind(order.status as i16)
            .bind(Json(order.body))
            .bind(ids)
            .bind(versions)
            .bind(kinds)
            .bind(data)
            .bind(order.at)
            .bind(order.priced_from.iter().map(|p| p.id).collect::<Vec<_>>())
            .bind(order.priced_from.iter().map(|p| p.version).collect::<Vec<_>>())
    })
    .await?;
    if published == 0 {
        return Ok(false);
    }
    metrics::counter!("conveyor_order_events_appended_total").increment(order.events.len() as u64);
    Ok(true)
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

/// One order's view, as the projector last wrote it.
pub const GET_VIEW: &str = "SELECT view FROM order_views WHERE id = $1";

pub async fn get_view(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<OrderView>> {
    Ok(sqlx::query_scalar::<_, Json<OrderView>>(GET_VIEW).bind(id).fetch_optional(conn).await?.map(|v| v.0))
}

/// A customer's orders newest first (ids are UUID v7), those older than `$2`.
pub const CUSTOMER_VIEWS: &str =
    "SELECT view FROM order_views WHERE customer_id = $1 AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3";
/// The same, in one status only.
pub const CUSTOMER_VIEWS_IN: &str =
    "SELECT view FROM order_views WHERE customer_id = $1 AND status = $4 AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3";

pub async fn customer_views(conn: &mut PgConnection, customer_id: Uuid, status: Option<OrderStatus>, before: Option<Uuid>, limit: i64) -> sqlx::Result<Vec<OrderView>> {
    let query = match status {
        None => sqlx::query_scalar::<_, Json<OrderView>>(CUSTOMER_VIEWS),
        Some(_) => sqlx::query_scalar::<_, Json<OrderView>>(CUSTOMER_VIEWS_IN),
    };
    let query = query.bind(customer_id).bind(before).bind(limit);
    let query = match status {
        Some(s) => query.bind(s.as_str()),
        None => query,
    };
    Ok(query.fetch_all(conn).await?.into_iter().map(|v| v.0).collect())
}
