//! `cargo xtask chaos`: a shop of its own on a private, durable PostgreSQL; orders driven at
//! a steady rate at a few products and customers while workers and APIs are SIGKILLed and
//! started again, PostgreSQL is crash-restarted and fault flags are switched, all at times
//! drawn from a printed seed; then every fault is undone, the shop settles (bounded) and the
//! audit runs. The work is `conveyor_launcher::chaos`; this is its command line. Writes
//! target/chaos/chaos.json and chaos.md; exits non-zero when the audit fails or the shop did
//! not settle.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use conveyor_devpg::ClusterOptions;
use conveyor_launcher::chaos::{self, ChaosOptions, FaultKind, Pace};
use conveyor_launcher::{Stack, StackOptions};

use crate::proc::Signals;
use crate::{Postgres, workspace_root};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Length of each round (e.g. 60s, 5m).
    #[arg(long, default_value = "60s", value_parser = conveyor_launcher::audit::parse_duration)]
    duration: Duration,
    /// Rounds, each with a plan of its own; the audit runs once, after the last.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Orders placed per second (each with an Idempotency-Key; retried with the same key
    /// when the answer is a connection error, a 5xx or "key in use").
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seed of the fault plan and of the orders; by default a new one, printed first, so
    /// that a run can be repeated.
    #[arg(long)]
    seed: Option<u64>,
    /// Which faults to inject (comma-separated): kill-workers, kill-apis, pg-restart, flags.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = FaultKind::ALL)]
    faults: Vec<FaultKind>,
    /// Products ordered, with stock for about a third of what the orders ask for (stock runs
    /// out about two thirds into the run; later orders are cancelled out of stock).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    products: u32,
    /// Customers placing the orders: half can pay for all they order, half for about a
    /// sixth of it (their orders are declined, the stock released).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    customers: u32,
    /// How long the shop may take, after the faults stop, until every accepted order is
    /// confirmed or cancelled and every queue is empty.
    #[arg(long, default_value = "120s", value_parser = conveyor_launcher::audit::parse_duration)]
    settle: Duration,
    /// Mean time between two faults.
    #[arg(long, default_value = "5s", value_parser = conveyor_launcher::audit::parse_duration)]
    fault_every: Duration,
    // --saga-mode, --delivery (pulled, a killed worker is a killed puller).
    #[command(flatten)]
    shop: crate::up::ShopArgs,
    /// Build and run release binaries.
    #[arg(long)]
    release: bool,
}

/// Returns the exit code.
pub async fn run(args: Args, signals: &mut Signals) -> Result<i32> {
    anyhow::ensure!(
        args.rate > 0.0 && args.rate <= 10_000.0,
        "--rate must be above 0 and at most 10000"
    );
    anyhow::ensure!(
        args.duration >= Duration::from_secs(1),
        "--duration must be at least 1s"
    );
    anyhow::ensure!(
        args.fault_every >= Duration::from_millis(100),
        "--fault-every must be at least 100ms"
    );
    let seed = args.seed.unwrap_or_else(new_seed);
    println!("xtask: chaos seed {seed} (repeat with --seed {seed})");
    println!(
        "xtask: building the binaries (cargo build --workspace --bins{})",
        if args.release { " --release" } else { "" }
    );
    if let Some(code) = crate::build_bins(true, args.release, signals).await? {
        return Ok(code);
    }
    // Durable: with synchronous_commit=off (the test setting) a crash of PostgreSQL loses
    // the last commits, which the audit would rightly report.
    let Some(pg) = Postgres::acquire(
        ClusterOptions {
            name: "chaos".into(),
            durable: true,
            ..Default::default()
        },
        signals,
    )
    .await?
    else {
        return Ok(130);
    };
    let result = with_pg(&args, seed, &pg, signals).await;
    pg.stop().await;
    result
}

async fn with_pg(args: &Args, seed: u64, pg: &Postgres, signals: &mut Signals) -> Result<i32> {
    let mut faults = args.faults.clone();
    faults.sort();
    faults.dedup();
    if pg.cluster.is_none() && faults.contains(&FaultKind::PgRestart) {
        println!("xtask: DATABASE_URL's server is not ours to crash: no pg-restart faults");
        faults.retain(|f| *f != FaultKind::PgRestart);
    }
    let target = workspace_root().join("target");
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let out_dir = target.join("chaos");
    let run_dir = out_dir.join(format!("run-{secs}"));
    let mut opts = StackOptions::new(
        pg.admin_url.clone(),
        target.join(if args.release { "release" } else { "debug" }),
        run_dir.join("logs"),
    );
    opts.log_format = "text".into();
    args.shop.apply(&mut opts);
    if pg.cluster.is_none() {
        // A server shared with other runs: databases of this run's own, so the audit sees
        // only this run's orders.
        opts.db_prefix = format!("chaos_{secs}_");
    }
    let started = Instant::now();
    let mut stack = tokio::select! {
        s = Stack::start(opts, |line| println!("  ✓ {line}")) => s?,
        sig = signals.wait() => return Ok(128 + sig),
    };
    println!(
        "xtask: the shop is up ({:.1} s); logs in {}",
        started.elapsed().as_secs_f64(),
        run_dir.join("logs").display()
    );
    let chaos_opts = ChaosOptions {
        seed,
        rounds: args.rounds,
        duration: args.duration,
        rate: args.rate,
        products: args.products as usize,
        customers: args.customers as usize,
        settle: args.settle,
        max_lines: 2,
        max_quantity: 3,
        max_in_flight: 512,
        give_up: Duration::from_secs(30),
        pace: Pace {
            mean_gap: args.fault_every,
            ..Pace::default()
        },
        command: repeat_command(args, seed, &faults),
        faults,
    };
    let outcome = tokio::select! {
        r = chaos::run(&mut stack, pg.cluster.as_ref(), &chaos_opts, |line| println!("xtask: {line}")) => Some(r),
        _ = signals.wait() => None,
    };
    println!("xtask: stopping the shop");
    if let Err(e) = stack.stop().await {
        println!("xtask: warning: {e:#}");
    }
    let report = match outcome {
        None => return Ok(130),
        Some(r) => r?,
    };
    match (&report.audit, &report.audit_error) {
        (Some(a), _) => println!("Audit:\n{}", a.to_text()),
        (None, Some(e)) => println!("Audit could not run: {e}"),
        (None, None) => {}
    }
    println!("{}", report.summary());
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let json = serde_json::to_string_pretty(&report)?;
    let md = report.to_markdown();
    for dir in [&out_dir, &run_dir] {
        write(dir.join("chaos.json"), &json)?;
        write(dir.join("chaos.md"), &md)?;
    }
    println!(
        "xtask: reports in {} and {}",
        out_dir.join("chaos.md").display(),
        out_dir.join("chaos.json").display()
    );
    match report.failure() {
        None => {
            println!("xtask: chaos PASSED (seed {seed})");
            Ok(0)
        }
        Some(why) => {
            eprintln!(
                "xtask: chaos FAILED: {why}\n  repeat with: {}",
                report.command
            );
            Ok(1)
        }
    }
}

fn write(path: PathBuf, text: &str) -> Result<()> {
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// A seed nobody chose: the clock's nanoseconds and the process id, mixed.
fn new_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    chaos::SeededRng::new(nanos ^ u64::from(std::process::id()) << 40).next_u64() >> 12
}

/// The command line that repeats this run (the seed and every option spelled out).
fn repeat_command(args: &Args, seed: u64, faults: &[FaultKind]) -> String {
    let faults: Vec<String> = faults
        .iter()
        .map(|f| {
            clap::ValueEnum::to_possible_value(f)
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default()
        })
        .collect();
    let secs = |d: Duration| format!("{}s", d.as_secs_f64());
    format!(
        "cargo xtask chaos --seed {seed} --rounds {} --duration {} --rate {} --faults {} --products {} --customers {} --settle {} --fault-every {} --saga-mode {} --delivery {}{}",
        args.rounds,
        secs(args.duration),
        args.rate,
        if faults.is_empty() {
            "''".to_owned()
        } else {
            faults.join(",")
        },
        args.products,
        args.customers,
        secs(args.settle),
        secs(args.fault_every),
        args.shop.saga_mode,
        args.shop.delivery.delivery,
        if args.release { " --release" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: super::Args,
    }

    #[test]
    fn defaults_and_the_repeat_command_parse_back() {
        let cli = Cli::try_parse_from(["chaos"]).unwrap();
        assert_eq!(cli.args.faults, super::FaultKind::ALL);
        assert_eq!(
            (cli.args.rounds, cli.args.rate, cli.args.products),
            (1, 20.0, 4)
        );
        let command = super::repeat_command(&cli.args, 42, &cli.args.faults);
        let words: Vec<&str> = command.split_whitespace().skip(2).collect();
        let again = Cli::try_parse_from(words).unwrap();
        assert_eq!(again.args.seed, Some(42));
        assert_eq!(again.args.duration, cli.args.duration);
        assert_eq!(again.args.faults, cli.args.faults);
        let some =
            Cli::try_parse_from(["chaos", "--faults", "flags,kill-apis", "--duration", "30s"])
                .unwrap();
        assert_eq!(
            some.args.faults,
            [super::FaultKind::Flags, super::FaultKind::KillApis]
        );
        assert!(Cli::try_parse_from(["chaos", "--faults", "meteor"]).is_err());
    }
}
