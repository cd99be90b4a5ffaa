//! Claim probes: whether each claim walks more index entries as a hold goes on. At every
//! sample each system's own claim statement runs once more, as its consumers send it, in a
//! transaction that is then rolled back (what it claimed is handed back at once), and the
//! index entries it read are counted from that transaction's own statistics
//! (`pg_stat_get_xact_tuples_returned` of each index: what this backend read and has not
//! reported yet, so nothing else the server does is counted).
//!
//! - ours, inbox: `conveyor_queue::sql::TX_CLAIM` with the consumers' batch and a claim
//!   floor where the engine keeps its own (the newest position it claimed, less its margin,
//!   `conveyor_queue::sql::CLAIM_FLOOR_MARGIN`; the probe takes now less that margin). The engine's sweeps below the floor (a read
//!   beside the claim loops, bounded, and once a minute from the index's start) are not
//!   probed: the index counters of every sample show them (see `stats`).
//! - ours, outbox: the relay's claim (`RELAY_CLAIM`) with its batch and floor, likewise.
//! - ours, pulled (`--delivery pull`): the consumers' read of one partition of the
//!   publisher's log (`conveyor_queue::pull::READ`), from the position the subscriber last
//!   reported for it.
//! - pgmq: `pgmq.read` of the consumers' batch (it has no floor: every read starts at the
//!   smallest msg_id).
//!
//! A probe that claims rows locks them for the few milliseconds it takes; the engine's
//! claimers skip them meanwhile and find them again after the rollback (they are newer than
//! the engine's floor).

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use sqlx::{PgConnection, PgPool};

use super::ProbeReading;

/// The engine's claim-floor margin (`conveyor_queue`'s `floor::MARGIN`).
const FLOOR_MARGIN: Duration = conveyor_queue::sql::CLAIM_FLOOR_MARGIN;

/// pgmq's visibility timeout for the probe's read (rolled back anyway).
const PGMQ_VT_S: i32 = 30;

#[derive(Debug, Clone)]
pub enum ProbeKind {
    InboxClaim { topics: Vec<String>, batch: i64 },
    RelayClaim { topics: Vec<String>, batch: i64 },
    /// A pull consumer's read of partition 0 of the publisher's log, from the cursor the
    /// subscriber last reported there (at most a second behind its real one).
    PullRead { topics: Vec<String>, batch: i64 },
    PgmqRead { queue: String, batch: i64 },
}

/// A claim statement probed at every sample, on the table it claims from.
#[derive(Debug, Clone)]
pub struct Probe {
    pub name: String,
    /// Index into the system's databases.
    pub db: usize,
    pub schema: String,
    pub table: String,
    pub kind: ProbeKind,
}

/// Runs `p` once on a connection of `pool`, in a transaction that is rolled back.
pub async fn run(pool: &PgPool, p: &Probe) -> Result<ProbeReading> {
    let mut tx = pool.begin().await?;
    let before = entries_read(&mut tx, p).await?;
    let started = Instant::now();
    let floor_at = SystemTime::now() - FLOOR_MARGIN;
    let rows = match &p.kind {
        ProbeKind::InboxClaim { topics, batch } => {
            let floor = sqlx::types::chrono::DateTime::<sqlx::types::chrono::Utc>::from(floor_at);
            sqlx::query(conveyor_queue::sql::TX_CLAIM).bind(topics).bind(batch).bind(Some(floor)).fetch_all(&mut *tx).await
        }
        ProbeKind::RelayClaim { topics, batch } => {
            sqlx::query(conveyor_queue::sql::RELAY_CLAIM).bind(topics).bind(batch).bind(conveyor_queue::sql::v7_floor(floor_at)).fetch_all(&mut *tx).await
        }
        ProbeKind::PullRead { topics, batch } => {
            let (tx_at, seq, pending): (i64, i64, Vec<i64>) = sqlx::query_as(
                "SELECT coalesce(max(tx::text::bigint), 0), coalesce(max(seq), 0), coalesce(max(pending_tx), '{}')
                 FROM conveyor.pull_positions WHERE part = 0",
            )
            .fetch_one(&mut *tx)
            .await?;
            let from_start = vec![0i64; pending.len()];
            sqlx::query(conveyor_queue::pull::READ)
                .bind(0i16)
                .bind(tx_at)
                .bind(seq)
                .bind(pending)
                .bind(from_start)
                .bind(topics)
                .bind(batch)
                .bind(true) // as a consumer reads while a long transaction holds the horizon
                .fetch_all(&mut *tx)
                .await
        }
        ProbeKind::PgmqRead { queue, batch } => {
            sqlx::query("SELECT msg_id FROM pgmq.read($1, $2, $3)").bind(queue).bind(PGMQ_VT_S).bind(*batch as i32).fetch_all(&mut *tx).await
        }
    }
    .with_context(|| format!("probing the {}", p.name))?
    .len();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let after = entries_read(&mut tx, p).await?;
    tx.rollback().await?;
    Ok(ProbeReading { name: p.name.clone(), entries_read: after - before, rows: rows as i64, ms })
}

/// Index entries this transaction has read on every index of the probe's table.
async fn entries_read(conn: &mut PgConnection, p: &Probe) -> Result<i64> {
    sqlx::query_scalar(
        "SELECT coalesce(sum(pg_stat_get_xact_tuples_returned(i.indexrelid)), 0)::int8
         FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = $2",
    )
    .bind(&p.schema)
    .bind(&p.table)
    .fetch_one(conn)
    .await
    .context("reading the transaction's index statistics")
}
