//! `cargo xtask` — the project's developer commands.
//!
//! * `cargo xtask test` — every test, against a private throw-away PostgreSQL.
//! * `cargo xtask up` — the whole shop (private PostgreSQL, every service's API and worker,
//!   demo data), kept running until Ctrl-C.
//! * `cargo xtask pg` — just a private PostgreSQL until Ctrl-C.
//! * `cargo xtask bench queue` — the queue engine's benchmarks against a raw-SQL reference.
//! * `cargo xtask bench saga` — the shop's highest sustained saga rate against its SQL replayed.
//! * `cargo xtask bench peers` — one queue hop: ours, pgmq and RabbitMQ in one run.
//! * `cargo xtask bench soak` — throughput, table size and dead tuples over a long run, ours
//!   and pgmq, optionally while a snapshot holds the xmin horizon back.
//! * `cargo xtask load` — the goose load test against the local shop (started if none runs).
//! * `cargo xtask fuzz` — schemathesis against every API's OpenAPI document, on a shop of its own.
//! * `cargo xtask fault` — show or switch the fault flags of the running shop.
//! * `cargo xtask audit` — the shop's invariants across every database and the webhook receiver.
//! * `cargo xtask chaos` — orders under killed processes, PostgreSQL crashes and fault flags; then the audit.

mod apt;
mod audit;
mod bench;
mod chaos;
mod fault;
mod fuzz;
mod load;
mod proc;
mod projections;
mod up;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use conveyor_devpg::{ClusterOptions, PgCluster};

use crate::proc::{Outcome, Signals};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Conveyor developer commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every test (`cargo test --workspace`) against a private throw-away PostgreSQL.
    ///
    /// Set DATABASE_URL (an admin URL, e.g. postgres://postgres@localhost/postgres) to use a
    /// server of your own instead; each test creates its own database there.
    Test {
        /// Extra arguments for `cargo test`, e.g. `cargo xtask test -- -p conveyor-queue -- --nocapture`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CARGO_TEST_ARGS"
        )]
        args: Vec<String>,
    },
    /// Run the whole shop: a private PostgreSQL (or DATABASE_URL's server), one database per
    /// service, every migrator, every API and worker as its own process, a webhook receiver
    /// and demo data; prints the URLs and runs until Ctrl-C.
    Up(up::UpArgs),
    /// Start a private PostgreSQL, print its URL and keep it running until Ctrl-C.
    Pg {
        /// PostgreSQL's durable defaults instead of fsync=off (the test setting).
        #[arg(long)]
        durable: bool,
    },
    /// Load-test the shop with goose (loadtest/): browse, view, order, list orders.
    ///
    /// Uses the shop running on --base-port (`cargo xtask up`), or starts one (private
    /// PostgreSQL or DATABASE_URL's server, demo data) and stops it afterwards. Writes
    /// target/loadtest/report.html, target/loadtest/summary.json and summary.svg.
    Load(load::LoadArgs),
    /// Fuzz every API with schemathesis against its /openapi.json: no 5xx, and every answer
    /// (errors included: application/problem+json) as documented.
    ///
    /// Starts a shop of its own (private PostgreSQL or DATABASE_URL's server, demo data) and
    /// calls as an operator; installs schemathesis (pinned in xtask/fuzz-requirements.txt)
    /// into target/fuzz-venv when missing. Reports in target/conveyor-fuzz/.
    Fuzz(fuzz::FuzzArgs),
    /// Check the shop's invariants across every service database and the webhook receiver.
    Audit(audit::Args),
    /// Drive orders while killing processes, restarting PostgreSQL and switching fault flags; then audit.
    Chaos(chaos::Args),
    /// Show or switch the fault flags of a running shop.
    Fault(fault::Args),
    /// The order service's read models: their lag (`status`), or rebuild them from the event
    /// store while the shop runs (`rebuild`).
    Projections(projections::Args),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Queue engine throughput and wake-up latency, next to a raw-SQL pgbench reference.
    ///
    /// Uses a private durable PostgreSQL (or DATABASE_URL's server). Environment:
    /// BENCH_CLIENTS (default 4), BENCH_SECONDS per reference scenario (default 10).
    /// Writes target/bench-results/queue-report.{json,md}.
    Queue(bench::QueueArgs),
    /// The saga benchmark: the highest sustained placed → confirmed rate of the running shop,
    /// saga latency at half that rate, and the saga's SQL replayed by pgbench as the ceiling.
    Saga(bench::saga::Args),
    /// Our queue hop next to pgmq and RabbitMQ, in one run on one machine.
    Peers(bench::peers::Args),
    /// A long run of the queue recording throughput, table sizes and dead tuples over time,
    /// ours and pgmq one after the other, optionally with the xmin horizon held (--hold-xmin).
    Soak(bench::soak::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async {
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("xtask: {e:#}");
                return 1;
            }
        };
        let result = match cli.command {
            Cmd::Test { args } => cmd_test(args, &mut signals).await,
            Cmd::Up(args) => up::up(args, &mut signals).await,
            Cmd::Pg { durable } => cmd_pg(durable, &mut signals).await,
            Cmd::Load(args) => load::load(args, &mut signals).await,
            Cmd::Fuzz(args) => fuzz::fuzz(args, &mut signals).await,
            Cmd::Audit(args) => audit::run(args, &mut signals).await,
            Cmd::Chaos(args) => chaos::run(args, &mut signals).await,
            Cmd::Fault(args) => fault::run(args, &mut signals).await,
            Cmd::Projections(args) => projections::run(args, &mut signals).await,
            Cmd::Bench { what } => match what {
                BenchCmd::Queue(args) => bench::queue(args, &mut signals).await,
                BenchCmd::Saga(args) => bench::saga::run(args, &mut signals).await,
                BenchCmd::Peers(args) => bench::peers::run(args, &mut signals).await,
                BenchCmd::Soak(args) => bench::soak::run(args, &mut signals).await,
            },
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("xtask: error: {e:#}");
                1
            }
        }
    });
    drop(rt);
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// `cargo build --workspace --bins` (quietly, or in release mode); `Some(exit code)` when
/// it failed or a signal stopped it, `None` when the binaries are ready.
pub async fn build_bins(quiet: bool, release: bool, signals: &mut Signals) -> Result<Option<i32>> {
    let mut build = tokio::process::Command::new(cargo());
    build.args(["build", "--workspace", "--bins"]).current_dir(workspace_root());
    if quiet {
        build.arg("--quiet");
    }
    if release {
        build.arg("--release");
    }
    Ok(match proc::run(build, signals).await? {
        Outcome::Exited(0) => None,
        Outcome::Exited(code) => Some(code),
        Outcome::Interrupted(sig) => Some(128 + sig),
    })
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent dir")
        .to_path_buf()
}

/// The `cargo` that runs us (cargo sets `CARGO`), else `cargo` from PATH.
pub fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// `DATABASE_URL` when set and non-empty.
pub fn env_database_url() -> Option<String> {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
}

/// The URL with any password replaced by `***`, for printing.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &url[scheme_end + 3 + at..]
        ),
        _ => url.to_string(),
    }
}

/// Where the tests/demo/bench get their PostgreSQL: a private cluster, or DATABASE_URL's server.
pub struct Postgres {
    pub cluster: Option<PgCluster>,
    pub admin_url: String,
}

impl Postgres {
    /// Start a private cluster unless DATABASE_URL is set; print one line saying which is used.
    /// Returns `None` when a signal arrived while starting (the cluster is stopped again).
    pub async fn acquire(opts: ClusterOptions, signals: &Signals) -> Result<Option<Postgres>> {
        if let Some(url) = env_database_url() {
            println!(
                "xtask: using the PostgreSQL server from DATABASE_URL: {}",
                redact(&url)
            );
            return Ok(Some(Postgres {
                cluster: None,
                admin_url: url,
            }));
        }
        let durable = opts.durable;
        let cluster = tokio::task::spawn_blocking(move || PgCluster::start(opts))
            .await
            .context("cluster start task failed")??;
        if signals.received().is_some() {
            cluster.stop();
            return Ok(None);
        }
        let version = pg_version(cluster.bin_dir());
        println!(
            "xtask: using a private {version} at {} ({}, data in {}; stopped and deleted on exit)",
            cluster.admin_url(),
            if durable { "durable" } else { "fsync=off" },
            cluster.root_dir().display()
        );
        let admin_url = cluster.admin_url();
        Ok(Some(Postgres {
            cluster: Some(cluster),
            admin_url,
        }))
    }

    /// Stop the private cluster (if any), off the async threads.
    pub async fn stop(self) {
        if let Some(c) = self.cluster {
            let _ = tokio::task::spawn_blocking(move || c.stop()).await;
        }
    }
}

/// "PostgreSQL 15.x" from `postgres --version`.
pub fn pg_version(bin_dir: &Path) -> String {
    std::process::Command::new(bin_dir.join("postgres"))
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
            let s = String::from_utf8_lossy(&o.stdout).to_string();
            let v = s
                .split_once("(PostgreSQL)")?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            Some(format!("PostgreSQL {v}"))
        })
        .unwrap_or_else(|| "PostgreSQL".to_string())
}

/// What the tests use from outside the workspace besides PostgreSQL: a real Prometheus (the
/// e2e test of the rules and dashboards' queries) and Chromium (the /docs page test).
const TEST_PROGRAMS: &[(&str, &str)] = &[("prometheus", "prometheus"), ("promtool", "prometheus"), ("chromium", "chromium")];

async fn cmd_test(args: Vec<String>, signals: &mut Signals) -> Result<i32> {
    if let Err(code) = apt::require("cargo xtask test", TEST_PROGRAMS, signals).await? {
        return Ok(code);
    }
    let Some(pg) = Postgres::acquire(
        ClusterOptions {
            name: "test".into(),
            ..Default::default()
        },
        signals,
    )
    .await?
    else {
        return Ok(130);
    };
    // The end-to-end tests run the shipped binaries as processes: build them first.
    if let Some(code) = build_bins(false, false, signals).await? {
        pg.stop().await;
        return Ok(code);
    }
    let mut cmd = tokio::process::Command::new(cargo());
    cmd.arg("test");
    let picks_packages = args.iter().take_while(|a| *a != "--").any(|a| {
        a == "-p" || a.starts_with("--package") || a.starts_with("-p") || a == "--workspace"
    });
    if !picks_packages {
        cmd.arg("--workspace");
    }
    cmd.args(&args)
        .current_dir(workspace_root())
        .env("DATABASE_URL", &pg.admin_url);
    let outcome = proc::run(cmd, signals).await;
    pg.stop().await;
    match outcome? {
        Outcome::Exited(code) => Ok(code),
        Outcome::Interrupted(sig) => {
            eprintln!("xtask: interrupted; tests stopped, PostgreSQL stopped");
            Ok(128 + sig)
        }
    }
}

async fn cmd_pg(durable: bool, signals: &mut Signals) -> Result<i32> {
    if env_database_url().is_some() {
        println!("xtask: note: DATABASE_URL is set but `pg` always starts a private cluster");
    }
    let opts = ClusterOptions {
        name: "pg".into(),
        durable,
        ..Default::default()
    };
    let cluster = tokio::task::spawn_blocking(move || PgCluster::start(opts))
        .await
        .context("cluster start task failed")??;
    let pg = Postgres {
        admin_url: cluster.admin_url(),
        cluster: Some(cluster),
    };
    if signals.received().is_none() {
        let c = pg.cluster.as_ref().expect("cluster");
        println!(
            "xtask: private {} ({}) running, data in {}",
            pg_version(c.bin_dir()),
            if durable { "durable" } else { "fsync=off" },
            c.root_dir().display()
        );
        println!("{}", pg.admin_url);
        println!(
            "  psql: {} '{}'",
            c.bin_dir().join("psql").display(),
            pg.admin_url
        );
        println!("Ctrl-C to stop");
        signals.wait().await;
        println!("xtask: stopping PostgreSQL");
    }
    pg.stop().await;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1:5/db"),
            "postgres://postgres@127.0.0.1:5/db"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn cli_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn test_passes_extra_args() {
        let cli =
            Cli::try_parse_from(["xtask", "test", "--", "-p", "x", "--", "--nocapture"]).unwrap();
        match cli.command {
            Cmd::Test { args } => assert_eq!(args, ["-p", "x", "--", "--nocapture"]),
            _ => panic!("wrong command"),
        }
    }
}
