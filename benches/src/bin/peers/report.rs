//! The report: rows per system and batch, the ratios, the targets, markdown and charts.

use std::fmt::Write as _;

use conveyor_benches::ratio;
use conveyor_benchkit::{Chart, Machine, Series};
use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostics, TableStats};
use crate::measure::Figures;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Ours,
    Pgmq,
    Rabbitmq,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            System::Ours => "ours",
            System::Pgmq => "pgmq",
            System::Rabbitmq => "RabbitMQ",
        }
    }

    /// What the consumer's acknowledgement guarantees.
    pub fn guarantee(self) -> &'static str {
        match self {
            System::Ours => "exactly-once effect (claim, handler, done: one transaction)",
            System::Pgmq => "at-least-once (read with visibility timeout, then delete)",
            System::Rabbitmq => "at-least-once (manual ack)",
        }
    }
}

/// How the producers publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// As fast as the window lets them: the throughput figures.
    Saturated,
    /// At a fixed rate, the same for every system: latency without a queue built up.
    Paced,
}

/// One system at one batch size, in one mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub system: System,
    pub batch: usize,
    pub mode: Mode,
    /// Paced runs: the rate offered by all producers together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_per_sec: Option<f64>,
    pub guarantee: String,
    /// `None` with `not_measured` saying why.
    pub figures: Option<Figures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<Diagnostics>,
    /// PostgreSQL-based systems: the table the consumers claim from, at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_table: Option<TableStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_measured: Option<String>,
}

impl Row {
    pub fn rate(&self) -> Option<f64> {
        self.figures.as_ref().map(|f| f.msgs_per_sec)
    }

    pub fn not_measured(system: System, batch: usize, mode: Mode, why: impl Into<String>) -> Row {
        Row {
            system,
            batch,
            mode,
            offered_per_sec: None,
            guarantee: system.guarantee().into(),
            figures: None,
            diagnostics: None,
            queue_table: None,
            not_measured: Some(why.into()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Versions {
    pub postgres: String,
    pub pgmq: Option<String>,
    pub rabbitmq: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    pub producers: usize,
    pub consumers: usize,
    pub warmup_s: f64,
    pub seconds: f64,
    pub bucket_s: f64,
    pub payload_bytes: usize,
    /// Where PostgreSQL came from, with its `fsync` and `synchronous_commit`.
    pub postgres_server: String,
    pub postgres_fsync: String,
    pub postgres_synchronous_commit: String,
    /// Per batch: the in-flight window (published, not yet consumed) and RabbitMQ's prefetch.
    pub per_batch: Vec<BatchSettings>,
    pub ours_relay: String,
    /// Ours pulled (the consumer read the publisher's outbox) instead of being pushed to.
    #[serde(default)]
    pub ours_pull: bool,
    pub pgmq_read: String,
    /// Paced runs offer this fraction of the slowest system's saturated rate (0: none).
    pub paced_fraction: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchSettings {
    pub batch: usize,
    pub window: usize,
    pub rabbitmq_prefetch: u16,
}

/// Ours against the peers at one batch size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Comparison {
    pub batch: usize,
    pub ours: Option<f64>,
    pub pgmq: Option<f64>,
    pub rabbitmq: Option<f64>,
    pub ours_over_pgmq: Option<f64>,
    pub ours_over_rabbitmq: Option<f64>,
}

/// A goal for a ratio: `ours ÷ against ≥ at_least` (or `>` when `strictly`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Target {
    pub name: String,
    pub against: System,
    pub batch: usize,
    pub at_least: f64,
    pub strictly: bool,
    pub ratio: Option<f64>,
    /// `None` when a side was not measured.
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub generated_unix: u64,
    /// A smoke run: checks the harness end to end; its figures are not a measurement.
    pub quick: bool,
    pub machine: Machine,
    pub versions: Versions,
    pub settings: Settings,
    pub results: Vec<Row>,
    pub comparisons: Vec<Comparison>,
    pub targets: Vec<Target>,
}

/// The comparisons of the saturated runs (one per batch size, in the order first measured)
/// and the targets.
pub fn compare(rows: &[Row]) -> (Vec<Comparison>, Vec<Target>) {
    let rows: Vec<&Row> = rows.iter().filter(|r| r.mode == Mode::Saturated).collect();
    let mut batches: Vec<usize> = Vec::new();
    for r in &rows {
        if !batches.contains(&r.batch) {
            batches.push(r.batch);
        }
    }
    let rate = |s: System, b: usize| rows.iter().find(|r| r.system == s && r.batch == b).and_then(|r| r.rate());
    let comparisons: Vec<Comparison> = batches
        .iter()
        .map(|&b| {
            let (ours, pgmq, rabbitmq) = (rate(System::Ours, b), rate(System::Pgmq, b), rate(System::Rabbitmq, b));
            Comparison { batch: b, ours, pgmq, rabbitmq, ours_over_pgmq: ratio(ours, pgmq), ours_over_rabbitmq: ratio(ours, rabbitmq) }
        })
        .collect();
    let mut targets = Vec::new();
    let mut target = |name: String, against: System, batch: usize, at_least: f64, strictly: bool| {
        let r = comparisons.iter().find(|c| c.batch == batch).and_then(|c| match against {
            System::Pgmq => c.ours_over_pgmq,
            System::Rabbitmq => c.ours_over_rabbitmq,
            System::Ours => Some(1.0),
        });
        let met = r.map(|r| if strictly { r > at_least } else { r >= at_least });
        targets.push(Target { name, against, batch, at_least, strictly, ratio: r, met });
    };
    for &b in &batches {
        target(format!("faster than pgmq at batch {b}"), System::Pgmq, b, 1.0, true);
    }
    if batches.contains(&1) {
        target("at least 1.5× pgmq at batch 1".into(), System::Pgmq, 1, 1.5, false);
        target("at least equal to RabbitMQ at batch 1".into(), System::Rabbitmq, 1, 1.0, false);
    }
    (comparisons, targets)
}

fn num(v: f64) -> String {
    // 12345.6 → "12,346"
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(v: f64) -> String {
    if v < 10.0 { format!("{v:.2}") } else if v < 100.0 { format!("{v:.1}") } else { format!("{v:.0}") }
}

fn times(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}×")).unwrap_or_else(|| "n/a".into())
}

fn latency_cells(f: &Figures) -> [String; 4] {
    match &f.latency_ms {
        Some(l) => [ms(l.p50), ms(l.p95), ms(l.p99), ms(l.max)],
        None => std::array::from_fn(|_| "n/a".to_string()),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0} %")).unwrap_or_else(|| "n/a".into())
}

fn per_msg(v: Option<f64>) -> String {
    v.map(|v| if v < 10.0 { format!("{v:.2}") } else { num(v) }).unwrap_or_else(|| "n/a".into())
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Peer comparison: one queue hop\n");
    if r.quick {
        let _ = writeln!(s, "**QUICK smoke run: checks the harness end to end; the figures are not a measurement.**\n");
    }
    let st = &r.settings;
    let _ = writeln!(s, "- Machine: {}", r.machine.describe());
    let _ = writeln!(
        s,
        "- {} ({}; fsync={}, synchronous_commit={}); pgmq {} (SQL installed by its crate); {}",
        r.versions.postgres,
        st.postgres_server,
        st.postgres_fsync,
        st.postgres_synchronous_commit,
        r.versions.pgmq.as_deref().unwrap_or("not measured"),
        r.versions.rabbitmq.as_deref().map(|v| format!("RabbitMQ {v}")).unwrap_or_else(|| "RabbitMQ not measured".into()),
    );
    let _ = writeln!(
        s,
        "- Every system: {} producer and {} consumer tasks, the same ~{}-byte JSON message, {} s warm-up then {} s measured per scenario, producers and consumers running at once.",
        st.producers, st.consumers, st.payload_bytes, st.warmup_s, st.seconds
    );
    let windows: Vec<String> =
        st.per_batch.iter().map(|b| format!("{} at batch {} (RabbitMQ prefetch {})", num(b.window as f64), b.batch, b.rabbitmq_prefetch)).collect();
    let _ = writeln!(
        s,
        "- msgs/s = messages the consumers received in the measured window ÷ its length. Producers publish as fast as they can, but at most a window of messages ahead of the consumers: {}. Latency = publish started → the consumer's code has the message (before its acknowledgement); where the consumers are the slower side the queue stays full and latency ≈ window ÷ rate, so the paced runs below give the latency of a queue that is not backed up.\n",
        windows.join(", ")
    );

    let _ = writeln!(s, "## Throughput (saturated)\n");
    let _ = writeln!(s, "| system | batch | msgs/s | published/s | p50 ms | p95 ms | p99 ms | max ms | acknowledgement |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for row in r.results.iter().filter(|x| x.mode == Mode::Saturated) {
        match &row.figures {
            Some(f) => {
                let [p50, p95, p99, max] = latency_cells(f);
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {p50} | {p95} | {p99} | {max} | {} |",
                    row.system.label(),
                    row.batch,
                    num(f.msgs_per_sec),
                    num(f.published_per_sec),
                    row.guarantee
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "| {} | {} | not measured: {} | | | | | | {} |",
                    row.system.label(),
                    row.batch,
                    row.not_measured.as_deref().unwrap_or("skipped"),
                    row.guarantee
                );
            }
        }
    }

    let _ = writeln!(s, "\n## Ours against the peers (saturated msgs/s)\n");
    let _ = writeln!(s, "| batch | ours | pgmq | RabbitMQ | ours ÷ pgmq | ours ÷ RabbitMQ |");
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|");
    let opt = |v: Option<f64>| v.map(num).unwrap_or_else(|| "n/a".into());
    for c in &r.comparisons {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            c.batch,
            opt(c.ours),
            opt(c.pgmq),
            opt(c.rabbitmq),
            times(c.ours_over_pgmq),
            times(c.ours_over_rabbitmq)
        );
    }

    let _ = writeln!(s, "\n## Targets{}\n", if r.quick { " (quick run: not judged)" } else { "" });
    let _ = writeln!(s, "| target | ratio | needed | result |");
    let _ = writeln!(s, "|---|---:|---:|---|");
    for t in &r.targets {
        let result = match (r.quick, t.met) {
            (_, None) => "not measured",
            (true, Some(_)) => "quick run",
            (false, Some(true)) => "met",
            (false, Some(false)) => "MISSED",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {}{:.2}× | {} |",
            t.name,
            times(t.ratio),
            if t.strictly { "> " } else { "≥ " },
            t.at_least,
            result
        );
    }

    let paced: Vec<&Row> = r.results.iter().filter(|x| x.mode == Mode::Paced).collect();
    if !paced.is_empty() {
        let _ = writeln!(
            s,
            "\n## Latency at the same offered rate (paced: {:.0} % of the slowest system's saturated rate)\n",
            st.paced_fraction * 100.0
        );
        let _ = writeln!(s, "| system | batch | offered/s | msgs/s | p50 ms | p95 ms | p99 ms | max ms |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for row in paced {
            let offered = row.offered_per_sec.map(num).unwrap_or_else(|| "n/a".into());
            match &row.figures {
                Some(f) => {
                    let [p50, p95, p99, max] = latency_cells(f);
                    let _ = writeln!(
                        s,
                        "| {} | {} | {offered} | {} | {p50} | {p95} | {p99} | {max} |",
                        row.system.label(),
                        row.batch,
                        num(f.msgs_per_sec)
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {offered} | not measured: {} | | | | |",
                        row.system.label(),
                        row.batch,
                        row.not_measured.as_deref().unwrap_or("skipped")
                    );
                }
            }
        }
    }

    let diag: Vec<(&Row, &Diagnostics)> =
        r.results.iter().filter(|x| x.mode == Mode::Saturated).filter_map(|x| x.diagnostics.as_ref().map(|d| (x, d))).collect();
    if !diag.is_empty() {
        let _ = writeln!(s, "\n## Where the time goes (saturated runs)\n");
        let _ = writeln!(
            s,
            "CPU in % of one core (client: this benchmark's producers, consumers and, for ours, the relay; server: PostgreSQL's or RabbitMQ's processes); machine busy / I/O wait in % of all CPUs (other work on the machine included); PostgreSQL's commits and WAL bytes per consumed message, and its WAL flushes (fsync) per second (PostgreSQL publishes these counters about once a second: approximate).\n"
        );
        let _ = writeln!(s, "| system | batch | client CPU | server CPU | machine busy | I/O wait | commits/msg | WAL bytes/msg | WAL flushes/s |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (row, d) in diag {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.system.label(),
                row.batch,
                pct(d.client_cpu_pct),
                pct(d.server_cpu_pct),
                pct(d.machine_busy_pct),
                pct(d.machine_iowait_pct),
                per_msg(d.commits_per_msg),
                per_msg(d.wal_bytes_per_msg),
                d.wal_syncs_per_sec.map(num).unwrap_or_else(|| "n/a".into()),
            );
        }
    }

    let tables: Vec<(&Row, &TableStats)> =
        r.results.iter().filter(|x| x.mode == Mode::Saturated).filter_map(|x| x.queue_table.as_ref().map(|t| (x, t))).collect();
    if !tables.is_empty() {
        let _ = writeln!(s, "\n## The queue table the consumers claim from, at the end of each saturated run\n");
        let _ = writeln!(
            s,
            "Dead rows and index entries left by claims and deletes stay until vacuum; autovacuum looks at a database once a minute (`autovacuum_naptime`), so on these fresh tables it may not have run at all.\n"
        );
        let _ = writeln!(s, "| system | batch | table | live rows | dead rows | index size | autovacuums | autoanalyzes |");
        let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---:|---:|");
        for (row, t) in tables {
            let _ = writeln!(
                s,
                "| {} | {} | `{}` | {} | {} | {:.1} MB | {} | {} |",
                row.system.label(),
                row.batch,
                t.table,
                num(t.live_rows as f64),
                num(t.dead_rows as f64),
                t.index_bytes as f64 / 1e6,
                t.autovacuums,
                t.autoanalyzes
            );
        }
    }

    let _ = writeln!(s, "\n## How each system is driven\n");
    if st.ours_pull {
        let _ = writeln!(
            s,
            "- **ours (pull)**: a producer publishes its batch into the outbox with one statement (its own transaction, as pgmq's `send`); the consumer ({}) claims a partition's cursor in the subscriber's database (`FOR UPDATE SKIP LOCKED`), reads up to a batch of the publisher's outbox after it, runs the handler and moves the cursor, all in one transaction of the subscriber: exactly-once effect; the publisher's pruner deletes what the subscriber reported passed.",
            st.ours_relay
        );
    } else {
    let _ = writeln!(
        s,
        "- **ours**: a producer publishes its batch into the outbox with one statement (its own transaction, as pgmq's `send`; in a service the publish joins the transaction of the state change); the relay ({}) moves it into the subscriber's inbox (another database of the same server; the outbox side commits asynchronously, since a lost delete only means a redelivery the inbox drops); a transaction-mode consumer claims up to a batch — deleting it from the inbox and recording it in `inbox_done` —, runs the handler and commits, all in one transaction: {}.",
        st.ours_relay,
        System::Ours.guarantee()
    );
    }
    let _ = writeln!(s, "- **pgmq**: logged queue; `send` (batch 1) or `send_batch`; {}.", st.pgmq_read);
    let _ = writeln!(
        s,
        "- **RabbitMQ**: durable classic queue, persistent messages (delivery mode 2), publisher confirms (batch 1: each awaited; batch n: n published, then their confirms awaited), manual acks (batch 1: each; batch n: `multiple` acks of up to n, sent as soon as no further delivery is waiting), prefetch as above; every task has its own connection."
    );
    s
}

/// Charts per batch size: consumed per second over time (saturated), and latency p50 / p99
/// over time (saturated, and paced when there are paced runs).
pub fn charts(r: &Report) -> Vec<Chart> {
    let mut charts = Vec::new();
    for c in &r.comparisons {
        let rows = |mode: Mode| -> Vec<&Row> {
            r.results.iter().filter(|row| row.batch == c.batch && row.mode == mode && row.figures.is_some()).collect()
        };
        let mut rate = Chart::new(format!("batch {}: messages consumed per second (saturated)", c.batch), "seconds (measured window)", "msgs/s");
        for row in rows(Mode::Saturated) {
            let f = row.figures.as_ref().expect("filtered");
            rate = rate.line(Series::new(row.system.label(), f.timeline.iter().map(|p| (p.t, p.per_sec))));
        }
        charts.push(rate);
        for (mode, what) in [(Mode::Saturated, "saturated"), (Mode::Paced, "paced")] {
            let rows = rows(mode);
            if rows.is_empty() {
                continue;
            }
            let mut latency =
                Chart::new(format!("batch {}: latency publish → consumer, p50 and p99 ({what})", c.batch), "seconds (measured window)", "ms");
            for row in rows {
                let f = row.figures.as_ref().expect("filtered");
                let label = row.system.label();
                latency = latency
                    .line(Series::new(format!("{label} p50"), f.timeline.iter().filter_map(|p| p.latency.map(|l| (p.t, l.p50)))))
                    .line(Series::new(format!("{label} p99"), f.timeline.iter().filter_map(|p| p.latency.map(|l| (p.t, l.p99)))));
            }
            charts.push(latency);
        }
    }
    charts
}

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_benchkit::{Percentiles, TimelinePoint};

    fn row(system: System, batch: usize, rate: Option<f64>) -> Row {
        Row {
            system,
            batch,
            mode: Mode::Saturated,
            offered_per_sec: None,
            diagnostics: None,
            queue_table: None,
            guarantee: system.guarantee().into(),
            figures: rate.map(|r| Figures {
                seconds: 10.0,
                consumed: (r * 10.0) as u64,
                published: (r * 10.0) as u64,
                msgs_per_sec: r,
                published_per_sec: r,
                latency_ms: Percentiles::of(&[1.0, 2.0, 3.0]),
                timeline: vec![TimelinePoint { t: 1.0, count: r as u64, per_sec: r, latency: Percentiles::of(&[2.0]) }],
            }),
            not_measured: rate.is_none().then(|| "rabbitmq-server is not installed".to_string()),
        }
    }

    fn report(rows: Vec<Row>, quick: bool) -> Report {
        let (comparisons, targets) = compare(&rows);
        Report {
            generated_unix: 0,
            quick,
            machine: Machine { cpus: 2, cpu_model: None, memory_gib: None, os: None, kernel: None },
            versions: Versions { postgres: "PostgreSQL 15.8".into(), pgmq: Some("1.11.1".into()), rabbitmq: None },
            settings: Settings {
                producers: 4,
                consumers: 4,
                warmup_s: 3.0,
                seconds: 10.0,
                bucket_s: 1.0,
                payload_bytes: 221,
                postgres_server: "private durable cluster".into(),
                postgres_fsync: "on".into(),
                postgres_synchronous_commit: "on".into(),
                per_batch: vec![BatchSettings { batch: 1, window: 1000, rabbitmq_prefetch: 100 }],
                ours_relay: "1 loop, 100 a claim".into(),
                ours_pull: false,
                pgmq_read: "read, then delete".into(),
                paced_fraction: 0.5,
            },
            results: rows,
            comparisons,
            targets,
        }
    }

    #[test]
    fn ratios_and_targets() {
        let rows = vec![
            row(System::Ours, 1, Some(6000.0)),
            row(System::Pgmq, 1, Some(3000.0)),
            row(System::Rabbitmq, 1, Some(7500.0)),
            row(System::Ours, 100, Some(40000.0)),
            row(System::Pgmq, 100, Some(50000.0)),
            row(System::Rabbitmq, 100, None),
        ];
        let (c, t) = compare(&rows);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].ours_over_pgmq, Some(2.0));
        assert_eq!(c[0].ours_over_rabbitmq, Some(0.8));
        assert_eq!(c[1].ours_over_pgmq, Some(0.8));
        assert_eq!(c[1].ours_over_rabbitmq, None);
        let met = |name: &str| t.iter().find(|x| x.name == name).unwrap().met;
        assert_eq!(met("faster than pgmq at batch 1"), Some(true));
        assert_eq!(met("faster than pgmq at batch 100"), Some(false));
        assert_eq!(met("at least 1.5× pgmq at batch 1"), Some(true));
        assert_eq!(met("at least equal to RabbitMQ at batch 1"), Some(false));
    }

    #[test]
    fn equal_is_not_faster_but_is_at_least_equal() {
        let rows = vec![row(System::Ours, 1, Some(100.0)), row(System::Pgmq, 1, Some(100.0)), row(System::Rabbitmq, 1, Some(100.0))];
        let (_, t) = compare(&rows);
        assert_eq!(t[0].met, Some(false), "{t:?}");
        assert_eq!(t[2].met, Some(true), "{t:?}");
    }

    #[test]
    fn a_peer_not_measured_leaves_its_targets_open() {
        let rows = vec![row(System::Ours, 1, Some(100.0)), row(System::Pgmq, 1, Some(50.0)), row(System::Rabbitmq, 1, None)];
        let r = report(rows, false);
        let md = markdown(&r);
        assert!(md.contains("| RabbitMQ | 1 | not measured: rabbitmq-server is not installed"), "{md}");
        assert!(md.contains("| at least equal to RabbitMQ at batch 1 | n/a | ≥ 1.00× | not measured |"), "{md}");
        assert!(md.contains("| 1 | 100 | 50 | n/a | 2.00× | n/a |"), "{md}");
        assert!(md.contains("| at least 1.5× pgmq at batch 1 | 2.00× | ≥ 1.50× | met |"), "{md}");
    }

    #[test]
    fn quick_runs_say_so_and_judge_nothing() {
        let rows = vec![row(System::Ours, 1, Some(10.0)), row(System::Pgmq, 1, Some(50.0))];
        let md = markdown(&report(rows, true));
        assert!(md.contains("QUICK smoke run"), "{md}");
        assert!(!md.contains("MISSED"), "{md}");
        assert!(md.contains("| faster than pgmq at batch 1 | 0.20× | > 1.00× | quick run |"), "{md}");
    }

    #[test]
    fn markdown_has_a_row_per_measurement() {
        let rows = vec![row(System::Ours, 1, Some(12345.6)), row(System::Pgmq, 1, Some(3000.0))];
        let md = markdown(&report(rows, false));
        assert!(md.contains("| ours | 1 | 12,346 | 12,346 | 2.00 | 3.00 | 3.00 | 3.00 | exactly-once effect"), "{md}");
        assert!(md.contains("| faster than pgmq at batch 1 | 4.12× | > 1.00× | met |"), "{md}");
    }

    #[test]
    fn json_round_trips() {
        let r = report(vec![row(System::Ours, 1, Some(1.0)), row(System::Rabbitmq, 1, None)], false);
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"system\":\"rabbitmq\""), "{text}");
        assert_eq!(serde_json::from_str::<Report>(&text).unwrap(), r);
    }

    fn paced(system: System, batch: usize, offered: f64, rate: Option<f64>) -> Row {
        let mut r = row(system, batch, rate);
        r.mode = Mode::Paced;
        r.offered_per_sec = Some(offered);
        r
    }

    #[test]
    fn charts_per_batch() {
        let r = report(
            vec![
                row(System::Ours, 1, Some(5.0)),
                row(System::Pgmq, 1, Some(3.0)),
                paced(System::Ours, 1, 1.5, Some(1.5)),
                row(System::Ours, 100, Some(9.0)),
            ],
            false,
        );
        let c = charts(&r);
        assert_eq!(c.len(), 5, "{:?}", c.iter().map(|c| &c.title).collect::<Vec<_>>());
        assert_eq!(c[0].series.len(), 2);
        assert_eq!(c[1].series.len(), 4);
        assert_eq!(c[2].series.len(), 2);
        assert!(c[2].title.contains("paced"));
        assert_eq!(c[3].series.len(), 1);
        assert_eq!(c[0].series[0].points, vec![(1.0, 5.0)]);
    }

    #[test]
    fn paced_rows_are_not_compared_but_shown() {
        let rows = vec![
            row(System::Ours, 1, Some(100.0)),
            row(System::Pgmq, 1, Some(50.0)),
            paced(System::Ours, 1, 25.0, Some(25.0)),
            paced(System::Pgmq, 1, 25.0, Some(1.0)),
        ];
        let (c, _) = compare(&rows);
        assert_eq!(c[0].ours_over_pgmq, Some(2.0));
        let md = markdown(&report(rows, false));
        assert!(md.contains("## Latency at the same offered rate (paced: 50 %"), "{md}");
        assert!(md.contains("| pgmq | 1 | 25 | 1 | 2.00 | 3.00 | 3.00 | 3.00 |"), "{md}");
    }

    #[test]
    fn diagnostics_table() {
        let mut r = row(System::Ours, 1, Some(100.0));
        r.diagnostics = Some(Diagnostics {
            client_cpu_pct: Some(31.4),
            server_cpu_pct: Some(120.0),
            machine_busy_pct: Some(80.0),
            machine_iowait_pct: Some(5.0),
            commits_per_msg: Some(2.04),
            wal_bytes_per_msg: Some(987.6),
            wal_syncs_per_sec: Some(310.0),
        });
        r.queue_table = Some(TableStats {
            table: "conveyor.inbox".into(),
            live_rows: 84_061,
            dead_rows: 84_117,
            autovacuums: 0,
            autoanalyzes: 0,
            index_bytes: 12_345_678,
        });
        let md = markdown(&report(vec![r], false));
        assert!(md.contains("| ours | 1 | 31 % | 120 % | 80 % | 5 % | 2.04 | 988 | 310 |"), "{md}");
        assert!(md.contains("| ours | 1 | `conveyor.inbox` | 84,061 | 84,117 | 12.3 MB | 0 | 0 |"), "{md}");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(0.4), "0");
        assert_eq!(num(999.6), "1,000");
        assert_eq!(num(1234567.0), "1,234,567");
        assert_eq!(ms(1.234), "1.23");
        assert_eq!(ms(12.34), "12.3");
        assert_eq!(ms(1234.4), "1234");
    }
}
