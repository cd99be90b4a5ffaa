//! What the sampler reads from PostgreSQL: the size of each queue table and its indexes,
//! live and dead tuples, autovacuum runs, the depth the engine's admin API reports, WAL,
//! and what could hold vacuum back. Every query reads catalogs and statistics views, or
//! what `conveyor_queue::depth` reads, so sampling costs the server little.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::{IndexSize, TableStats};

const TABLE: &str = "\
SELECT pg_total_relation_size(s.relid), pg_table_size(s.relid), pg_indexes_size(s.relid),
       s.n_live_tup, s.n_dead_tup, s.autovacuum_count, s.autoanalyze_count,
       extract(epoch FROM now() - s.last_autovacuum)::float8,
       s.n_tup_ins, s.n_tup_upd, s.n_tup_del
FROM pg_stat_user_tables s
WHERE s.schemaname = 'conveyor' AND s.relname = $1";

const INDEXES: &str = "\
SELECT indexrelname::text, pg_relation_size(indexrelid)
FROM pg_stat_user_indexes WHERE schemaname = 'conveyor' AND relname = $1 ORDER BY indexrelname";

type TableRow = (i64, i64, i64, i64, i64, i64, i64, Option<f64>, i64, i64, i64);

/// Size, tuples and autovacuum figures of `conveyor.{table}` in `pool`'s database.
pub async fn table(pool: &PgPool, table: &str) -> Result<TableStats> {
    let (total, heap, indexes, live, dead, av, aa, last_av, ins, upd, del): TableRow = sqlx::query_as(TABLE)
        .bind(table)
        .fetch_one(pool)
        .await
        .with_context(|| format!("reading the statistics of conveyor.{table}"))?;
    let index_rows: Vec<(String, i64)> = sqlx::query_as(INDEXES)
        .bind(table)
        .fetch_all(pool)
        .await
        .with_context(|| format!("reading the index sizes of conveyor.{table}"))?;
    Ok(TableStats {
        name: table.to_owned(),
        total_bytes: total,
        table_bytes: heap,
        index_bytes: indexes,
        indexes: index_rows.into_iter().map(|(name, bytes)| IndexSize { name, bytes }).collect(),
        live_tup: live,
        dead_tup: dead,
        autovacuum_count: av,
        autoanalyze_count: aa,
        last_autovacuum_ago_s: last_av,
        tup_ins: ins,
        tup_upd: upd,
        tup_del: del,
    })
}

/// The server's WAL position in bytes (differences are WAL written, cluster-wide).
pub async fn wal_position(pool: &PgPool) -> Result<f64> {
    sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8")
        .fetch_one(pool)
        .await
        .context("reading the WAL position")
}

/// `(autovacuum workers running, age in seconds of the oldest open transaction)`.
pub async fn activity(pool: &PgPool) -> Result<(i64, Option<f64>)> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE backend_type = 'autovacuum worker'),
                extract(epoch FROM now() - min(xact_start) FILTER (WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()))::float8
         FROM pg_stat_activity",
    )
    .fetch_one(pool)
    .await
    .context("reading pg_stat_activity")
}

/// Waiting messages as the engine's admin API counts them: `(outbox, inbox pending or
/// running, inbox dead, age of the oldest waiting message in seconds)`.
pub async fn depth(publisher: &PgPool, subscriber: &PgPool) -> Result<(i64, i64, i64, Option<f64>)> {
    let (mut outbox, mut pending, mut dead) = (0, 0, 0);
    for d in conveyor_queue::depth(publisher).await.context("depth of the publisher")? {
        if d.table == conveyor_queue::QueueTable::Outbox {
            outbox += d.count;
        }
    }
    for d in conveyor_queue::depth(subscriber).await.context("depth of the subscriber")? {
        match (d.table, d.state.as_str()) {
            (conveyor_queue::QueueTable::Inbox, "dead") => dead += d.count,
            (conveyor_queue::QueueTable::Inbox, _) => pending += d.count,
            _ => {}
        }
    }
    let ages = [
        conveyor_queue::oldest_pending_age(publisher).await.context("oldest outbox message")?,
        conveyor_queue::oldest_pending_age(subscriber).await.context("oldest inbox message")?,
    ];
    let oldest = ages.into_iter().flatten().max().map(|d| d.as_secs_f64());
    Ok((outbox, pending, dead, oldest))
}

/// The server and the settings that decide how vacuum keeps up, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// `SELECT version()`.
    pub version: String,
    /// Vacuum, WAL and checkpoint settings (`pg_settings`, with units).
    pub settings: BTreeMap<String, String>,
    /// Per-table storage options of the queue tables (`reloptions`, from the migration).
    pub table_options: BTreeMap<String, Vec<String>>,
}

impl ServerInfo {
    /// autovacuum_naptime in seconds, as recorded ("60 (s)").
    pub fn naptime_s(&self) -> Option<f64> {
        let v = self.settings.get("autovacuum_naptime")?;
        let value: f64 = v.split_whitespace().next()?.parse().ok()?;
        Some(match v.split_once('(').map(|(_, u)| u.trim_end_matches(')')) {
            Some("ms") => value / 1000.0,
            Some("min") => value * 60.0,
            _ => value,
        })
    }
}

const SETTINGS: &[&str] = &[
    "autovacuum",
    "autovacuum_max_workers",
    "autovacuum_naptime",
    "autovacuum_vacuum_cost_delay",
    "autovacuum_vacuum_cost_limit",
    "autovacuum_vacuum_scale_factor",
    "autovacuum_vacuum_threshold",
    "vacuum_cost_limit",
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "synchronous_commit",
    "fsync",
    "full_page_writes",
];

pub async fn server_info(pool: &PgPool) -> Result<ServerInfo> {
    let version: String = sqlx::query_scalar("SELECT version()").fetch_one(pool).await.context("SELECT version()")?;
    let names: Vec<String> = SETTINGS.iter().map(|s| s.to_string()).collect();
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1) ORDER BY name")
            .bind(&names)
            .fetch_all(pool)
            .await
            .context("reading pg_settings")?;
    let settings = rows
        .into_iter()
        .map(|(name, setting, unit)| {
            let value = match unit {
                Some(u) if !u.is_empty() => format!("{setting} ({u})"),
                _ => setting,
            };
            (name, value)
        })
        .collect();
    let opts: Vec<(String, Option<Vec<String>>)> = sqlx::query_as(
        "SELECT c.relname::text, c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'conveyor' AND c.relkind = 'r' AND c.relname IN ('outbox', 'inbox') ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .context("reading the queue tables' storage options")?;
    Ok(ServerInfo {
        version,
        settings,
        table_options: opts.into_iter().map(|(t, o)| (t, o.unwrap_or_default())).collect(),
    })
}
