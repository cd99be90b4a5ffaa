//! `cargo xtask load`: the goose load test (`loadtest/`, binary `conveyor-loadtest`) against
//! the local shop. When a shop answers on --base-port (as `cargo xtask up` runs it), the load
//! test uses it; otherwise xtask starts one the way `up` does (private PostgreSQL or
//! DATABASE_URL's server, every migrator, API and worker, demo data), on free ports, and
//! stops it afterwards. Writes target/loadtest/report.html and target/loadtest/summary.json.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use conveyor_contracts::service;
use conveyor_devpg::ClusterOptions;
use conveyor_launcher::{Stack, StackOptions, demo};

use crate::proc::{Outcome, Signals};
use crate::{Postgres, workspace_root};

#[derive(clap::Args)]
pub struct LoadArgs {
    /// A short check for CI: 8 users for 5 s, then the run must have completed and written
    /// report.html and summary.json with at least one confirmed order. Never checks speed.
    #[arg(long)]
    smoke: bool,
    /// Concurrent goose users.
    #[arg(long, default_value_t = 16)]
    users: usize,
    /// Users started per second (goose's --increase-rate).
    #[arg(long, default_value = "4")]
    hatch_rate: String,
    /// How long to run once every user has started (goose's --run-time: 60s, 2m30s, …).
    #[arg(long, default_value = "60s")]
    run_time: String,
    /// Where to look for a running shop (APIs on BASE+1..BASE+5, as `cargo xtask up`).
    #[arg(long, default_value_t = 8080)]
    base_port: u16,
    /// Build and run release binaries (the load test, and the shop when xtask starts it).
    #[arg(long)]
    release: bool,
    // --saga-mode and --delivery: for a shop xtask starts; a running one keeps its own.
    #[command(flatten)]
    shop: crate::up::ShopArgs,
    /// Extra options for conveyor-loadtest / goose, after `--`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "LOADTEST_ARGS")]
    args: Vec<String>,
}

pub async fn load(args: LoadArgs, signals: &mut Signals) -> Result<i32> {
    let started = Instant::now();
    println!("xtask: building the binaries (cargo build --workspace --bins{})", if args.release { " --release" } else { "" });
    if let Some(code) = crate::build_bins(true, args.release, signals).await? {
        return Ok(code);
    }
    println!("  ✓ binaries built ({:.1} s)", started.elapsed().as_secs_f64());

    let order_port = conveyor_launcher::api_port(args.base_port, service::ORDER).context("--base-port too high")?;
    if answers_ready(order_port) {
        println!("xtask: a shop answers on 127.0.0.1:{order_port}: load-testing it (APIs on --base-port {} + 1..5)", args.base_port);
        let mut urls = LOADED.map(String::from);
        for url in &mut urls {
            let port = conveyor_launcher::api_port(args.base_port, url).context("--base-port too high")?;
            *url = format!("http://127.0.0.1:{port}");
        }
        let issuer = workspace_root().join("target").join("conveyor-up").join("issuer.json");
        anyhow::ensure!(issuer.is_file(), "no {}: the load test signs its tokens with the running shop's issuer, which `cargo xtask up` writes there", issuer.display());
        return run_and_check(&args, &urls, &issuer, signals).await;
    }
    println!("xtask: no shop answers on 127.0.0.1:{order_port}: starting one");
    let Some(pg) = Postgres::acquire(ClusterOptions { name: "load".into(), ..Default::default() }, signals).await? else {
        return Ok(130);
    };
    let result = with_own_stack(&args, &pg, signals).await;
    pg.stop().await;
    result
}

async fn with_own_stack(args: &LoadArgs, pg: &Postgres, signals: &mut Signals) -> Result<i32> {
    let target = workspace_root().join("target");
    let bin_dir = target.join(if args.release { "release" } else { "debug" });
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let log_dir = target.join("conveyor-load").join(format!("run-{secs}"));
    let mut opts = StackOptions::new(pg.admin_url.clone(), bin_dir, log_dir.clone());
    opts.log_format = "text".into();
    // Free ports: never in the way of a `cargo xtask up` or of another run.
    opts.base_port = None;
    // Databases of their own (load_catalog, …), reused by the next run like `up` reuses its.
    opts.db_prefix = "load_".into();
    args.shop.apply(&mut opts);
    let stack = tokio::select! {
        s = Stack::start(opts, |line| println!("  ✓ {line}")) => s?,
        sig = signals.wait() => return Ok(128 + sig),
    };
    let shop = stack.shop();
    let seeded = tokio::select! {
        d = demo::seed(&shop) => d.context("loading the demo data"),
        sig = signals.wait() => { stack.stop().await.ok(); return Ok(128 + sig) },
    };
    let result = match seeded {
        Ok(d) => {
            println!("  ✓ demo data loaded: {} products, {} customers; logs in {}", d.products.len(), d.customers.len(), log_dir.display());
            let urls = LOADED.map(|s| stack.api[s].clone());
            run_and_check(args, &urls, &stack.issuer_file(), signals).await
        }
        Err(e) => Err(e),
    };
    println!("xtask: stopping the shop");
    let stopped = stack.stop().await;
    let code = result?;
    stopped?;
    Ok(code)
}

/// The APIs the load test drives, in the order of `run_and_check`'s URLs.
const LOADED: [&str; 4] = [service::CATALOG, service::ORDER, service::STOCK, service::PAYMENT];

/// Runs conveyor-loadtest against catalog, order, stock and payment `urls`; with --smoke,
/// checks what it wrote.
async fn run_and_check(args: &LoadArgs, urls: &[String; 4], issuer: &std::path::Path, signals: &mut Signals) -> Result<i32> {
    let out_dir = workspace_root().join("target").join("loadtest");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let (report, summary) = (out_dir.join("report.html"), out_dir.join("summary.json"));
    for stale in [&report, &summary, &summary.with_extension("svg")] {
        let _ = std::fs::remove_file(stale);
    }
    let (users, rate, time) = if args.smoke { (8, "8".to_owned(), "5s".to_owned()) } else { (args.users, args.hatch_rate.clone(), args.run_time.clone()) };
    let binary = workspace_root().join("target").join(if args.release { "release" } else { "debug" }).join("conveyor-loadtest");
    let mut cmd = tokio::process::Command::new(&binary);
    for (flag, url) in ["--catalog", "--order", "--stock", "--payment"].iter().zip(urls) {
        cmd.args([*flag, url.as_str()]);
    }
    cmd.arg("--summary-file").arg(&summary).arg("--report-file").arg(&report).arg("--issuer").arg(issuer);
    cmd.args(["--users", &users.to_string(), "--increase-rate", &rate, "--run-time", &time]);
    cmd.args(&args.args).current_dir(workspace_root());
    println!("xtask: running conveyor-loadtest: {users} users, {rate} started per second, for {time}");
    match crate::proc::run(cmd, signals).await? {
        Outcome::Exited(0) => {}
        Outcome::Exited(code) => {
            eprintln!("xtask: conveyor-loadtest failed (exit code {code})");
            return Ok(code);
        }
        Outcome::Interrupted(sig) => return Ok(128 + sig),
    }
    if args.smoke {
        check_smoke(&report, &summary)?;
    }
    Ok(0)
}

/// What the CI smoke check requires: the run completed, both files are there, and at least
/// one order went through the whole saga to `confirmed`. Never a speed.
fn check_smoke(report: &Path, summary: &Path) -> Result<()> {
    let html = std::fs::read_to_string(report).with_context(|| format!("the smoke run wrote no {}", report.display()))?;
    if !html.contains("<html") && !html.contains("<!DOCTYPE") {
        bail!("{} is not an HTML report", report.display());
    }
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(summary).with_context(|| format!("the smoke run wrote no {}", summary.display()))?)
        .with_context(|| format!("{} is not JSON", summary.display()))?;
    let plot = summary.with_extension("svg");
    if !std::fs::read_to_string(&plot).is_ok_and(|svg| svg.contains("<svg")) {
        bail!("the smoke run wrote no plot at {}", plot.display());
    }
    let confirmed = s["sagas"]["confirmed"].as_u64().unwrap_or(0);
    if confirmed == 0 {
        bail!("smoke: no order was confirmed during the run (sagas: {})", s["sagas"]);
    }
    let fives = s["totals"]["status_5xx"].as_u64().unwrap_or(0);
    if fives > 0 {
        println!("xtask: warning: {fives} requests answered 5xx: see {}", summary.display());
    }
    println!(
        "xtask: smoke check passed: {} requests, {} sagas ({confirmed} confirmed); {}, {} and {}",
        s["totals"]["requests"],
        s["sagas"]["count"],
        display(report),
        display(summary),
        display(&plot)
    );
    Ok(())
}

fn display(p: &Path) -> String {
    p.strip_prefix(workspace_root()).map(PathBuf::from).unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

/// Whether GET /health/ready on 127.0.0.1:`port` answers 200 (plain HTTP/1.0 over a socket).
fn answers_ready(port: u16) -> bool {
    let Ok(mut conn) = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = [0u8; 12];
    conn.write_all(b"GET /health/ready HTTP/1.0\r\n\r\n").is_ok() && conn.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}
