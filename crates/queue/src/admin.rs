//! Inspection and repair: depth, age of the oldest waiting message, dead letters, replay.
//! Every query here reads through an index that matches its predicate, or the small tables
//! of waiting rows, never the whole history.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::{Error, Headers};

/// Which queue table a figure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum QueueTable {
    /// Published here, not relayed (or, pulled, not read by every subscriber) yet.
    Outbox,
    /// Delivered here, to be handled by this service.
    Inbox,
}

/// How many messages of a topic wait in a state: `pending`, `running` or `dead` in the
/// inbox, `pending` in the outbox (not relayed yet, or, pulled, not read by every
/// subscriber yet: see `pull::PASSED`). Done rows are not counted: they are the dedupe record,
/// as many as the window holds, and counting them would scan them at every scrape; each
/// count here reads only the rows its partial index holds.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Depth {
    pub table: QueueTable,
    pub topic: String,
    pub state: String,
    pub count: i64,
    /// Age of the oldest message counted here (for `pending` and `running`), in seconds.
    pub oldest_age_seconds: Option<f64>,
}

pub const DEPTH: &str = concat!(
    "SELECT 'outbox' AS \"table\", topic, 'pending' AS state, count(*) AS count,
                extract(epoch FROM now() - min(created_at))::float8 AS oldest_age_seconds
         FROM conveyor.outbox AS o WHERE NOT ",
    crate::pull::passed!(),
    " GROUP BY topic
         UNION ALL
         SELECT 'inbox', topic, state, count(*), extract(epoch FROM now() - min(published_at))::float8
         FROM conveyor.inbox WHERE state IN ('pending', 'running') GROUP BY topic, state
         UNION ALL
         SELECT 'inbox', topic, 'dead', count(*), NULL
         FROM conveyor.inbox WHERE state = 'dead' GROUP BY topic
         ORDER BY 1, 2, 3"
);

/// How many messages of the outbox some subscriber has still to receive: not relayed yet,
/// or, pulled, not read by every subscriber yet (a row all have read waits only for the
/// pruner).
pub const OUTBOX_WAITING: &str = concat!("SELECT count(*) FROM conveyor.outbox AS o WHERE NOT ", crate::pull::passed!());

/// Depth of every topic and waiting state, outbox and inbox.
pub async fn depth(pool: &PgPool) -> Result<Vec<Depth>, Error> {
    Ok(sqlx::query_as(
        DEPTH,
    )
    .fetch_all(pool)
    .await?)
}

pub const OLDEST: &str = concat!(
    "SELECT extract(epoch FROM now() - min(t))::float8 FROM (
            (SELECT created_at AS t FROM conveyor.outbox AS o WHERE NOT ",
    crate::pull::passed!(),
    " ORDER BY message_id LIMIT 1)
            UNION ALL
            (SELECT min(published_at) FROM conveyor.inbox WHERE state IN ('pending', 'running'))
         ) oldest"
);

/// Age of the oldest message still waiting anywhere in this database: in the outbox, or
/// pending or running in the inbox. `None` when nothing waits.
pub async fn oldest_pending_age(pool: &PgPool) -> Result<Option<Duration>, Error> {
    let secs: Option<f64> = sqlx::query_scalar(
        OLDEST,
    )
    .fetch_one(pool)
    .await?;
    Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
}

/// A message that used up its attempts, with every attempt's error.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    pub message_id: Uuid,
    pub topic: String,
    pub key: Option<String>,
    pub payload: serde_json::Value,
    pub headers: Json<Headers>,
    pub attempts: i32,
    /// `[{"attempt": 1, "at": "…", "error": "…"}, …]`
    pub errors: serde_json::Value,
    pub published_at: DateTime<Utc>,
}

/// Dead letters in id order, optionally of one topic, after `after` (for paging).
pub async fn dead_letters(pool: &PgPool, topic: Option<&str>, after: Option<Uuid>, limit: i64) -> Result<Vec<DeadLetter>, Error> {
    Ok(sqlx::query_as(
        "SELECT message_id, topic, key, payload, headers, attempts, errors, published_at
         FROM conveyor.inbox
         WHERE state = 'dead' AND ($1::text IS NULL OR topic = $1) AND ($2::uuid IS NULL OR message_id > $2)
         ORDER BY message_id LIMIT $3",
    )
    .bind(topic)
    .bind(after)
    .bind(limit.clamp(1, 1000))
    .fetch_all(pool)
    .await?)
}

/// Makes a dead message pending again with a fresh set of attempts (its error history is
/// kept). Returns false when `id` is not a dead message.
pub async fn replay(pool: &PgPool, id: Uuid) -> Result<bool, Error> {
    let n: i64 = sqlx::query_scalar(
        "WITH replayed AS (
            UPDATE conveyor.inbox SET state = 'pending', attempts = 0, visible_at = now()
            WHERE state = 'dead' AND message_id = $1 RETURNING 1)
         SELECT count(*) FROM replayed CROSS JOIN (SELECT pg_notify('conveyor_inbox', '')) wake",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    Ok(n == 1)
}

/// Replays every dead message, or those of one topic. Returns how many.
pub async fn replay_all(pool: &PgPool, topic: Option<&str>) -> Result<u64, Error> {
    let n: i64 = sqlx::query_scalar(
        "WITH replayed AS (
            UPDATE conveyor.inbox SET state = 'pending', attempts = 0, visible_at = now()
            WHERE state = 'dead' AND ($1::text IS NULL OR topic = $1) RETURNING 1)
         SELECT count(*) FROM replayed CROSS JOIN (SELECT pg_notify('conveyor_inbox', '')) wake",
    )
    .bind(topic)
    .fetch_one(pool)
    .await?;
    Ok(n as u64)
}
