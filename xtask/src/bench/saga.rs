//! `cargo xtask bench saga`: the highest sustained rate of placed → confirmed sagas of the
//! running shop, the saga latency at half that rate, and, as the ceiling, the saga's SQL
//! replayed by pgbench in the same run on the same PostgreSQL. `--mode` picks the saga:
//! the choreography, the orchestration (by the coordinator), or both, each on a fresh stack
//! with the same settings, side by side in one report.
//!
//! 1. Build the binaries (release; `--quick`: the debug build) and start a private durable
//!    PostgreSQL (or use DATABASE_URL's server).
//! 2. The ceiling (`ceiling`, `replay`): the saga's statements, transaction for transaction,
//!    replayed by pgbench with one message per transaction and with consumers claiming 50
//!    at a time, before anything else runs. Sagas/s counted in the database. It replays
//!    the choreography's SQL and runs once, whatever `--mode` says.
//! 3. The stack (`stack`), once per mode: every API and worker as real processes (the
//!    launcher), products with ample stock and customers with ample balances, orders placed
//!    open-loop through `POST /orders` at rising rates (`ramp`) until a step no longer keeps
//!    up, then a little bisection; for every step, per-process CPU from /proc (`cpu`) and
//!    transactions and messages per saga from the databases.
//! 4. Latency at half the highest sustained rate, from the order database's timestamps.
//! 5. Hot products (`hot`), a flash sale: a few fresh products with limited stock, orders
//!    of several lines and units over only those, at the highest sustained rate; ended
//!    orders per second, latency to the end, deadlocks, units sold against the stock, and
//!    releases still pending, from the databases.
//! 6. The report (`report`): saga-report.{json,md,svg} in target/bench-results/; with both
//!    modes, their figures side by side.

mod ceiling;
mod cpu;
mod hot;
mod ramp;
mod replay;
mod report;
mod stack;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use conveyor_contracts::SagaMode;
use conveyor_devpg::ClusterOptions;
use serde::Serialize;

use crate::bench::psql;
use crate::proc::Signals;
use crate::{Postgres, pg_version, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Smoke mode for CI: the debug build, 2 s of pgbench per variant with 2 clients, 1 s of
    /// warm-up, at most two 3 s rate steps (20 and 40 orders/s), 3 s at half rate, 3 s of
    /// hot products, 20 products and customers. Checks the harness end to end and writes
    /// the result files; never a speed.
    #[arg(long)]
    pub quick: bool,
    /// Which saga the shop runs: choreography, orchestration (by the coordinator), or both:
    /// each on a fresh stack with the same settings, one after the other, compared side by
    /// side. The ceiling replays the choreography's SQL and runs once.
    #[arg(long, value_enum, default_value_t = Mode::Choreography)]
    pub mode: Mode,
    #[command(flatten)]
    pub delivery: crate::up::DeliveryArg,
    /// Which build of the shop to run (default: release; debug with --quick).
    #[arg(long, value_enum)]
    pub build: Option<Build>,
    /// Seconds of pgbench per ceiling variant.
    #[arg(long, default_value_t = 20)]
    pub ceiling_secs: u32,
    /// pgbench clients for the ceiling.
    #[arg(long, default_value_t = 8)]
    pub ceiling_clients: u32,
    /// Seconds per rate step.
    #[arg(long, default_value_t = 10.0)]
    pub step_secs: f64,
    /// The first rate tried, orders/s.
    #[arg(long, default_value_t = 100.0)]
    pub start_rate: f64,
    /// Each rate is the previous one times this until a step fails.
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    /// Bisection steps between the best sustained and the lowest failed rate.
    #[arg(long, default_value_t = 3)]
    pub bisections: u32,
    /// No rate above this is tried.
    #[arg(long, default_value_t = 20_000.0)]
    pub max_rate: f64,
    /// Seconds at half the highest sustained rate, for the latency.
    #[arg(long, default_value_t = 30.0)]
    pub latency_secs: f64,
    /// Seconds at half the first rate before the ramp (connections, caches), not counted.
    #[arg(long, default_value_t = 5.0)]
    pub warmup_secs: f64,
    /// Products in the catalog, in the shop and in the replay (orders pick one uniformly;
    /// each has ample stock). Fewer make batches lock the same items more often.
    #[arg(long, default_value_t = 10_000)]
    pub products: u32,
    /// Customers, in the shop and in the replay (orders pick one uniformly; each has an
    /// ample balance). Fewer make batches lock the same balances more often.
    #[arg(long, default_value_t = 10_000)]
    pub customers: u32,
    /// Requests the driver keeps in flight at most; beyond, a scheduled order is not sent
    /// and the step fails (the order API did not keep up).
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,
    /// How long to wait after a step for every saga to end.
    #[arg(long, default_value_t = 60.0)]
    pub drain_secs: f64,
    /// Skip the hot-products phase (the flash sale after the latency run).
    #[arg(long)]
    pub no_hot: bool,
    /// Products of the hot phase: fresh ones with limited stock; every order of the phase
    /// has 1–3 lines of 1–4 units over only these, at the highest sustained rate (or the
    /// first rate, if none was sustained).
    #[arg(long, default_value_t = 5)]
    pub hot_products: u32,
    /// Units of stock each hot product starts with. Default: about half of what the phase's
    /// orders will ask of each (rate × seconds × 5 units per order ÷ products ÷ 2), so that
    /// the sale sells out part-way through.
    #[arg(long)]
    pub hot_stock: Option<i64>,
    /// Seconds of hot-products orders.
    #[arg(long, default_value_t = 30.0)]
    pub hot_secs: f64,
    /// Share of the hot phase's orders placed by customers with an empty balance: their
    /// payments are declined and their reservations released while the sale goes on (the
    /// releases that must not wait behind reservations). 0: every customer can pay.
    #[arg(long, default_value_t = 0.1)]
    pub hot_decline_share: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Build {
    Debug,
    Release,
}

/// `--mode`: the saga or sagas to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Choreography,
    Orchestration,
    Both,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Choreography => "choreography",
            Mode::Orchestration => "orchestration",
            Mode::Both => "both",
        }
    }

    /// The saga modes to run, in order: the choreography first.
    pub fn saga_modes(self) -> Vec<SagaMode> {
        match self {
            Mode::Choreography => vec![SagaMode::Choreography],
            Mode::Orchestration => vec![SagaMode::Orchestration],
            Mode::Both => SagaMode::ALL.to_vec(),
        }
    }
}

/// The settings of a run, after `--quick`.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub quick: bool,
    pub mode: Mode,
    pub delivery: conveyor_launcher::Delivery,
    pub build: Build,
    pub ceiling_secs: u32,
    pub ceiling_clients: u32,
    pub step_secs: f64,
    pub start_rate: f64,
    pub factor: f64,
    pub bisections: u32,
    pub max_rate: f64,
    pub latency_secs: f64,
    pub warmup_secs: f64,
    pub products: u32,
    pub customers: u32,
    pub max_in_flight: usize,
    pub drain_secs: f64,
    /// The hot-products phase runs.
    pub hot: bool,
    pub hot_products: u32,
    pub hot_stock: Option<i64>,
    pub hot_secs: f64,
    pub hot_decline_share: f64,
}

impl Settings {
    pub fn from_args(a: &Args) -> Settings {
        let s = Settings {
            quick: a.quick,
            mode: a.mode,
            delivery: a.delivery.delivery,
            build: a.build.unwrap_or(if a.quick { Build::Debug } else { Build::Release }),
            ceiling_secs: a.ceiling_secs,
            ceiling_clients: a.ceiling_clients,
            step_secs: a.step_secs,
            start_rate: a.start_rate,
            factor: a.factor,
            bisections: a.bisections,
            max_rate: a.max_rate,
            latency_secs: a.latency_secs,
            warmup_secs: a.warmup_secs,
            products: a.products,
            customers: a.customers,
            max_in_flight: a.max_in_flight,
            drain_secs: a.drain_secs,
            hot: !a.no_hot,
            hot_products: a.hot_products,
            hot_stock: a.hot_stock,
            hot_secs: a.hot_secs,
            hot_decline_share: a.hot_decline_share,
        };
        if !a.quick {
            return s;
        }
        Settings {
            ceiling_secs: 2,
            // Fewer clients: a script run of 50 sagas takes seconds, and pgbench lets the
            // runs under way finish after -T.
            ceiling_clients: 2,
            step_secs: 3.0,
            start_rate: 20.0,
            factor: 2.0,
            bisections: 0,
            max_rate: 40.0,
            latency_secs: 3.0,
            warmup_secs: 1.0,
            products: 20,
            customers: 20,
            drain_secs: 30.0,
            hot_secs: 3.0,
            ..s
        }
    }
}

pub async fn run(args: Args, signals: &mut Signals) -> Result<i32> {
    let s = Settings::from_args(&args);
    anyhow::ensure!(s.step_secs >= 1.0 && s.latency_secs >= 1.0, "--step-secs and --latency-secs must be at least 1");
    anyhow::ensure!(s.factor > 1.0 && s.start_rate >= 1.0, "--factor must be above 1 and --start-rate at least 1");
    anyhow::ensure!(s.products >= 1 && s.customers >= 1 && s.ceiling_clients >= 1, "--products, --customers and --ceiling-clients must be at least 1");
    anyhow::ensure!(s.hot_products >= 1 && s.hot_secs >= 1.0, "--hot-products and --hot-secs must be at least 1");
    anyhow::ensure!((0.0..=0.9).contains(&s.hot_decline_share), "--hot-decline-share must be from 0 to 0.9");
    anyhow::ensure!(
        s.hot_stock.is_none_or(|n| (1..=conveyor_contracts::limits::MAX_STOCK).contains(&n)),
        "--hot-stock must be from 1 to {}",
        conveyor_contracts::limits::MAX_STOCK
    );
    let release = s.build == Build::Release;
    println!("xtask: building the binaries (cargo build --workspace --bins{})", if release { " --release" } else { "" });
    let built = std::time::Instant::now();
    if let Some(code) = crate::build_bins(true, release, signals).await? {
        return Ok(code);
    }
    println!("   ✓ built in {:.1} s", built.elapsed().as_secs_f64());
    let Some(pg) = Postgres::acquire(ClusterOptions { name: "saga-bench".into(), durable: true, ..Default::default() }, signals).await? else {
        return Ok(130);
    };
    let result = inner(&s, &pg, signals).await;
    pg.stop().await;
    match result? {
        Ok(()) => Ok(0),
        Err(sig) => {
            eprintln!("xtask: interrupted (signal {sig}); the shop and PostgreSQL are stopped");
            Ok(128 + sig)
        }
    }
}

async fn inner(s: &Settings, pg: &Postgres, signals: &mut Signals) -> Result<Result<(), i32>> {
    let pg_bin = match &pg.cluster {
        Some(c) => c.bin_dir().to_path_buf(),
        None => conveyor_devpg::find_pg_bin_dir()?,
    };
    let server = if pg.cluster.is_some() { "private durable cluster" } else { "DATABASE_URL" };
    let results = conveyor_benchkit::results_dir()?;
    let out_dir = results.join("saga");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let postgres = pg_version(&pg_bin);

    println!(
        "\n== the ceiling: the saga's SQL replayed by pgbench ({} clients, {} s per variant; scripts in {}) ==",
        s.ceiling_clients,
        s.ceiling_secs,
        out_dir.display()
    );
    let postmaster = postmaster(&pg_bin, &pg.admin_url, signals).await?;
    if postmaster.is_none() {
        println!("   (PostgreSQL's processes are not visible here: its CPU is not measured)");
    }
    let sampler = cpu::Sampler::new(Vec::new(), postmaster);
    let copts = ceiling::CeilingOptions { seconds: s.ceiling_secs, clients: s.ceiling_clients, products: s.products, customers: s.customers };
    let ceiling = step!(ceiling::measure(&pg_bin, &pg.admin_url, &out_dir, &copts, &sampler, signals).await);

    let build = if s.build == Build::Release { "release" } else { "debug" };
    let app_bin = workspace_root().join("target").join(build);
    let logs = out_dir.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    let mut shops = Vec::new();
    for mode in s.mode.saga_modes() {
        println!("\n== the shop, {mode}: every API and worker ({build} build) on the same PostgreSQL, a fresh stack ==");
        shops.push(step!(stack::measure(s, mode, &pg.admin_url, &pg_bin, &app_bin, &logs.join(mode.as_str()), signals).await));
    }

    let report = report::build(s, conveyor_benchkit::Machine::detect(), postgres, server.to_owned(), ceiling, shops);
    let md = report::markdown(&report);
    let (json_path, md_path, svg_path) = (results.join("saga-report.json"), results.join("saga-report.md"), results.join("saga-report.svg"));
    conveyor_benchkit::write_json(&json_path, &report)?;
    std::fs::write(&md_path, &md).with_context(|| format!("could not write {}", md_path.display()))?;
    conveyor_benchkit::write_svg(&svg_path, &report::charts(&report))?;
    println!("\n{md}");
    println!("xtask: report written to {}, {} and {}", json_path.display(), md_path.display(), svg_path.display());
    Ok(Ok(()))
}

/// PostgreSQL's process labels for CPU accounting: pid → database, or the backend type
/// for background processes (see [`parse_labels`]).
const LABELS_SQL: &str = "SELECT pid, coalesce(datname, backend_type) FROM pg_stat_activity";

fn parse_labels(text: &str) -> BTreeMap<u32, String> {
    text.lines()
        .filter_map(|l| l.split_once('|'))
        .filter_map(|(pid, label)| Some((pid.trim().parse().ok()?, label.trim().trim_start_matches(stack::DB_PREFIX).to_owned())))
        .collect()
}

/// Whole numbers from one psql row (`a|b|c`).
fn query_u64s(text: &str) -> Result<Vec<u64>> {
    text.trim().split('|').map(|v| v.trim().parse::<u64>().with_context(|| format!("not a number from the database: {text:?}"))).collect()
}

/// The postmaster's pid: the parent of the checkpointer, when PostgreSQL runs on this
/// machine where we can see its processes.
async fn postmaster(pg_bin: &Path, url: &str, signals: &mut Signals) -> Result<Option<u32>> {
    let text = match psql(pg_bin, url, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'", signals).await? {
        Ok(t) => t,
        Err(_) => return Ok(None),
    };
    let Ok(pid) = text.trim().parse::<u32>() else { return Ok(None) };
    Ok(cpu::proc_times(pid).map(|t| t.ppid).filter(|pm| cpu::proc_times(*pm).is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn quick_is_short_and_runs_the_debug_build() {
        let s = Settings::from_args(&Cli::parse_from(["x", "--quick"]).args);
        assert_eq!((s.build, s.ceiling_secs, s.bisections), (Build::Debug, 2, 0));
        assert!(s.step_secs * 2.0 + s.latency_secs + s.hot_secs <= 13.0);
        assert!(s.hot);
        let full = Settings::from_args(&Cli::parse_from(["x"]).args);
        assert_eq!(full.build, Build::Release);
        assert_eq!((full.hot, full.hot_products, full.hot_stock, full.hot_secs), (true, 5, None, 30.0));
        let cold = Settings::from_args(&Cli::parse_from(["x", "--quick", "--no-hot", "--hot-stock", "7"]).args);
        assert_eq!((cold.hot, cold.hot_stock), (false, Some(7)));
        let debug = Settings::from_args(&Cli::parse_from(["x", "--build", "debug", "--step-secs", "5"]).args);
        assert_eq!((debug.build, debug.step_secs), (Build::Debug, 5.0));
    }

    #[test]
    fn the_mode_picks_the_sagas_choreography_first() {
        let mode = |args: &[&str]| Settings::from_args(&Cli::parse_from(["x"].iter().chain(args)).args).mode.saga_modes();
        assert_eq!(mode(&[]), [SagaMode::Choreography]);
        assert_eq!(mode(&["--mode", "orchestration"]), [SagaMode::Orchestration]);
        assert_eq!(mode(&["--quick", "--mode", "both"]), [SagaMode::Choreography, SagaMode::Orchestration]);
        assert!(Cli::try_parse_from(["x", "--mode", "neither"]).is_err());
    }

    #[test]
    fn labels_and_numbers_parse() {
        let l = parse_labels("101|saga_orders\n102|checkpointer\nbad\n");
        assert_eq!(l[&101], "orders");
        assert_eq!(l[&102], "checkpointer");
        assert_eq!(query_u64s("3|4|5").unwrap(), [3, 4, 5]);
        assert!(query_u64s("3|x").is_err());
    }
}
