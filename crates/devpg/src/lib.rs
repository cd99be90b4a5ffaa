//! A private, throw-away PostgreSQL cluster for every run.
//!
//! [`PgCluster::start`] runs `initdb` into a fresh temporary directory, starts the server on
//! a free loopback port (only the `postgres` admin logs in without a password) and stops it
//! again (and deletes the data directory) when the cluster is dropped, when
//! [`PgCluster::stop`] is called, or — for clusters kept in a `static` that is never
//! dropped — when the process exits normally (an `atexit` hook stops every cluster this
//! process started).
//!
//! [`provision_database`] creates a service's database with its own migrator, runtime and
//! relay roles, which log in with their passwords, as in a real deployment.
//!
//! [`test_db`] gives every test a fresh database: on the server named by `DATABASE_URL` when
//! that is set (it must be an admin URL), otherwise on one private cluster per test process.
//!
//! Running as root works: the temp directory is handed to the `postgres` user and
//! `initdb` / `pg_ctl` run through `runuser -u postgres --`.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

mod roles;
pub use roles::{DatabaseRoles, ProvisionedDatabase, provision_database, with_user};

/// Prefix of every temp directory this crate creates (`/tmp/conveyor-pg-{name}-{pid}-{rand}`).
const DIR_PREFIX: &str = "conveyor-pg-";

/// Client authentication of a private cluster: `postgres` without a password, any other
/// role with its password (SCRAM), on the socket and on loopback TCP.
const PG_HBA: &str = "\
# conveyor-devpg
local all         postgres                trust
local all         all                     scram-sha-256
host  all         postgres  127.0.0.1/32  trust
host  all         postgres  ::1/128       trust
host  all         all       127.0.0.1/32  scram-sha-256
host  all         all       ::1/128       scram-sha-256
local replication postgres                trust
host  replication postgres  127.0.0.1/32  trust
";

/// How a private cluster is set up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `false`: `fsync=off`, `synchronous_commit=off`, `full_page_writes=off` (fast, for
    /// tests). `true`: PostgreSQL's durable defaults (for benchmarks).
    pub durable: bool,
    /// `max_connections` of the server.
    pub max_connections: u32,
    /// Part of the data directory's name, e.g. `"test"`, `"up"`, `"bench"`.
    pub name: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            durable: false,
            max_connections: 400,
            name: "dev".to_string(),
        }
    }
}

/// A running private PostgreSQL server. Stopped (and its data deleted) on drop.
#[derive(Debug)]
pub struct PgCluster {
    port: u16,
    bin_dir: PathBuf,
    root_dir: PathBuf,
    stopped: bool,
}

/// What the exit hook needs to stop a cluster.
#[derive(Debug, Clone)]
struct Live {
    root_dir: PathBuf,
    bin_dir: PathBuf,
}

static LIVE: Mutex<Vec<Live>> = Mutex::new(Vec::new());
static ATEXIT: Once = Once::new();

extern "C" fn stop_all_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        let live: Vec<Live> = {
            let mut guard = LIVE.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *guard)
        };
        for l in live {
            shutdown(&l.bin_dir, &l.root_dir, true);
        }
    });
}

fn register(live: Live) {
    ATEXIT.call_once(|| {
        // SAFETY: registering a plain `extern "C" fn()` with the C runtime.
        unsafe {
            libc::atexit(stop_all_at_exit);
        }
    });
    LIVE.lock().unwrap_or_else(|p| p.into_inner()).push(live);
}

fn unregister(root_dir: &Path) {
    LIVE.lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|l| l.root_dir != root_dir);
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of the `postgres` user.
fn postgres_user() -> Result<(u32, u32)> {
    let name = CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns NULL or a pointer to a static passwd entry; we copy the ids
    // out immediately.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!(
            "running as root, so PostgreSQL must run as the `postgres` user, but there is no such \
             user; install PostgreSQL server binaries (on Debian/Ubuntu `apt-get install \
             postgresql`, which creates it) or run as a normal user"
        );
    }
    // SAFETY: pw is non-null and points to a valid passwd struct.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok((uid, gid))
}

/// A command for a PostgreSQL program: run directly, or — as root — as the `postgres` user.
fn pg_command(bin_dir: &Path, program: &str, cwd: &Path) -> Command {
    let bin = bin_dir.join(program);
    let mut cmd = if is_root() {
        let mut c = Command::new(runuser_path());
        c.arg("-u").arg("postgres").arg("--").arg(bin);
        c
    } else {
        Command::new(bin)
    };
    // The caller's directory may not be readable by `postgres`; the temp dir is.
    cmd.current_dir(cwd);
    for var in [
        "PGDATA",
        "PGPORT",
        "PGHOST",
        "PGUSER",
        "PGDATABASE",
        "PGOPTIONS",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn runuser_path() -> PathBuf {
    for p in [
        "/usr/sbin/runuser",
        "/sbin/runuser",
        "/usr/bin/runuser",
        "/bin/runuser",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("runuser")
}

fn output_text(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        if !s.is_empty() && !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&err);
    }
    s.trim_end().to_string()
}

fn run_checked(mut cmd: Command, what: &str) -> Result<Output> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("could not run {what}: {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {cmd:?}\n{}",
            out.status,
            output_text(&out)
        );
    }
    Ok(out)
}

/// Stop the server whose data lives in `root_dir/data` and delete `root_dir`. Best effort.
fn shutdown(bin_dir: &Path, root_dir: &Path, warn: bool) {
    let data = root_dir.join("data");
    if postmaster_running(&data) {
        let fast = pg_command(bin_dir, "pg_ctl", root_dir)
            .args(["stop", "-m", "fast", "-w", "-t", "30", "-D"])
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output();
        let ok = matches!(&fast, Ok(o) if o.status.success());
        if !ok && postmaster_running(&data) {
            let _ = pg_command(bin_dir, "pg_ctl", root_dir)
                .args(["stop", "-m", "immediate", "-w", "-t", "30", "-D"])
                .arg(&data)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if postmaster_running(&data) {
            if !warn {
                return;
            }
            eprintln!(
                "conveyor-devpg: warning: could not stop PostgreSQL in {}; leaving it in place",
                data.display()
            );
            return;
        }
    }
    let _ = fs::remove_dir_all(root_dir);
}

/// Whether `data/postmaster.pid` names a live process (a crash can leave a stale file).
fn postmaster_running(data: &Path) -> bool {
    let Ok(text) = fs::read_to_string(data.join("postmaster.pid")) else {
        return false;
    };
    match text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    {
        Some(pid) if pid > 0 => pid_alive(pid),
        // Unreadable content: assume it runs, so that pg_ctl gets to decide.
        _ => true,
    }
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence/permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Remove clusters left behind by processes of ours that died without stopping them
/// (killed by a signal, so neither Drop nor the exit hook ran).
fn clean_stale(bin_dir: &Path) {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
            continue;
        };
        let mut parts = rest.rsplitn(3, '-');
        let (_rand, pid) = (parts.next(), parts.next());
        let Some(pid) = pid.and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid <= 0 || pid == std::process::id() as i32 || pid_alive(pid) {
            continue;
        }
        shutdown(bin_dir, &entry.path(), false);
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("could not bind a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

fn random_suffix() -> String {
    let s = uuid::Uuid::now_v7().simple().to_string();
    s[s.len() - 10..].to_string()
}

impl PgCluster {
    /// Create and start a private cluster. Blocks until it accepts connections.
    pub fn start(opts: ClusterOptions) -> Result<PgCluster> {
        let bin_dir = find_pg_bin_dir()?;
        for prog in ["initdb", "pg_ctl", "postgres"] {
            if !bin_dir.join(prog).exists() {
                bail!(
                    "{} has no `{prog}`; install PostgreSQL server binaries: on Debian/Ubuntu \
                     `apt-get install postgresql` (or point PG_BIN_DIR at the right directory)",
                    bin_dir.display()
                );
            }
        }
        clean_stale(&bin_dir);

        let as_root = is_root();
        let pg_ids = if as_root {
            Some(postgres_user()?)
        } else {
            None
        };

        let safe_name: String = opts
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let root_dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{safe_name}-{}-{}",
            std::process::id(),
            random_suffix()
        ));
        fs::create_dir(&root_dir)
            .with_context(|| format!("could not create {}", root_dir.display()))?;
        // From here on, dropping `cluster` cleans up whatever exists.
        let mut cluster = PgCluster {
            port: 0,
            bin_dir: bin_dir.clone(),
            root_dir: root_dir.clone(),
            stopped: false,
        };
        register(Live {
            root_dir: root_dir.clone(),
            bin_dir: bin_dir.clone(),
        });

        fs::set_permissions(&root_dir, fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = pg_ids {
            std::os::unix::fs::chown(&root_dir, Some(uid), Some(gid)).with_context(|| {
                format!("could not hand {} to the postgres user", root_dir.display())
            })?;
        }

        let data = root_dir.join("data");
        let mut initdb = pg_command(&bin_dir, "initdb", &root_dir);
        initdb.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        if !opts.durable {
            initdb.arg("--no-sync");
        }
        run_checked(initdb, "initdb")?;
        // The admin is trusted; every other role logs in with its password, as it would on
        // a real server (see `provision_database`).
        fs::write(data.join("pg_hba.conf"), PG_HBA).context("could not write pg_hba.conf")?;

        let mut conf = String::from("\n# conveyor-devpg\n");
        conf.push_str("listen_addresses = '127.0.0.1'\n");
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            root_dir.display().to_string().replace('\'', "''")
        ));
        conf.push_str(&format!("max_connections = {}\n", opts.max_connections));
        conf.push_str("shared_buffers = 256MB\n");
        if !opts.durable {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .context("could not write postgresql.conf")?;

        let log = root_dir.join("postgres.log");
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port()?;
            let out = pg_command(&bin_dir, "pg_ctl", &root_dir)
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .arg("-o")
                .arg(format!("-p {port}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
                .context("could not run pg_ctl start")?;
            if out.status.success() {
                cluster.port = port;
                return Ok(cluster);
            }
            let log_text = fs::read_to_string(&log).unwrap_or_default();
            last_err = format!(
                "pg_ctl start failed ({}):\n{}\n--- server log {} ---\n{}",
                out.status,
                output_text(&out),
                log.display(),
                log_text.trim_end()
            );
            let port_clash = log_text.contains("Address already in use")
                || log_text.contains("could not create any TCP/IP sockets");
            if !port_clash {
                break;
            }
            // Make sure nothing half-started lingers before the next try; start the log afresh.
            if data.join("postmaster.pid").exists() {
                let _ = pg_command(&bin_dir, "pg_ctl", &root_dir)
                    .args(["stop", "-m", "immediate", "-w", "-D"])
                    .arg(&data)
                    .output();
            }
            let _ = fs::remove_file(&log);
        }
        Err(anyhow!("could not start a private PostgreSQL: {last_err}"))
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:{port}/{database}`
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// URL of the `postgres` database (for `CREATE DATABASE` and friends).
    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    /// Directory with the server's programs (`psql`, `pgbench`, …).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Temp directory holding the data dir, the server log and the unix socket.
    pub fn root_dir(&self) -> &Path {
        &self.root_dir
    }

    /// The postmaster's pid (from `postmaster.pid`), `None` when the server is not running.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let data = self.root_dir.join("data");
        let text = fs::read_to_string(data.join("postmaster.pid")).ok()?;
        let pid = text.lines().next()?.trim().parse::<i32>().ok()?;
        (pid > 0 && pid_alive(pid)).then_some(pid)
    }

    /// Crash and restart the server, as a power cut of PostgreSQL alone would: `pg_ctl stop
    /// -m immediate` (every backend quits at once, nothing is checkpointed, clients lose
    /// their connections), then start again on the same port and data directory, which
    /// runs crash recovery from the WAL. Blocks until the server accepts connections again.
    ///
    /// Every transaction whose commit was flushed survives. A cluster started with
    /// `durable: false` runs with `synchronous_commit = off`, where the last few hundred
    /// milliseconds of commits may be lost: start the cluster with `durable: true` when
    /// committed data must survive the crash.
    pub fn restart_immediate(&self) -> Result<()> {
        let data = self.root_dir.join("data");
        let mut stop = pg_command(&self.bin_dir, "pg_ctl", &self.root_dir);
        stop.args(["stop", "-m", "immediate", "-w", "-t", "60", "-D"])
            .arg(&data);
        run_checked(stop, "pg_ctl stop -m immediate")?;
        let log = self.root_dir.join("postgres.log");
        // The port was ours a moment ago; a client of the old server may hold it briefly
        // in a state that makes bind fail, so a failed start is tried again for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut start = pg_command(&self.bin_dir, "pg_ctl", &self.root_dir);
            start
                .args(["start", "-w", "-t", "120", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .arg("-o")
                .arg(format!("-p {}", self.port));
            match run_checked(start, "pg_ctl start (after an immediate stop)") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    let log_text = fs::read_to_string(&log).unwrap_or_default();
                    let tail: Vec<&str> = log_text.lines().rev().take(20).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    return Err(e.context(format!(
                        "PostgreSQL did not come back after an immediate stop; server log {}:\n{}",
                        log.display(),
                        tail.join("\n")
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Stop the server (`pg_ctl stop -m fast`) and delete its data directory.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        unregister(&self.root_dir);
        shutdown(&self.bin_dir, &self.root_dir, true);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn has_server(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() && dir.join("postgres").is_file()
}

fn search_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR").filter(|d| !d.is_empty()) {
        // An explicit choice is used as given (and checked by the caller).
        return Some(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    // Distributions that put the server programs on PATH (e.g. Fedora, Homebrew).
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|d| has_server(d))
}

/// Where the PostgreSQL server programs live: env `PG_BIN_DIR`, else `pg_config --bindir`,
/// else the highest `/usr/lib/postgresql/*/bin` (else a directory on `PATH`).
///
/// When none is found and this runs as root with `CI=true`, it runs
/// `apt-get install -y postgresql` once and looks again.
pub fn find_pg_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = search_bin_dir() {
        return Ok(dir);
    }
    let ci = std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false);
    if ci && is_root() {
        eprintln!(
            "conveyor-devpg: no PostgreSQL server binaries found; CI=true and root, so running `apt-get install -y postgresql`"
        );
        let install = || -> Result<()> {
            let mut update = Command::new("apt-get");
            update.arg("update").stdin(Stdio::null());
            let _ = update.status();
            let status = Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "postgresql"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null())
                .status()
                .context("could not run apt-get")?;
            if !status.success() {
                bail!("apt-get install -y postgresql failed ({status})");
            }
            Ok(())
        };
        if let Err(e) = install() {
            eprintln!("conveyor-devpg: {e:#}");
        }
        if let Some(dir) = search_bin_dir() {
            return Ok(dir);
        }
    }
    bail!(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found via PG_BIN_DIR, \
         `pg_config --bindir` or /usr/lib/postgresql/*/bin; install PostgreSQL server binaries: \
         on Debian/Ubuntu `apt-get install postgresql` (or set DATABASE_URL to use a server you run)"
    )
}

/// `url` with its database (path) component replaced by `database`; query string kept.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[authority_start..]
        .find('/')
        .map(|i| i + authority_start);
    let head = match path_start {
        Some(i) => &base[..i],
        None => base,
    };
    format!("{head}/{database}{query}")
}

async fn connect_admin(admin_url: &str) -> Result<sqlx::PgConnection> {
    use sqlx::Connection;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match sqlx::PgConnection::connect(admin_url).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("could not connect to {admin_url}")),
        }
    }
}

/// `CREATE DATABASE "{name}"` on the server behind `admin_url` (nothing if it exists);
/// returns the new database's URL.
pub async fn create_database(admin_url: &str, name: &str) -> Result<String> {
    use sqlx::Connection;
    let mut conn = connect_admin(admin_url).await?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut conn)
        .await?;
    if exists.is_none() {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .with_context(|| format!("CREATE DATABASE {name} failed on {admin_url}"))?;
    }
    let _ = conn.close().await;
    Ok(with_database(admin_url, name))
}

/// A fresh database for one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// Database name (`t_<uuid>`).
    pub name: String,
    /// URL of this database.
    pub url: String,
    /// URL of the server's admin database.
    pub admin_url: String,
}

impl TestDb {
    /// A pool on this database (at most 20 connections).
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(20)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("could not connect to test database {}: {e}", self.url))
    }
}

static SHARED_ADMIN_URL: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
/// The per-process private cluster (never dropped: the exit hook stops it).
static SHARED_CLUSTER: OnceLock<PgCluster> = OnceLock::new();

/// The admin URL tests create their databases with: `DATABASE_URL` when set, else the
/// private cluster started once per process.
pub async fn shared_admin_url() -> String {
    SHARED_ADMIN_URL
        .get_or_init(|| async {
            if let Ok(url) = std::env::var("DATABASE_URL")
                && !url.trim().is_empty()
            {
                return url;
            }
            let cluster = tokio::task::spawn_blocking(|| {
                PgCluster::start(ClusterOptions {
                    name: "test".into(),
                    ..Default::default()
                })
            })
            .await
            .expect("cluster start task panicked")
            .unwrap_or_else(|e| panic!("could not start a private PostgreSQL for tests: {e:#}"));
            let url = cluster.admin_url();
            let _ = SHARED_CLUSTER.set(cluster);
            url
        })
        .await
        .clone()
}

/// A fresh, empty database `t_<uuid>` for one test — on `DATABASE_URL`'s server when set,
/// else on a private cluster started once per process. Safe to call concurrently.
pub async fn test_db() -> TestDb {
    let admin_url = shared_admin_url().await;
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    let url = create_database(&admin_url, &name)
        .await
        .unwrap_or_else(|e| panic!("could not create test database: {e:#}"));
    TestDb {
        name,
        url,
        admin_url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_database_in_urls() {
        assert_eq!(
            with_database("postgres://u@h:5/postgres", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }

    #[test]
    fn finds_binaries() {
        let dir = find_pg_bin_dir().unwrap();
        assert!(dir.join("pg_ctl").exists());
    }

    #[test]
    fn start_connect_stop() {
        let cluster = PgCluster::start(ClusterOptions {
            name: "unit".into(),
            ..Default::default()
        })
        .unwrap();
        let root = cluster.root_dir().to_path_buf();
        assert!(root.join("data/postmaster.pid").exists());
        let url = cluster.admin_url();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            let one: i32 = sqlx::query_scalar("SELECT 1")
                .fetch_one(&mut c)
                .await
                .unwrap();
            assert_eq!(one, 1);
            let fsync: String = sqlx::query_scalar("SHOW fsync")
                .fetch_one(&mut c)
                .await
                .unwrap();
            assert_eq!(fsync, "off");
            let max: String = sqlx::query_scalar("SHOW max_connections")
                .fetch_one(&mut c)
                .await
                .unwrap();
            assert_eq!(max, "400");
            c.close().await.unwrap();
        });
        cluster.stop();
        assert!(!root.exists(), "data dir removed on stop");
    }

    #[tokio::test]
    async fn test_db_gives_fresh_databases() {
        let a = test_db().await;
        let b = test_db().await;
        assert_ne!(a.name, b.name);
        let pool = a.pool().await;
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(one, 1);
        let db: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(db, a.name);
        pool.close().await;
    }
}
