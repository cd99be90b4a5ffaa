//! Pruning: the records of handled messages (`conveyor.inbox_done`) are kept for the dedupe
//! window (a repeated delivery inside it is not inserted, or dropped at its claim), then
//! deleted in small batches. A row goes once it was
//! both published and done longer than the window ago. Message ids are UUID v7, so the
//! rows published before the window are a prefix of the primary key: each batch is its
//! own short transaction that walks that prefix from where the last one stopped, so pruning never scans the table, never blocks a consumer and never holds
//! back vacuum for long.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::wake::sleep_or_cancel;

/// The pruning statement for `$table`, whose rows go once `$done` holds: `$1`: resume after
/// this id; `$2`: the first id published inside the window; `$3`: the window in ms; `$4`:
/// batch size. Returns the last id it looked at (NULL: nothing left). The rows it deletes
/// are never updated again, so the delete takes no lock anybody waits for.
macro_rules! prune_sql {
    ($table:literal, $done:literal) => {
        concat!(
            "WITH batch AS (
    SELECT message_id FROM ", $table, "
    WHERE message_id > $1 AND message_id < $2
    ORDER BY message_id LIMIT $4),
gone AS (
    DELETE FROM ", $table, "
    WHERE message_id = ANY (ARRAY(SELECT message_id FROM batch)) AND ", $done, " AND done_at < now() - $3 * interval '1 millisecond'
    RETURNING 1)
SELECT (SELECT message_id FROM batch ORDER BY message_id DESC LIMIT 1), (SELECT count(*) FROM gone)"
        )
    };
}

/// The records of handled messages.
pub const PRUNE: &str = prune_sql!("conveyor.inbox_done", "true");

/// Rows that workers of the previous version marked `done` in the inbox itself (during a
/// rolling upgrade).
const PRUNE_LEGACY: &str = prune_sql!("conveyor.inbox", "state = 'done'");

/// Deletes done rows published and done more than `window` ago, looking at `batch` rows
/// of the old prefix per transaction; returns how many it deleted.
pub async fn prune_once(pool: &PgPool, window: Duration, batch: i64) -> Result<u64, Error> {
    let horizon = v7_floor(SystemTime::now() - window);
    let mut total = 0;
    for statement in [PRUNE, PRUNE_LEGACY] {
        let mut after = Uuid::nil();
        loop {
            let (last, n): (Option<Uuid>, i64) =
                sqlx::query_as(statement).bind(after).bind(horizon).bind(window.as_millis() as f64).bind(batch).fetch_one(pool).await?;
            total += n as u64;
            match last {
                Some(last) => after = last,
                None => break,
            }
        }
    }
    // The rows of pulled topics every subscriber has passed (see `pull`).
    total += crate::pull::prune_pulled(pool, batch).await?;
    metrics::counter!("conveyor_queue_pruned_total").increment(total);
    Ok(total)
}

/// The smallest UUID v7 of instant `t`: every id minted at or after `t` sorts above it.
pub fn v7_floor(t: SystemTime) -> Uuid {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v7_floor_sorts_below_every_id_of_its_instant_and_above_older_ones() {
        let now = SystemTime::now();
        let floor = v7_floor(now);
        let ms = now.duration_since(UNIX_EPOCH).unwrap();
        let at = |d: Duration| Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, d.as_secs(), d.subsec_nanos()));
        assert!(floor <= at(ms));
        assert!(floor < at(ms + Duration::from_millis(1)));
        assert!(at(ms - Duration::from_millis(1)) < floor);
    }
}
