//! Pull mode (see [`crate::pull`]): claim a partition's cursor, read the publisher's log
//! after it, run the handlers and move the cursor, in one transaction of the subscriber.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Consumer, Failure, record_claim, record_done};
use crate::conn::LoopConn;
use crate::message::InboxRow;
use crate::pull::{ADVANCE, CLAIM_CURSOR, CURSORS, Cursor, Cursors, ENSURE_CURSORS, Horizon, PARTS, PARTS_WITH_WORK, READ, READ_BELOW_HORIZON, REPORT, TO_INBOX};
use crate::trace::{self, Batch};
use crate::wake::{Idle, sleep_or_cancel};
use crate::Error;

/// How soon a loop looks again when rows wait behind a running transaction: first, and at
/// most (doubling in between).
const HELD_FIRST: Duration = Duration::from_millis(1);
const HELD_MAX: Duration = Duration::from_millis(10);

/// A publisher this consumer pulls from.
pub(crate) struct Source {
    /// The publisher's name: its cursors' `source` in this database.
    pub name: String,
    pub pool: PgPool,
    pub cursors: Arc<Cursors>,
    /// The publisher's oldest running transaction, and since when (reads pass it when it
    /// stays: see `crate::pull`).
    horizon: Horizon,
    /// Whether this database holds its cursors yet.
    ready: AtomicBool,
}

impl Source {
    pub fn new(name: String, pool: PgPool) -> Self {
        Source { name, pool, cursors: Arc::default(), horizon: Horizon::default(), ready: AtomicBool::new(false) }
    }
}

/// A row of the publisher's log as read, with its position and the transactions running
/// at the read's snapshot.
#[derive(sqlx::FromRow)]
struct LogRow {
    #[sqlx(flatten)]
    row: InboxRow,
    tx: i64,
    seq: i64,
    xip: Vec<i64>,
}

/// A cursor as claimed.
#[derive(sqlx::FromRow)]
struct Claimed {
    part: i16,
    #[sqlx(rename = "gen")]
    generation: i64,
    tx: i64,
    seq: i64,
    pending_tx: Vec<i64>,
    pending_seq: Vec<i64>,
}

impl Claimed {
    fn cursor(&self) -> Cursor {
        Cursor::new(self.tx, self.seq, &self.pending_tx, &self.pending_seq)
    }
}

/// What one pull loop keeps between cycles: its connections (the subscriber's, and a
/// read-only one to the publisher) and the partitions it knows to have work.
#[derive(Default)]
pub(super) struct PullLoop {
    conn: LoopConn,
    publisher: Option<PoolConnection<Postgres>>,
    todo: Vec<i16>,
    /// The last look found rows waiting behind a running transaction.
    held: bool,
}

impl Consumer {
    /// One pull cycle: a batch of one partition with work, handled and passed; `Ok(0)` when
    /// no partition has any (or all that have are claimed by other loops). `held` tells
    /// whether some partition had rows waiting behind a running transaction.
    pub(super) async fn pull_cycle(
        &self,
        src: &Source,
        conn: &mut PgConnection,
        publisher: &mut PgConnection,
        todo: &mut Vec<i16>,
        held: &mut bool,
    ) -> Result<usize, Error> {
        if !src.ready.load(Ordering::Relaxed) {
            sqlx::query(ENSURE_CURSORS).bind(&src.name).bind(PARTS as i32).execute(&mut *conn).await?;
            src.ready.store(true, Ordering::Relaxed);
        }
        loop {
            if todo.is_empty() {
                let a = src.cursors.arrays();
                let found: Vec<(i16, bool, i64)> = sqlx::query_as(PARTS_WITH_WORK)
                    .bind(&self.tx_topics)
                    .bind(a.0)
                    .bind(a.1)
                    .bind(a.2)
                    .bind(a.3)
                    .bind(a.4)
                    .bind(a.5)
                    .fetch_all(&mut *publisher)
                    .await?;
                // A running transaction that stays the oldest is passed (see `crate::pull`).
                let passing = found.first().is_some_and(|f| src.horizon.pass(f.2));
                *held = !passing && found.iter().any(|f| !f.1);
                *todo = found.into_iter().filter(|f| passing || f.1).map(|f| f.0).collect();
                if todo.is_empty() {
                    return Ok(0);
                }
            }
            let started = SystemTime::now();
            let mut tx = conn.begin().await?;
            // The first partition of the list nobody else is reading (oldest work first).
            let claimed: Option<Claimed> =
                sqlx::query_as(CLAIM_CURSOR).bind(&src.name).bind(&*todo).bind(src.cursors.generations(todo)).fetch_optional(&mut *tx).await?;
            let Some(claimed) = claimed else {
                // Every partition with work is being read by another loop.
                todo.clear();
                tx.rollback().await?;
                return Ok(0);
            };
            let (part, from, generation) = (claimed.part, claimed.cursor(), claimed.generation);
            todo.retain(|p| *p != part);
            src.cursors.saw(part, &from, generation);
            let passing = src.horizon.passing();
            let read: Vec<LogRow> = if from.pending.is_empty() && !passing {
                sqlx::query_as(READ_BELOW_HORIZON)
                    .bind(part)
                    .bind(from.tx)
                    .bind(from.seq)
                    .bind(self.topics().collect::<Vec<_>>())
                    .bind(self.opts.batch_size)
                    .fetch_all(&mut *publisher)
                    .await?
            } else {
                sqlx::query_as(READ)
                    .bind(part)
                    .bind(from.tx)
                    .bind(from.seq)
                    .bind(from.pending_tx())
                    .bind(from.pending_seq())
                    .bind(self.topics().collect::<Vec<_>>())
                    .bind(self.opts.batch_size)
                    .bind(passing)
                    .fetch_all(&mut *publisher)
                    .await?
            };
            let Some(xip) = read.first().map(|r| r.xip.clone()) else {
                tx.rollback().await?;
                continue;
            };
            let n = read.len();
            if n as i64 >= self.opts.batch_size {
                todo.push(part); // more there: come back after the others
            }
            let positions: Vec<(i64, i64)> = read.iter().map(|r| (r.tx, r.seq)).collect();
            let to = from.after(&positions, self.opts.batch_size as usize, &xip);
            // Transaction-mode messages are handled here; lease-mode ones go to the inbox,
            // where the lease loops claim them.
            let (rows, leased): (Vec<InboxRow>, Vec<InboxRow>) = read
                .into_iter()
                .map(|r| r.row)
                .filter(|r| self.tx_subs.contains_key(&r.topic) || self.lease_subs.contains_key(&r.topic))
                .partition(|r| self.tx_subs.contains_key(&r.topic));
            record_claim("pull", rows.len() + leased.len());
            let batch = Batch::start("receive", started, Some(&self.name), rows.iter().map(|r| r.topic.as_str()));
            rows.iter().for_each(|r| batch.link(&r.headers.0));
            batch.statement(&trace::PULL_READ, started, Some(rows.len()), None);
            let mut all_ok = self.lock_batch(&mut tx, &rows, &batch).await.is_ok();
            let refs: Vec<&InboxRow> = rows.iter().collect();
            for run in refs.chunk_by(|a, b| a.topic == b.topic) {
                if !all_ok || self.run_tx_handler(&mut tx, run).await.is_err() {
                    all_ok = false;
                    break;
                }
            }
            if !all_ok {
                batch.run(&trace::ROLLBACK, tx.rollback()).await?;
                return self.pull_isolated(src, conn, part, (generation, &from), &to, &rows, &leased, &batch).await.map(|_| n);
            }
            let leased: Vec<(&InboxRow, Option<&Failure>)> = leased.iter().map(|r| (r, None)).collect();
            batch.run(&trace::INBOX_DELIVER, to_inbox(&mut tx, &leased)).await?;
            batch.run(&trace::PULL_ADVANCE, advance(&mut tx, &src.name, part, generation, &to)).await?;
            batch.run(&trace::COMMIT, tx.commit()).await?;
            src.cursors.saw(part, &to, generation + 1);
            record_done(&rows);
            return Ok(n);
        }
    }

    /// After a failure: the same rows again, each under its own savepoint; the ones that
    /// fail go to the inbox, and the cursor moves past all of them.
    #[allow(clippy::too_many_arguments)]
    async fn pull_isolated(
        &self,
        src: &Source,
        conn: &mut PgConnection,
        part: i16,
        (generation, from): (i64, &Cursor),
        to: &Cursor,
        rows: &[InboxRow],
        leased: &[InboxRow],
        batch: &Batch,
    ) -> Result<usize, Error> {
        let mut tx = conn.begin().await?;
        let claimed: Option<Claimed> =
            sqlx::query_as(CLAIM_CURSOR).bind(&src.name).bind([part]).bind([generation]).fetch_optional(&mut *tx).await?;
        if claimed.map(|c| (c.generation, c.cursor())).as_ref() != Some(&(generation, from.clone())) {
            // Another loop took the partition meanwhile: these rows are its to handle.
            tx.rollback().await?;
            return Ok(0);
        }
        let locked = self.lock_batch_isolated(&mut tx, rows, batch).await?;
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        for row in rows {
            // A row read from the log has made no attempt yet: a failure is attempt 1.
            match self.handle_isolated(tx.begin().await?, row, locked, batch).await? {
                None => done.push(row),
                Some(failure) => failed.push((row, failure)),
            }
        }
        let to_move: Vec<(&InboxRow, Option<&Failure>)> = failed.iter().map(|(r, f)| (*r, Some(f))).chain(leased.iter().map(|r| (r, None))).collect();
        batch
            .run(&trace::INBOX_SETTLE, async {
                to_inbox(&mut tx, &to_move).await?;
                advance(&mut tx, &src.name, part, generation, to).await
            })
            .await?;
        batch.run(&trace::COMMIT, tx.commit()).await?;
        src.cursors.saw(part, to, generation + 1);
        self.retries.scheduled(failed.iter().map(|(_, f)| f));
        record_done(done.iter().copied());
        Ok(rows.len())
    }

    /// One pull loop of `src`, until `shutdown` (see [`Consumer::run`]).
    pub(super) async fn pull_loop(&self, src: &Source, wake: &Notify, idle: &Idle, shutdown: &CancellationToken) {
        let grace = self.opts.shutdown_grace;
        let mut pacer = self.pacer(wake, idle, shutdown, "pull consumer", false);
        let mut state = PullLoop::default();
        let mut held_for = Duration::ZERO;
        while !shutdown.is_cancelled() {
            self.pause(shutdown).await;
            if shutdown.is_cancelled() {
                break;
            }
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let cycle = async {
                let conn = state.conn.get(&self.pool).await?;
                if state.publisher.is_none() {
                    state.publisher = Some(src.pool.acquire().await?);
                }
                let publisher = state.publisher.as_mut().expect("filled above");
                tokio::select! {
                    r = self.pull_cycle(src, conn, publisher, &mut state.todo, &mut state.held) => r.map(Some),
                    _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => Ok(None),
                }
            }
            .await;
            let cycle = match cycle {
                Ok(None) => {
                    tracing::warn!(?grace, "shutdown grace over: rolling back the batch in flight");
                    return;
                }
                Ok(Some(n)) => Ok(n),
                Err(e) => {
                    state.conn.reset();
                    state.publisher = None;
                    state.todo.clear();
                    Err(e)
                }
            };
            // Rows waiting behind a running transaction: no notification says when it ends,
            // so look again soon (sooner than the poll), backing off.
            if matches!(cycle, Ok(0)) && std::mem::take(&mut state.held) {
                held_for = (held_for * 2).clamp(HELD_FIRST, HELD_MAX);
                if sleep_or_cancel(held_for, shutdown).await {
                    break;
                }
                continue;
            }
            held_for = Duration::ZERO;
            pacer.due = self.retries.next_due();
            pacer.after(cycle, notified).await;
        }
    }

    /// Reports this subscriber's committed cursors of `src` into the publisher's
    /// `conveyor.pull_positions` every `every`, when they moved, until `shutdown`.
    pub(super) async fn report_positions(&self, src: &Source, every: std::time::Duration, shutdown: &CancellationToken) {
        let mut last: Option<Vec<(i16, Cursor)>> = None;
        loop {
            if let Err(e) = self.report_once(src, &mut last).await {
                tracing::warn!(error = %e, source = src.name, "cannot report the pull positions; trying again");
            }
            if sleep_or_cancel(every, shutdown).await {
                return;
            }
        }
    }

    async fn report_once(&self, src: &Source, last: &mut Option<Vec<(i16, Cursor)>>) -> Result<(), Error> {
        let parts: Vec<i16> = (0..PARTS).collect();
        let rows: Vec<Claimed> =
            sqlx::query_as(CURSORS).bind(&src.name).bind(&parts).bind(src.cursors.generations(&parts)).fetch_all(&self.pool).await?;
        rows.iter().for_each(|c| src.cursors.saw(c.part, &c.cursor(), c.generation));
        let mut now: Vec<(i16, Cursor)> = rows.iter().map(|c| (c.part, c.cursor())).collect();
        now.sort_unstable_by_key(|c| c.0);
        if now.is_empty() || last.as_ref() == Some(&now) {
            return Ok(());
        }
        let topics: Vec<&str> = self.topics().collect();
        let pending: Vec<String> = now
            .iter()
            .map(|(_, c)| format!("{{{}}}", c.pending.iter().map(|p| p.0.to_string()).collect::<Vec<_>>().join(",")))
            .collect();
        sqlx::query(REPORT)
            .bind(&self.name)
            .bind(now.iter().map(|c| c.0).collect::<Vec<_>>())
            .bind(now.iter().map(|c| c.1.tx).collect::<Vec<_>>())
            .bind(now.iter().map(|c| c.1.seq).collect::<Vec<_>>())
            .bind(pending)
            .bind(topics)
            .execute(&src.pool)
            .await?;
        *last = Some(now);
        Ok(())
    }

    /// Reports the pull positions once now (see [`Consumer::run`], which does it every
    /// second): for tests, and before a subscriber stops for good.
    pub async fn report_pull_positions(&self) -> Result<(), Error> {
        for src in &self.sources {
            self.report_once(src, &mut None).await?;
        }
        Ok(())
    }
}

/// Puts `rows` into this database's inbox (see [`TO_INBOX`]): each with its failure, or, with
/// none, as a delivery of a lease-mode message.
async fn to_inbox(conn: &mut PgConnection, rows: &[(&InboxRow, Option<&Failure>)]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let headers: Vec<String> = rows.iter().map(|(r, _)| serde_json::to_string(&r.headers.0).unwrap_or_else(|_| "{}".to_owned())).collect();
    sqlx::query(TO_INBOX)
        .bind(rows.iter().map(|(r, _)| r.message_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|(r, _)| r.topic.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(r, _)| r.key.as_deref()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(r, _)| r.payload.get()).collect::<Vec<_>>())
        .bind(headers)
        .bind(rows.iter().map(|(r, _)| r.published_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, f)| f.is_some_and(|f| f.dead)).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, f)| f.map_or(0, |f| f.delay_ms)).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, f)| f.map_or("", |f| f.error.as_str())).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, f)| f.is_some_and(|f| f.counted)).collect::<Vec<_>>())
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves a partition's cursor, claimed at generation `generation`, to `to`.
async fn advance(conn: &mut PgConnection, source: &str, part: i16, generation: i64, to: &Cursor) -> Result<(), sqlx::Error> {
    sqlx::query(ADVANCE).bind(source).bind(part).bind(generation).bind(to.tx).bind(to.seq).bind(to.pending_tx()).bind(to.pending_seq()).execute(conn).await?;
    Ok(())
}
