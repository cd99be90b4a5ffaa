//! The queue soak: a queue end to end (ours: publish in transactions → outbox → relay →
//! inbox → transaction-mode consumers → pruner; pgmq: send → read → delete) for a long time
//! at the same schedule, one system after the other, sampled every few seconds: throughput,
//! publish → handled latency, backlog, the queue tables' size, dead tuples and autovacuum
//! runs, and what each claim costs. With `--hold-xmin` a snapshot holds the xmin horizon
//! back through the middle of each run. Writes `<target>/bench-results/soak-report.{json,md,svg}`.
//!
//! `cargo xtask bench soak` builds and runs it against a private durable PostgreSQL; run it
//! by hand with `--database-url` (an admin URL: it creates the databases `soak_pub`,
//! `soak_sub` and `soak_pgmq` there, dropping any left from an earlier run, and drops each
//! after its run).

#[path = "../soak/mod.rs"]
mod soak;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use conveyor_benchkit::{Machine, Percentiles, results_dir, unix_now};
use tokio::signal::unix::{SignalKind, signal};

use soak::report::{self, Consistency, Report, Run};
use soak::system::ClaimIndex;
use soak::{HoldPlan, HoldTargets, Sample, Settings, System, parse_duration, stats};

#[derive(Parser, Debug)]
#[command(
    name = "soak",
    about = "Soak the queue engine end to end and record throughput, latency, table sizes and dead tuples over time",
    long_about = "Soak the queue engine end to end, and pgmq through the same schedule: producers publish BenchEvent \
messages (~220 bytes) in transactions. Ours: into the outbox of database soak_pub; the relay moves them into the inbox \
of database soak_sub; transaction-mode consumers handle them and mark them done; the pruner deletes done rows after \
--prune-window. pgmq: into one queue of database soak_pgmq; consumers read, handle and delete them. Every \
--sample-interval it records throughput, publish -> handled latency, the backlog, each queue table's size, live and \
dead tuples and autovacuum runs, the claim indexes' scans, and a probe of one claim. --hold-xmin holds a REPEATABLE \
READ snapshot in every queue database through the middle of each run. Writes \
<target>/bench-results/soak-report.{json,md,svg} and prints the report. Ctrl-C ends the run early and still writes \
the report."
)]
struct Args {
    /// Admin URL of the PostgreSQL server; databases soak_pub and soak_sub are (re)created on it.
    #[arg(long, env = "DATABASE_URL", required_unless_present = "rerender")]
    database_url: Option<String>,
    /// How long the load runs per system, e.g. 30m, 5m, 90s [default: 30m; 9s with --quick].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Hold the xmin horizon back for this long, centred in each run: one connection per
    /// queue database keeps a REPEATABLE READ snapshot open, e.g. 10m [default: none; 3s
    /// with --quick]. Each side of it must be at least two --sample-interval.
    #[arg(long, value_parser = parse_duration)]
    hold_xmin: Option<Duration>,
    /// The systems to run, one after the other, each on fresh databases.
    #[arg(long, value_delimiter = ',', default_value = "ours,pgmq")]
    systems: Vec<System>,
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
    /// How ours delivers: push (outbox → relay → inbox → consumers, as the services run
    /// today) or pull (the consumers read the publisher's outbox with cursors of their own;
    /// no relay, no inbox for what succeeds).
    #[arg(long, value_parser = ["push", "pull"], default_value = "push")]
    delivery: String,
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
        let duration = pick(self.duration, 30 * 60, 9);
        let sample = pick(self.sample_interval, 5, 1);
        if sample.is_zero() || duration < sample * 2 {
            bail!("--duration ({duration:?}) must be at least two --sample-interval ({sample:?})");
        }
        let hold = match self.hold_xmin.or(self.quick.then_some(Duration::from_secs(3))) {
            Some(h) => Some(HoldPlan::centred(duration, h, sample).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let mut systems = Vec::new();
        for s in &self.systems {
            if !systems.contains(s) {
                systems.push(*s);
            }
        }
        if systems.is_empty() {
            bail!("--systems must name at least one of ours, pgmq");
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
            pull: self.delivery == "pull",
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
            systems,
            hold,
            hold_targets: HoldTargets::default(),
        })
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        // Not sqlx's slow-statement notes: pgmq's long poll and DROP DATABASE are slow by design.
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,sqlx::query=error,sqlx::postgres::notice=error".into()),
        )
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

/// `--rerender`: the summary and files of an earlier run, computed again.
fn rerender(path: &std::path::Path) -> Result<u8> {
    let text = std::fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
    let m: Measured = serde_json::from_str(&text).with_context(|| format!("{} is not a soak report", path.display()))?;
    let (generated_unix, machine, postgres, settings, interrupted, runs) = match m {
        Measured::Systems { generated_unix, machine, postgres, settings, interrupted, runs } => (generated_unix, machine, postgres, settings, interrupted, runs),
        Measured::OursOnly { generated_unix, machine, postgres, settings, interrupted, consistency, samples } => {
            let run = MeasuredRun { system: System::Ours, version: None, claim_indexes: Vec::new(), interrupted, consistency, phase_latency_ms: Vec::new(), samples };
            (generated_unix, machine, postgres, settings, interrupted, vec![run])
        }
    };
    let naptime = postgres.naptime_s().unwrap_or(60.0);
    let runs = runs
        .into_iter()
        .map(|x| Run::new(x.system, x.version, x.claim_indexes, x.interrupted, x.consistency, x.phase_latency_ms, x.samples, &settings, naptime))
        .collect();
    let report = Report { generated_unix, machine, postgres, settings, interrupted, runs };
    let written = report::write(&results_dir()?, &report)?;
    println!("{}", written.markdown);
    println!("soak: report written to {}, {} and {}", written.json.display(), written.md.display(), written.svg.display());
    Ok(0)
}

/// A report as measured, without what is computed from it (which may come from an older
/// version): one run per system, or (older reports) ours' alone at the top level.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Measured {
    Systems { generated_unix: u64, machine: Machine, postgres: stats::ServerInfo, settings: Settings, interrupted: bool, runs: Vec<MeasuredRun> },
    OursOnly {
        generated_unix: u64,
        machine: Machine,
        postgres: stats::ServerInfo,
        settings: Settings,
        interrupted: bool,
        consistency: Consistency,
        samples: Vec<Sample>,
    },
}

#[derive(serde::Deserialize)]
struct MeasuredRun {
    system: System,
    version: Option<String>,
    claim_indexes: Vec<ClaimIndex>,
    interrupted: bool,
    consistency: Consistency,
    #[serde(default)]
    phase_latency_ms: Vec<Option<Percentiles>>,
    samples: Vec<Sample>,
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
        "soak: {:.0} s per system ({}), {} producers × {} msg/tx ({}), consumers {} × batch {}; ours: relay {} × batch {}, prune window {} s every {} s; sample every {} s{}",
        cfg.duration_s,
        cfg.systems.iter().map(|s| s.label()).collect::<Vec<_>>().join(", "),
        cfg.producers,
        cfg.publish_batch,
        cfg.rate.map(|r| format!("{} msgs/s offered", soak::thousands(r))).unwrap_or_else(|| format!("closed loop, cap {}", soak::thousands(cfg.max_pending as f64))),
        cfg.consumers,
        cfg.consumer_batch,
        cfg.relays,
        cfg.relay_batch,
        cfg.prune_window_s,
        cfg.prune_interval_s,
        cfg.sample_interval_s,
        cfg.hold.map(|h| format!("; xmin held from {:.0} s to {:.0} s", h.start_s, h.end_s)).unwrap_or_default()
    );
    let admin = stats::pool(&database_url).await?;
    let mut postgres = stats::server_info(&admin).await?;
    admin.close().await;
    let opts = soak::run::Options {
        admin_url: database_url,
        poll_interval: args.poll_interval,
        drain_timeout: args.drain_timeout,
        naptime_s: postgres.naptime_s().unwrap_or(60.0),
    };
    let mut runs = Vec::new();
    let mut interrupted = None;
    for &system in &cfg.systems {
        println!("\n== soak: {} ==", system.label());
        let (run, sig, options) = soak::run::soak(system, &cfg, &opts, signal.as_mut()).await?;
        postgres.table_options.extend(options);
        runs.push(run);
        if sig.is_some() {
            interrupted = sig;
            break;
        }
    }

    let report = Report { generated_unix: unix_now(), machine: Machine::detect(), postgres, settings: cfg, interrupted: interrupted.is_some(), runs };
    let written = report::write(&results, &report)?;
    println!("\n{}", written.markdown);
    println!("soak: report written to {}, {} and {}", written.json.display(), written.md.display(), written.svg.display());
    Ok(match interrupted {
        Some(sig) => 128 + sig as u8,
        None => 0,
    })
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
        assert_eq!((full.systems.as_slice(), full.hold), ([System::Ours, System::Pgmq].as_slice(), None));
        let quick = Args::try_parse_from(["soak", "--database-url", "postgres://x/y", "--quick", "--duration", "20s"]).unwrap().settings().unwrap();
        assert_eq!((quick.duration_s, quick.sample_interval_s, quick.prune_window_s), (20.0, 1.0, 3.0));
        assert_eq!(quick.hold, Some(HoldPlan { start_s: 8.5, end_s: 11.5 }), "--quick holds for 3 s, centred");
        let quick = Args::try_parse_from(["soak", "--database-url", "u", "--quick"]).unwrap().settings().unwrap();
        assert_eq!((quick.duration_s, quick.hold), (9.0, Some(HoldPlan { start_s: 3.0, end_s: 6.0 })));
        let bad = Args::try_parse_from(["soak", "--database-url", "postgres://x/y", "--duration", "5s"]).unwrap().settings();
        assert!(bad.unwrap_err().to_string().contains("at least two --sample-interval"));
        assert!(Args::try_parse_from(["soak", "--database-url", "u", "--duration", "5 minutes"]).is_err());
    }

    #[test]
    fn the_hold_and_the_systems_are_parsed_and_checked() {
        let parse = |extra: &[&str]| Args::try_parse_from(["soak", "--database-url", "u"].iter().chain(extra)).unwrap().settings();
        let cfg = parse(&["--duration", "20m", "--hold-xmin", "10m", "--systems", "pgmq"]).unwrap();
        assert_eq!((cfg.hold, cfg.systems), (Some(HoldPlan { start_s: 300.0, end_s: 900.0 }), vec![System::Pgmq]));
        assert_eq!(parse(&["--systems", "ours,ours"]).unwrap().systems, [System::Ours]);
        let e = parse(&["--duration", "3m", "--hold-xmin", "175s"]).unwrap_err().to_string();
        assert!(e.contains("--hold-xmin 175 s is too long for --duration 180 s"), "{e}");
        assert!(Args::try_parse_from(["soak", "--database-url", "u", "--systems", "rabbitmq"]).is_err());
        assert!(Args::try_parse_from(["soak", "--database-url", "u", "--hold-xmin", "ten minutes"]).is_err());
    }
}
