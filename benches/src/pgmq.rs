//! pgmq as the peer benchmarks drive it (`peers`, and `soak --systems pgmq`): a fresh
//! database with pgmq's SQL installed from the copy embedded in its Rust client (no
//! extension), one logged queue, `send` / `send_batch`, and the at-least-once consumer pgmq
//! documents: `read` with a visibility timeout, hand the messages to the code, then
//! `delete` (not `pop`, which deletes before the consumer has the message).

use std::time::Duration;

use ::pgmq::{Message, PGMQueueExt};
use anyhow::{Context, Result, bail};
use sqlx08::postgres::{PgConnection, PgPool, PgPoolOptions};

use crate::BenchEvent;

/// Seconds a read message stays invisible to other readers (far beyond any handling here).
pub const VISIBILITY_TIMEOUT_S: i32 = 30;
/// An empty queue is polled by the server (`read_with_poll`) every this often, for up to
/// `POLL_TIMEOUT` per call: pgmq's own long polling, with an interval kinder to latency than
/// its default (100 ms in SQL, 250 ms in the client).
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
pub const POLL_TIMEOUT: Duration = Duration::from_secs(1);

/// A database with pgmq installed and one queue.
pub struct Fresh {
    pub pool: PgPool,
    pub queue: PGMQueueExt,
    /// pgmq's version: the last migration its installer applied.
    pub version: String,
}

/// The table pgmq keeps `queue`'s messages in (schema `pgmq`): the one its `read` claims from.
pub fn table(queue: &str) -> String {
    format!("q_{queue}")
}

/// A fresh database `database` on the server of `admin_url` (dropped first if it exists),
/// pgmq installed, `queue` created, checkpointed.
pub async fn fresh(admin_url: &str, database: &str, queue: &str, max_connections: u32) -> Result<Fresh> {
    let admin = sqlx08::PgPool::connect(admin_url).await.context("connecting for pgmq")?;
    sqlx08::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).execute(&admin).await?;
    sqlx08::query(&format!("CREATE DATABASE {database}")).execute(&admin).await?;
    admin.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        // Like ours: no ping before every checkout (each task keeps its connection anyway).
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(60))
        .connect(&conveyor_devpg::with_database(admin_url, database))
        .await
        .with_context(|| format!("connecting to {database}"))?;
    let q = PGMQueueExt::new_with_pool(pool.clone()).await;
    q.install_sql_from_embedded().await.context("installing pgmq's embedded SQL")?;
    let version = q
        .installed_version()
        .await
        .context("reading pgmq's installed version")?
        .map(|v| v.to_string())
        .unwrap_or_else(|| "unknown".into());
    if !q.create(queue).await.context("creating the pgmq queue")? {
        bail!("pgmq queue {queue} already existed in a fresh database");
    }
    sqlx08::query("CHECKPOINT").execute(&pool).await?;
    Ok(Fresh { pool, queue: q, version })
}

/// One publishing transaction: `send` (one message) or `send_batch` (more), one statement.
pub async fn send(q: &PGMQueueExt, queue: &str, msgs: &[BenchEvent], conn: &mut PgConnection) -> Result<()> {
    match msgs {
        [] => {}
        [one] => {
            q.send_with_cxn(queue, one, &mut *conn).await?;
        }
        _ => {
            q.send_batch_with_cxn(queue, msgs, &mut *conn).await?;
        }
    }
    Ok(())
}

/// One consumer cycle: read up to `batch` (long-polling an empty queue for up to
/// [`POLL_TIMEOUT`]), hand them to `handle`, then delete them (one id or an array, in its
/// own transaction). Returns how many were read.
pub async fn consume(
    q: &PGMQueueExt,
    queue: &str,
    batch: usize,
    conn: &mut PgConnection,
    handle: impl FnOnce(&[Message<BenchEvent>]),
) -> Result<usize> {
    let msgs = q
        .read_batch_with_poll_with_cxn::<_, BenchEvent>(
            queue,
            VISIBILITY_TIMEOUT_S,
            batch as i32,
            Some(POLL_TIMEOUT),
            Some(POLL_INTERVAL),
            &mut *conn,
        )
        .await?
        .unwrap_or_default();
    if msgs.is_empty() {
        return Ok(0);
    }
    handle(&msgs);
    if let [one] = msgs.as_slice() {
        if !q.delete_with_cxn(queue, one.msg_id, &mut *conn).await? {
            bail!("pgmq message {} was gone before its delete", one.msg_id);
        }
    } else {
        let ids: Vec<i64> = msgs.iter().map(|m| m.msg_id).collect();
        let deleted = q.delete_batch_with_cxn(queue, &ids, &mut *conn).await?;
        if deleted != ids.len() {
            bail!("pgmq deleted {deleted} of {} messages read", ids.len());
        }
    }
    Ok(msgs.len())
}
