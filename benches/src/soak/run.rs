//! One system's run: it is started on fresh databases, producers offer the load, a sample is
//! taken at every tick (the hold is opened and closed on its ticks), then the load stops,
//! the backlog drains, and the databases are dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use super::hold::{self, Hold};
use super::load::{self, Load, Pace, Totals};
use super::report::{Consistency, Run};
use super::system::{Started, System};
use super::{Sample, Settings, mb, probe, stats, thousands};

pub struct Options {
    pub admin_url: String,
    pub poll_interval: Duration,
    pub drain_timeout: Duration,
    /// The server's autovacuum_naptime, for the summary.
    pub naptime_s: f64,
}

/// Runs `system` for the whole schedule (or until `signal`, whose number is returned).
/// Also returns the storage options of its queue tables.
pub async fn soak(
    system: System,
    cfg: &Settings,
    opts: &Options,
    mut signal: Pin<&mut impl Future<Output = i32>>,
) -> Result<(Run, Option<i32>, Vec<(String, Vec<String>)>)> {
    let load = Load::new(Instant::now(), cfg.max_pending);
    let mut started = match system {
        System::Ours => super::ours::start(&opts.admin_url, cfg, opts.poll_interval, &load).await?,
        System::Pgmq => super::pgmq::start(&opts.admin_url, cfg, &load).await?,
    };
    let mut options = Vec::new();
    for w in &started.watched {
        options.push(stats::table_options(&started.dbs[w.db].stats, w).await?);
    }
    let mut hold = match cfg.hold {
        Some(_) => Some(Hold::connect(started.hold_targets()).await?),
        None => None,
    };

    let start = Instant::now();
    let load_stop = CancellationToken::new();
    let pace = match cfg.rate {
        None => Pace::FullSpeed,
        Some(rate) => Pace::Every(Duration::from_secs_f64(cfg.producers as f64 * cfg.publish_batch as f64 / rate)),
    };
    let producers: Vec<_> = std::mem::take(&mut started.sinks)
        .into_iter()
        .enumerate()
        .map(|(id, sink)| tokio::spawn(load::producer(load.clone(), sink, id, cfg.publish_batch, pace, load_stop.clone())))
        .collect();

    let ticks = hold::ticks(cfg.duration_s, cfg.sample_interval_s, cfg.hold.as_ref());
    let at = |edge: Option<f64>, tick: f64| edge.is_some_and(|e| (e - tick).abs() < 0.01);
    let mut sampler = Sampler { start, producers: cfg.producers, prev_at: start, prev: load.totals(), prev_wal: stats::wal_position(&started.dbs[0].stats).await? };
    let (mut samples, mut phase_latency, mut interrupted) = (Vec::new(), Vec::new(), None);
    for (k, &tick) in ticks.iter().enumerate() {
        tokio::select! {
            _ = tokio::time::sleep_until((start + Duration::from_secs_f64(tick)).into()) => {}
            sig = &mut signal => { interrupted = Some(sig); break; }
        }
        let now = Instant::now();
        let mut s = sampler.take(now, &load, &started).await?;
        if let Some(h) = hold.as_ref().filter(|h| h.is_open()) {
            s.held = true;
            s.hold_xmin_age = Some(h.check(&started.dbs[0].stats).await?);
        }
        print_progress(system, &s, cfg.duration_s);
        samples.push(s);
        if let (Some(h), Some(plan)) = (hold.as_mut(), cfg.hold) {
            if k == 0 {
                load.take_phase(now); // the warm-up window belongs to no phase
            }
            if at(Some(plan.start_s), tick) {
                phase_latency.push(load.take_phase(now));
                h.begin().await?;
                let age = h.check(&started.dbs[0].stats).await?;
                println!("[{:>6.0}s] {}: xmin horizon held (REPEATABLE READ snapshot in every queue database; backend_xmin set, age {age})", tick, system.label());
            } else if at(Some(plan.end_s), tick) {
                phase_latency.push(load.take_phase(now));
                h.end().await?;
                println!("[{:>6.0}s] {}: hold ended (committed)", tick, system.label());
            }
            if k + 1 == ticks.len() {
                phase_latency.push(load.take_phase(now));
            }
        }
    }
    if let Some(h) = hold.take() {
        h.close().await; // commits a hold still open (an interrupted run)
    }

    // Stop the load, let the system handle what is in flight, then stop it.
    load_stop.cancel();
    for p in producers {
        p.await.context("a producer panicked")?;
    }
    let drain_limit = if interrupted.is_some() { Duration::from_secs(3) } else { opts.drain_timeout };
    println!("soak: {}: load stopped; waiting for {} messages in flight (at most {:?})", system.label(), load.backlog(), drain_limit);
    let left = load.drain(drain_limit).await;
    started.stop().await?;
    let totals = load.totals();
    let (outbox_after, inbox_pending_after, dead_after) = started.leftover().await?;
    let consistency = Consistency {
        published: totals.published,
        handled: totals.handled,
        left_after_drain: left,
        outbox_after,
        inbox_pending_after,
        dead_after,
        publish_errors: totals.publish_errors,
        missed_offers: totals.missed,
    };
    started.close_stats().await;
    drop_databases(&opts.admin_url, &started).await;
    let run = Run::new(
        system,
        started.version.clone(),
        started.claim_indexes.clone(),
        interrupted.is_some(),
        consistency,
        phase_latency,
        samples,
        cfg,
        opts.naptime_s,
    );
    Ok((run, interrupted, options))
}

/// The next system runs on a server without this one's tables (and their dead tuples for
/// autovacuum to visit); the report holds everything measured.
async fn drop_databases(admin_url: &str, started: &Started) {
    let Ok(admin) = sqlx::PgPool::connect(admin_url).await else { return };
    for db in &started.dbs {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name))).execute(&admin).await;
    }
    admin.close().await;
}

/// What one sample reads, and the previous one's counters.
struct Sampler {
    start: Instant,
    producers: usize,
    prev_at: Instant,
    prev: Totals,
    prev_wal: f64,
}

impl Sampler {
    async fn take(&mut self, now: Instant, load: &Arc<Load>, started: &Started) -> Result<Sample> {
        let latency = load.take_window(now);
        let totals = load.totals();
        let window_s = (now - self.prev_at).as_secs_f64();
        // WAL and activity are the server's: any database answers.
        let any = &started.dbs[0].stats;
        let wal = stats::wal_position(any).await?;
        let (autovacuum_workers, oldest_xact_s) = stats::activity(any).await?;
        let mut tables = Vec::new();
        for w in &started.watched {
            tables.push(stats::table(&started.dbs[w.db].stats, w).await?);
        }
        let mut probes = Vec::new();
        for p in &started.probes {
            probes.push(probe::run(&started.dbs[p.db].stats, p).await?);
        }
        let backlog = load.backlog();
        let outbox_pending: i64 =
            started.watched.iter().zip(&tables).filter(|(w, _)| w.upstream).map(|(_, t)| (t.tup_ins - t.tup_del).max(0)).sum();
        let outbox_pending = outbox_pending.min(backlog.max(0));
        let (prev, prev_wal) = (self.prev, self.prev_wal);
        (self.prev_at, self.prev, self.prev_wal) = (now, totals, wal);
        Ok(Sample {
            t: (now - self.start).as_secs_f64(),
            window_s,
            published: totals.published - prev.published,
            consumed: totals.handled - prev.handled,
            published_per_sec: (totals.published - prev.published) as f64 / window_s,
            consumed_per_sec: (totals.handled - prev.handled) as f64 / window_s,
            latency_ms: latency,
            backlog,
            producers_paused: ((totals.paused_us - prev.paused_us) as f64 / 1e6 / window_s / self.producers as f64).min(1.0),
            outbox_pending,
            inbox_pending: (backlog - outbox_pending).max(0),
            wal_bytes: wal - prev_wal,
            autovacuum_workers,
            oldest_xact_s,
            tables,
            held: false,
            hold_xmin_age: None,
            probes,
        })
    }
}

/// One line per sample, so that a long run shows it is alive.
fn print_progress(system: System, s: &Sample, duration_s: f64) {
    let tables: Vec<String> =
        s.tables.iter().map(|t| format!("{} {} dead {} av {}", t.name, mb(t.total_bytes as f64), thousands(t.dead_tup as f64), t.autovacuum_count)).collect();
    let probes: Vec<String> = s.probes.iter().map(|p| format!("{} {} entries", p.name, p.entries_read)).collect();
    println!(
        "[{:>6.0}s/{:.0}s] {}{} handled {:>7}/s published {:>7}/s  p50 {} p99 {}  backlog {:>6}  | {} | {} | WAL {:.1} MB/s",
        s.t,
        duration_s,
        system.label(),
        if s.held { " HELD" } else { "" },
        thousands(s.consumed_per_sec),
        thousands(s.published_per_sec),
        s.latency_ms.map(|l| format!("{:.1} ms", l.p50)).unwrap_or_else(|| "n/a".into()),
        s.latency_ms.map(|l| format!("{:.1} ms", l.p99)).unwrap_or_else(|| "n/a".into()),
        s.backlog,
        tables.join(" | "),
        probes.join(", "),
        s.wal_bytes / s.window_s.max(1e-9) / 1e6
    );
}
