//! pgmq through its Rust client (`pgmq::PGMQueueExt`), set up and driven as the benches
//! library does it (`conveyor_benches::pgmq`): a logged queue, `send` / `send_batch`, and
//! the at-least-once consumer pgmq documents (`read` with a visibility timeout, handle,
//! then `delete`).

use std::sync::Arc;

use anyhow::Result;
use conveyor_benches::pgmq as shared;
use pgmq::PGMQueueExt;
use sqlx08::postgres::PgPool;

pub use shared::{POLL_INTERVAL, VISIBILITY_TIMEOUT_S};

use crate::Config;
use crate::measure::{Probe, drive, stamp_of};

pub const QUEUE: &str = "peers_bench";
pub const DATABASE: &str = "peers_pgmq";

/// A fresh database with pgmq installed and the queue created, checkpointed; and pgmq's
/// version, for the report.
pub async fn prepare(cfg: &Config) -> Result<(PgPool, PGMQueueExt, String)> {
    let f = shared::fresh(&cfg.postgres_url, DATABASE, QUEUE, (cfg.producers + cfg.consumers + 2) as u32).await?;
    Ok((f.pool, f.queue, f.version))
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
        let msgs: Vec<_> = (0..batch).map(|_| Probe::event(stamp)).collect();
        shared::send(&q, QUEUE, &msgs, &mut conn).await?;
        probe.published(batch);
    }
    Ok(())
}

/// Read up to `batch` (long-polling when empty), hand them to the code, delete them.
async fn consume(pool: PgPool, q: PGMQueueExt, batch: usize, probe: Arc<Probe>) -> Result<()> {
    let mut conn = pool.acquire().await?;
    while !probe.stop().is_cancelled() {
        shared::consume(&q, QUEUE, batch, &mut conn, |msgs| probe.consumed(msgs.iter().map(|m| stamp_of(&m.message)))).await?;
    }
    Ok(())
}
