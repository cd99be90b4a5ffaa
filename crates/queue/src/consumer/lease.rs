//! Lease mode: the claim commits with a lease; the handler runs outside any transaction;
//! completion is fenced by the attempt number.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use sqlx::PgConnection;

use super::{Consumer, Failure, HandlerError, record_claim, record_done};
use crate::Error;
use crate::message::InboxRow;
use crate::trace::{self, Batch};

/// Claims with a lease. A claimed copy of a message recorded done already (its delivery
/// raced the original's completion) is deleted instead, and its handler never runs.
pub const CLAIM: &str = "\
WITH c AS (
    SELECT message_id FROM conveyor.inbox
    WHERE state IN ('pending', 'running') AND visible_at <= now() AND topic = ANY($1)
    ORDER BY visible_at LIMIT $3 FOR UPDATE SKIP LOCKED),
copies AS (
    DELETE FROM conveyor.inbox AS i WHERE i.message_id = ANY (ARRAY(SELECT message_id FROM c))
      AND EXISTS (SELECT 1 FROM conveyor.inbox_done AS d WHERE d.message_id = i.message_id))
UPDATE conveyor.inbox AS i
SET state = 'running', attempts = i.attempts + 1, visible_at = now() + l.lease_ms * interval '1 millisecond'
FROM UNNEST($1::text[], $2::bigint[]) AS l(topic, lease_ms)
WHERE i.message_id = ANY (ARRAY(SELECT message_id FROM c)) AND l.topic = i.topic
  AND NOT EXISTS (SELECT 1 FROM conveyor.inbox_done AS d WHERE d.message_id = i.message_id)
RETURNING i.message_id, i.topic, i.key, i.payload, i.headers, i.attempts, i.published_at";

/// Completion, fenced by the attempt: the rows leave the inbox for `inbox_done`.
// The statements that settle leased rows find them by key (`message_id = ANY($1)`, an index
// condition, where the join alone was not) and are planned at each call, like the claim:
// a plan cached while the inbox was a few pages read it whole once it had grown (a seq
// scan, or a walk of a whole index: 335–442 pages a call in the notification database at
// 150 sagas/s; planned at each call, a median of 20 at 350 sagas/s, the dedupe insert
// included).
pub const DONE: &str = "\
WITH d AS (
    DELETE FROM conveyor.inbox AS i USING UNNEST($1::uuid[], $2::int[]) AS d(id, attempt)
    WHERE i.message_id = ANY($1) AND i.message_id = d.id AND i.attempts = d.attempt AND i.state = 'running'
    RETURNING i.message_id, i.topic, i.attempts, i.published_at, i.received_at, i.errors),
n AS (
    INSERT INTO conveyor.inbox_done (message_id, topic, attempts, published_at, received_at, errors)
    SELECT message_id, topic, attempts, published_at, received_at, NULLIF(errors, '[]'::jsonb) FROM d
    ON CONFLICT (message_id) DO NOTHING)
SELECT message_id FROM d";

const FAILED: &str = "\
UPDATE conveyor.inbox AS i SET
    state = CASE WHEN f.dead THEN 'dead' ELSE 'pending' END,
    attempts = CASE WHEN f.counted THEN i.attempts ELSE i.attempts - 1 END,
    visible_at = now() + f.delay_ms * interval '1 millisecond',
    errors = CASE WHEN f.counted
        THEN i.errors || jsonb_build_array(jsonb_build_object('attempt', i.attempts, 'at', now(), 'error', f.error))
        ELSE i.errors END
FROM UNNEST($1::uuid[], $2::int[], $3::bool[], $4::bigint[], $5::text[], $6::bool[]) AS f(id, attempt, dead, delay_ms, error, counted)
WHERE i.message_id = ANY($1) AND i.message_id = f.id AND i.attempts = f.attempt AND i.state = 'running'
RETURNING i.message_id";

// Handing a claim back on shutdown does not count as an attempt.
const RELEASE: &str = "\
UPDATE conveyor.inbox AS i SET state = 'pending', attempts = i.attempts - 1, visible_at = now()
FROM UNNEST($1::uuid[], $2::int[]) AS r(id, attempt)
WHERE i.message_id = ANY($1) AND i.message_id = r.id AND i.attempts = r.attempt AND i.state = 'running'";

impl Consumer {
    /// One lease-mode cycle: claim a batch (one statement, committed), run its handlers
    /// concurrently outside any transaction, then settle the batch: two fenced statements
    /// however many messages. On shutdown, handlers get `shutdown_grace` to finish; what
    /// finished is settled and the claims of the rest are handed back.
    pub(super) async fn lease_cycle(&self, conn: &mut PgConnection, shutdown: &CancellationToken) -> Result<usize, Error> {
        if self.lease_topics.is_empty() {
            return Ok(0);
        }
        let started = SystemTime::now();
        // Planned at every claim (not a cached generic plan): its look-ups in inbox_done must
        // use the key however that table has grown since the connection first prepared it.
        let rows: Vec<InboxRow> = sqlx::query_as(CLAIM)
            .persistent(false)
            .bind(&self.lease_topics)
            .bind(&self.lease_ms)
            .bind(self.opts.batch_size)
            .fetch_all(&mut *conn)
            .await?;
        record_claim("inbox", rows.len());
        if rows.is_empty() {
            return Ok(0);
        }
        let batch = Batch::start("receive", started, Some(&self.name), rows.iter().map(|r| r.topic.as_str()));
        rows.iter().for_each(|r| batch.link(&r.headers.0));
        batch.statement(&trace::INBOX_CLAIM, started, Some(rows.len()), None);
        let finished = Mutex::new(Vec::with_capacity(rows.len()));
        let mut by_topic: BTreeMap<&str, Vec<&InboxRow>> = BTreeMap::new();
        rows.iter().for_each(|r| by_topic.entry(r.topic.as_str()).or_default().push(r));
        let run_all = join_all(by_topic.into_iter().map(|(topic, rows)| self.run_leased(topic, rows, &finished)));
        let grace = self.opts.shutdown_grace;
        let complete = tokio::select! {
            _ = run_all => true,
            _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => false,
        };
        let finished = finished.into_inner().unwrap();
        if !complete {
            let (ids, attempts): (Vec<Uuid>, Vec<i32>) = rows
                .iter()
                .filter(|r| !finished.iter().any(|(f, _)| f.message_id == r.message_id))
                .map(|r| (r.message_id, r.attempts))
                .unzip();
            tracing::warn!(?grace, released = ids.len(), "shutdown grace over: releasing leases in flight");
            batch.run(&trace::INBOX_RELEASE, sqlx::query(RELEASE).persistent(false).bind(&ids).bind(&attempts).execute(&mut *conn)).await?;
        }
        let settled = finished.len();
        batch.run(&trace::INBOX_SETTLE, self.settle(conn, finished)).await?;
        Ok(settled)
    }

    /// Runs the handler of `topic` on its leased messages (declaring dead, without running
    /// it, those whose last allowed attempt's lease expired) and puts each outcome into
    /// `finished` as soon as it is known: `Ok` to complete, `Err` to record.
    async fn run_leased<'r>(&self, topic: &str, rows: Vec<&'r InboxRow>, finished: &Mutex<Vec<(&'r InboxRow, Result<(), Failure>)>>) {
        let sub = &self.lease_subs[topic];
        let done = |row: &'r InboxRow, result: Result<(), HandlerError>| {
            let outcome = result.map_err(|e| Failure::new(&row.topic, row.message_id, row.attempts, &sub.opts.retry, &e));
            finished.lock().unwrap().push((row, outcome));
        };
        let (expired, live): (Vec<&InboxRow>, Vec<&InboxRow>) = rows.into_iter().partition(|r| r.attempts > sub.opts.retry.max_attempts);
        for row in expired {
            // The worker of the last allowed attempt died or lost its lease.
            done(row, Err(HandlerError::permanent(anyhow::anyhow!(
                "lease of attempt {} expired without completion (worker stopped or handler too slow); no attempts left",
                row.attempts - 1
            ))));
        }
        if !live.is_empty() {
            // The handler is abandoned when it outlives its lease (see `LeaseDispatch::call`).
            sub.handler.call(&live, &self.name, sub.opts.lease, &done).await;
        }
    }

    /// Records the outcomes of a batch, each fenced by the attempt it belongs to.
    async fn settle(&self, conn: &mut PgConnection, finished: Vec<(&InboxRow, Result<(), Failure>)>) -> Result<(), Error> {
        let (done, failed): (Vec<_>, Vec<_>) = finished.into_iter().partition(|(_, outcome)| outcome.is_ok());
        let mut settled: Vec<Uuid> = Vec::with_capacity(done.len() + failed.len());
        if !done.is_empty() {
            let ids: Vec<Uuid> = done.iter().map(|(r, _)| r.message_id).collect();
            let attempts: Vec<i32> = done.iter().map(|(r, _)| r.attempts).collect();
            let ok: Vec<Uuid> = sqlx::query_scalar(DONE).persistent(false).bind(&ids).bind(&attempts).fetch_all(&mut *conn).await?;
            record_done(done.iter().map(|(r, _)| *r).filter(|r| ok.contains(&r.message_id)));
            settled.extend(ok);
        }
        let failures: Vec<(&InboxRow, Failure)> = failed.into_iter().filter_map(|(r, o)| o.err().map(|f| (r, f))).collect();
        if !failures.is_empty() {
            let recorded: Vec<Uuid> = sqlx::query_scalar(FAILED)
                .persistent(false)
                .bind(failures.iter().map(|(_, f)| f.id).collect::<Vec<_>>())
                .bind(failures.iter().map(|(r, _)| r.attempts).collect::<Vec<_>>())
                .bind(failures.iter().map(|(_, f)| f.dead).collect::<Vec<_>>())
                .bind(failures.iter().map(|(_, f)| f.delay_ms).collect::<Vec<_>>())
                .bind(failures.iter().map(|(_, f)| f.error.as_str()).collect::<Vec<_>>())
                .bind(failures.iter().map(|(_, f)| f.counted).collect::<Vec<_>>())
                .fetch_all(&mut *conn)
                .await?;
            self.retries.scheduled(failures.iter().map(|(_, f)| f).filter(|f| recorded.contains(&f.id)));
            settled.extend(recorded);
        }
        let stale: Vec<&InboxRow> = done.iter().map(|(r, _)| *r).chain(failures.iter().map(|(r, _)| *r)).filter(|r| !settled.contains(&r.message_id)).collect();
        for row in stale {
            tracing::warn!(id = %row.message_id, topic = row.topic, attempt = row.attempts, "lease lost before completion: another attempt owns the message");
            metrics::counter!("conveyor_queue_stale_completions_total", "topic" => row.topic.clone()).increment(1);
        }
        Ok(())
    }
}
