//! `cargo xtask up`: the whole shop on this machine — a private PostgreSQL (or
//! DATABASE_URL's server), one database per service, every migrator, every API and worker
//! as its own process, a webhook receiver standing in for the customer's inbox, demo data,
//! and a Prometheus scraping all of it when `prometheus` is installed — until Ctrl-C, which
//! stops everything.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use conveyor_devpg::ClusterOptions;
use conveyor_launcher::{Stack, StackOptions, Terminal, demo};

use crate::proc::Signals;
use crate::{Postgres, workspace_root};

#[derive(clap::Args)]
pub struct UpArgs {
    /// Place one demo order, show how it ended, and stop (a smoke check) instead of
    /// running until Ctrl-C.
    #[arg(long)]
    no_wait: bool,
    /// APIs listen on BASE+1..BASE+6, the webhook receiver on BASE+10, workers on
    /// BASE+101..BASE+106, Prometheus (when installed) on BASE+1010.
    #[arg(long, default_value_t = 8080)]
    base_port: u16,
    #[command(flatten)]
    shop: ShopArgs,
    /// Build and run release binaries.
    #[arg(long)]
    release: bool,
}

pub async fn up(args: UpArgs, signals: &mut Signals) -> Result<i32> {
    let started = Instant::now();
    println!("xtask: building the binaries (cargo build --workspace --bins{})", if args.release { " --release" } else { "" });
    if let Some(code) = crate::build_bins(true, args.release, signals).await? {
        return Ok(code);
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
    args.shop.apply(&mut opts);
    let stack = tokio::select! {
        s = Stack::start(opts, |line| println!("  ✓ {line}")) => s?,
        sig = signals.wait() => return Ok(128 + sig),
    };
    let prometheus = Prometheus::start(args.base_port, &log_dir).await;
    let shop = stack.shop();
    let demo = tokio::select! {
        d = demo::seed(&shop) => d.context("loading the demo data")?,
        sig = signals.wait() => { stop_prometheus(prometheus).await; stack.stop().await.ok(); return Ok(128 + sig) },
    };
    println!("  ✓ demo data loaded: {} products, {} customers", demo.products.len(), demo.customers.len());
    println!();
    println!("Conveyor is up: ready {:.1} s after the build. Logs: {}", started.elapsed().as_secs_f64(), log_dir.display());
    println!("Saga mode of new orders: {} (--saga-mode; docs/orchestration.md). Delivery: {} (--delivery).", args.shop.saga_mode, args.shop.delivery.delivery);
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
    println!("  {:<20} {}   (URLs and database URLs of this run, for `cargo xtask audit`)", "stack.json", stack.info_path().display());
    match &prometheus {
        Ok(Some(p)) => println!("  {:<20} {url}   targets {url}/targets   alerts {url}/alerts", "prometheus", url = p.url),
        Ok(None) => println!("  {:<20} not installed: `apt-get install prometheus` would add it (scrapes every process, alert rules)", "prometheus"),
        Err(e) => println!("  {:<20} did not start: {e:#}", "prometheus"),
    }
    println!();
    for (name, id, price, stock) in &demo.products {
        println!("  product  {id}  {name} ({}.{:02} EUR, {stock} in stock)", price / 100, price % 100);
    }
    for (name, id, balance) in &demo.customers {
        println!("  customer {id}  {name} (balance {}.{:02} EUR)", balance / 100, balance % 100);
    }
    println!();
    let tokens = write_tokens(&stack)?;
    println!("Bearer tokens of this run (valid 24 h), also in {}:", tokens.display());
    for (var, token) in token_vars(&stack) {
        println!("  export {var}={token}");
    }
    println!();
    let lamp = demo.products[0].1;
    println!("Try: source {}", tokens.display());
    println!("     curl -s -X POST {}/orders -H \"Authorization: Bearer $ALICE_TOKEN\" -H 'content-type: application/json' -H 'Idempotency-Key: my-first-order' \\", stack.api["order"]);
    println!("       -d '{{\"customer_id\":\"{}\",\"lines\":[{{\"product_id\":\"{lamp}\",\"quantity\":2}}]}}'", demo::ALICE);
    println!();
    let code = if args.no_wait {
        // A failed smoke order still stops everything below before it is reported.
        match smoke(&shop, lamp).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("xtask: the demo order failed: {e:#}");
                1
            }
        }
    } else {
        println!("Ctrl-C to stop everything");
        signals.wait().await;
        println!();
        0
    };
    println!("xtask: stopping every process");
    stop_prometheus(prometheus).await;
    stack.stop().await?;
    println!("xtask: stopped");
    Ok(code)
}

/// The tokens a person trying the shop needs: Alice's, Bob's and an operator's.
fn token_vars(stack: &conveyor_launcher::Stack) -> Vec<(&'static str, String)> {
    vec![("ALICE_TOKEN", stack.issuer.customer(demo::ALICE)), ("BOB_TOKEN", stack.issuer.customer(demo::BOB)), ("OPERATOR_TOKEN", stack.issuer.operator())]
}

/// `target/conveyor-up/tokens.env` (to `source`), and `target/conveyor-up/issuer.json`, the
/// issuer of the running shop, for `cargo xtask load` against it. Both readable by their
/// owner only.
fn write_tokens(stack: &conveyor_launcher::Stack) -> Result<PathBuf> {
    let dir = workspace_root().join("target").join("conveyor-up");
    stack.issuer.save(&dir.join("issuer.json"))?;
    let path = dir.join("tokens.env");
    let text: String = token_vars(stack).into_iter().map(|(var, token)| format!("export {var}={token}\n")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o600);
    std::io::Write::write_all(&mut options.open(&path).with_context(|| format!("creating {}", path.display()))?, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
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

/// Prometheus with prometheus/prometheus.yml, its targets moved to this run's ports, its
/// data and log in the run's directory.
struct Prometheus {
    url: String,
    child: tokio::process::Child,
}

impl Prometheus {
    /// `Ok(None)` when `prometheus` is not installed; an error (shown, not fatal: the shop
    /// runs without it) when it does not start.
    async fn start(base_port: u16, log_dir: &Path) -> Result<Option<Prometheus>> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let Some(binary) = std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]).map(|d| d.join("prometheus")).find(|p| p.is_file()) else {
            return Ok(None);
        };
        let port = base_port.checked_add(1010).context("--base-port too high for Prometheus's port (BASE+1010)")?;
        let config = log_dir.join("prometheus.yml");
        std::fs::write(&config, prometheus_config(base_port)?).with_context(|| format!("writing {}", config.display()))?;
        let log = log_dir.join("prometheus.log");
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = tokio::process::Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", log_dir.join("prometheus-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Its own process group: Ctrl-C reaches xtask only, which stops it in turn.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("prometheus exited ({status}); its log: {}", log.display());
            }
            if answers_ready(port) {
                println!("  ✓ prometheus ready (pid {})", child.id().unwrap_or(0));
                return Ok(Some(Prometheus { url, child }));
            }
            if Instant::now() > deadline {
                anyhow::bail!("not ready at {url}/-/ready within 30 s; its log: {}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether GET /-/ready on 127.0.0.1:`port` answers 200 (plain HTTP/1.0 over a socket).
fn answers_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let mut head = [0u8; 12];
    conn.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n").is_ok() && conn.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

/// prometheus/prometheus.yml (written for --base-port 8080) with this run's ports and the
/// rule files by absolute path.
fn prometheus_config(base_port: u16) -> Result<String> {
    let root = workspace_root().join("prometheus");
    let shipped = std::fs::read_to_string(root.join("prometheus.yml")).context("reading prometheus/prometheus.yml")?;
    let mut text = shipped.replace("- rules/*.yml", &format!("- {}", root.join("rules/*.yml").display()));
    let services = conveyor_contracts::service::ALL.len() as u32;
    for offset in (1..=services).chain(101..=100 + services) {
        let (from, to) = (format!("\"127.0.0.1:{}\"", 8080 + offset), format!("\"127.0.0.1:{}\"", u32::from(base_port) + offset));
        anyhow::ensure!(shipped.contains(&from), "prometheus/prometheus.yml has no target {from}");
        text = text.replace(&from, &to);
    }
    Ok(text)
}

async fn stop_prometheus(prometheus: Result<Option<Prometheus>>) {
    if let Ok(Some(mut p)) = prometheus {
        if let Some(pid) = p.child.id() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(10), p.child.wait()).await.is_err() {
            p.child.kill().await.ok();
        }
    }
}

/// How a shop xtask starts runs its sagas and moves its messages: the options `up`, `chaos`
/// and `load` share.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct ShopArgs {
    /// How new orders run their saga: each service reacting to the last one's event
    /// (choreography), or the coordinator sending each step's command (orchestration;
    /// docs/orchestration.md).
    #[arg(long, default_value_t = conveyor_contracts::SagaMode::Choreography)]
    pub saga_mode: conveyor_contracts::SagaMode,
    #[command(flatten)]
    pub delivery: DeliveryArg,
}

/// `--delivery`, alone: what `bench saga` takes beside its own `--mode`.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct DeliveryArg {
    /// How messages travel between the services: each publisher's relay copying them into
    /// its subscribers' inboxes (push), or each subscriber reading its publishers'
    /// outboxes (pull; crates/queue/README.md, "Pull delivery").
    #[arg(long, value_enum, default_value_t = conveyor_launcher::Delivery::Push)]
    pub delivery: conveyor_launcher::Delivery,
}

impl ShopArgs {
    /// Sets the stack's saga mode and delivery.
    pub fn apply(&self, opts: &mut conveyor_launcher::StackOptions) {
        opts.saga_mode = self.saga_mode;
        opts.delivery = self.delivery.delivery;
    }
}
