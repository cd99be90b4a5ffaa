//! Where the time goes: counters read at the start and the end of a measured window —
//! CPU of this process, of the server's processes and of the machine; PostgreSQL's
//! commits, WAL bytes and WAL flushes. (Not the servers' disk writes: on this kind of VM a
//! process's `write_bytes` runs to ~30× the bytes it wrote, which makes them meaningless.)

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// Linux reports process CPU time in clock ticks of 1/100 s (USER_HZ) on every mainstream
/// architecture.
const TICKS_PER_SEC: f64 = 100.0;

/// Per-window figures (each `None` when it could not be read).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Diagnostics {
    /// CPU of this benchmark process (its producers and consumers, and the relay for ours),
    /// in % of one core.
    pub client_cpu_pct: Option<f64>,
    /// CPU of the server's processes (PostgreSQL, or RabbitMQ's Erlang VM), % of one core.
    pub server_cpu_pct: Option<f64>,
    /// The whole machine's CPUs: busy and waiting for I/O, % of all of them.
    pub machine_busy_pct: Option<f64>,
    pub machine_iowait_pct: Option<f64>,
    /// PostgreSQL only: transactions committed in the benchmark's databases, WAL written
    /// and WAL flushes (fsync / fdatasync) of the whole server, per consumed message and
    /// per second. PostgreSQL publishes these counters about once a second, so they are
    /// approximate at the edges of the window.
    pub commits_per_msg: Option<f64>,
    pub wal_bytes_per_msg: Option<f64>,
    pub wal_syncs_per_sec: Option<f64>,
}

/// The queue table of a PostgreSQL-based system at the end of a scenario: how much of it
/// is dead rows and index, and whether autovacuum / autoanalyze got to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableStats {
    pub table: String,
    pub live_rows: i64,
    pub dead_rows: i64,
    pub autovacuums: i64,
    pub autoanalyzes: i64,
    pub index_bytes: i64,
}

/// [`TableStats`] of `schema.table` in the database of `url` (the table is the one the
/// consumers claim from).
pub async fn table_stats(url: &str, schema: &str, table: &str) -> Option<TableStats> {
    let pool = sqlx::PgPool::connect(url).await.ok()?;
    let row: Option<(i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count, pg_indexes_size(relid)
         FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2",
    )
    .bind(schema)
    .bind(table)
    .fetch_optional(&pool)
    .await
    .ok()
    .flatten();
    pool.close().await;
    let (live_rows, dead_rows, autovacuums, autoanalyzes, index_bytes) = row?;
    Some(TableStats { table: format!("{schema}.{table}"), live_rows, dead_rows, autovacuums, autoanalyzes, index_bytes })
}

/// The server whose processes and counters are read.
#[derive(Clone)]
pub enum Server {
    /// PostgreSQL: an admin pool (its backend's parent is the postmaster).
    Postgres(PgPool),
    /// RabbitMQ: the process that started the broker (the Erlang VM is among its
    /// descendants), when known.
    Rabbitmq(Option<u32>),
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    at: Option<Instant>,
    client_ticks: Option<u64>,
    server_ticks: Option<u64>,
    machine: Option<CpuTimes>,
    pg: Option<PgCounters>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct CpuTimes {
    busy: u64,
    iowait: u64,
    total: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct PgCounters {
    commits: i64,
    wal_bytes: f64,
    wal_syncs: i64,
}

async fn snapshot(server: &Server) -> Snapshot {
    let root = match server {
        Server::Postgres(pool) => postmaster(pool).await,
        Server::Rabbitmq(pid) => *pid,
    };
    let server_ticks = root.and_then(tree_ticks);
    let pg = match server {
        Server::Postgres(pool) => pg_counters(pool).await,
        Server::Rabbitmq(_) => None,
    };
    Snapshot {
        at: Some(Instant::now()),
        client_ticks: std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| parse_stat(&s)).map(|s| s.ticks),
        server_ticks,
        machine: std::fs::read_to_string("/proc/stat").ok().and_then(|s| parse_cpu(&s)),
        pg,
    }
}

/// Samples at the start and the end of the window `(from, until)`.
pub async fn around(server: Server, window: (Instant, Instant)) -> (Snapshot, Snapshot) {
    tokio::time::sleep_until(window.0.into()).await;
    let a = snapshot(&server).await;
    tokio::time::sleep_until(window.1.into()).await;
    let b = snapshot(&server).await;
    (a, b)
}

/// The figures between two snapshots, for `consumed` messages.
pub fn diagnostics((a, b): &(Snapshot, Snapshot), consumed: u64) -> Diagnostics {
    let secs = match (a.at, b.at) {
        (Some(x), Some(y)) if y > x => (y - x).as_secs_f64(),
        _ => return Diagnostics::default(),
    };
    let per_msg = |v: f64| (consumed > 0).then(|| v / consumed as f64);
    let delta = |x: Option<u64>, y: Option<u64>| x.zip(y).map(|(x, y)| y.saturating_sub(x));
    let cpu_pct = |ticks: Option<u64>| ticks.map(|t| t as f64 / TICKS_PER_SEC / secs * 100.0);
    let (busy, iowait) = match (a.machine, b.machine) {
        (Some(x), Some(y)) if y.total > x.total => {
            let total = (y.total - x.total) as f64;
            (
                Some(y.busy.saturating_sub(x.busy) as f64 / total * 100.0),
                Some(y.iowait.saturating_sub(x.iowait) as f64 / total * 100.0),
            )
        }
        _ => (None, None),
    };
    let pg = a.pg.zip(b.pg);
    Diagnostics {
        client_cpu_pct: cpu_pct(delta(a.client_ticks, b.client_ticks)),
        server_cpu_pct: cpu_pct(delta(a.server_ticks, b.server_ticks)),
        machine_busy_pct: busy,
        machine_iowait_pct: iowait,
        commits_per_msg: pg.and_then(|(x, y)| per_msg((y.commits - x.commits) as f64)),
        wal_bytes_per_msg: pg.and_then(|(x, y)| per_msg(y.wal_bytes - x.wal_bytes)),
        wal_syncs_per_sec: pg.map(|(x, y)| (y.wal_syncs - x.wal_syncs) as f64 / secs),
    }
}

async fn postmaster(pool: &PgPool) -> Option<u32> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(pool).await.ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).ok()?;
    parse_stat(&stat).map(|s| s.ppid)
}

async fn pg_counters(pool: &PgPool) -> Option<PgCounters> {
    let row: (i64, f64, i64) = sqlx::query_as(
        "SELECT (SELECT coalesce(sum(xact_commit), 0)::int8 FROM pg_stat_database WHERE datname LIKE 'peers\\_%'),
                wal_bytes::float8, wal_sync FROM pg_stat_wal",
    )
    .fetch_one(pool)
    .await
    .ok()?;
    Some(PgCounters { commits: row.0, wal_bytes: row.1, wal_syncs: row.2 })
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct ProcStat {
    ppid: u32,
    ticks: u64,
}

/// `ppid` and `utime + stime` from a `/proc/<pid>/stat` line (the command name, in
/// parentheses, may hold spaces and parentheses itself).
fn parse_stat(line: &str) -> Option<ProcStat> {
    let rest = &line[line.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) … utime(11) stime(12).
    Some(ProcStat { ppid: f.get(1)?.parse().ok()?, ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()? })
}

/// The first `cpu` line of `/proc/stat`.
fn parse_cpu(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = v.iter().take(8).sum();
    let idle = *v.get(3)?;
    let iowait = *v.get(4)?;
    Some(CpuTimes { busy: total - idle - iowait, iowait, total })
}

/// CPU ticks of `root` and all its descendants (processes that exited within the window are
/// missed: the servers here keep theirs).
fn tree_ticks(root: u32) -> Option<u64> {
    let dir = std::fs::read_dir("/proc").ok()?;
    let mut stats: HashMap<u32, ProcStat> = HashMap::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| parse_stat(&s)) {
            stats.insert(pid, s);
        }
    }
    let tree = descendants(root, &stats);
    (!tree.is_empty()).then(|| tree.iter().filter_map(|p| stats.get(p)).map(|s| s.ticks).sum())
}

/// `root` (if it exists) and every process below it.
fn descendants(root: u32, stats: &HashMap<u32, ProcStat>) -> Vec<u32> {
    if !stats.contains_key(&root) {
        return Vec::new();
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(stats.iter().filter(|(_, s)| s.ppid == parent).map(|(p, _)| *p));
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_lines_with_awkward_names() {
        let line = "4242 (postgres: x (y) z) S 4100 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(line), Some(ProcStat { ppid: 4100, ticks: 325 }));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn parses_machine_cpu_and_io() {
        let stat = "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(parse_cpu(stat), Some(CpuTimes { busy: 160, iowait: 40, total: 1000 }));
    }

    #[test]
    fn finds_every_descendant() {
        let s = |ppid| ProcStat { ppid, ticks: 1 };
        let stats = HashMap::from([(1, s(0)), (10, s(1)), (11, s(10)), (12, s(11)), (20, s(1)), (30, s(99))]);
        let mut d = descendants(10, &stats);
        d.sort();
        assert_eq!(d, [10, 11, 12]);
        assert!(descendants(77, &stats).is_empty());
    }

    #[test]
    fn diagnostics_between_snapshots() {
        let t0 = Instant::now();
        let a = Snapshot {
            at: Some(t0),
            client_ticks: Some(100),
            server_ticks: Some(1000),
            machine: Some(CpuTimes { busy: 0, iowait: 0, total: 0 }),
            pg: Some(PgCounters { commits: 10, wal_bytes: 0.0, wal_syncs: 5 }),
        };
        let b = Snapshot {
            at: Some(t0 + std::time::Duration::from_secs(2)),
            client_ticks: Some(200),
            server_ticks: Some(1300),
            machine: Some(CpuTimes { busy: 300, iowait: 100, total: 400 }),
            pg: Some(PgCounters { commits: 2010, wal_bytes: 500_000.0, wal_syncs: 605 }),
        };
        let d = diagnostics(&(a, b), 1000);
        assert_eq!(d.client_cpu_pct, Some(50.0));
        assert_eq!(d.server_cpu_pct, Some(150.0));
        assert_eq!(d.machine_busy_pct, Some(75.0));
        assert_eq!(d.machine_iowait_pct, Some(25.0));
        assert_eq!(d.commits_per_msg, Some(2.0));
        assert_eq!(d.wal_bytes_per_msg, Some(500.0));
        assert_eq!(d.wal_syncs_per_sec, Some(300.0));
        assert_eq!(diagnostics(&(Snapshot::default(), Snapshot::default()), 5), Diagnostics::default());
    }

    #[test]
    fn reads_this_process() {
        assert!(tree_ticks(std::process::id()).is_some());
        assert_eq!(tree_ticks(u32::MAX), None);
    }
}
