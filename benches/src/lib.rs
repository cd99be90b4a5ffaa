//! Shared setup of the queue benchmarks: databases, payloads, result files.

pub mod pgmq;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// `a ÷ b`, when both are known and `b` is positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The benchmark message: the same ~220-byte order event as the raw-SQL reference's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchEvent {
    pub event: String,
    pub order_id: String,
    pub customer_id: String,
    pub currency: String,
    pub total_cents: i64,
    pub lines: Vec<Line>,
    pub channel: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    pub sku: String,
    pub qty: i32,
}

impl conveyor_queue::Event for BenchEvent {
    const TOPIC: &'static str = "bench.event";
}

impl BenchEvent {
    pub fn sample(n: i64) -> Self {
        BenchEvent {
            event: "order.placed".into(),
            order_id: format!("0190f3c2-7d4e-7a61-9b2c-{:012x}", n),
            customer_id: format!("c-{:06}", n % 1_000_000),
            currency: "EUR".into(),
            total_cents: 12_999 + n % 100,
            lines: vec![Line { sku: "SKU-000123".into(), qty: 2 }, Line { sku: "SKU-004567".into(), qty: 1 }],
            channel: "web".into(),
        }
    }

    /// The `n` this event was made from by [`BenchEvent::sample`] (a benchmark stamps its
    /// messages with it).
    pub fn number(&self) -> Option<i64> {
        i64::from_str_radix(self.order_id.rsplit('-').next()?, 16).ok()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sample_is_about_as_big_as_the_reference_payload() {
        let len = serde_json::to_string(&super::BenchEvent::sample(42)).unwrap().len();
        assert!((200..=240).contains(&len), "{len} bytes");
        assert_eq!(super::BenchEvent::sample(1_234_567_890).number(), Some(1_234_567_890));
    }
}

/// A fresh, migrated database `name` on the server of `admin_url`.
pub async fn fresh_db(admin_url: &str, name: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let admin = PgPool::connect(admin_url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&admin).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await?;
    admin.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        // A ping before every checkout doubles the round trips of a short transaction.
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(60))
        .connect(&conveyor_devpg::with_database(admin_url, name))
        .await?;
    conveyor_queue::migrate(&pool).await?;
    Ok(pool)
}

/// One throughput figure of the engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    pub batch: usize,
    pub msgs_per_sec: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub samples: usize,
}

/// The file `cargo xtask bench queue` reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineResults {
    pub clients: usize,
    pub results: Vec<Figure>,
    pub wakeup_ms: Latency,
    /// How late an idle consumer claims a message whose backoff ended: handler start −
    /// the end of the backoff (`visible_at`), ms.
    pub retry_lateness_ms: Latency,
}
