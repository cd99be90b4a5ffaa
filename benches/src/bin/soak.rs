//! The queue soak: the engine end to end (publish in transactions → outbox → relay → inbox
//! → transaction-mode consumers → pruner) for a long time, sampled every few seconds:
//! throughput, publish → handled latency, backlog, and the size, dead tuples and autovacuum
//! runs of the queue tables. Writes `<target>/bench-results/soak-report.{json,md,svg}`.
//!
//! `cargo xtask bench soak` builds and runs it against a private durable PostgreSQL; run it
//! by hand with `--database-url` (an admin URL: it creates the databases `soak_pub` and
//! `soak_sub` there, dropping any left from an earlier run).

#[path = "../soak/mod.rs"]
mod soak;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use conveyor_benches::{BenchEvent, fresh_db};
use conveyor_benchkit::{Machine, results_dir, unix_now};
use conveyor_queue::{Consumer, ConsumerOptions, Event, Pruner, Relay, RelayOptions, Routes, handler_fn};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use soak::load::{self, Load, Pace};
use soak::report::{self, Consistency, Report};
use soak::{Sample, Settings, mb, parse_duration, stats, thousands};

#[derive(Parser, Debug)]
#[command(
    name = "soak",
    about = "Soak the queue engine end to end and record throughput, latency, table sizes and dead tuples over time",
    long_about = "Soak the queue engine end to end: producers publish BenchEvent messages (~220 bytes) in transactions \
into the outbox of database soak_pub; the relay moves them into the inbox of database soak_sub; transaction-mode \
consumers handle them and mark them done; the pruner deletes done rows after --prune-window. Every \
--sample-interval it records throughput, publish -> handled latency, the backlog, and each queue table's size, \
live and dead tuples and autovacuum runs. Writes <target>/bench-results/soak-report.{json,md,svg} and prints \
the report. Ctrl-C ends the run early and still writes the report."
)]
struct Args {
    /// Admin URL of the PostgreSQL server; databases soak_pub and soak_sub are (re)created on it.
    #[arg(long, env = "DATABASE_URL", required_unless_present = "rerender")]
    database_url: Option<String>,
    /// How long the load runs, e.g. 30m, 5m, 90s [default: 30m; 12s with --quick].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Time between samples [default: 5s; 1s with --quick].
    #[arg(long, value_parser = parse_duration)]
    sample_interval: Option<Duration>,
    /// Offered load in messages/s, spread over the producers (open loop). Without it the
    /// producers run as fast as they can (closed loop, bounded by --max-pending).
    #[arg(long)]
    rate: Option<f64>,
    /// Producer tasks, each publishing on its own connection.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Messages per publishing transaction (a service publishes one per state change).
    #[arg(long, default_value_t = 1)]
    publish_batch: usize,
    /// Producers pause while more than this many messages are published and not yet handled.
    #[arg(long, default_value_t = 10_000)]
    max_pending: u64,
    /// Relay loops (RelayOptions::concurrency; production default 1).
    #[arg(long, default_value_t = 1)]
    relays: usize,
    /// Outbox rows per relay batch (production default 100).
    #[arg(long, default_value_t = 100)]
    relay_batch: i64,
    /// Consumer claim loops (ConsumerOptions::concurrency; production default 4).
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// Messages per consumer claim (production default 50).
    #[arg(long, default_value_t = 50)]
    consumer_batch: i64,
    /// How often an idle relay or consumer loop looks without being woken (production default 1s).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    poll_interval: Duration,
    /// How long done rows are kept for deduplication before the pruner deletes them
    /// [default: 60s; 3s with --quick; production: 1h, which a run shorter than hours never reaches].
    #[arg(long, value_parser = parse_duration)]
    prune_window: Option<Duration>,
    /// How often the pruner runs [default: 30s, as in production; 1s with --quick].
    #[arg(long, value_parser = parse_duration)]
    prune_interval: Option<Duration>,
    /// Rows the pruner looks at per transaction (production default 1000).
    #[arg(long, default_value_t = 1000)]
    prune_batch: i64,
    /// Allowed growth of a table's largest size in the second half over the first half.
    #[arg(long, default_value_t = 0.10)]
    size_tolerance: f64,
    /// Allowed absolute growth on top of --size-tolerance, in bytes (small tables move by pages).
    #[arg(long, default_value_t = 1 << 20)]
    size_slack_bytes: u64,
    /// How long, at most, to wait at the end for every published message to be handled.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    drain_timeout: Duration,
    /// Smoke mode: short defaults (see above); the report says its figures are no measurement.
    #[arg(long)]
    quick: bool,
    /// Where PostgreSQL came from, for the report.
    #[arg(long, default_value = "DATABASE_URL")]
    server: String,
    /// Runs nothing: recomputes the summary of a soak-report.json written earlier and writes
    /// the report files again (after a change to how the summary is computed).
    #[arg(long, value_name = "SOAK_REPORT_JSON")]
    rerender: Option<std::path::PathBuf>,
}

impl Args {
    fn settings(&self) -> Result<Settings> {
        let pick = |v: Option<Duration>, full: u64, quick: u64| v.unwrap_or(Duration::from_secs(if self.quick { quick } else { full }));
        let duration = pick(self.duration, 30 * 60, 12);
        let sample = pick(self.sample_interval, 5, 1);
        if sample.is_zero() || duration < sample * 2 {
            bail!("--duration ({duration:?}) must be at least two --sample-interval ({sample:?})");
        }
        if self.producers == 0 || self.publish_batch == 0 || self.consumers == 0 || self.relays == 0 {
            bail!("--producers, --publish-batch, --consumers and --relays must be at least 1");
        }
        if self.relay_batch < 1 || self.consumer_batch < 1 || self.prune_batch < 1 {
            bail!("--relay-batch, --consumer-batch and --prune-batch must be at least 1");
        }
        if let Some(r) = self.rate
            && !(r.is_finite() && r > 0.0)
        {
            bail!("--rate must be a positive number of messages per second, got {r}");
        }
        let prune_window = self.prune_window.unwrap_or(Duration::from_secs(if self.quick { 3 } else { 60 }));
        let prune_interval = self.prune_interval.unwrap_or(Duration::from_secs(if self.quick { 1 } else { 30 }));
        if prune_interval.is_zero() || self.poll_interval.is_zero() {
            bail!("--prune-interval and --poll-interval must be more than 0");
        }
        Ok(Settings {
            duration_s: duration.as_secs_f64(),
            sample_interval_s: sample.as_secs_f64(),
            rate: self.rate,
            producers: self.producers,
            publish_batch: self.publish_batch,
            max_pending: self.max_pending,
            relays: self.relays,
            relay_batch: self.relay_batch,
            consumers: self.consumers,
            consumer_batch: self.consumer_batch,
            poll_interval_s: self.poll_interval.as_secs_f64(),
            prune_window_s: prune_window.as_secs_f64(),
            prune_interval_s: prune_interval.as_secs_f64(),
            prune_batch: self.prune_batch,
            size_tolerance: self.size_tolerance,
            size_slack_bytes: self.size_slack_bytes,
            target_end_start_ratio: 0.90,
            quick: self.quick,
            server: self.server.clone(),
        })
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("soak: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Resolves on SIGINT or SIGTERM with the signal's number.
fn signals() -> Result<impl Future<Output = i32>> {
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => SignalKind::interrupt().as_raw_value(),
            _ = term.recv() => SignalKind::terminate().as_raw_value(),
        }
    })
}

async fn stats_pool(url: &str) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        .test_before_acquire(false)
        .connect(url)
        .await
        .context("connecting the sampler")
}

/// `--rerender`: the summary and files of an earlier run, computed again.
fn rerender(path: &std::path::Path) -> Result<u8> {
    /// A report without its summary (which may come from an older version).
    #[derive(serde::Deserialize)]
    struct Measured {
        generated_unix: u64,
        machine: Machine,
        postgres: stats::ServerInfo,
        settings: Settings,
        interrupted: bool,
        consistency: Consistency,
        samples: Vec<Sample>,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
    let m: Measured = serde_json::from_str(&text).with_context(|| format!("{} is not a soak report", path.display()))?;
    let report = Report {
        generated_unix: m.generated_unix,
        summary: soak::summary::summarize(&m.samples, &m.settings, m.postgres.naptime_s().unwrap_or(60.0)),
        machine: m.machine,
        postgres: m.postgres,
        settings: m.settings,
        interrupted: m.interrupted,
        consistency: m.consistency,
        samples: m.samples,
    };
    let written = report::write(&results_dir()?, &report)?;
    println!("{}", written.markdown);
    println!("soak: report written to {}, {} and {}", written.json.display(), written.md.display(), written.svg.display());
    Ok(0)
}

async fn run(args: Args) -> Result<u8> {
    if let Some(path) = &args.rerender {
        return rerender(path);
    }
    let database_url = args.database_url.clone().context("--database-url (or DATABASE_URL) is required")?;
    let cfg = args.settings()?;
    let signal = signals()?;
    tokio::pin!(signal);
    let results = results_dir()?;

    println!(
        "soak: {:.0} s, {} producers × {} msg/tx ({}), relay {} × batch {}, consumers {} × batch {}, prune window {} s every {} s; sample every {} s",
        cfg.duration_s,
        cfg.producers,
        cfg.publish_batch,
        cfg.rate.map(|r| format!("{} msgs/s offered", thousands(r))).unwrap_or_else(|| format!("closed loop, cap {}", thousands(cfg.max_pending as f64))),
        cfg.relays,
        cfg.relay_batch,
        cfg.consumers,
        cfg.consumer_batch,
        cfg.prune_window_s,
        cfg.prune_interval_s,
        cfg.sample_interval_s
    );
    let conns = |n: usize| n as u32 + 4;
    let publisher = fresh_db(&database_url, "soak_pub", conns(cfg.producers + cfg.relays))
        .await
        .context("creating database soak_pub (the publisher, with the outbox)")?;
    let subscriber = fresh_db(&database_url, "soak_sub", conns(cfg.consumers + cfg.relays))
        .await
        .context("creating database soak_sub (the subscriber, with the inbox)")?;
    let pub_stats = stats_pool(&conveyor_devpg::with_database(&database_url, "soak_pub")).await?;
    let sub_stats = stats_pool(&conveyor_devpg::with_database(&database_url, "soak_sub")).await?;
    let server = stats::server_info(&sub_stats).await?;

    // The engine, as a publishing and a subscribing service's workers run it.
    let engine_stop = CancellationToken::new();
    let start = Instant::now();
    let load = Load::new(start, cfg.max_pending);
    let relay = Relay::new(
        publisher.clone(),
        Routes::new().route(BenchEvent::TOPIC, ["sub"]),
        HashMap::from([("sub".to_owned(), subscriber.clone())]),
    )?
    .with_options(RelayOptions { batch_size: cfg.relay_batch, concurrency: cfg.relays, poll_interval: args.poll_interval });
    let consumer = Consumer::new(subscriber.clone())
        .named("soak")
        .with_options(ConsumerOptions {
            concurrency: cfg.consumers,
            batch_size: cfg.consumer_batch,
            poll_interval: args.poll_interval,
            ..Default::default()
        })
        .subscribe(handler_fn(load::handler(load.clone())));
    let mut pruner = Pruner::new(subscriber.clone());
    pruner.window = Duration::from_secs_f64(cfg.prune_window_s);
    pruner.interval = Duration::from_secs_f64(cfg.prune_interval_s);
    pruner.batch = cfg.prune_batch;
    let engine = [
        tokio::spawn({
            let s = engine_stop.clone();
            async move { relay.run(s).await.context("relay") }
        }),
        tokio::spawn({
            let s = engine_stop.clone();
            async move { consumer.run(s).await.context("consumer") }
        }),
        tokio::spawn({
            let s = engine_stop.clone();
            async move { pruner.run(s).await.context("pruner") }
        }),
    ];

    // The load.
    let load_stop = CancellationToken::new();
    let pace = match cfg.rate {
        None => Pace::FullSpeed,
        Some(rate) => Pace::Every(Duration::from_secs_f64(cfg.producers as f64 * cfg.publish_batch as f64 / rate)),
    };
    let producers: Vec<_> = (0..cfg.producers)
        .map(|id| tokio::spawn(load::producer(load.clone(), publisher.clone(), id, cfg.publish_batch, pace, load_stop.clone())))
        .collect();

    // Sampling until the end, or a signal.
    let end = start + Duration::from_secs_f64(cfg.duration_s);
    let interval = Duration::from_secs_f64(cfg.sample_interval_s);
    let mut samples: Vec<Sample> = Vec::new();
    let mut interrupted = None;
    let (mut prev_at, mut prev) = (start, load.totals());
    let mut prev_wal = stats::wal_position(&sub_stats).await?;
    let mut next = (start + interval).min(end);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            sig = &mut signal => { interrupted = Some(sig); break; }
        }
        let now = Instant::now();
        let latency = load.take_window(now);
        let totals = load.totals();
        let window_s = (now - prev_at).as_secs_f64();
        let (outbox_pending, inbox_pending, inbox_dead, oldest) = stats::depth(&pub_stats, &sub_stats).await?;
        let wal = stats::wal_position(&sub_stats).await?;
        let (autovacuum_workers, oldest_xact_s) = stats::activity(&sub_stats).await?;
        let tables = vec![stats::table(&pub_stats, "outbox").await?, stats::table(&sub_stats, "inbox").await?];
        let s = Sample {
            t: (now - start).as_secs_f64(),
            window_s,
            published: totals.published - prev.published,
            consumed: totals.handled - prev.handled,
            published_per_sec: (totals.published - prev.published) as f64 / window_s,
            consumed_per_sec: (totals.handled - prev.handled) as f64 / window_s,
            latency_ms: latency,
            backlog: load.backlog(),
            producers_paused: ((totals.paused_us - prev.paused_us) as f64 / 1e6 / window_s / cfg.producers as f64).min(1.0),
            outbox_pending,
            inbox_pending,
            inbox_dead,
            oldest_pending_s: oldest,
            wal_bytes: wal - prev_wal,
            autovacuum_workers,
            oldest_xact_s,
            tables,
        };
        print_progress(&s, cfg.duration_s);
        samples.push(s);
        (prev_at, prev, prev_wal) = (now, totals, wal);
        if next >= end {
            break;
        }
        next = (next + interval).min(end);
    }

    // Stop the load, let the engine handle what is in flight, then stop the engine.
    load_stop.cancel();
    for p in producers {
        p.await.context("a producer panicked")?;
    }
    let drain_limit = if interrupted.is_some() { Duration::from_secs(3) } else { args.drain_timeout };
    println!("soak: load stopped; waiting for {} messages in flight (at most {:?})", load.backlog(), drain_limit);
    let left = load.drain(drain_limit).await;
    engine_stop.cancel();
    for task in engine {
        task.await.context("an engine task panicked")??;
    }
    let totals = load.totals();
    let (outbox_after, inbox_pending_after, dead_after, _) = stats::depth(&pub_stats, &sub_stats).await?;
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

    let summary = soak::summary::summarize(&samples, &cfg, server.naptime_s().unwrap_or(60.0));
    let report = Report {
        generated_unix: unix_now(),
        machine: Machine::detect(),
        postgres: server,
        settings: cfg,
        interrupted: interrupted.is_some(),
        summary,
        consistency,
        samples,
    };
    let written = report::write(&results, &report)?;
    println!("\n{}", written.markdown);
    println!(
        "soak: report written to {}, {} and {}",
        written.json.display(),
        written.md.display(),
        written.svg.display()
    );
    for pool in [publisher, subscriber, pub_stats, sub_stats] {
        pool.close().await;
    }
    Ok(match interrupted {
        Some(sig) => 128 + sig as u8,
        None => 0,
    })
}

/// One line per sample, so that a long run shows it is alive.
fn print_progress(s: &Sample, duration_s: f64) {
    let table = |name: &str| {
        s.table(name)
            .map(|t| format!("{name} {} dead {} av {}", mb(t.total_bytes as f64), thousands(t.dead_tup as f64), t.autovacuum_count))
            .unwrap_or_default()
    };
    println!(
        "[{:>6.0}s/{:.0}s] handled {:>7}/s published {:>7}/s  p50 {} p99 {}  backlog {:>6}  | {} | {} | WAL {:.1} MB/s",
        s.t,
        duration_s,
        thousands(s.consumed_per_sec),
        thousands(s.published_per_sec),
        s.latency_ms.map(|l| format!("{:.1} ms", l.p50)).unwrap_or_else(|| "n/a".into()),
        s.latency_ms.map(|l| format!("{:.1} ms", l.p99)).unwrap_or_else(|| "n/a".into()),
        s.backlog,
        table("inbox"),
        table("outbox"),
        s.wal_bytes / s.window_s.max(1e-9) / 1e6
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_valid_and_quick_shortens_the_defaults() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let full = Args::try_parse_from(["soak", "--database-url", "postgres://x/y"]).unwrap().settings().unwrap();
        assert_eq!((full.duration_s, full.sample_interval_s, full.prune_window_s, full.prune_interval_s), (1800.0, 5.0, 60.0, 30.0));
        let quick = Args::try_parse_from(["soak", "--database-url", "postgres://x/y", "--quick", "--duration", "20s"]).unwrap().settings().unwrap();
        assert_eq!((quick.duration_s, quick.sample_interval_s, quick.prune_window_s), (20.0, 1.0, 3.0));
        let bad = Args::try_parse_from(["soak", "--database-url", "postgres://x/y", "--duration", "5s"]).unwrap().settings();
        assert!(bad.unwrap_err().to_string().contains("at least two --sample-interval"));
        assert!(Args::try_parse_from(["soak", "--database-url", "u", "--duration", "5 minutes"]).is_err());
    }
}
