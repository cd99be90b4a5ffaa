//! What the payment tests share: a migrated database with its API, customers, events.

#![allow(dead_code)] // each test crate uses its own part of this module

use chrono::Utc;
use conveyor_contracts::{Currency, Money, OrderLine, OrderSummary, StockReserved};
use conveyor_payment::{FLAGS, MIGRATOR, SERVICE, handlers, http};
use conveyor_platform::faults::{self, Faults};
use conveyor_platform::testing::{TestApi, migrated_db};
use conveyor_queue::Consumer;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

pub fn money(amount_minor: i64, currency: &str) -> Money {
    Money { amount_minor, currency: currency.parse::<Currency>().unwrap() }
}

/// The payment API as `payment-api` serves it (with `/admin/faults`) on a fresh database.
pub async fn setup() -> (TestApi, PgPool) {
    let pool = migrated_db(&MIGRATOR).await;
    let api = http::router().merge(conveyor_platform::http::faults_router(Faults::new(pool.clone(), &FLAGS)));
    (TestApi::new(SERVICE, pool.clone(), api, pool.clone()), pool)
}

/// Stores `flags` (a JSON object of payment flags) as an operator would, and returns the
/// flags as a worker reads them after its next refresh.
pub async fn faults(pool: &PgPool, flags: serde_json::Value) -> Faults {
    let changes = faults::parse_changes(&FLAGS, flags.as_object().expect("an object of flags")).expect("valid flags");
    faults::write(pool, &changes).await.unwrap();
    let read = Faults::new(pool.clone(), &FLAGS);
    read.refresh().await.unwrap();
    read
}

/// Every flag off.
pub fn no_faults(pool: &PgPool) -> Faults {
    Faults::new(pool.clone(), &FLAGS)
}

/// A new customer, created through the API.
pub async fn customer(api: &TestApi, currency: &str, balance_minor: i64) -> Uuid {
    let created = api.post("/customers", json!({"name": "Ada", "currency": currency, "balance_minor": balance_minor})).await;
    assert_eq!(created.status, 201, "{}", created.text);
    created.json["id"].as_str().unwrap().parse().unwrap()
}

/// A reserved order of `lines` (quantity, unit price in minor units) in `currency`,
/// with the total the order service would compute.
pub fn reserved(customer_id: Uuid, currency: &str, lines: &[(i32, i64)]) -> StockReserved {
    let lines: Vec<OrderLine> =
        lines.iter().map(|&(quantity, unit)| OrderLine { product_id: Uuid::now_v7(), quantity, unit_price: money(unit, currency) }).collect();
    let total = lines.iter().fold(money(0, currency), |t, l| t.add_times(l.unit_price, i64::from(l.quantity)).unwrap());
    StockReserved { order: OrderSummary { order_id: Uuid::now_v7(), customer_id, lines, total, placed_at: Utc::now() } }
}

pub fn consumer(pool: &PgPool, faults: Faults) -> Consumer {
    handlers::subscribe(Consumer::new(pool.clone()), faults)
}

pub async fn balance(pool: &PgPool, customer_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT balance_minor FROM customers WHERE id = $1").bind(customer_id).fetch_one(pool).await.unwrap()
}

/// (status, reason) of every payment of an order.
pub async fn payments(pool: &PgPool, order_id: Uuid) -> Vec<(String, Option<String>)> {
    sqlx::query_as("SELECT status, reason FROM payments WHERE order_id = $1").bind(order_id).fetch_all(pool).await.unwrap()
}

/// Asserts that every balance is the sum of its ledger entries, and that the entries of
/// orders are exactly what their payments say: a capture of -amount for every payment
/// captured (refunded ones included), a refund of +amount for every refunded one.
pub async fn assert_ledger_explains_balances(pool: &PgPool) {
    let unexplained: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM customers c
         WHERE c.balance_minor <> (SELECT coalesce(sum(amount_minor), 0) FROM ledger l WHERE l.customer_id = c.id)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(unexplained, 0, "balances the ledger does not explain");
    let unmatched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT order_id, kind, amount_minor FROM ledger WHERE order_id IS NOT NULL) l
         FULL JOIN (SELECT order_id, 'capture' AS kind, -amount_minor AS amount_minor FROM payments WHERE status IN ('captured', 'refunded')
                    UNION ALL SELECT order_id, 'refund', amount_minor FROM payments WHERE status = 'refunded') p USING (order_id, kind)
         WHERE l.amount_minor IS DISTINCT FROM p.amount_minor",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(unmatched, 0, "captures or refunds without a payment, or payments without their capture or refund");
}
