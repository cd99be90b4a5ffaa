//! Transaction mode: claim, handle and complete in one transaction.

use std::time::{Instant, SystemTime};

use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::{Consumer, Failure, record_claim, record_done};
use crate::Error;
use crate::message::InboxRow;
use crate::trace::{self, Batch};

// The fast path claims and completes in one statement: it deletes the rows from the inbox
// and records them in `inbox_done`; the row lock the DELETE takes is the claim, and if a
// handler fails the whole transaction rolls back and the rows are `pending` again. A row
// whose id is recorded already (a copy of a message handled before: its delivery raced the
// original's completion) is deleted and flagged `duplicate`, and its handler never runs.
// `$3` is the consumer's claim floor (see `floor`): NULL reads the index from its start.
// `= ANY (ARRAY(…))` rather than a join: the statement is prepared, and a generic plan,
// which cannot see that LIMIT is small, would hash-join against a scan of the whole table.
//
// A claim that took rows also sets `plan_cache_mode` to `force_generic_plan` for the rest
// of its transaction: the handlers' statements are then planned once per connection, not
// at each call. Their look-ups by `= ANY($1)` or `UNNEST($1)` otherwise never leave custom
// plans (a generic plan assumes ten elements, a custom one sees one to fifty, so the
// generic always looks dearer), and planning cost more than running them: at 150 sagas/s
// `UPDATE items`, `UPDATE customers`, their reads and the order's stream read were planned
// at every call, about 0.14 of PostgreSQL's 1.2 cores. The claim itself, planned before
// this takes effect, keeps its own choice; the setting ends with the transaction.
pub const CLAIM_AS_DONE: &str = "\
WITH c AS (
    SELECT message_id FROM conveyor.inbox
    WHERE state IN ('pending', 'running') AND visible_at <= now() AND topic = ANY($1)
      AND visible_at >= coalesce($3::timestamptz, '-infinity')
    ORDER BY visible_at LIMIT $2 FOR UPDATE SKIP LOCKED),
d AS (
    DELETE FROM conveyor.inbox AS i WHERE i.message_id = ANY (ARRAY(SELECT message_id FROM c))
    RETURNING i.message_id, i.topic, i.key, i.payload, i.headers, i.attempts, i.published_at, i.received_at, i.visible_at, i.errors),
n AS (
    INSERT INTO conveyor.inbox_done (message_id, topic, attempts, published_at, received_at, errors)
    SELECT message_id, topic, attempts + 1, published_at, received_at, NULLIF(errors, '[]'::jsonb) FROM d
    ON CONFLICT (message_id) DO NOTHING RETURNING message_id)
SELECT d.message_id, d.topic, d.key, d.payload, d.headers, d.attempts, d.published_at, d.visible_at,
       n.message_id IS NULL AS duplicate
FROM d LEFT JOIN n ON n.message_id = d.message_id
CROSS JOIN (SELECT set_config('plan_cache_mode', 'force_generic_plan', true)) AS generic_plans";

/// Locks a batch's keys (see [`crate::LockKeys`]): transaction-scoped advisory locks on
/// their 64-bit hashes, each once, in ascending order, so that no two batches can each hold
/// a lock the other waits for. (The subquery's ORDER BY keeps it from being flattened, so
/// the locks are taken in its order.)
pub const LOCK_KEYS: &str = "\
SELECT pg_advisory_xact_lock(h) FROM (
    SELECT DISTINCT hashtextextended(k, 0) AS h FROM unnest($1::text[]) AS k ORDER BY h) AS s";

/// What the consumer's sweeps read (see `floor`): the oldest live transaction-mode row
/// below the claim floor, locked or not, on the claim's index.
pub(crate) const SWEEP: crate::floor::SweepProbe = crate::floor::SweepProbe {
    table: "inbox",
    sql: "SELECT visible_at FROM conveyor.inbox
          WHERE state IN ('pending', 'running') AND topic = ANY($1)
            AND visible_at >= coalesce($2::timestamptz, '-infinity') AND visible_at < $3
          ORDER BY visible_at LIMIT 1",
    positions: crate::floor::Positions::Time,
};

const RECLAIM: &str = "\
SELECT message_id, topic, key, payload, headers, attempts, published_at FROM conveyor.inbox
WHERE message_id = ANY($1) AND state IN ('pending', 'running') AND visible_at <= now()
ORDER BY visible_at FOR UPDATE SKIP LOCKED";

/// The slow path records one message done under its savepoint, before its handler runs;
/// no row back: a copy of a message handled before (see `CLAIM_AS_DONE`).
const RECORD_DONE: &str = "\
INSERT INTO conveyor.inbox_done (message_id, topic, attempts, published_at, received_at, errors)
SELECT message_id, topic, attempts + 1, published_at, received_at, NULLIF(errors, '[]'::jsonb) FROM conveyor.inbox WHERE message_id = $1
ON CONFLICT (message_id) DO NOTHING RETURNING message_id";

/// The slow path's settled messages (done, or copies) leave the inbox.
const REMOVE: &str = "DELETE FROM conveyor.inbox WHERE message_id = ANY($1)";

const FAILED: &str = "\
UPDATE conveyor.inbox AS i SET
    attempts = CASE WHEN f.counted THEN i.attempts + 1 ELSE i.attempts END,
    state = CASE WHEN f.dead THEN 'dead' ELSE 'pending' END,
    visible_at = now() + f.delay_ms * interval '1 millisecond',
    errors = CASE WHEN f.counted
        THEN i.errors || jsonb_build_array(jsonb_build_object('attempt', i.attempts + 1, 'at', now(), 'error', f.error))
        ELSE i.errors END
FROM UNNEST($1::uuid[], $2::bool[], $3::bigint[], $4::text[], $5::bool[]) AS f(id, dead, delay_ms, error, counted)
WHERE i.message_id = ANY($1) AND i.message_id = f.id"; // by key, planned at each call (see lease.rs's DONE)

impl Consumer {
    /// One transaction-mode cycle. The batch first runs as a whole, without savepoints (the
    /// fast path: one transaction of three statements, however many messages). If a handler
    /// fails, that transaction is rolled back and the batch runs again with one savepoint
    /// per message, so the failure is recorded and every other message still completes.
    pub(super) async fn tx_cycle(&self, conn: &mut PgConnection) -> Result<usize, Error> {
        if self.tx_topics.is_empty() {
            return Ok(0);
        }
        let started = SystemTime::now();
        let mut tx = conn.begin().await?;
        let floor = self.floor.start().and_then(chrono::DateTime::from_timestamp_micros);
        let mut rows: Vec<InboxRow> =
            sqlx::query_as(CLAIM_AS_DONE).bind(&self.tx_topics).bind(self.opts.batch_size).bind(floor).fetch_all(&mut *tx).await?;
        if let Some(newest) = rows.iter().filter_map(|r| r.visible_at).max() {
            self.floor.claimed(newest.timestamp_micros());
        }
        rows.sort_unstable_by_key(|r| r.message_id); // publish order
        record_claim("inbox", rows.len());
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let claimed = rows.len();
        record_duplicates(rows.iter().filter(|r| r.duplicate));
        rows.retain(|r| !r.duplicate);
        let batch = Batch::start("receive", started, Some(&self.name), rows.iter().map(|r| r.topic.as_str()));
        rows.iter().for_each(|r| batch.link(&r.headers.0));
        batch.statement(&trace::INBOX_CLAIM, started, Some(rows.len()), None);
        let mut all_ok = self.lock_batch(&mut tx, &rows, &batch).await.is_ok();
        // Each run of consecutive messages of one topic goes to its handler in one call.
        let refs: Vec<&InboxRow> = rows.iter().collect();
        for run in refs.chunk_by(|a, b| a.topic == b.topic).take_while(|_| all_ok) {
            if self.run_tx_handler(&mut tx, run).await.is_err() {
                all_ok = false;
                break;
            }
        }
        if all_ok {
            batch.run(&trace::COMMIT, tx.commit()).await?;
            record_done(&rows);
            return Ok(claimed);
        }
        batch.run(&trace::ROLLBACK, tx.rollback()).await?;
        self.tx_cycle_isolated(conn, rows.iter().map(|r| r.message_id).collect(), &batch).await
    }

    /// The slow path: every message under its own savepoint.
    async fn tx_cycle_isolated(&self, conn: &mut PgConnection, ids: Vec<Uuid>, batch: &Batch) -> Result<usize, Error> {
        let mut tx = conn.begin().await?;
        let rows: Vec<InboxRow> = batch.run(&trace::INBOX_RECLAIM, sqlx::query_as(RECLAIM).bind(&ids).fetch_all(&mut *tx)).await?;
        let locked = self.lock_batch_isolated(&mut tx, &rows, batch).await?;
        let (mut done, mut failures, mut copies) = (Vec::new(), Vec::new(), Vec::new());
        for row in &rows {
            let mut savepoint = tx.begin().await?;
            let recorded: Option<Uuid> = sqlx::query_scalar(RECORD_DONE).bind(row.message_id).fetch_optional(&mut *savepoint).await?;
            if recorded.is_none() {
                savepoint.commit().await?;
                copies.push(row);
                continue;
            }
            match self.handle_isolated(savepoint, row, locked, batch).await? {
                None => done.push(row),
                Some(failure) => failures.push(failure),
            }
        }
        let mut settled_ids: Vec<Uuid> = done.iter().map(|r| r.message_id).collect();
        settled_ids.extend(copies.iter().map(|r| r.message_id));
        record_duplicates(copies.iter().copied());
        batch
            .run(&trace::INBOX_SETTLE, async {
                sqlx::query(REMOVE).bind(&settled_ids).execute(&mut *tx).await?;
                record_failures(&mut tx, &failures).await
            })
            .await?;
        batch.run(&trace::COMMIT, tx.commit()).await?;
        self.retries.scheduled(&failures);
        record_done(done.iter().copied());
        Ok(rows.len())
    }

    /// The slow path's first step: the batch's keys up front again, under a savepoint of
    /// `tx`; false when naming them failed (each message then names its own under its
    /// savepoint, and a failure there is that message's).
    pub(super) async fn lock_batch_isolated(&self, tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, rows: &[InboxRow], batch: &Batch) -> Result<bool, Error> {
        let mut savepoint = tx.begin().await?;
        let locked = self.lock_batch(&mut savepoint, rows, batch).await;
        if locked.is_ok() { savepoint.commit().await? } else { savepoint.rollback().await? }
        Ok(locked.is_ok())
    }

    /// Runs one message's handler on the slow path under `savepoint`, taking its own keys
    /// first unless the batch's are held (`locked`); commits the savepoint when it
    /// succeeds, or rolls it back and returns the failure to record.
    pub(super) async fn handle_isolated(
        &self,
        mut savepoint: sqlx::Transaction<'_, sqlx::Postgres>,
        row: &InboxRow,
        locked: bool,
        batch: &Batch,
    ) -> Result<Option<Failure>, Error> {
        let outcome = match locked {
            true => Ok(()),
            false => self.lock_batch(&mut savepoint, std::slice::from_ref(row), batch).await,
        };
        let outcome = match outcome {
            Ok(()) => self.run_tx_handler(&mut savepoint, &[row]).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                savepoint.commit().await?;
                Ok(None)
            }
            Err(err) => {
                savepoint.rollback().await?;
                let sub = &self.tx_subs[&row.topic];
                Ok(Some(Failure::new(&row.topic, row.message_id, row.attempts + 1, &sub.retry, &err)))
            }
        }
    }

    /// Takes the lock keys every subscription of `rows` names (see [`crate::LockKeys`]),
    /// all in one statement; nothing when no subscription names any.
    pub(super) async fn lock_batch(&self, conn: &mut PgConnection, rows: &[InboxRow], batch: &Batch) -> Result<(), super::HandlerError> {
        let mut keys = Vec::new();
        let mut topics: Vec<&str> = rows.iter().map(|r| r.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        for topic in topics {
            let Some(named) = &self.tx_subs[topic].keys else { continue };
            let of_topic: Vec<&InboxRow> = rows.iter().filter(|r| r.topic == topic).collect();
            keys.extend(named.keys(conn, &of_topic).await?);
        }
        if keys.is_empty() {
            return Ok(());
        }
        batch.run(&trace::LOCK_KEYS, sqlx::query(LOCK_KEYS).bind(&keys).execute(&mut *conn)).await?;
        Ok(())
    }

    /// Runs the handler of `run` (consecutive messages of one topic) and records how long
    /// it took per message.
    pub(super) async fn run_tx_handler(&self, conn: &mut PgConnection, run: &[&InboxRow]) -> Result<(), super::HandlerError> {
        let Some(topic) = run.first().map(|r| r.topic.as_str()) else { return Ok(()) };
        let sub = &self.tx_subs[topic];
        let started = Instant::now();
        let result = sub.handler.call(conn, run, &self.name).await;
        let per_message = started.elapsed().as_secs_f64() / run.len() as f64;
        let histogram = metrics::histogram!("conveyor_queue_handler_duration_seconds", "topic" => topic.to_owned());
        run.iter().for_each(|_| histogram.record(per_message));
        result
    }
}

/// Counts (and logs) the copies of handled messages a claim dropped.
fn record_duplicates<'a>(rows: impl IntoIterator<Item = &'a InboxRow>) {
    for r in rows {
        tracing::info!(id = %r.message_id, topic = r.topic, "a copy of a message handled before: dropped, its handler not run");
        metrics::counter!("conveyor_queue_consumed_total", "topic" => r.topic.clone(), "outcome" => "duplicate").increment(1);
    }
}

async fn record_failures(conn: &mut PgConnection, failures: &[Failure]) -> Result<(), Error> {
    if failures.is_empty() {
        return Ok(());
    }
    sqlx::query(FAILED)
        .persistent(false)
        .bind(failures.iter().map(|f| f.id).collect::<Vec<_>>())
        .bind(failures.iter().map(|f| f.dead).collect::<Vec<_>>())
        .bind(failures.iter().map(|f| f.delay_ms).collect::<Vec<_>>())
        .bind(failures.iter().map(|f| f.error.as_str()).collect::<Vec<_>>())
        .bind(failures.iter().map(|f| f.counted).collect::<Vec<_>>())
        .execute(conn)
        .await?;
    Ok(())
}
