//! `cargo xtask up`: the whole shop on this machine — a private PostgreSQL (or
//! DATABASE_URL's server), one database per service, every migrator, every API and worker
//! as its own process, a webhook receiver standing in for the customer's inbox, demo data —
//! until Ctrl-C, which stops everything.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use conveyor_devpg::ClusterOptions;
use conveyor_launcher::{Stack, StackOptions, Terminal, demo};

use crate::proc::{Outcome, Signals};
use crate::{Postgres, cargo, workspace_root};

#[derive(clap::Args)]
pub struct UpArgs {
    /// Place one demo order, show how it ended, and stop (a smoke check) instead of
    /// running until Ctrl-C.
    #[arg(long)]
    no_wait: bool,
    /// APIs listen on BASE+1..BASE+5, the webhook receiver on BASE+10, workers on
    /// BASE+101..BASE+105.
    #[arg(long, default_value_t = 8080)]
    base_port: u16,
    /// Build and run release binaries.
    #[arg(long)]
    release: bool,
}

pub async fn up(args: UpArgs, signals: &mut Signals) -> Result<i32> {
    let started = Instant::now();
    println!("xtask: building the binaries (cargo build --workspace --bins{})", if args.release { " --release" } else { "" });
    let mut build = tokio::process::Command::new(cargo());
    build.args(["build", "--quiet", "--workspace", "--bins"]).current_dir(workspace_root());
    if args.release {
        build.arg("--release");
    }
    match crate::proc::run(build, signals).await? {
        Outcome::Exited(0) => {}
        Outcome::Exited(code) => return Ok(code),
        Outcome::Interrupted(sig) => return Ok(128 + sig),
    }
    let built = started.elapsed();
    let started = Instant::now();
    println!("  ✓ binaries built ({:.1} s)", built.as_secs_f64());
    let Some(pg) = Postgres::acquire(ClusterOptions { name: "up".into(), ..Default::default() }, signals).await? else {
        return Ok(130);
    };
    let result = run(&args, &pg, started, signals).await;
    pg.stop().await;
    result
}

async fn run(args: &UpArgs, pg: &Postgres, started: Instant, signals: &mut Signals) -> Result<i32> {
    let target = workspace_root().join("target");
    let bin_dir = target.join(if args.release { "release" } else { "debug" });
    let log_dir = target.join("conveyor-up").join(chrono_stamp());
    let mut opts = StackOptions::new(pg.admin_url.clone(), bin_dir, log_dir.clone());
    opts.base_port = Some(args.base_port);
    opts.log_format = "text".into();
    let stack = tokio::select! {
        s = Stack::start(opts, |line| println!("  ✓ {line}")) => s?,
        sig = signals.wait() => return Ok(128 + sig),
    };
    let shop = stack.shop();
    let demo = tokio::select! {
        d = demo::seed(&shop) => d.context("loading the demo data")?,
        sig = signals.wait() => { stack.stop().await.ok(); return Ok(128 + sig) },
    };
    println!("  ✓ demo data loaded: {} products, {} customers", demo.products.len(), demo.customers.len());
    println!();
    println!("Conveyor is up: ready {:.1} s after the build. Logs: {}", started.elapsed().as_secs_f64(), log_dir.display());
    println!();
    for svc in conveyor_contracts::service::ALL {
        let url = &stack.api[svc];
        println!("  {:<20} {url}   docs {url}/docs   metrics {url}/metrics", format!("{svc}-api"));
    }
    for svc in conveyor_contracts::service::ALL {
        let url = &stack.worker[svc];
        println!("  {:<20} {url}   health {url}/health/ready   metrics {url}/metrics", format!("{svc}-worker"));
    }
    println!("  {:<20} {}/notifications   (what customers were sent)", "webhook-sink", stack.sink);
    println!();
    for (name, id, price, stock) in &demo.products {
        println!("  product  {id}  {name} ({}.{:02} EUR, {stock} in stock)", price / 100, price % 100);
    }
    for (name, id, balance) in &demo.customers {
        println!("  customer {id}  {name} (balance {}.{:02} EUR)", balance / 100, balance % 100);
    }
    println!();
    let lamp = demo.products[0].1;
    println!("Try: curl -s -X POST {}/orders -H 'content-type: application/json' -H 'Idempotency-Key: my-first-order' \\", stack.api["order"]);
    println!("       -d '{{\"customer_id\":\"{}\",\"lines\":[{{\"product_id\":\"{lamp}\",\"quantity\":2}}]}}'", demo::ALICE);
    println!();
    let code = if args.no_wait {
        smoke(&shop, lamp).await.map(|()| 0)?
    } else {
        println!("Ctrl-C to stop everything");
        signals.wait().await;
        println!();
        0
    };
    println!("xtask: stopping every process");
    stack.stop().await?;
    println!("xtask: stopped");
    Ok(code)
}

/// One order through the whole saga: placed, confirmed, notified.
async fn smoke(shop: &conveyor_launcher::Shop, product: uuid::Uuid) -> Result<()> {
    let order = shop.order_placed(demo::ALICE, &[(product, 1)]).await?;
    let outcome = shop.wait_terminal(order, Duration::from_secs(60)).await?;
    anyhow::ensure!(outcome == Terminal::Confirmed, "the demo order ended {outcome:?}");
    conveyor_launcher::wait_for("the demo order's notification", Duration::from_secs(60), || async {
        Ok(!shop.notifications(order).await?.is_empty())
    })
    .await?;
    let n = &shop.notifications(order).await?[0];
    println!("demo order {order}: confirmed; notified: {}", n["subject"]);
    Ok(())
}

/// A sortable local timestamp for the log directory's name.
fn chrono_stamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("run-{secs}")
}
