//! pgmq under the same soak, set up and driven as the peers benchmark does it
//! (`conveyor_benches::pgmq`): producers `send` into one queue of database `soak_pgmq`;
//! consumer tasks `read_with_poll` a batch, handle it, and `delete` it. No relay, no
//! pruner: pgmq deletes a message once it is handled.

use std::sync::Arc;

use anyhow::{Context, Result};
use conveyor_benches::{BenchEvent, pgmq as shared};
use futures::FutureExt;
use futures::future::BoxFuture;
use ::pgmq::PGMQueueExt;
use sqlx::PgPool;
use sqlx08::pool::PoolConnection;
use tokio_util::sync::CancellationToken;

use super::load::{Load, Sink};
use super::probe::{Probe, ProbeKind};
use super::system::{ClaimIndex, Db, Started, System, Watched};
use super::{Settings, stats};

pub const DATABASE: &str = "soak_pgmq";
pub const QUEUE: &str = "soak";

/// A fresh database with pgmq, consumer tasks reading it, one sink per producer.
pub async fn start(admin_url: &str, cfg: &Settings, load: &Arc<Load>) -> Result<Started> {
    let f = shared::fresh(admin_url, DATABASE, QUEUE, (cfg.producers + cfg.consumers + 2) as u32)
        .await
        .context("creating database soak_pgmq with pgmq")?;
    let url = conveyor_devpg::with_database(admin_url, DATABASE);
    let dbs = vec![Db { name: DATABASE.into(), stats: stats::pool(&url).await?, url }];
    let stop = CancellationToken::new();
    let tasks = (0..cfg.consumers)
        .map(|i| {
            let (pool, q, load, stop) = (f.pool.clone(), f.queue.clone(), load.clone(), stop.clone());
            let batch = cfg.consumer_batch as usize;
            (format!("pgmq consumer {i}"), tokio::spawn(async move { consume(pool, q, batch, load, stop).await }))
        })
        .collect();
    let table = shared::table(QUEUE);
    Ok(Started {
        system: System::Pgmq,
        version: Some(f.version),
        dbs,
        watched: vec![Watched { db: 0, schema: "pgmq".into(), table: table.clone(), label: table.clone(), upstream: false }],
        claim_indexes: vec![
            ClaimIndex {
                table: table.clone(),
                index: format!("{table}_pkey"),
                read_by: "`read` (in msg_id order, filtering on vt) and `delete` (by msg_id)".into(),
            },
            ClaimIndex { table: table.clone(), index: format!("{table}_vt_idx"), read_by: "what the planner chooses it for".into() },
        ],
        probes: vec![Probe {
            name: "pgmq read".into(),
            db: 0,
            schema: "pgmq".into(),
            table,
            kind: ProbeKind::PgmqRead { queue: QUEUE.into(), batch: cfg.consumer_batch },
        }],
        tasks,
        stop,
        sinks: (0..cfg.producers).map(|_| Box::new(QueueSink { pool: f.pool.clone(), queue: f.queue.clone(), conn: None }) as Box<dyn Sink>).collect(),
        pools: Vec::new(),
        pools08: vec![f.pool],
    })
}

/// Reads, handles, deletes, on a connection of its own, until `stop`.
async fn consume(pool: sqlx08::PgPool, q: PGMQueueExt, batch: usize, load: Arc<Load>, stop: CancellationToken) -> Result<()> {
    let mut conn = pool.acquire().await?;
    while !stop.is_cancelled() {
        shared::consume(&q, QUEUE, batch, &mut conn, |msgs| {
            for m in msgs {
                load.handled_one(m.message.number().map(|n| n as u64));
            }
        })
        .await?;
    }
    Ok(())
}

/// `send` / `send_batch`; each message carries the producer's clock as its number
/// ([`BenchEvent::number`]), as the peers benchmark stamps them.
struct QueueSink {
    pool: sqlx08::PgPool,
    queue: PGMQueueExt,
    conn: Option<PoolConnection<sqlx08::Postgres>>,
}

impl Sink for QueueSink {
    fn publish(&mut self, _seq: i64, batch: usize, sent_us: u64) -> BoxFuture<'_, Result<()>> {
        async move {
            let msgs: Vec<BenchEvent> = (0..batch).map(|_| BenchEvent::sample(sent_us as i64)).collect();
            if self.conn.is_none() {
                self.conn = Some(self.pool.acquire().await?);
            }
            shared::send(&self.queue, QUEUE, &msgs, self.conn.as_mut().expect("filled above")).await
        }
        .boxed()
    }

    fn reset(&mut self) {
        self.conn = None;
    }
}

/// After the drain: the rows left in the queue's table (read, or not yet).
pub async fn leftover(pool: &PgPool) -> Result<(i64, i64, i64)> {
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM pgmq.{}", shared::table(QUEUE))))
        .fetch_one(pool)
        .await
        .context("counting pgmq's queue")?;
    Ok((0, n, 0))
}
