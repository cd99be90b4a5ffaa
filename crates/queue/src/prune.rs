//! Pruning: done inbox rows are kept for the dedupe window (a repeated delivery inside it
//! is rejected by the primary key), then deleted in small batches. Each batch is its own
//! short transaction that walks `inbox_prune_idx` and skips locked rows, so pruning never
//! scans the table, never blocks a consumer and never holds back vacuum for long.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::wake::sleep_or_cancel;

pub const PRUNE: &str = "\
DELETE FROM conveyor.inbox
WHERE message_id = ANY (ARRAY(
    SELECT message_id FROM conveyor.inbox
    WHERE state = 'done' AND done_at < now() - $1 * interval '1 millisecond'
    ORDER BY done_at LIMIT $2 FOR UPDATE SKIP LOCKED))";

/// Deletes done rows older than `window`, `batch` at a time; returns how many.
pub async fn prune_once(pool: &PgPool, window: Duration, batch: i64) -> Result<u64, Error> {
    let mut total = 0;
    loop {
        let n = sqlx::query(PRUNE).bind(window.as_millis() as f64).bind(batch).execute(pool).await?.rows_affected();
        total += n;
        if (n as i64) < batch {
            metrics::counter!("conveyor_queue_pruned_total").increment(total);
            return Ok(total);
        }
    }
}

/// Runs [`prune_once`] every `interval`.
#[derive(Debug, Clone)]
pub struct Pruner {
    pool: PgPool,
    /// How long done rows are kept for deduplication. Default: one hour, far longer than
    /// any redelivery (a relay repeats a batch within seconds of its crash).
    pub window: Duration,
    pub batch: i64,
    pub interval: Duration,
}

impl Pruner {
    pub fn new(pool: PgPool) -> Self {
        Pruner { pool, window: Duration::from_secs(3600), batch: 1000, interval: Duration::from_secs(30) }
    }

    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), Error> {
        loop {
            if let Err(e) = prune_once(&self.pool, self.window, self.batch).await {
                tracing::warn!(error = %e, "pruning failed; trying again next interval");
            }
            if sleep_or_cancel(self.interval, &shutdown).await {
                return Ok(());
            }
        }
    }
}
