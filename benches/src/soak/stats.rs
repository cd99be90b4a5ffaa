//! What the sampler reads from PostgreSQL: the size of each queue table and its indexes,
//! live and dead tuples, autovacuum runs, index scans and the entries they read, WAL, and
//! what could hold vacuum back. Every query reads catalogs and statistics views only. None
//! counts rows: under a held xmin horizon a count (the engine's `depth`, say) walks every
//! dead index entry of the hold, which would load the server the run measures and add its
//! own reads to the claim indexes' counters. The exact depth is read once, after the drain.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::system::Watched;
use super::{IndexSize, TableStats};

/// The sampler's pool on one database (two connections: samples and probes).
pub async fn pool(url: &str) -> Result<PgPool> {
    PgPoolOptions::new().max_connections(2).test_before_acquire(false).connect(url).await.context("connecting the sampler")
}

const TABLE: &str = "\
SELECT pg_total_relation_size(s.relid), pg_table_size(s.relid), pg_indexes_size(s.relid),
       s.n_live_tup, s.n_dead_tup, s.autovacuum_count, s.autoanalyze_count,
       extract(epoch FROM now() - s.last_autovacuum)::float8,
       s.n_tup_ins, s.n_tup_upd, s.n_tup_del
FROM pg_stat_user_tables s
WHERE s.schemaname = $1 AND s.relname = $2";

const INDEXES: &str = "\
SELECT indexrelname::text, pg_relation_size(indexrelid), idx_scan, idx_tup_read
FROM pg_stat_user_indexes WHERE schemaname = $1 AND relname = $2 ORDER BY indexrelname";

type TableRow = (i64, i64, i64, i64, i64, i64, i64, Option<f64>, i64, i64, i64);

/// Size, tuples, autovacuum figures and index scans of a watched table, in `pool`'s database.
pub async fn table(pool: &PgPool, w: &Watched) -> Result<TableStats> {
    let (total, heap, indexes, live, dead, av, aa, last_av, ins, upd, del): TableRow = sqlx::query_as(TABLE)
        .bind(&w.schema)
        .bind(&w.table)
        .fetch_one(pool)
        .await
        .with_context(|| format!("reading the statistics of {}.{}", w.schema, w.table))?;
    let index_rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(INDEXES)
        .bind(&w.schema)
        .bind(&w.table)
        .fetch_all(pool)
        .await
        .with_context(|| format!("reading the indexes of {}.{}", w.schema, w.table))?;
    Ok(TableStats {
        name: w.label.clone(),
        total_bytes: total,
        table_bytes: heap,
        index_bytes: indexes,
        indexes: index_rows.into_iter().map(|(name, bytes, scans, entries_read)| IndexSize { name, bytes, scans, entries_read }).collect(),
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

/// The server and the settings that decide how vacuum keeps up, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// `SELECT version()`.
    pub version: String,
    /// Vacuum, WAL and checkpoint settings (`pg_settings`, with units).
    pub settings: BTreeMap<String, String>,
    /// Per-table storage options of the queue tables (`reloptions`: ours from its
    /// migration, pgmq's as it creates them), by schema-qualified name.
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
    Ok(ServerInfo { version, settings, table_options: BTreeMap::new() })
}

/// The storage options of a watched table (`schema.table`, options).
pub async fn table_options(pool: &PgPool, w: &Watched) -> Result<(String, Vec<String>)> {
    let opts: Option<Vec<String>> = sqlx::query_scalar(
        "SELECT c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
    )
    .bind(&w.schema)
    .bind(&w.table)
    .fetch_one(pool)
    .await
    .with_context(|| format!("reading the storage options of {}.{}", w.schema, w.table))?;
    Ok((format!("{}.{}", w.schema, w.table), opts.unwrap_or_default()))
}
