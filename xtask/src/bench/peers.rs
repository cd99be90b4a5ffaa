//! `cargo xtask bench peers`: one queue hop — ours (outbox → relay → inbox →
//! transaction-mode consumer) — against pgmq and RabbitMQ, in one run on one machine.
//!
//! The harness gets a private durable PostgreSQL (or uses DATABASE_URL's server), installs
//! RabbitMQ when it is missing and it may (root: `apt-get install rabbitmq-server`, with a
//! temporary `policy-rc.d` so the package starts no system service), starts the broker as a
//! plain child process on free loopback ports with its own directories and its own `epmd`,
//! waits until it speaks AMQP, builds and runs the measuring binary (`conveyor-benches`'s
//! `peers`), then stops the broker, its `epmd` and PostgreSQL on every path, Ctrl-C
//! included. The binary writes `<target>/bench-results/peers-report.{json,md,svg}`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use conveyor_devpg::ClusterOptions;

use crate::proc::{self, Outcome, Signals};
use crate::{Postgres, cargo, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Smoke mode: seconds, not minutes; checks the harness end to end, never a speed
    /// (builds the measuring binary in the debug profile).
    #[arg(long)]
    pub quick: bool,
    /// Measured seconds per scenario (default 20; 3 with --quick).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Producer tasks per system.
    #[arg(long, default_value_t = 4)]
    pub producers: u16,
    /// Consumer tasks per system.
    #[arg(long, default_value_t = 4)]
    pub consumers: u16,
    /// Batch sizes, comma-separated.
    #[arg(long, default_value = "1,100")]
    pub batches: String,
    /// Fraction of the slowest system's rate offered in the paced latency runs (0: none).
    #[arg(long, default_value_t = 0.5)]
    pub paced: f64,
    /// Do not measure RabbitMQ (and do not install or start it).
    #[arg(long)]
    pub no_rabbitmq: bool,
    /// How ours delivers: push (outbox → relay → inbox, as the services run) or pull (the
    /// consumer reads the publisher's outbox with cursors of its own).
    #[arg(long, default_value = "push", value_parser = ["push", "pull"])]
    pub delivery: String,
}

/// Where Debian's package puts the broker's start script (the one in /usr/sbin only
/// switches to the `rabbitmq` user and calls this one).
const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

pub async fn run(args: Args, signals: &mut Signals) -> Result<i32> {
    if !(0.0..=1.0).contains(&args.paced) {
        bail!("--paced must be a fraction from 0 to 1");
    }
    if args.seconds.is_some_and(|s| s.is_nan() || s <= 0.0) {
        bail!("--seconds must be above 0");
    }
    // Build first: a build error fails fast, and no compiler runs while anything is measured.
    let bin = match build(args.quick, signals).await? {
        Ok(bin) => bin,
        Err(code) => return Ok(code),
    };
    let Some(pg) = Postgres::acquire(ClusterOptions { name: "peers".into(), durable: true, ..Default::default() }, signals).await? else {
        return Ok(130);
    };
    let result = with_postgres(&args, &bin, &pg, signals).await;
    pg.stop().await;
    if let Some(sig) = signals.received() {
        eprintln!("xtask: interrupted (signal {sig}); the benchmark, RabbitMQ and PostgreSQL stopped");
    }
    result
}

/// `cargo build -p conveyor-benches --bin peers` (release unless quick); the binary's path,
/// or the exit code to return.
async fn build(quick: bool, signals: &mut Signals) -> Result<Result<PathBuf, i32>> {
    println!("\n== building the measuring binary (cargo build -p conveyor-benches --bin peers{}) ==", if quick { "" } else { " --release" });
    let mut cmd = tokio::process::Command::new(cargo());
    cmd.args(["build", "-p", "conveyor-benches", "--bin", "peers"]).current_dir(workspace_root());
    if !quick {
        cmd.arg("--release");
    }
    match proc::run(cmd, signals).await? {
        Outcome::Exited(0) => {}
        Outcome::Exited(code) => bail!("building the peers benchmark failed (exit code {code})"),
        Outcome::Interrupted(sig) => return Ok(Err(128 + sig)),
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => workspace_root().join("target"),
    };
    let bin = target.join(if quick { "debug" } else { "release" }).join("peers");
    if !bin.is_file() {
        bail!("cargo built the peers benchmark but {} is not there", bin.display());
    }
    Ok(Ok(bin))
}

async fn with_postgres(args: &Args, bin: &Path, pg: &Postgres, signals: &mut Signals) -> Result<i32> {
    let rabbit = if args.no_rabbitmq {
        Err("--no-rabbitmq".to_string())
    } else {
        match ensure_rabbitmq(signals).await? {
            Err(sig) => return Ok(128 + sig),
            Ok(Err(why)) => Err(why),
            Ok(Ok(())) => match Rabbit::start(signals).await? {
                Err(sig) => return Ok(128 + sig),
                Ok(r) => Ok(r),
            },
        }
    };
    let result = measure(args, bin, pg, rabbit.as_ref(), signals).await;
    if let Ok(r) = rabbit {
        r.stop().await;
    }
    result
}

async fn measure(args: &Args, bin: &Path, pg: &Postgres, rabbit: Result<&Rabbit, &String>, signals: &mut Signals) -> Result<i32> {
    let results_dir = conveyor_benchkit::results_dir()?;
    let outputs = ["json", "md", "svg"].map(|ext| results_dir.join(format!("peers-report.{ext}")));
    for f in &outputs {
        let _ = std::fs::remove_file(f); // never report a stale run
    }
    println!("\n== measuring: ours vs pgmq vs RabbitMQ ==");
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--postgres-url")
        .arg(&pg.admin_url)
        .arg("--postgres-server")
        .arg(if pg.cluster.is_some() { "private durable cluster" } else { "DATABASE_URL" })
        .args(["--producers", &args.producers.to_string(), "--consumers", &args.consumers.to_string()])
        .args(["--batches", &args.batches, "--paced", &args.paced.to_string(), "--delivery", &args.delivery])
        .arg("--out-dir")
        .arg(&results_dir)
        .current_dir(workspace_root());
    if args.quick {
        cmd.arg("--quick");
    }
    if let Some(s) = args.seconds {
        cmd.args(["--seconds", &s.to_string()]);
    }
    match rabbit {
        Ok(r) => {
            cmd.args(["--amqp-url", &r.amqp_url(), "--rabbitmq-version", &rabbitmq_version(), "--rabbitmq-pid", &r.pid().to_string()]);
        }
        Err(why) => {
            // One argument: the reason may itself start with "--" ("--no-rabbitmq").
            cmd.arg(format!("--rabbitmq-missing={why}"));
        }
    }
    match proc::run(cmd, signals).await? {
        Outcome::Exited(0) => {}
        Outcome::Exited(code) => bail!("the peers benchmark failed (exit code {code})"),
        Outcome::Interrupted(sig) => return Ok(128 + sig),
    }
    for f in &outputs {
        if !f.is_file() {
            bail!("the peers benchmark wrote no {}", f.display());
        }
    }
    println!("xtask: report written to {}", outputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    Ok(0)
}

/// `Ok(Ok(()))` when the broker is installed (installing it if missing and root);
/// `Ok(Err(why))` when it is not and RabbitMQ is reported as not measured; `Err(sig)` on a
/// signal.
async fn ensure_rabbitmq(signals: &mut Signals) -> Result<Result<Result<(), String>, i32>> {
    if rabbitmq_installed() {
        return Ok(Ok(Ok(())));
    }
    if !crate::apt::is_root() {
        println!("xtask: RabbitMQ is not installed ({RABBITMQ_SERVER} is missing) and installing it needs root:\n    {}\n  RabbitMQ will be reported as not measured.", crate::apt::install_command(&["rabbitmq-server"]));
        return Ok(Ok(Err("rabbitmq-server is not installed (not root, so not installed by the harness)".into())));
    }
    println!("\n== installing RabbitMQ: apt-get install -y rabbitmq-server (its system service is not started) ==");
    let installed = crate::apt::install(&["rabbitmq-server"], signals).await?;
    match installed {
        Err(sig) => Ok(Err(sig)),
        Ok(0) if rabbitmq_installed() => Ok(Ok(Ok(()))),
        Ok(0) => bail!("apt-get installed rabbitmq-server but {RABBITMQ_SERVER} is not there"),
        Ok(code) => {
            println!("xtask: apt-get install rabbitmq-server failed (exit code {code}); RabbitMQ will be reported as not measured");
            Ok(Ok(Err(format!("apt-get install rabbitmq-server failed (exit code {code})"))))
        }
    }
}

fn rabbitmq_installed() -> bool {
    Path::new(RABBITMQ_SERVER).is_file() && crate::apt::which("epmd").is_some()
}


/// "3.10.8-1.1+deb12u1 (Erlang 25.2.3+dfsg-1+deb12u4)" from dpkg, or "unknown version".
fn rabbitmq_version() -> String {
    let dpkg = |pkg: &str| {
        std::process::Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", pkg])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|v| !v.is_empty())
    };
    match (dpkg("rabbitmq-server"), dpkg("erlang-base")) {
        (Some(r), Some(e)) => format!("{r} (Erlang {})", e.split_once(':').map_or(e.as_str(), |(_, v)| v)),
        (Some(r), None) => r,
        _ => "unknown version".into(),
    }
}

/// `n` distinct free loopback ports (held open together while picking, so none repeats).
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners: Vec<TcpListener> =
        (0..N).map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0))).collect::<std::io::Result<_>>().context("no free loopback port")?;
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

/// The broker's configuration: AMQP on loopback only (the guest user may log in from there).
fn rabbitmq_conf(amqp_port: u16) -> String {
    format!(
        "# cargo xtask bench peers\nlisteners.tcp.1 = 127.0.0.1:{amqp_port}\nloopback_users.guest = true\n"
    )
}

/// The environment of a private broker in `dir` (see [`Rabbit::start`]).
fn rabbitmq_env(dir: &Path, node: &str, dist_port: u16, epmd_port: u16) -> Vec<(String, String)> {
    let d = |p: &str| dir.join(p).display().to_string();
    vec![
        ("HOME".into(), dir.display().to_string()), // the Erlang cookie goes there
        ("RABBITMQ_NODENAME".into(), node.into()),
        ("RABBITMQ_DIST_PORT".into(), dist_port.to_string()),
        ("ERL_EPMD_PORT".into(), epmd_port.to_string()),
        ("ERL_EPMD_ADDRESS".into(), "127.0.0.1".into()),
        ("RABBITMQ_MNESIA_BASE".into(), d("mnesia")),
        ("RABBITMQ_LOG_BASE".into(), d("log")),
        ("RABBITMQ_CONFIG_FILE".into(), d("rabbitmq.conf")),
        ("RABBITMQ_ADVANCED_CONFIG_FILE".into(), d("advanced.config")),
        ("RABBITMQ_CONF_ENV_FILE".into(), d("rabbitmq-env.conf")), // absent: /etc's is not read
        ("RABBITMQ_ENABLED_PLUGINS_FILE".into(), d("enabled_plugins")),
        ("RABBITMQ_PID_FILE".into(), d("rabbitmq.pid")),
        // Distribution (used by rabbitmqctl) listens on loopback only, like AMQP.
        ("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS".into(), "-kernel inet_dist_use_interface {127,0,0,1}".into()),
    ]
}

/// A private RabbitMQ: its own `epmd` and broker, each a child in its own process group,
/// and its own directory (removed when stopped).
struct Rabbit {
    dir: PathBuf,
    amqp_port: u16,
    epmd: Option<tokio::process::Child>,
    broker: Option<tokio::process::Child>,
}

impl Rabbit {
    /// Starts the broker and waits until it speaks AMQP; `Err(sig)` on a signal (all stopped).
    async fn start(signals: &mut Signals) -> Result<std::result::Result<Rabbit, i32>> {
        let [amqp_port, dist_port, epmd_port] = free_ports::<3>()?;
        let dir = std::env::temp_dir().join(format!("conveyor-rabbitmq-peers-{}-{amqp_port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("could not create {}", dir.display()))?;
        }
        std::fs::write(dir.join("rabbitmq.conf"), rabbitmq_conf(amqp_port))?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        let node = format!("conveyor-peers-{}@localhost", std::process::id());
        let env = rabbitmq_env(&dir, &node, dist_port, epmd_port);
        let mut rabbit = Rabbit { dir: dir.clone(), amqp_port, epmd: None, broker: None };
        println!("\n== starting RabbitMQ ({node}, AMQP on 127.0.0.1:{amqp_port}, data in {}) ==", dir.display());

        // Our own epmd in the foreground (Erlang would otherwise start a daemon of its own
        // that outlives everything), on loopback and a free port.
        let epmd = crate::apt::which("epmd").context("epmd is not on PATH")?;
        let mut cmd = tokio::process::Command::new(epmd);
        cmd.args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"]);
        rabbit.epmd = Some(spawn_logged(cmd, &dir.join("epmd.log"))?);

        let mut cmd = tokio::process::Command::new(RABBITMQ_SERVER);
        cmd.envs(env).current_dir(&dir);
        rabbit.broker = Some(spawn_logged(cmd, &dir.join("broker.log"))?);

        let started = Instant::now();
        let limit = Duration::from_secs(120);
        loop {
            if let Some(status) = rabbit.broker.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let tail = tail(&dir.join("broker.log"), 30);
                rabbit.stop().await;
                bail!("rabbitmq-server exited while starting ({status}); the end of its output:\n{tail}");
            }
            if amqp_ready(amqp_port) {
                println!("xtask: RabbitMQ accepts AMQP after {:.1} s", started.elapsed().as_secs_f64());
                return Ok(Ok(rabbit));
            }
            if started.elapsed() > limit {
                let tail = tail(&dir.join("broker.log"), 30);
                rabbit.stop().await;
                bail!("RabbitMQ did not accept AMQP on 127.0.0.1:{amqp_port} within {limit:?}; the end of its output:\n{tail}");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                sig = signals.wait() => {
                    rabbit.stop().await;
                    return Ok(Err(sig));
                }
            }
        }
    }

    fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// The start script's pid: the broker's Erlang VM runs below it.
    fn pid(&self) -> u32 {
        self.broker.as_ref().and_then(|c| c.id()).unwrap_or(0)
    }

    /// SIGTERM to the broker's process group (the start script turns it into a clean
    /// shutdown), 30 s, then SIGKILL; then the same for epmd; then the directory goes.
    async fn stop(mut self) {
        if let Some(child) = self.broker.take() {
            stop_group(child, Duration::from_secs(30)).await;
        }
        if let Some(child) = self.epmd.take() {
            stop_group(child, Duration::from_secs(5)).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        println!("xtask: RabbitMQ stopped");
    }
}

impl Drop for Rabbit {
    /// A path that forgot `stop` (a panic): kill what is left, without waiting.
    fn drop(&mut self) {
        for child in [self.broker.take(), self.epmd.take()].into_iter().flatten() {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) of the child's own process group.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Spawns `cmd` in its own process group with stdout and stderr appended to `log`.
fn spawn_logged(mut cmd: tokio::process::Command, log: &Path) -> Result<tokio::process::Child> {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("could not open {}", log.display()))?;
    cmd.process_group(0).stdin(std::process::Stdio::null()).stdout(out.try_clone()?).stderr(out).kill_on_drop(true);
    let what = format!("{:?}", cmd.as_std().get_program());
    cmd.spawn().with_context(|| format!("could not start {what}"))
}

async fn stop_group(mut child: tokio::process::Child, grace: Duration) {
    let Some(pid) = child.id() else { return };
    let pgid = pid as i32;
    // SAFETY: kill(2) of the child's own process group.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait().await;
    }
    // Whatever of the group outlived its leader.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

/// True when the port answers the AMQP 0-9-1 protocol header with `connection.start`.
fn amqp_ready(port: u16) -> bool {
    let probe = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"AMQP\x00\x00\x09\x01")?;
        let mut head = [0u8; 11];
        s.read_exact(&mut head)?;
        Ok(is_connection_start(&head))
    };
    probe().unwrap_or(false)
}

/// A method frame (type 1) on channel 0 whose method is connection.start (class 10, method 10).
fn is_connection_start(head: &[u8; 11]) -> bool {
    head[0] == 1 && head[1..3] == [0, 0] && head[7..11] == [0, 10, 0, 10]
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_brokers_greeting() {
        // type 1, channel 0, size 0x1c4, then class 10 method 10 (connection.start).
        assert!(is_connection_start(&[1, 0, 0, 0, 0, 1, 0xc4, 0, 10, 0, 10]));
        assert!(!is_connection_start(&[1, 0, 0, 0, 0, 1, 0xc4, 0, 10, 0, 11]));
        assert!(!is_connection_start(b"AMQP\x00\x00\x09\x01\x00\x00\x00"), "a protocol-header reply is a refusal");
    }

    #[test]
    fn free_ports_are_distinct() {
        let [a, b, c] = free_ports::<3>().unwrap();
        assert!(a != b && b != c && a != c);
    }

    #[test]
    fn the_broker_is_private_and_on_loopback() {
        let dir = Path::new("/tmp/x");
        let env = rabbitmq_env(dir, "n@localhost", 2, 3);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("RABBITMQ_DIST_PORT"), Some("2"));
        assert_eq!(get("ERL_EPMD_PORT"), Some("3"));
        assert_eq!(get("HOME"), Some("/tmp/x"));
        for k in ["RABBITMQ_MNESIA_BASE", "RABBITMQ_LOG_BASE", "RABBITMQ_CONFIG_FILE", "RABBITMQ_CONF_ENV_FILE", "RABBITMQ_ENABLED_PLUGINS_FILE"] {
            assert!(get(k).is_some_and(|v| v.starts_with("/tmp/x/")), "{k}");
        }
        assert!(get("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS").unwrap().contains("{127,0,0,1}"));
        assert!(rabbitmq_conf(5672).contains("listeners.tcp.1 = 127.0.0.1:5672"));
    }

    #[test]
    fn args_parse() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            a: Args,
        }
        let t = T::try_parse_from(["t", "--quick", "--seconds", "5", "--batches", "1,10"]).unwrap();
        assert!(t.a.quick && t.a.seconds == Some(5.0) && t.a.batches == "1,10" && t.a.producers == 4);
    }
}
