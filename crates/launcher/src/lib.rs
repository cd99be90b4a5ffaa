//! The whole shop as real processes — the binaries we ship — for `cargo xtask up` and the
//! end-to-end tests: one database per service with its own roles (least privilege, as in a
//! deployment: the migrator's owns the schema, the runtime's has DML only, the relay's may
//! only insert into the inbox, the puller's only read the outbox and report its position),
//! every migrator run to completion, then every API and worker
//! and a webhook receiver for notifications, each with its log file; processes can be
//! killed (SIGKILL, like a crash) and started again.

pub mod audit;
pub mod chaos;
pub mod demo;
pub mod drive;
mod process;
mod shop;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use conveyor_contracts::service;

pub use conveyor_platform::Delivery;
pub use process::tail;
pub use shop::{Shop, Terminal, wait_for};

use process::{Proc, Spec};

/// The database each service owns (ARCHITECTURE §2).
pub fn database_name(svc: &str) -> &str {
    if svc == service::ORDER { "orders" } else { svc }
}

/// What to run and where.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Admin URL of the PostgreSQL server the service databases are created on.
    pub admin_url: String,
    /// Prepended to every database name (tests run several stacks on one server).
    pub db_prefix: String,
    /// Where the `<svc>-api`, `<svc>-worker`, `<svc>-migrator` and `webhook-sink` binaries are.
    pub bin_dir: PathBuf,
    /// One log file per process goes here.
    pub log_dir: PathBuf,
    /// APIs on base+1..=base+6 (catalog, order, stock, payment, notification, coordinator),
    /// the webhook receiver on base+10, workers on base+101..=base+106. `None`: free ports.
    pub base_port: Option<u16>,
    /// `text` or `json`, for every process.
    pub log_format: String,
    /// Extra flags by process name, e.g. `notification-worker` → `--breaker-cooldown 1s`.
    pub extra_args: BTreeMap<String, Vec<String>>,
    /// Extra environment variables for every process (migrators and the webhook receiver
    /// too), e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`; set after the stack's own.
    pub env: BTreeMap<String, String>,
    /// How new orders run their saga (the order API's `--saga-mode`). Every worker handles
    /// both modes, so an order in flight ends in the mode it started in whatever this is.
    pub saga_mode: conveyor_contracts::SagaMode,
    /// How messages travel between the services (every worker's `--delivery`): relays
    /// (push) or subscribers reading their publishers' outboxes (pull).
    pub delivery: conveyor_platform::Delivery,
}

impl StackOptions {
    pub fn new(admin_url: impl Into<String>, bin_dir: PathBuf, log_dir: PathBuf) -> Self {
        StackOptions {
            admin_url: admin_url.into(),
            db_prefix: String::new(),
            bin_dir,
            log_dir,
            base_port: None,
            log_format: "json".into(),
            extra_args: BTreeMap::new(),
            env: BTreeMap::new(),
            saga_mode: conveyor_contracts::SagaMode::default(),
            delivery: conveyor_platform::Delivery::default(),
        }
    }

    pub fn arg(mut self, process: &str, args: &[&str]) -> Self {
        self.extra_args.entry(process.to_owned()).or_default().extend(args.iter().map(|s| s.to_string()));
        self
    }
}

/// Where the binaries are: `CONVEYOR_BIN_DIR`, else beside the running executable (a test
/// binary in `target/debug/deps` looks in `target/debug`).
pub fn default_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CONVEYOR_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("current executable");
    let dir = exe.parent().expect("executable has a directory").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") { dir.parent().expect("deps has a parent").to_path_buf() } else { dir }
}

/// Every process name of the stack, in start order.
pub fn process_names() -> Vec<String> {
    let mut names = vec!["webhook-sink".to_owned()];
    names.extend(service::ALL.iter().map(|s| format!("{s}-api")));
    names.extend(service::ALL.iter().map(|s| format!("{s}-worker")));
    names
}

/// The running shop.
pub struct Stack {
    pub opts: StackOptions,
    /// Base URL of each service's API, by service name.
    pub api: BTreeMap<String, String>,
    /// Base URL of each worker's health and metrics server, by service name.
    pub worker: BTreeMap<String, String>,
    /// Base URL of the webhook receiver.
    pub sink: String,
    /// The admin's URL of each service's database, by service name: for checks no API
    /// exposes. The processes connect with the roles in `roles`.
    pub databases: BTreeMap<String, String>,
    /// Each service's database as provisioned: its roles and their URLs, by service name.
    pub roles: BTreeMap<String, conveyor_devpg::ProvisionedDatabase>,
    /// The identity provider of this stack: the APIs trust its keys (`jwks.json` in the log
    /// directory); it mints the tokens of customers and operators.
    pub issuer: conveyor_platform::auth::DevIssuer,
    specs: BTreeMap<String, Spec>,
    procs: BTreeMap<String, Proc>,
    http: reqwest::Client,
}

impl Stack {
    /// Creates the databases, runs every migrator, starts every process and waits until
    /// each one is ready. `status` hears one line per step.
    pub async fn start(opts: StackOptions, status: impl Fn(&str)) -> Result<Stack> {
        std::fs::create_dir_all(&opts.log_dir).with_context(|| format!("creating {}", opts.log_dir.display()))?;
        for name in process_names().into_iter().chain(service::ALL.iter().map(|s| format!("{s}-migrator"))) {
            let path = opts.bin_dir.join(&name);
            if !path.exists() {
                bail!("{} not found: build the binaries first (`cargo build --workspace --bins`), or set CONVEYOR_BIN_DIR", path.display());
            }
        }
        let mut roles = BTreeMap::new();
        for svc in service::ALL {
            let name = format!("{}{}", opts.db_prefix, database_name(svc));
            let receives = !conveyor_contracts::publishers_to(svc).is_empty();
            let publishes = !conveyor_contracts::subscribers_of(svc).is_empty();
            let wanted = conveyor_devpg::DatabaseRoles::for_service(&opts.db_prefix, svc, receives, publishes);
            roles.insert(svc.to_owned(), conveyor_devpg::provision_database(&opts.admin_url, &name, &wanted).await?);
        }
        let databases: BTreeMap<String, String> = roles.iter().map(|(svc, db)| (svc.clone(), db.admin.clone())).collect();
        status(&format!("databases ready: {}", databases.keys().map(|s| database_name(s)).collect::<Vec<_>>().join(", ")));

        let migrations = service::ALL.iter().map(|svc| {
            let spec = Spec {
                name: format!("{svc}-migrator"),
                program: opts.bin_dir.join(format!("{svc}-migrator")),
                args: vec![],
                env: migrator_env(&opts, &roles[*svc]),
                log: opts.log_dir.join(format!("{svc}-migrator.log")),
                ready_url: None,
            };
            async move { spec.run_to_completion(Duration::from_secs(120)).await }
        });
        futures::future::try_join_all(migrations).await?;
        status("every database migrated (queue schema, platform tables, service schema)");

        let port = |offset: u16| opts.base_port.map(|b| Ok(b + offset)).unwrap_or_else(free_port);
        let mut api = BTreeMap::new();
        let mut worker = BTreeMap::new();
        let mut listen = BTreeMap::new();
        for (i, svc) in service::ALL.iter().enumerate() {
            let (a, w) = (port(API_PORT_OFFSET + i as u16)?, port(101 + i as u16)?);
            api.insert(svc.to_string(), format!("http://127.0.0.1:{a}"));
            worker.insert(svc.to_string(), format!("http://127.0.0.1:{w}"));
            listen.insert(format!("{svc}-api"), a);
            listen.insert(format!("{svc}-worker"), w);
        }
        let sink_port = port(10)?;
        let sink = format!("http://127.0.0.1:{sink_port}");

        // A signing key of this run's own: its public half for the APIs (`jwks.json`), the
        // whole for local processes that mint tokens (`issuer.json`, owner-only), and the
        // notification worker's token for the order API.
        let issuer = conveyor_platform::auth::DevIssuer::generate()?;
        let jwks = opts.log_dir.join("jwks.json");
        issuer.write_jwks(&jwks)?;
        issuer.save(&opts.log_dir.join("issuer.json"))?;
        let lookup_token = opts.log_dir.join("notification-worker.token");
        std::fs::write(&lookup_token, issuer.token("notification-worker", &[conveyor_platform::auth::OPERATOR_ROLE], Duration::from_secs(30 * 24 * 3600)))
            .with_context(|| format!("writing {}", lookup_token.display()))?;

        let mut specs = BTreeMap::new();
        specs.insert(
            "webhook-sink".to_owned(),
            Spec {
                name: "webhook-sink".into(),
                program: opts.bin_dir.join("webhook-sink"),
                args: vec![
                    "--listen".into(),
                    format!("127.0.0.1:{sink_port}"),
                    "--store".into(),
                    opts.log_dir.join("webhook-sink.jsonl").display().to_string(),
                ],
                env: [("LOG_FORMAT".to_owned(), opts.log_format.clone())].into_iter().chain(opts.env.clone()).collect(),
                log: opts.log_dir.join("webhook-sink.log"),
                ready_url: Some(format!("{sink}/health")),
            },
        );
        for svc in service::ALL {
            for role in ["api", "worker"] {
                let name = format!("{svc}-{role}");
                let mut env = common_env(&opts, &roles[svc].runtime);
                env.push(("LISTEN_ADDR".into(), format!("127.0.0.1:{}", listen[&name])));
                if role == "api" {
                    env.extend(issuer.env(&jwks));
                }
                let mut args = Vec::new();
                if name == "order-api" {
                    args.extend(["--saga-mode".into(), opts.saga_mode.to_string()]);
                }
                if role == "worker" {
                    // Push: the URLs of its subscribers' inboxes (their relay roles); pull:
                    // of its publishers' outboxes (their puller roles).
                    env.push(("DELIVERY".into(), opts.delivery.to_string()));
                    let (var, peers) = match opts.delivery {
                        conveyor_platform::Delivery::Push => {
                            let url = |s: &str| roles[s].relay.clone().expect("a subscriber has a relay role");
                            ("SUBSCRIBERS", conveyor_contracts::subscribers_of(svc).iter().map(|s| format!("{s}={}", url(s))).collect::<Vec<_>>())
                        }
                        conveyor_platform::Delivery::Pull => {
                            let url = |p: &str| roles[p].puller.clone().expect("a publisher has a puller role");
                            ("PUBLISHERS", conveyor_contracts::publishers_to(svc).iter().map(|p| format!("{p}={}", url(p))).collect())
                        }
                    };
                    if !peers.is_empty() {
                        env.push((var.into(), peers.join(",")));
                    }
                    if svc == service::NOTIFICATION {
                        args.extend(["--webhook-url".into(), format!("{sink}/notifications"), "--order-api-url".into(), api[service::ORDER].clone()]);
                        env.push(("ORDER_API_TOKEN_FILE".into(), lookup_token.display().to_string()));
                    }
                }
                args.extend(opts.extra_args.get(&name).cloned().unwrap_or_default());
                let base = if role == "api" { &api[svc] } else { &worker[svc] };
                let spec = Spec { name: name.clone(), program: opts.bin_dir.join(&name), args, env, log: opts.log_dir.join(format!("{name}.log")), ready_url: Some(format!("{base}/health/ready")) };
                specs.insert(name, spec);
            }
        }

        let http = reqwest::Client::new();
        let mut stack = Stack { opts, api, worker, sink, databases, roles, issuer, specs, procs: BTreeMap::new(), http };
        for name in process_names() {
            let proc = stack.specs[&name].spawn()?;
            stack.procs.insert(name, proc);
        }
        for name in process_names() {
            let proc = stack.procs.get_mut(&name).expect("spawned above");
            proc.wait_ready(&stack.http, Duration::from_secs(60)).await?;
            status(&format!("{name} ready (pid {})", proc.pid().unwrap_or(0)));
        }
        stack.info().write(&stack.info_path())?;
        Ok(stack)
    }

    /// What a tool outside this process needs to reach the running stack.
    pub fn info(&self) -> StackInfo {
        StackInfo {
            api: self.api.clone(),
            worker: self.worker.clone(),
            sink: self.sink.clone(),
            databases: self.databases.clone(),
            issuer_file: self.issuer_file(),
            log_dir: self.opts.log_dir.clone(),
        }
    }

    /// `stack.json` in the log directory: [`StackInfo`], written once every process is ready.
    pub fn info_path(&self) -> PathBuf {
        self.opts.log_dir.join(STACK_FILE)
    }

    /// The file of this stack's issuer, private key included (see `DevIssuer::load`), for a
    /// local process that mints tokens.
    pub fn issuer_file(&self) -> PathBuf {
        self.opts.log_dir.join("issuer.json")
    }

    /// A client of this stack's APIs.
    pub fn shop(&self) -> Shop {
        Shop::new(self.http.clone(), self.api.clone(), self.sink.clone(), self.issuer.clone())
    }

    /// The pid of a running process of the stack (`order-api`, `stock-worker`, …), e.g. to
    /// sample its CPU time from `/proc`; `None` when it is not running.
    pub fn pid(&self, process: &str) -> Option<u32> {
        self.procs.get(process).and_then(Proc::pid)
    }

    pub fn log_path(&self, process: &str) -> &Path {
        &self.specs[process].log
    }

    /// SIGKILL, as a crash: the process gets no chance to finish anything.
    pub async fn kill(&mut self, process: &str) -> Result<()> {
        let mut proc = self.procs.remove(process).with_context(|| format!("{process} is not running"))?;
        proc.kill().await?;
        Ok(())
    }

    /// SIGTERM: a clean stop.
    pub async fn stop_process(&mut self, process: &str) -> Result<()> {
        let mut proc = self.procs.remove(process).with_context(|| format!("{process} is not running"))?;
        proc.stop(Duration::from_secs(20)).await?;
        Ok(())
    }

    /// Starts a stopped or killed process again and waits until it is ready.
    pub async fn start_process(&mut self, process: &str) -> Result<()> {
        if self.procs.contains_key(process) {
            bail!("{process} is running already");
        }
        let mut proc = self.specs.get(process).with_context(|| format!("no process {process}"))?.spawn()?;
        proc.wait_ready(&self.http, Duration::from_secs(60)).await?;
        self.procs.insert(process.to_owned(), proc);
        Ok(())
    }

    /// Switches the shop's saga mode: the order API restarts with `--saga-mode mode` (a clean
    /// stop, then a start), so that new orders run their saga so; orders in flight end in
    /// the mode they started in, since every worker handles both.
    pub async fn switch_saga_mode(&mut self, mode: conveyor_contracts::SagaMode) -> Result<()> {
        let spec = self.specs.get_mut("order-api").context("no order-api")?;
        let at = spec.args.iter().position(|a| a == "--saga-mode").context("order-api has no --saga-mode")?;
        spec.args[at + 1] = mode.to_string();
        self.opts.saga_mode = mode;
        self.stop_process("order-api").await?;
        self.start_process("order-api").await
    }

    /// Fails, naming it and showing its log, if a process that should run has exited.
    pub fn check_running(&mut self) -> Result<()> {
        for (name, proc) in self.procs.iter_mut() {
            if let Some(status) = proc.try_status() {
                bail!("{name} exited unexpectedly ({status}):\n{}", tail(&proc.spec.log, 20));
            }
        }
        Ok(())
    }

    /// The processes that should run but have exited on their own, with how they ended;
    /// forgotten here, so that [`Stack::start_process`] can start them again.
    pub fn take_exited(&mut self) -> Vec<(String, std::process::ExitStatus)> {
        let exited: Vec<(String, std::process::ExitStatus)> = self.procs.iter_mut().filter_map(|(name, proc)| proc.try_status().map(|s| (name.clone(), s))).collect();
        for (name, _) in &exited {
            self.procs.remove(name);
        }
        exited
    }

    /// Stops every process with SIGTERM (workers first, so nothing they relay is cut off),
    /// and reports any that did not exit cleanly.
    pub async fn stop(mut self) -> Result<()> {
        let mut unclean = Vec::new();
        let names: Vec<String> = self.procs.keys().cloned().collect();
        let (workers, rest): (Vec<String>, Vec<String>) = names.into_iter().partition(|n| n.ends_with("-worker"));
        for group in [workers, rest] {
            let stops = group.into_iter().filter_map(|n| self.procs.remove(&n).map(|p| (n, p))).map(|(name, mut proc)| async move {
                let status = proc.stop(Duration::from_secs(20)).await;
                (name, status)
            });
            for (name, status) in futures::future::join_all(stops).await {
                match status {
                    Ok(s) if s.success() => {}
                    Ok(s) => unclean.push(format!("{name} ({s})")),
                    Err(e) => unclean.push(format!("{name} ({e})")),
                }
            }
        }
        if !unclean.is_empty() {
            bail!("did not stop cleanly: {}", unclean.join(", "));
        }
        Ok(())
    }
}

/// A stack started with a base port serves service number `i` of `service::ALL` (catalog
/// first) on base + this + `i`.
const API_PORT_OFFSET: u16 = 1;

/// The port of `svc`'s API in a stack started with `base_port` (`StackOptions::base_port`,
/// `cargo xtask up --base-port`); `None` for an unknown service or a port past 65535.
pub fn api_port(base_port: u16, svc: &str) -> Option<u16> {
    let index = service::ALL.iter().position(|s| *s == svc)?;
    base_port.checked_add(API_PORT_OFFSET + index as u16)
}

/// The name of the file, in a stack's log directory, that describes the running stack.
pub const STACK_FILE: &str = "stack.json";

/// A running stack as seen from outside: `stack.json` in its log directory, read by
/// `cargo xtask audit` (and any tool that needs the URLs of a stack it did not start).
/// Readable by its owner only: the database URLs can write anything.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StackInfo {
    /// Base URL of each service's API, by service name.
    pub api: BTreeMap<String, String>,
    /// Base URL of each worker's health and metrics server, by service name.
    pub worker: BTreeMap<String, String>,
    /// Base URL of the webhook receiver.
    pub sink: String,
    /// Each service's database, as its owner (reads every table), by service name.
    pub databases: BTreeMap<String, String>,
    /// The issuer whose tokens the APIs trust, private key included (`DevIssuer::load`).
    pub issuer_file: PathBuf,
    /// Where every process logs.
    pub log_dir: PathBuf,
}

impl StackInfo {
    /// Writes the description, owner-only.
    pub fn write(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = serde_json::to_string_pretty(self)?;
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).with_context(|| format!("creating {}", path.display()))?;
        file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
    }

    /// Reads a `stack.json`.
    pub fn read(path: &Path) -> Result<StackInfo> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a stack description", path.display()))
    }

    /// A client of the stack's APIs, signing with its issuer.
    pub fn shop(&self) -> Result<Shop> {
        let issuer = conveyor_platform::auth::DevIssuer::load(&self.issuer_file)?;
        Ok(Shop::new(reqwest::Client::new(), self.api.clone(), self.sink.clone(), issuer))
    }
}

/// A migrator connects as the database's owner and grants the service's other roles.
fn migrator_env(opts: &StackOptions, db: &conveyor_devpg::ProvisionedDatabase) -> Vec<(String, String)> {
    let mut env = vec![("RUNTIME_ROLE".into(), db.roles.runtime.clone())];
    // Only the delivery's roles get rights: the other kind's role stays unable to connect.
    match opts.delivery {
        conveyor_platform::Delivery::Push => env.extend(db.roles.relay.clone().map(|relay| ("RELAY_ROLES".into(), relay))),
        conveyor_platform::Delivery::Pull => env.extend(db.roles.puller.clone().map(|puller| ("PULLER_ROLES".into(), puller))),
    }
    env.extend(common_env(opts, &db.migrator));
    env
}

fn common_env(opts: &StackOptions, database_url: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("DATABASE_URL".into(), database_url.to_owned()),
        ("LOG_FORMAT".into(), opts.log_format.clone()),
        ("RUST_LOG".into(), std::env::var("CONVEYOR_RUST_LOG").unwrap_or_else(|_| "info,sqlx=warn,tower_http=warn".into())),
        ("RUST_BACKTRACE".into(), "0".into()),
    ];
    env.extend(opts.env.clone());
    env
}

/// A port free right now, below Linux's ephemeral range (32768 and up), so no outgoing
/// connection of any process can take it between now and the server binding it, and never
/// one this process handed out before (a port picked for a server that has not bound it yet
/// still tests free).
fn free_port() -> Result<u16> {
    use rand::Rng;
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut rng = rand::rng();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..100 {
        let port = rng.random_range(20_000..32_000);
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    bail!("no free port found between 20000 and 32000")
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn api_ports_follow_the_base_port_in_service_order() {
        assert_eq!(api_port(8080, service::CATALOG), Some(8081));
        assert_eq!(api_port(8080, service::ORDER), Some(8082));
        assert_eq!(api_port(8080, service::NOTIFICATION), Some(8085));
        assert_eq!(api_port(8080, service::COORDINATOR), Some(8080 + service::ALL.len() as u16));
        assert_eq!(api_port(8080, "shipping"), None);
        assert_eq!(api_port(u16::MAX, service::CATALOG), None);
    }
}
