//! Runs the replay (see `replay`) with pgbench in a scratch database, one variant at a
//! time, and counts what it achieved in the database itself.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::cpu::{CpuUsage, Sampler};
use super::replay::{self, ScriptOptions};
use super::{LABELS_SQL, parse_labels, query_u64s};
use crate::bench::{pgbench, psql};
use crate::proc::Signals;
use crate::workspace_root;

/// The scratch database of the replay.
pub const DATABASE: &str = "saga_ceiling";

/// One variant's result.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingResult {
    pub variant: String,
    /// Orders placed per script run (one transaction each), and messages per consumer claim.
    pub batch: usize,
    /// Outbox rows per relay transaction.
    pub relay_batch: usize,
    pub clients: u32,
    pub seconds: u32,
    /// Sagas complete (notification recorded) at the end.
    pub sagas: u64,
    /// Sagas completed per second from a quarter of `seconds` into the run (the pipeline
    /// fills) until pgbench exited, from the notifications' timestamps.
    pub sagas_per_sec: f64,
    /// Orders placed and confirmed.
    pub placed: u64,
    pub confirmed: u64,
    /// Orders confirmed per second over the same window.
    pub confirmed_per_sec: f64,
    /// Messages not yet handled anywhere when pgbench stopped.
    pub left_in_queues: u64,
    /// Events the projector had not applied to the order views when pgbench stopped.
    pub unprojected: u64,
    /// pgbench's own figures: script runs per second, each `batch` sagas.
    pub pgbench_tps: f64,
    pub pgbench_latency_ms: Option<f64>,
    /// Deadlocks PostgreSQL detected in the scratch database during the run (the run
    /// goes on: pgbench counts the script run failed, its claims go back to the queues).
    pub deadlocks: u64,
    /// Transactions (committed and rolled back, read-only ones included) per saga
    /// completed, from pg_stat_database.
    pub transactions_per_saga: Option<f64>,
    pub cpu: CpuUsage,
    /// CPU per saga: PostgreSQL's, and the whole machine's (pgbench included), ms.
    pub postgres_cpu_ms_per_saga: Option<f64>,
    pub machine_cpu_ms_per_saga: Option<f64>,
    /// The script, as run.
    pub script: PathBuf,
}

pub struct CeilingOptions {
    pub seconds: u32,
    pub clients: u32,
    pub products: u32,
    pub customers: u32,
}

/// `migrations/*.sql` of a directory, sorted, as (relative path, text).
fn migrations(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
            Ok((f.strip_prefix(workspace_root()).unwrap_or(&f).display().to_string(), text))
        })
        .collect()
}

/// Creates the scratch database, runs both variants (one message per transaction, then
/// batches of 50), drops the database again.
pub async fn measure(
    bin_dir: &Path,
    admin_url: &str,
    out_dir: &Path,
    opts: &CeilingOptions,
    sampler: &Sampler,
    signals: &mut Signals,
) -> Result<Result<Vec<CeilingResult>, i32>> {
    step!(psql(bin_dir, admin_url, &format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"), signals).await);
    let url = conveyor_devpg::create_database(admin_url, DATABASE).await?;
    let root = workspace_root();
    let mut service_migrations = Vec::new();
    for svc in ["order", "stock", "payment", "notification"] {
        service_migrations.extend(migrations(&root.join("services").join(svc).join("migrations"))?);
    }
    let queue: String = migrations(&root.join("crates/queue/migrations"))?.into_iter().map(|(_, t)| t).collect::<Vec<_>>().join("\n");
    let setup = replay::setup_sql(&service_migrations, &queue, opts.products, opts.customers);
    let setup_path = out_dir.join("saga-ceiling-setup.sql");
    std::fs::write(&setup_path, &setup).with_context(|| format!("writing {}", setup_path.display()))?;
    step!(psql(bin_dir, &url, &setup, signals).await);
    let projector = out_dir.join("saga-ceiling-projector.sql");
    std::fs::write(&projector, replay::projector_script()).with_context(|| format!("writing {}", projector.display()))?;

    let mut results = Vec::new();
    for (variant, batch, relay_batch) in [("one message per transaction", 1, 1), ("consumers claiming 50 at a time", 50, 100)] {
        let script = replay::script(&ScriptOptions { batch, relay_batch, products: opts.products, customers: opts.customers });
        let path = out_dir.join(format!("saga-ceiling-b{batch}.sql"));
        std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
        step!(psql(bin_dir, &url, replay::RESET_SQL, signals).await);
        step!(psql(bin_dir, &url, &format!("VACUUM ANALYZE {}", replay::TABLES.join(", ")), signals).await);
        step!(psql(bin_dir, &url, "CHECKPOINT", signals).await);
        let stats_sql = format!("SELECT deadlocks, xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{DATABASE}'");
        let before = query_u64s(&step!(psql(bin_dir, &url, &stats_sql, signals).await))?;
        let a = sampler.snapshot();
        let started = super::ramp::unix_now();
        // The order worker's projector runs beside the saga's clients, in a client of its own,
        // until they are done (the script runs under way at -T finish); then it is killed.
        let mut projector_signals = signals.clone();
        let projecting = pgbench(bin_dir, &url, &projector, "saga_projector", 1, 1, opts.seconds + 3600, &mut projector_signals);
        let r = tokio::select! {
            r = pgbench(bin_dir, &url, &path, "saga_sql", batch as u32, opts.clients, opts.seconds, signals) => step!(r),
            p = projecting => {
                step!(p);
                anyhow::bail!("the projector's pgbench ended before the saga's; see {}", projector.display());
            }
        };
        let b = sampler.snapshot();
        // pgbench lets the script runs under way at -T finish: the run ends when it exits.
        let finished = super::ramp::unix_now();
        let labels = parse_labels(&step!(psql(bin_dir, &url, LABELS_SQL, signals).await));
        let counts = query_u64s(&step!(psql(bin_dir, &url, replay::COUNTS_SQL, signals).await))?;
        let [placed, confirmed, sagas, left, unprojected] = counts[..] else { anyhow::bail!("unexpected counts from the replay: {counts:?}") };
        anyhow::ensure!(sagas > 0, "the saga replay ({variant}) completed no saga in {} s; see {}", opts.seconds, path.display());
        // pgbench's connections are gone, so their statistics are in.
        let after = query_u64s(&step!(psql(bin_dir, &url, &stats_sql, signals).await))?;
        // Handled messages leave the inboxes: after the measured run, one more second with
        // triggers keeping a copy of a message per inbox, to check what the replay sends.
        step!(psql(bin_dir, &url, replay::CAPTURE_SQL, signals).await);
        step!(pgbench(bin_dir, &url, &path, "saga_sql_samples", batch as u32, 1, 1, signals).await);
        let samples = step!(psql(bin_dir, &url, &replay::samples_sql(), signals).await);
        step!(psql(bin_dir, &url, replay::UNCAPTURE_SQL, signals).await);
        replay::check_samples(&samples)?;
        anyhow::ensure!(before.len() == 2 && after.len() == 2, "unexpected statistics of {DATABASE}: {before:?} {after:?}");
        let deadlocks = after[0].saturating_sub(before[0]);
        // The psql sessions of the harness in between count a few; negligible.
        let transactions_per_saga = Some(after[1].saturating_sub(before[1]) as f64 / sagas as f64);
        let cpu = sampler.usage(&a, &b, &labels);
        let secs = f64::from(opts.seconds);
        let (from, to) = (started + secs / 4.0, finished.max(started + secs));
        let rates = query_u64s(&step!(psql(bin_dir, &url, &replay::rates_sql(from, to), signals).await))?;
        let window = (to - from).max(1e-3);
        // CPU over the whole run, per saga completed in it.
        let per_saga = |cores: f64| cores * cpu.seconds / sagas as f64 * 1000.0;
        let res = CeilingResult {
            variant: variant.to_owned(),
            batch,
            relay_batch,
            clients: opts.clients,
            seconds: opts.seconds,
            sagas,
            sagas_per_sec: rates[0] as f64 / window,
            placed,
            confirmed,
            confirmed_per_sec: rates[1] as f64 / window,
            left_in_queues: left,
            unprojected,
            pgbench_tps: r.tps,
            pgbench_latency_ms: r.latency_avg_ms,
            deadlocks,
            transactions_per_saga,
            postgres_cpu_ms_per_saga: cpu.postgres.map(per_saga),
            machine_cpu_ms_per_saga: cpu.machine_busy.map(per_saga),
            cpu,
            script: path,
        };
        println!(
            "   → {}: {:.0} sagas/s complete ({:.0} confirmed/s), {} messages left in the queues, {} events not projected, {} deadlocks; CPU: postgres {}, machine {}",
            res.variant,
            res.sagas_per_sec,
            res.confirmed_per_sec,
            res.left_in_queues,
            res.unprojected,
            res.deadlocks,
            res.cpu.postgres.map_or("n/a".into(), |c| format!("{c:.2} cores")),
            res.cpu.machine_busy.map_or("n/a".into(), |c| format!("{c:.2} cores")),
        );
        results.push(res);
    }
    step!(psql(bin_dir, admin_url, &format!("DROP DATABASE {DATABASE} WITH (FORCE)"), signals).await);
    step!(psql(bin_dir, admin_url, "CHECKPOINT", signals).await);
    Ok(Ok(results))
}
