//! What the stock tests share: events to deliver and checks of the tables.

#![allow(dead_code)] // each test crate uses its own part of this module

use chrono::Utc;
use conveyor_contracts::{Currency, Money, OrderLine, OrderPlaced, OrderSummary, Product, ProductCreated};
use conveyor_platform::testing::deliver;
use conveyor_queue::Consumer;
use sqlx::PgPool;
use uuid::Uuid;

pub fn eur(amount_minor: i64) -> Money {
    Money { amount_minor, currency: "EUR".parse::<Currency>().unwrap() }
}

pub fn product(id: Uuid, initial_stock: i64) -> Product {
    Product { id, name: format!("product {id}"), price: eur(250), initial_stock, version: 1, updated_at: Utc::now() }
}

/// An order of `lines` (product, quantity) at 2.50 EUR a unit.
pub fn order(lines: &[(Uuid, i32)]) -> OrderPlaced {
    let lines: Vec<OrderLine> = lines.iter().map(|&(product_id, quantity)| OrderLine { product_id, quantity, unit_price: eur(250) }).collect();
    let total = lines.iter().fold(eur(0), |t, l| t.add_times(l.unit_price, i64::from(l.quantity)).unwrap_or(t));
    OrderPlaced { order: OrderSummary { order_id: Uuid::now_v7(), customer_id: Uuid::now_v7(), lines, total, placed_at: Utc::now() } }
}

pub fn consumer(pool: &PgPool) -> Consumer {
    conveyor_stock::handlers::subscribe(Consumer::new(pool.clone()))
}

use conveyor_platform::testing::drain;

/// A new item with `initial` units, created the way the worker creates it.
pub async fn stocked(pool: &PgPool, initial: i64) -> Uuid {
    let id = Uuid::now_v7();
    deliver(pool, &ProductCreated { product: product(id, initial) }).await;
    drain(&consumer(pool)).await;
    id
}

/// (available, reserved) of an item.
pub async fn levels(pool: &PgPool, product_id: Uuid) -> (i64, i64) {
    sqlx::query_as("SELECT available, reserved FROM items WHERE product_id = $1").bind(product_id).fetch_one(pool).await.unwrap()
}

/// Asserts that every item's levels are explained by its movements.
pub async fn assert_ledger_explains_levels(pool: &PgPool) {
    let mismatched: Vec<(Uuid, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT i.product_id, i.available, i.reserved, m.available::bigint, m.reserved::bigint
         FROM items i JOIN (
             SELECT product_id,
                    sum(CASE kind WHEN 'reserve' THEN -quantity ELSE quantity END) AS available,
                    sum(CASE kind WHEN 'reserve' THEN quantity WHEN 'release' THEN -quantity ELSE 0 END) AS reserved
             FROM movements GROUP BY product_id) m USING (product_id)
         WHERE (i.available, i.reserved) <> (m.available, m.reserved)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(mismatched.is_empty(), "levels the movements do not explain: {mismatched:?}");
    let unexplained: i64 =
        sqlx::query_scalar("SELECT count(*) FROM items i WHERE NOT EXISTS (SELECT 1 FROM movements m WHERE m.product_id = i.product_id)")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(unexplained, 0, "items without an initial movement");
}
