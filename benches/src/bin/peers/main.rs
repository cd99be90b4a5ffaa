//! One queue hop, ours against pgmq and RabbitMQ, in one run on one machine.
//!
//! `cargo xtask bench peers` starts a private durable PostgreSQL and a RabbitMQ broker and
//! runs this with their addresses; it can also be run by hand against servers of your own.
//! For every batch size and system it runs the same number of producer and consumer tasks
//! at once for a fixed time after a warm-up, measures the messages the consumers receive
//! per second and the latency from publish to consumer, and writes
//! `<target>/bench-results/peers-report.{json,md,svg}`.

mod diag;
mod measure;
mod ours;
mod pgmq;
mod rabbit;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use conveyor_benchkit::{Machine, results_dir, unix_now, write_json, write_svg};

use crate::measure::{Probe, default_window};
use crate::diag::Server;
use crate::report::{BatchSettings, Mode, Report, Row, Settings, System, Versions};

#[derive(Parser, Debug)]
#[command(
    name = "peers",
    about = "One queue hop — ours (outbox → relay → inbox → transaction-mode consumer) against pgmq and RabbitMQ — in one run on one machine",
    long_about = None
)]
struct Cli {
    /// PostgreSQL admin URL (ours and pgmq each get fresh databases there).
    #[arg(long, env = "DATABASE_URL")]
    postgres_url: String,
    /// How the report names that server, e.g. "private durable cluster".
    #[arg(long, default_value = "DATABASE_URL")]
    postgres_server: String,
    /// RabbitMQ's AMQP URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f. Without it RabbitMQ
    /// is reported as not measured.
    #[arg(long)]
    amqp_url: Option<String>,
    /// RabbitMQ's version, for the report.
    #[arg(long)]
    rabbitmq_version: Option<String>,
    /// Why RabbitMQ is not measured (when there is no --amqp-url), for the report.
    #[arg(long)]
    rabbitmq_missing: Option<String>,
    /// The process that started the broker: its process tree's CPU and disk writes are
    /// reported.
    #[arg(long)]
    rabbitmq_pid: Option<u32>,
    /// Producer tasks per system.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    producers: u16,
    /// Consumer tasks per system (our consumer's claim loops).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    consumers: u16,
    /// Measured seconds per scenario.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Warm-up seconds per scenario (running, not measured).
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Batch sizes: messages per publish transaction / confirm wait and per claim / read.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    batches: Vec<usize>,
    /// Systems to measure.
    #[arg(long, value_delimiter = ',', default_value = "ours,pgmq,rabbitmq")]
    systems: Vec<System>,
    /// Messages published and not yet consumed at most (default: 4 × batch × tasks, ≥ 1,000).
    #[arg(long)]
    window: Option<usize>,
    /// RabbitMQ's prefetch per consumer (default: 2 × batch, ≥ 100).
    #[arg(long)]
    prefetch: Option<u16>,
    /// After each batch size's saturated runs, run every system again with producers
    /// offering this fraction of the slowest system's rate, for latency without a backed-up
    /// queue (0: no paced runs).
    #[arg(long, default_value_t = 0.5)]
    paced: f64,
    /// How ours delivers: `push` (outbox → relay → inbox → consumer, what the services run
    /// today) or `pull` (the consumer reads the publisher's outbox as a log, with cursors in
    /// its own database; see the queue crate's `pull`).
    #[arg(long, value_enum, default_value_t = Delivery::Push)]
    delivery: Delivery,
    /// Smoke mode: 1 s warm-up and 3 s per scenario; checks the harness end to end, judges
    /// no speed.
    #[arg(long)]
    quick: bool,
    /// Where to write peers-report.{json,md,svg} (default: <target>/bench-results).
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

/// How our side delivers (see `--delivery`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Push,
    Pull,
}

/// What every scenario needs to know.
pub struct Config {
    pub postgres_url: String,
    pub delivery: Delivery,
    pub producers: usize,
    pub consumers: usize,
    pub prefetch: Option<u16>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The engine reports failing loops (and retries them) through `tracing`: show them
    // (not sqlx's slow-statement notes: pgmq's long poll and DROP DATABASE are slow by design).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,sqlx::query=error,sqlx::postgres::notice=error".into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peers: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(mut cli: Cli) -> Result<()> {
    if cli.quick {
        cli.warmup = cli.warmup.min(1.0);
        cli.seconds = cli.seconds.min(3.0);
    }
    if !(cli.seconds > 0.0 && cli.warmup >= 0.0) {
        bail!("--seconds must be above 0 and --warmup at least 0");
    }
    if cli.batches.is_empty() || cli.batches.iter().any(|&b| b == 0 || b > 10_000) {
        bail!("--batches must be sizes from 1 to 10000");
    }
    if let Some(w) = cli.window.filter(|&w| cli.batches.iter().any(|&b| w < b)) {
        bail!("--window {w} is smaller than a batch: no producer could ever publish one");
    }
    if !(0.0..=1.0).contains(&cli.paced) {
        bail!("--paced must be a fraction from 0 to 1");
    }
    let cfg = Config {
        postgres_url: cli.postgres_url.clone(),
        delivery: cli.delivery,
        producers: cli.producers as usize,
        consumers: cli.consumers as usize,
        prefetch: cli.prefetch,
    };
    let out_dir = match &cli.out_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("could not create {}", d.display()))?;
            d.clone()
        }
        None => results_dir()?,
    };

    // The server, as it is configured: the report says whether commits were durable.
    let admin = sqlx::PgPool::connect(&cli.postgres_url).await.context("connecting to PostgreSQL")?;
    let show = |what: &'static str| {
        let admin = admin.clone();
        async move { sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("SHOW {what}"))).fetch_one(&admin).await }
    };
    let postgres = format!("PostgreSQL {}", show("server_version").await?);
    let fsync = show("fsync").await?;
    let synchronous_commit = show("synchronous_commit").await?;
    if fsync != "on" || synchronous_commit != "on" {
        eprintln!("peers: warning: the server runs with fsync={fsync}, synchronous_commit={synchronous_commit}: not the durable comparison");
    }

    let rabbit_url = match (&cli.amqp_url, cli.systems.contains(&System::Rabbitmq)) {
        (Some(url), true) => {
            // Proves the broker speaks AMQP before anything is measured.
            let conn = rabbit::connect(url, Duration::from_secs(60)).await?;
            conn.close(200, "ok".into()).await?;
            Some(url.clone())
        }
        _ => None,
    };
    let rabbit_missing =
        cli.rabbitmq_missing.clone().unwrap_or_else(|| if cli.systems.contains(&System::Rabbitmq) { "no --amqp-url".into() } else { "not selected".into() });

    let pgmq_version = if cli.systems.contains(&System::Pgmq) {
        let (pool, _, v) = pgmq::prepare(&cfg).await?;
        pool.close().await;
        Some(v)
    } else {
        None
    };
    if let Some(url) = &rabbit_url {
        rabbit::prepare(url).await?;
    }

    println!(
        "peers: {} producers and {} consumers per system, {} s warm-up + {} s per scenario{}",
        cfg.producers,
        cfg.consumers,
        cli.warmup,
        cli.seconds,
        if cli.quick { " (quick smoke run)" } else { "" }
    );
    let runner = Runner {
        cfg: &cfg,
        warmup: Duration::from_secs_f64(cli.warmup),
        seconds: Duration::from_secs_f64(cli.seconds),
        bucket: if cli.seconds <= 5.0 { Duration::from_millis(500) } else { Duration::from_secs(1) },
        rabbit_url: rabbit_url.as_deref(),
        postgres: Server::Postgres(admin.clone()),
        rabbitmq: Server::Rabbitmq(cli.rabbitmq_pid),
    };
    let mut rows = Vec::new();
    let mut per_batch = Vec::new();
    let systems: Vec<System> = [System::Ours, System::Pgmq, System::Rabbitmq].into_iter().filter(|s| cli.systems.contains(s)).collect();
    for &batch in &cli.batches {
        let window = cli.window.unwrap_or_else(|| default_window(batch, cfg.producers, cfg.consumers));
        per_batch.push(BatchSettings { batch, window, rabbitmq_prefetch: cli.prefetch.unwrap_or_else(|| rabbit::default_prefetch(batch)) });
        let mut slowest = f64::INFINITY;
        for &system in &systems {
            if system == System::Rabbitmq && rabbit_url.is_none() {
                rows.push(Row::not_measured(system, batch, Mode::Saturated, rabbit_missing.clone()));
                continue;
            }
            let row = runner.run(system, batch, window, None).await?;
            slowest = slowest.min(row.rate().unwrap_or(f64::INFINITY));
            rows.push(row);
        }
        if cli.paced > 0.0 && slowest.is_finite() {
            // Whole batches per second, at least one.
            let rate = ((slowest * cli.paced / batch as f64).floor().max(1.0)) * batch as f64;
            for &system in &systems {
                if system == System::Rabbitmq && rabbit_url.is_none() {
                    rows.push(Row::not_measured(system, batch, Mode::Paced, rabbit_missing.clone()));
                    continue;
                }
                rows.push(runner.run(system, batch, window, Some(rate)).await?);
            }
        }
    }
    cleanup(&cfg).await;
    admin.close().await;

    let (comparisons, targets) = report::compare(&rows);
    let relay = ours::relay_options();
    let report = Report {
        generated_unix: unix_now(),
        quick: cli.quick,
        machine: Machine::detect(),
        versions: Versions { postgres, pgmq: pgmq_version, rabbitmq: rabbit_url.as_ref().map(|_| cli.rabbitmq_version.clone().unwrap_or_else(|| "unknown version".into())) },
        settings: Settings {
            producers: cfg.producers,
            consumers: cfg.consumers,
            warmup_s: cli.warmup,
            seconds: cli.seconds,
            bucket_s: runner.bucket.as_secs_f64(),
            payload_bytes: serde_json::to_vec(&Probe::event(1_000_000)).map(|v| v.len()).unwrap_or(0),
            postgres_server: cli.postgres_server.clone(),
            postgres_fsync: fsync,
            postgres_synchronous_commit: synchronous_commit,
            per_batch,
            ours_relay: match cli.delivery {
                Delivery::Push => format!("the engine's default: {} loop, up to {} rows a claim, woken by NOTIFY", relay.concurrency, relay.batch_size),
                Delivery::Pull => format!("pull: no relay; {} claim loops over {} partitions, the publisher's pruner every {} s", cli.consumers, conveyor_queue::pull::PARTS, ours::PULL_PRUNE_EVERY.as_secs()),
            },
            ours_pull: cli.delivery == Delivery::Pull,
            pgmq_read: format!(
                "`read_with_poll` of up to a batch (visibility timeout {} s; an empty queue polled every {} ms by the server), the code gets the messages, then `delete` (one id or an array) in its own transaction",
                pgmq::VISIBILITY_TIMEOUT_S,
                pgmq::POLL_INTERVAL.as_millis()
            ),
            paced_fraction: cli.paced,
        },
        results: rows,
        comparisons,
        targets,
    };
    let md = report::markdown(&report);
    let json_path = out_dir.join("peers-report.json");
    let md_path = out_dir.join("peers-report.md");
    let svg_path = out_dir.join("peers-report.svg");
    write_json(&json_path, &report)?;
    std::fs::write(&md_path, &md).with_context(|| format!("could not write {}", md_path.display()))?;
    write_svg(&svg_path, &report::charts(&report))?;
    println!("\n{md}");
    println!("peers: wrote {}, {} and {}", json_path.display(), md_path.display(), svg_path.display());
    Ok(())
}

/// A system set up for a scenario.
enum Prepared {
    Ours((sqlx::PgPool, sqlx::PgPool)),
    Pgmq(sqlx08::PgPool, ::pgmq::PGMQueueExt),
    Rabbitmq,
}

/// Runs one scenario and makes its row.
struct Runner<'a> {
    cfg: &'a Config,
    warmup: Duration,
    seconds: Duration,
    bucket: Duration,
    rabbit_url: Option<&'a str>,
    postgres: Server,
    rabbitmq: Server,
}

impl Runner<'_> {
    /// Saturated when `rate` is `None`, paced at `rate` msgs/s otherwise.
    async fn run(&self, system: System, batch: usize, window: usize, rate: Option<f64>) -> Result<Row> {
        let mode = if rate.is_some() { Mode::Paced } else { Mode::Saturated };
        let what = format!("{} at batch {batch}{}", system.label(), if rate.is_some() { ", paced" } else { "" });
        // Set up (fresh databases or queue, a checkpoint) before the clock starts.
        let rabbit_url = || self.rabbit_url.expect("checked by the caller");
        let prepared = match system {
            System::Ours => ours::prepare(self.cfg).await.map(Prepared::Ours),
            System::Pgmq => pgmq::prepare(self.cfg).await.map(|(pool, q, _)| Prepared::Pgmq(pool, q)),
            System::Rabbitmq => rabbit::prepare(rabbit_url()).await.map(|()| Prepared::Rabbitmq),
        }
        .with_context(|| format!("{what}: setting up"))?;
        let mut probe = Probe::new(self.warmup, self.seconds, window, self.bucket);
        if let Some(rate) = rate {
            probe = probe.paced(rate, self.cfg.producers, batch);
        }
        let probe = Arc::new(probe);
        let server = if system == System::Rabbitmq { self.rabbitmq.clone() } else { self.postgres.clone() };
        let sampling = tokio::spawn(diag::around(server, probe.window_times()));
        let outcome = match prepared {
            Prepared::Ours(dbs) => ours::run(self.cfg, batch, &probe, dbs).await,
            Prepared::Pgmq(pool, q) => pgmq::run(self.cfg, batch, &probe, (pool, q)).await,
            Prepared::Rabbitmq => rabbit::run(self.cfg, rabbit_url(), batch, &probe).await,
        };
        if let Err(e) = outcome {
            sampling.abort();
            return Err(e.context(what));
        }
        let f = probe.figures();
        let queue_table = match system {
            // Pull reads the publisher's outbox; push claims from the subscriber's inbox.
            System::Ours if self.cfg.delivery == Delivery::Pull => {
                diag::table_stats(&conveyor_devpg::with_database(&self.cfg.postgres_url, ours::PUBLISHER_DB), "conveyor", "outbox").await
            }
            System::Ours => diag::table_stats(&conveyor_devpg::with_database(&self.cfg.postgres_url, ours::SUBSCRIBER_DB), "conveyor", "inbox").await,
            System::Pgmq => {
                diag::table_stats(&conveyor_devpg::with_database(&self.cfg.postgres_url, pgmq::DATABASE), "pgmq", &format!("q_{}", pgmq::QUEUE)).await
            }
            System::Rabbitmq => None,
        };
        let snapshots = sampling.await.context("the sampling task failed")?;
        let diagnostics = diag::diagnostics(&snapshots, f.consumed);
        if f.consumed == 0 {
            bail!(
                "{what}: no message reached a consumer in the measured window ({} published, {} consumed in all)",
                probe.published_all(),
                probe.consumed_all()
            );
        }
        let l = f.latency_ms;
        println!(
            "  {:<9} batch {:>4} {:<9}: {:>9.0} msgs/s (published {:>9.0}/s)  latency p50 {} p99 {} ms",
            system.label(),
            batch,
            rate.map(|r| format!("@{r:.0}/s")).unwrap_or_default(),
            f.msgs_per_sec,
            f.published_per_sec,
            l.map(|l| format!("{:.2}", l.p50)).unwrap_or_default(),
            l.map(|l| format!("{:.2}", l.p99)).unwrap_or_default(),
        );
        Ok(Row {
            system,
            batch,
            mode,
            offered_per_sec: rate,
            guarantee: system.guarantee().into(),
            figures: Some(f),
            diagnostics: Some(diagnostics),
            queue_table,
            not_measured: None,
        })
    }
}

/// Drops the databases the scenarios made (on a private cluster they go with it anyway).
async fn cleanup(cfg: &Config) {
    let Ok(admin) = sqlx::PgPool::connect(&cfg.postgres_url).await else { return };
    for db in [ours::PUBLISHER_DB, ours::SUBSCRIBER_DB, pgmq::DATABASE] {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))).execute(&admin).await;
    }
    admin.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cli_parses_lists() {
        let cli = Cli::try_parse_from(["peers", "--postgres-url", "postgres://x/y", "--batches", "1,10,100", "--systems", "ours,pgmq"]).unwrap();
        assert_eq!(cli.batches, [1, 10, 100]);
        assert_eq!(cli.systems, [System::Ours, System::Pgmq]);
        assert_eq!((cli.producers, cli.consumers), (4, 4));
        assert!(Cli::try_parse_from(["peers", "--postgres-url", "u", "--producers", "0"]).is_err());
    }
}
