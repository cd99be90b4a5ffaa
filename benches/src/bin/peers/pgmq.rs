//! pgmq through its Rust client (`pgmq::PGMQueueExt`), its SQL installed from the copy
//! embedded in the crate (no extension): a logged queue, `send` / `send_batch`, and the
//! at-least-once consumer pgmq documents: `read` with a visibility timeout, handle, then
//! `delete` (not `pop`, which deletes before the consumer has the message).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use conveyor_benches::BenchEvent;
use pgmq::PGMQueueExt;
use sqlx08::postgres::{PgPool, PgPoolOptions};

use crate::Config;
use crate::measure::{Probe, drive, stamp_of};

pub const QUEUE: &str = "peers_bench";
pub const DATABASE: &str = "peers_pgmq";
/// Seconds a read message stays invisible to other readers (far beyond any handling here).
pub const VISIBILITY_TIMEOUT_S: i32 = 30;
/// An empty queue is polled by the server (`read_with_poll`) every this often, for up to
/// `POLL_TIMEOUT` per call: pgmq's own long polling, with an interval kinder to latency than
/// its default (100 ms in SQL, 250 ms in the client).
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
pub const POLL_TIMEOUT: Duration = Duration::from_secs(1);

/// A fresh database with pgmq installed and the queue created, checkpointed; and pgmq's
/// version (the last migration its installer applied), for the report.
pub async fn prepare(cfg: &Config) -> Result<(PgPool, PGMQueueExt, String)> {
    let admin = sqlx08::PgPool::connect(&cfg.postgres_url).await.context("connecting for pgmq")?;
    sqlx08::query(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")).execute(&admin).await?;
    sqlx08::query(&format!("CREATE DATABASE {DATABASE}")).execute(&admin).await?;
    admin.close().await;
    let pool = PgPoolOptions::new()
        .max_connections((cfg.producers + cfg.consumers + 2) as u32)
        // Like ours: no ping before every checkout (each task keeps its connection anyway).
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(60))
        .connect(&conveyor_devpg::with_database(&cfg.postgres_url, DATABASE))
        .await
        .with_context(|| format!("connecting to {DATABASE}"))?;
    let q = PGMQueueExt::new_with_pool(pool.clone()).await;
    q.install_sql_from_embedded().await.context("installing pgmq's embedded SQL")?;
    let version = q
        .installed_version()
        .await
        .context("reading pgmq's installed version")?
        .map(|v| v.to_string())
        .unwrap_or_else(|| "unknown".into());
    if !q.create(QUEUE).await.context("creating the pgmq queue")? {
        bail!("pgmq queue {QUEUE} already existed in a fresh database");
    }
    sqlx08::query("CHECKPOINT").execute(&pool).await?;
    Ok((pool, q, version))
}

pub async fn run(cfg: &Config, batch: usize, probe: &Arc<Probe>, (pool, q): (PgPool, PGMQueueExt)) -> Result<()> {
    let mut tasks = Vec::new();
    for i in 0..cfg.consumers {
        let (pool, q, probe) = (pool.clone(), q.clone(), probe.clone());
        tasks.push((format!("pgmq consumer {i}"), tokio::spawn(async move { consume(pool, q, batch, probe).await })));
    }
    let n = cfg.producers;
    for i in 0..n {
        let (pool, q, probe) = (pool.clone(), q.clone(), probe.clone());
        tasks.push((format!("pgmq producer {i}"), tokio::spawn(async move { produce(pool, q, i, n, batch, probe).await })));
    }
    let result = drive(probe, tasks).await;
    pool.close().await;
    result
}

/// `send` (batch 1) or `send_batch`: one statement, one transaction, per batch.
async fn produce(pool: PgPool, q: PGMQueueExt, i: usize, n: usize, batch: usize, probe: Arc<Probe>) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let mut schedule = probe.schedule(i, n);
    while let Some(stamp) = probe.next_batch(batch, &mut schedule).await {
        if batch == 1 {
            q.send_with_cxn(QUEUE, &Probe::event(stamp), &mut *conn).await?;
        } else {
            let msgs: Vec<BenchEvent> = (0..batch).map(|_| Probe::event(stamp)).collect();
            q.send_batch_with_cxn(QUEUE, &msgs, &mut *conn).await?;
        }
        probe.published(batch);
    }
    Ok(())
}

/// Read up to `batch` (long-polling when empty), hand them to the code, delete them.
async fn consume(pool: PgPool, q: PGMQueueExt, batch: usize, probe: Arc<Probe>) -> Result<()> {
    let mut conn = pool.acquire().await?;
    while !probe.stop().is_cancelled() {
        let msgs = q
            .read_batch_with_poll_with_cxn::<_, BenchEvent>(
                QUEUE,
                VISIBILITY_TIMEOUT_S,
                batch as i32,
                Some(POLL_TIMEOUT),
                Some(POLL_INTERVAL),
                &mut *conn,
            )
            .await?
            .unwrap_or_default();
        if msgs.is_empty() {
            continue;
        }
        probe.consumed(msgs.iter().map(|m| stamp_of(&m.message)));
        if let [one] = msgs.as_slice() {
            if !q.delete_with_cxn(QUEUE, one.msg_id, &mut *conn).await? {
                bail!("pgmq message {} was gone before its delete", one.msg_id);
            }
        } else {
            let ids: Vec<i64> = msgs.iter().map(|m| m.msg_id).collect();
            let deleted = q.delete_batch_with_cxn(QUEUE, &ids, &mut *conn).await?;
            if deleted != ids.len() {
                bail!("pgmq deleted {deleted} of {} messages read", ids.len());
            }
        }
    }
    Ok(())
}
