use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use conveyor_devpg::{TestDb, test_db};
use conveyor_queue::{ConsumerOptions, Event, Outgoing, Relay, RelayOptions, Routes, publish_all};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ping {
    pub n: i64,
}

impl Event for Ping {
    const TOPIC: &'static str = "test.ping";
    fn key(&self) -> Option<String> {
        Some(format!("k{}", self.n % 10))
    }
}

pub async fn pool(url: &str, max: u32) -> PgPool {
    PgPoolOptions::new().max_connections(max).test_before_acquire(false).acquire_timeout(Duration::from_secs(60)).connect(url).await.unwrap()
}

/// A migrated database with an `effects` table: one row per handler effect, on purpose
/// without a unique key, so that a duplicate effect shows as a second row.
pub async fn queue_db() -> (TestDb, PgPool) {
    let db = test_db().await;
    let pool = pool(&db.url, 30).await;
    conveyor_queue::migrate(&pool).await.unwrap();
    sqlx::raw_sql("CREATE TABLE effects (message_id uuid NOT NULL, n bigint NOT NULL, attempt int NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    (db, pool)
}

/// A publisher database and a subscriber database, with a relay between them.
pub struct Pair {
    pub publisher: PgPool,
    pub subscriber: PgPool,
    pub subscriber_db: TestDb,
    pub publisher_db: TestDb,
}

pub async fn pair() -> Pair {
    let ((publisher_db, publisher), (subscriber_db, subscriber)) = tokio::join!(queue_db(), queue_db());
    Pair { publisher, subscriber, subscriber_db, publisher_db }
}

impl Pair {
    pub fn relay(&self) -> Relay {
        let routes = Routes::new().route(Ping::TOPIC, ["sub"]);
        Relay::new(self.publisher.clone(), routes, HashMap::from([("sub".to_owned(), self.subscriber.clone())]))
            .unwrap()
            .with_options(RelayOptions { batch_size: 100, concurrency: 2, poll_interval: Duration::from_millis(100) })
    }

    /// Publishes pings `range` in transactions of 100.
    pub async fn publish(&self, range: std::ops::Range<i64>) -> Vec<uuid::Uuid> {
        let mut ids = Vec::new();
        let all: Vec<i64> = range.collect();
        for chunk in all.chunks(100) {
            let msgs: Vec<Outgoing> = chunk.iter().map(|&n| Outgoing::event(&Ping { n }).unwrap()).collect();
            ids.extend(msgs.iter().map(|m| m.id));
            let mut tx = self.publisher.begin().await.unwrap();
            publish_all(&mut tx, &msgs).await.unwrap();
            tx.commit().await.unwrap();
        }
        ids
    }

    /// Relays until the outbox is empty.
    pub async fn relay_all(&self) {
        let relay = self.relay();
        while relay.relay_once().await.unwrap() > 0 {}
    }
}

pub fn fast_options(concurrency: usize) -> ConsumerOptions {
    ConsumerOptions {
        concurrency,
        batch_size: 50,
        poll_interval: Duration::from_millis(50),
        shutdown_grace: Duration::from_secs(5),
    }
}

/// Polls `check` every 20 ms until it holds; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Asserts every message in `ids` had its effect exactly once.
pub async fn assert_exactly_once(pool: &PgPool, ids: &[uuid::Uuid]) {
    let rows: Vec<(uuid::Uuid, i64)> =
        sqlx::query_as("SELECT message_id, count(*) FROM effects GROUP BY message_id").fetch_all(pool).await.unwrap();
    let seen: HashMap<uuid::Uuid, i64> = rows.into_iter().collect();
    let dupes: Vec<_> = seen.iter().filter(|(_, c)| **c != 1).collect();
    assert!(dupes.is_empty(), "messages with more than one effect: {:?}", &dupes[..dupes.len().min(10)]);
    let missing: Vec<_> = ids.iter().filter(|id| !seen.contains_key(id)).collect();
    assert!(missing.is_empty(), "{} messages had no effect, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
    assert_eq!(seen.len(), ids.len(), "effects of messages that were never published");
}

/// The transaction-mode handler the tests use: records its effect in the same transaction.
pub async fn record_effect(conn: &mut sqlx::PgConnection, msg: &conveyor_queue::Delivery<Ping>) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO effects (message_id, n, attempt) VALUES ($1, $2, $3)")
        .bind(msg.id)
        .bind(msg.payload.n)
        .bind(msg.attempt)
        .execute(conn)
        .await
        .map(|_| ())
}
