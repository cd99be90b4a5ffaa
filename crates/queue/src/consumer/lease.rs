//! Lease mode: the claim commits with a lease; the handler runs outside any transaction;
//! completion is fenced by the attempt number.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Consumer, Failure, HandlerError, count_done};
use crate::Error;
use crate::message::InboxRow;

pub const CLAIM: &str = "\
WITH c AS (
    SELECT message_id FROM conveyor.inbox
    WHERE state IN ('pending', 'running') AND visible_at <= now() AND topic = ANY($1)
    ORDER BY visible_at LIMIT $3 FOR UPDATE SKIP LOCKED)
UPDATE conveyor.inbox AS i
SET state = 'running', attempts = i.attempts + 1, visible_at = now() + l.lease_ms * interval '1 millisecond'
FROM UNNEST($1::text[], $2::bigint[]) AS l(topic, lease_ms)
WHERE i.message_id = ANY (ARRAY(SELECT message_id FROM c)) AND l.topic = i.topic
RETURNING i.message_id, i.topic, i.key, i.payload, i.headers, i.attempts, i.published_at";

const DONE: &str = "\
UPDATE conveyor.inbox SET state = 'done', done_at = now()
WHERE message_id = $1 AND attempts = $2 AND state = 'running'";

const FAILED: &str = "\
UPDATE conveyor.inbox SET
    state = CASE WHEN $3 THEN 'dead' ELSE 'pending' END,
    visible_at = now() + $4 * interval '1 millisecond',
    errors = errors || jsonb_build_array(jsonb_build_object('attempt', attempts, 'at', now(), 'error', $5::text))
WHERE message_id = $1 AND attempts = $2 AND state = 'running'";

// Handing a claim back on shutdown does not count as an attempt.
const RELEASE: &str = "\
UPDATE conveyor.inbox AS i SET state = 'pending', attempts = i.attempts - 1, visible_at = now()
FROM UNNEST($1::uuid[], $2::int[]) AS r(id, attempt)
WHERE i.message_id = r.id AND i.attempts = r.attempt AND i.state = 'running'";

impl Consumer {
    /// One lease-mode cycle: claim a batch, run its handlers concurrently, settle each.
    /// On shutdown, handlers get `shutdown_grace` to finish; the claims of those that do
    /// not are released for another worker.
    pub(super) async fn lease_cycle(&self, shutdown: &CancellationToken) -> Result<usize, Error> {
        if self.lease_topics.is_empty() {
            return Ok(0);
        }
        let rows: Vec<InboxRow> = sqlx::query_as(CLAIM)
            .bind(&self.lease_topics)
            .bind(&self.lease_ms)
            .bind(self.opts.batch_size)
            .fetch_all(&self.pool)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let unsettled = Mutex::new(rows.iter().map(|r| (r.message_id, r.attempts)).collect::<Vec<_>>());
        let settle_all = join_all(rows.iter().map(|row| async {
            let result = self.settle_leased(row).await;
            unsettled.lock().unwrap().retain(|(id, _)| *id != row.message_id);
            result
        }));
        let grace = self.opts.shutdown_grace;
        let results = tokio::select! {
            r = settle_all => r,
            _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                let (ids, attempts): (Vec<Uuid>, Vec<i32>) = unsettled.lock().unwrap().iter().copied().unzip();
                tracing::warn!(?grace, released = ids.len(), "shutdown grace over: releasing leases in flight");
                sqlx::query(RELEASE).bind(&ids).bind(&attempts).execute(&self.pool).await?;
                return Ok(rows.len() - ids.len());
            }
        };
        results.into_iter().collect::<Result<Vec<()>, Error>>()?;
        Ok(rows.len())
    }

    async fn settle_leased(&self, row: &InboxRow) -> Result<(), Error> {
        let sub = &self.lease_subs[&row.topic];
        let attempt = row.attempts;
        if attempt > sub.opts.retry.max_attempts {
            // The worker of the last allowed attempt died or lost its lease.
            let err = HandlerError::permanent(anyhow::anyhow!(
                "lease of attempt {} expired without completion (worker stopped or handler too slow); no attempts left",
                attempt - 1
            ));
            return self.fail_leased(row, attempt, Failure::new(&row.topic, row.message_id, attempt, &sub.opts.retry, &err)).await;
        }
        let started = Instant::now();
        // Never run past the lease: after it, another worker may hold the message.
        let budget = sub.opts.lease.saturating_sub(Duration::from_millis(50));
        let result = match tokio::time::timeout(budget, sub.handler.call(row, attempt)).await {
            Ok(r) => r,
            Err(_) => Err(HandlerError::retry(anyhow::anyhow!("handler did not finish within its lease of {:?}", sub.opts.lease))),
        };
        metrics::histogram!("conveyor_queue_handler_duration_seconds", "topic" => row.topic.clone())
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                let settled = sqlx::query(DONE).bind(row.message_id).bind(attempt).execute(&self.pool).await?;
                if settled.rows_affected() == 1 {
                    count_done(&row.topic, 1);
                } else {
                    stale(row, attempt);
                }
                Ok(())
            }
            Err(err) => {
                let failure = Failure::new(&row.topic, row.message_id, attempt, &sub.opts.retry, &err);
                self.fail_leased(row, attempt, failure).await
            }
        }
    }

    async fn fail_leased(&self, row: &InboxRow, attempt: i32, f: Failure) -> Result<(), Error> {
        let settled = sqlx::query(FAILED)
            .bind(row.message_id)
            .bind(attempt)
            .bind(f.dead)
            .bind(f.delay_ms as f64)
            .bind(&f.error)
            .execute(&self.pool)
            .await?;
        if settled.rows_affected() == 0 {
            stale(row, attempt);
        }
        Ok(())
    }
}

fn stale(row: &InboxRow, attempt: i32) {
    tracing::warn!(id = %row.message_id, topic = row.topic, attempt, "lease lost before completion: another attempt owns the message");
    metrics::counter!("conveyor_queue_stale_completions_total", "topic" => row.topic.clone()).increment(1);
}
