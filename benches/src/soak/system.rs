//! The systems a soak runs, and what a run needs of one once it is started: where its
//! queue tables are, which indexes its claims read, how to probe a claim, how producers
//! publish, and the tasks that consume.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::load::Sink;
use super::probe::Probe;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// The engine: outbox → relay → inbox → transaction-mode consumers → pruner.
    Ours,
    /// pgmq 1.x through its Rust client: send, read with a visibility timeout, delete.
    Pgmq,
}

impl System {
    /// Ours' path with `--delivery pull`.
    pub const PULLED_PATH: &'static str = "publish in a transaction into the outbox (database soak_pub) → transaction-mode consumers of \
         database soak_sub read it with cursors of their own (claim a partition's cursor, read, handle, move the cursor in one \
         transaction) → the publisher's pruner; no relay, no inbox";

    pub fn label(self) -> &'static str {
        match self {
            System::Ours => "ours",
            System::Pgmq => "pgmq",
        }
    }

    /// The path of a message, for the report.
    pub fn path(self) -> &'static str {
        match self {
            System::Ours => {
                "publish in a transaction into the outbox (database soak_pub) → relay → inbox (database soak_sub) → \
                 transaction-mode consumers (claim, handle and mark done in one transaction) → pruner"
            }
            System::Pgmq => {
                "`send` into one queue (database soak_pgmq, pgmq's SQL installed from its Rust client) → `read_with_poll` \
                 (visibility timeout 30 s) → handle → `delete`: at-least-once, no relay"
            }
        }
    }
}

/// A queue database: its name, URL and the sampler's pool on it.
pub struct Db {
    pub name: String,
    pub url: String,
    pub stats: PgPool,
}

/// A queue table the sampler reads.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Index into [`Started::dbs`].
    pub db: usize,
    pub schema: String,
    pub table: String,
    /// How samples name it (`outbox`, `inbox`, `q_soak`).
    pub label: String,
    /// Its rows wait for a relay (ours' outbox): they count as the outbox's backlog.
    pub upstream: bool,
}

/// An index a claim reads, for the report's claim cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimIndex {
    /// The table's label in the samples.
    pub table: String,
    pub index: String,
    /// Which statements read it.
    pub read_by: String,
}

/// A system started on fresh databases, consuming; producers not yet publishing.
pub struct Started {
    pub system: System,
    /// pgmq's installed version; for ours `pull` when it pulls (`--delivery pull`), `None`
    /// when it is pushed to.
    pub version: Option<String>,
    pub dbs: Vec<Db>,
    pub watched: Vec<Watched>,
    pub claim_indexes: Vec<ClaimIndex>,
    pub probes: Vec<Probe>,
    /// The consuming side (relay, consumers, pruner; pgmq's readers), stopped by `stop`.
    pub tasks: Vec<(String, JoinHandle<Result<()>>)>,
    pub stop: CancellationToken,
    /// One publisher per producer task.
    pub sinks: Vec<Box<dyn Sink>>,
    /// Pools to close at the end (the system's own, besides the sampler's).
    pub pools: Vec<PgPool>,
    pub pools08: Vec<sqlx08::PgPool>,
}

impl Started {
    /// The holding connections' targets: every queue database, reading its queue table.
    pub fn hold_targets(&self) -> Vec<super::hold::Target> {
        self.dbs
            .iter()
            .enumerate()
            .filter_map(|(i, db)| {
                let w = self.watched.iter().find(|w| w.db == i)?;
                Some(super::hold::Target { database: db.name.clone(), url: db.url.clone(), table: format!("{}.{}", w.schema, w.table) })
            })
            .collect()
    }

    /// What is left in the queue tables after the drain: `(outbox, inbox pending or running
    /// / pgmq's queue rows, dead letters)`. One exact count each, once.
    pub async fn leftover(&self) -> Result<(i64, i64, i64)> {
        match self.system {
            System::Ours => super::ours::leftover(&self.dbs[0].stats, &self.dbs[1].stats, self.version.as_deref() == Some("pull")).await,
            System::Pgmq => super::pgmq::leftover(&self.dbs[0].stats).await,
        }
    }

    /// Stops the consuming side and closes the system's pools (not the sampler's).
    pub async fn stop(&mut self) -> Result<()> {
        self.stop.cancel();
        for (name, task) in self.tasks.drain(..) {
            task.await.map_err(|e| anyhow::anyhow!("{name} panicked: {e}"))??;
        }
        for p in self.pools.drain(..) {
            p.close().await;
        }
        for p in self.pools08.drain(..) {
            p.close().await;
        }
        Ok(())
    }

    pub async fn close_stats(&self) {
        for db in &self.dbs {
            db.stats.close().await;
        }
    }
}
