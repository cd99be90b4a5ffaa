//! CPU time per process from `/proc`: the stack's processes, PostgreSQL (the postmaster and
//! every backend, split by database), this process (the driver) and the machine as a whole.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

/// Times of one process, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcTimes {
    pub ppid: u32,
    /// utime + stime.
    pub own: u64,
    /// cutime + cstime: children waited for (a postmaster's exited backends).
    pub children: u64,
}

/// Parses `/proc/<pid>/stat` (the command name may hold spaces and parentheses: the fields
/// start after the last `)`).
pub fn parse_stat(text: &str) -> Option<ProcTimes> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, utime..cstime fields 14..17.
    let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcTimes { ppid: num(4)? as u32, own: num(14)? + num(15)?, children: num(16)? + num(17)? })
}

pub fn proc_times(pid: u32) -> Option<ProcTimes> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// (busy, total) ticks of the whole machine from `/proc/stat`; idle and iowait are not busy.
pub fn parse_machine(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already)
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Every process whose parent is `ppid`, with its times.
fn children_of(ppid: u32) -> Vec<(u32, ProcTimes)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| proc_times(pid).filter(|t| t.ppid == ppid).map(|t| (pid, t)))
        .collect()
}

/// CPU ticks at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    /// By process name (the stack's, and `driver` for this process).
    named: BTreeMap<String, u64>,
    /// PostgreSQL's processes (backends and background workers) by pid.
    backends: BTreeMap<u32, u64>,
    /// This process's waited-for children (psql, pgbench).
    tools: u64,
    /// The postmaster's own and reaped children's ticks plus every live backend's.
    postgres_total: Option<u64>,
    machine: Option<(u64, u64)>,
}

/// Takes snapshots of the processes it was given.
pub struct Sampler {
    pub processes: Vec<(String, u32)>,
    pub postmaster: Option<u32>,
    ticks_per_sec: f64,
}

impl Sampler {
    pub fn new(processes: Vec<(String, u32)>, postmaster: Option<u32>) -> Sampler {
        Sampler { processes, postmaster, ticks_per_sec: clock_ticks() }
    }

    /// A snapshot now.
    pub fn snapshot(&self) -> Snapshot {
        let mut named = BTreeMap::new();
        for (name, pid) in &self.processes {
            if let Some(t) = proc_times(*pid) {
                named.insert(name.clone(), t.own);
            }
        }
        let me = proc_times(std::process::id());
        if let Some(t) = me {
            named.insert(DRIVER.to_owned(), t.own);
        }
        let (mut backends, mut postgres_total) = (BTreeMap::new(), None);
        if let Some(pm) = self.postmaster.and_then(|pid| proc_times(pid).map(|t| (pid, t))) {
            let mut total = pm.1.own + pm.1.children;
            for (pid, t) in children_of(pm.0) {
                total += t.own;
                backends.insert(pid, t.own);
            }
            postgres_total = Some(total);
        }
        let machine = std::fs::read_to_string("/proc/stat").ok().and_then(|s| parse_machine(&s));
        Snapshot { at: Instant::now(), named, backends, tools: me.map_or(0, |t| t.children), postgres_total, machine }
    }

    /// CPU used between two snapshots, in cores (1.0 = one core busy all the time);
    /// `labels` names PostgreSQL's processes (pid → database, or backend type).
    pub fn usage(&self, a: &Snapshot, b: &Snapshot, labels: &BTreeMap<u32, String>) -> CpuUsage {
        let secs = b.at.saturating_duration_since(a.at).as_secs_f64().max(1e-3);
        let cores = |ticks: u64| ticks as f64 / self.ticks_per_sec / secs;
        let mut processes = BTreeMap::new();
        for (name, end) in &b.named {
            if let Some(start) = a.named.get(name) {
                processes.insert(name.clone(), cores(end.saturating_sub(*start)));
            }
        }
        // The load generator runs as our child (saga-driver, pgbench): reaped, its time is ours.
        let driver = processes.remove(DRIVER).unwrap_or(0.0) + cores(b.tools.saturating_sub(a.tools));
        let mut postgres_by = BTreeMap::new();
        let mut labelled = 0u64;
        for (pid, end) in &b.backends {
            let d = end.saturating_sub(a.backends.get(pid).copied().unwrap_or(0));
            labelled += d;
            let label = labels.get(pid).map_or("other", String::as_str);
            *postgres_by.entry(label.to_owned()).or_insert(0.0) += cores(d);
        }
        let postgres = match (a.postgres_total, b.postgres_total) {
            (Some(x), Some(y)) => {
                let total = y.saturating_sub(x);
                let rest = total.saturating_sub(labelled);
                if rest > 0 {
                    *postgres_by.entry("exited connections and postmaster".to_owned()).or_insert(0.0) += cores(rest);
                }
                Some(cores(total))
            }
            _ => None,
        };
        let machine_busy = match (a.machine, b.machine) {
            // /proc/stat counts ticks of every CPU: busy CPUs = busy share × CPUs.
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some((b1 - b0) as f64 / (t1 - t0) as f64 * std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64)
            }
            _ => None,
        };
        let known: f64 = processes.values().sum::<f64>() + driver + postgres.unwrap_or(0.0);
        let other = machine_busy.map(|m| (m - known).max(0.0));
        CpuUsage { seconds: secs, processes, driver, postgres, postgres_by, machine_busy, other }
    }
}

/// The name this process goes by in a snapshot.
const DRIVER: &str = "load driver";

/// CPU used over an interval, in cores.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CpuUsage {
    pub seconds: f64,
    /// Each process of the stack.
    pub processes: BTreeMap<String, f64>,
    /// The load generator (the saga-driver process, or pgbench for the ceiling; children of
    /// this process, counted when they exit) and this harness.
    pub driver: f64,
    /// PostgreSQL as a whole; `None` when its processes are not visible here.
    pub postgres: Option<f64>,
    /// PostgreSQL by database (backends) or backend type (background processes).
    pub postgres_by: BTreeMap<String, f64>,
    /// The whole machine (idle and iowait excluded).
    pub machine_busy: Option<f64>,
    /// The machine minus everything above: other programs (compilers, other benchmarks).
    pub other: Option<f64>,
}

impl CpuUsage {
    /// The stack's processes, PostgreSQL, the driver and everything else, biggest first.
    pub fn ranked(&self) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self.processes.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.push(("postgres (all)".to_owned(), self.postgres.unwrap_or(0.0)));
        v.push((DRIVER.to_owned(), self.driver));
        if let Some(o) = self.other {
            v.push(("other programs".to_owned(), o));
        }
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    /// The stack's application processes (APIs, workers, webhook receiver) together.
    pub fn application(&self) -> f64 {
        self.processes.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_command_names() {
        let line = "4242 (order (api) x) S 100 4242 4242 0 -1 4194560 1200 0 0 0 350 120 7 9 20 0 5 0 123456 1000000 500 18446744073709551615";
        assert_eq!(parse_stat(line), Some(ProcTimes { ppid: 100, own: 470, children: 16 }));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait() {
        let text = "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 50 2 25 400 20 1 1 0 0 0\n";
        assert_eq!(parse_machine(text), Some((160, 1000)));
    }

    #[test]
    fn this_process_is_measured_as_the_driver() {
        let s = Sampler::new(vec![("self".into(), std::process::id())], None);
        let a = s.snapshot();
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 150 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let b = s.snapshot();
        let u = s.usage(&a, &b, &BTreeMap::new());
        assert!(u.driver > 0.0 && u.processes["self"] > 0.0, "{u:?} {x}");
        assert!(u.ranked().iter().any(|(n, _)| n == "self"));
    }
}
