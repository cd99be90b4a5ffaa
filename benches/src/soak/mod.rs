//! The soak run (`cargo xtask bench soak`): a queue end to end for a long time, sampled
//! every few seconds, to show whether throughput stays flat and the queue tables' size
//! bounded — and, with `--hold-xmin`, what a transaction holding the xmin horizon does to it.
//!
//! - [`system`]: the systems soaked (ours, pgmq) and what the run needs of each, started by
//!   [`ours`] and [`pgmq`];
//! - [`load`]: producers publishing in transactions, the counters they share with the handlers;
//! - [`hold`]: the held snapshot and when it is held; [`probe`]: the claim-cost probes;
//! - [`stats`]: what is read from PostgreSQL at every sample (sizes, tuples, index scans, WAL);
//! - [`run`]: one system's run, sample by sample;
//! - [`summary`] and [`phases`]: the figures the report is judged by (pure, unit-tested);
//! - [`report`], [`report_hold`] and [`report_time`]: the JSON, Markdown and SVG files.

pub mod hold;
pub mod load;
pub mod ours;
pub mod pgmq;
pub mod phases;
pub mod probe;
pub mod report;
pub mod report_hold;
pub mod report_time;
pub mod run;
pub mod stats;
pub mod summary;
pub mod system;

use std::time::Duration;

use conveyor_benchkit::Percentiles;
use serde::{Deserialize, Serialize};

pub use hold::HoldPlan;
pub use phases::HoldTargets;
pub use system::System;

/// Everything a run was configured with, as the report records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub duration_s: f64,
    pub sample_interval_s: f64,
    /// Offered load in messages/s; `None`: closed loop at full speed.
    pub rate: Option<f64>,
    pub producers: usize,
    /// Messages per publishing transaction.
    pub publish_batch: usize,
    /// Producers pause while more messages than this are published and not yet handled.
    pub max_pending: u64,
    pub relays: usize,
    pub relay_batch: i64,
    /// Ours pulled (`--delivery pull`): no relay; the consumers read the publisher's outbox.
    #[serde(default)]
    pub pull: bool,
    /// Consumer claim loops (`ConsumerOptions::concurrency`).
    pub consumers: usize,
    pub consumer_batch: i64,
    /// How often idle relay and consumer loops look without being woken.
    pub poll_interval_s: f64,
    /// The pruner's done-retention (`Pruner::window`), its interval and batch.
    pub prune_window_s: f64,
    pub prune_interval_s: f64,
    pub prune_batch: i64,
    /// A table is bounded when its largest size over the second half of the run is at
    /// most its largest over the first half × (1 + `size_tolerance`) + `size_slack_bytes`.
    pub size_tolerance: f64,
    pub size_slack_bytes: u64,
    /// Throughput over the last 10 % of the run ÷ over the first 10 % must be at least this.
    pub target_end_start_ratio: f64,
    pub quick: bool,
    /// Where PostgreSQL came from ("private durable cluster", "DATABASE_URL").
    pub server: String,
    /// The systems run, one after the other, each on fresh databases (older reports: ours).
    #[serde(default = "ours_only")]
    pub systems: Vec<System>,
    /// When a snapshot holds the xmin horizon back (`--hold-xmin`); `None`: never.
    #[serde(default)]
    pub hold: Option<HoldPlan>,
    /// What a held horizon may cost (see [`phases`]).
    #[serde(default)]
    pub hold_targets: HoldTargets,
}

fn ours_only() -> Vec<System> {
    vec![System::Ours]
}

/// One sample: the window that ended `t` seconds after the start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// End of the window, seconds since the load started.
    pub t: f64,
    pub window_s: f64,
    /// Messages whose publishing transaction committed in the window.
    pub published: u64,
    /// Messages handled in the window (the handler ran; its batch commits as done with it).
    pub consumed: u64,
    pub published_per_sec: f64,
    pub consumed_per_sec: f64,
    /// Producer's BEGIN → handler, of the messages handled in the window, in ms.
    pub latency_ms: Option<Percentiles>,
    /// Published and not yet handled, counted by this process.
    pub backlog: i64,
    /// Share of the window the producers spent paused at `max_pending` (0..1).
    pub producers_paused: f64,
    /// Where the backlog waits: rows in the publisher's outbox (its inserts less its deletes,
    /// from the statistics counters, which lag up to about a second), and the rest of the
    /// backlog (relayed, not yet handled; pgmq: its whole backlog). The sampler counts no
    /// rows: under a held horizon a count walks every dead entry (see [`stats`]).
    pub outbox_pending: i64,
    pub inbox_pending: i64,
    /// WAL written in the window (the whole cluster).
    pub wal_bytes: f64,
    /// Autovacuum workers running at the sample.
    pub autovacuum_workers: i64,
    /// Age of the oldest open transaction on the server, seconds (what holds back vacuum).
    pub oldest_xact_s: Option<f64>,
    pub tables: Vec<TableStats>,
    /// The held snapshot was open for the whole window (`--hold-xmin`).
    #[serde(default)]
    pub held: bool,
    /// `age(backend_xmin)` of the holding connections at the end of a held window (the
    /// youngest of them): transactions the horizon is held back by. Checked set every time.
    #[serde(default)]
    pub hold_xmin_age: Option<i64>,
    /// The claim probes at this sample (see [`probe`]).
    #[serde(default)]
    pub probes: Vec<ProbeReading>,
}

/// One queue table at one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableStats {
    /// `outbox` (the publisher's) or `inbox` (the subscriber's).
    pub name: String,
    /// `pg_total_relation_size`: heap, TOAST, free space and visibility maps, indexes.
    pub total_bytes: i64,
    /// `pg_table_size`: everything but the indexes.
    pub table_bytes: i64,
    /// `pg_indexes_size`.
    pub index_bytes: i64,
    pub indexes: Vec<IndexSize>,
    pub live_tup: i64,
    pub dead_tup: i64,
    /// Since the database was created (fresh for every run).
    pub autovacuum_count: i64,
    pub autoanalyze_count: i64,
    pub last_autovacuum_ago_s: Option<f64>,
    /// Rows inserted, updated and deleted since the start (`n_tup_*`; deleted rows of the
    /// inbox are the pruner's).
    pub tup_ins: i64,
    pub tup_upd: i64,
    pub tup_del: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexSize {
    pub name: String,
    pub bytes: i64,
    /// Since the database was created (`pg_stat_user_indexes`): index scans, and the index
    /// entries they returned (`idx_tup_read`; entries pointing to dead rows count, entries
    /// a scan already marked dead and skipped do not).
    #[serde(default)]
    pub scans: i64,
    #[serde(default)]
    pub entries_read: i64,
}

/// One run of a claim probe: the system's claim statement in a rolled-back transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReading {
    pub name: String,
    /// Index entries the statement read (every index of the claimed table).
    pub entries_read: i64,
    /// Rows it claimed (then handed back).
    pub rows: i64,
    pub ms: f64,
}

impl Sample {
    pub fn table(&self, name: &str) -> Option<&TableStats> {
        self.tables.iter().find(|t| t.name == name)
    }

    pub fn index(&self, table: &str, index: &str) -> Option<&IndexSize> {
        self.table(table)?.indexes.iter().find(|i| i.name == index)
    }

    pub fn probe(&self, name: &str) -> Option<&ProbeReading> {
        self.probes.iter().find(|p| p.name == name)
    }
}

/// A duration as people write it: `30m`, `90s`, `1h30m`, `500ms`, `2.5s`; a bare number
/// is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a duration: write e.g. 30m, 90s, 1h30m or 500ms");
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit_secs = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(value * unit_secs).map_err(|_| bad())?;
    }
    Ok(total)
}

/// `1,234,567`: thousands separated, for people.
pub fn thousands(n: f64) -> String {
    let neg = n < 0.0;
    let digits = format!("{:.0}", n.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if neg { format!("-{out}") } else { out }
}

/// Bytes as MB (10^6) with one decimal, for people.
pub fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1e6)
}

/// Settings and samples for the unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub fn settings() -> Settings {
        Settings {
            duration_s: 100.0,
            sample_interval_s: 10.0,
            rate: None,
            producers: 4,
            publish_batch: 1,
            max_pending: 10_000,
            relays: 1,
            relay_batch: 100,
            pull: false,
            consumers: 4,
            consumer_batch: 50,
            poll_interval_s: 1.0,
            prune_window_s: 20.0,
            prune_interval_s: 10.0,
            prune_batch: 1000,
            size_tolerance: 0.10,
            size_slack_bytes: 1 << 20,
            target_end_start_ratio: 0.9,
            quick: false,
            server: "test".into(),
            systems: vec![System::Ours],
            hold: None,
            hold_targets: HoldTargets::default(),
        }
    }

    /// A sample at `t` with `consumed` messages in 10 s and an inbox of `inbox_mb` MB.
    pub fn sample(t: f64, consumed: u64, inbox_mb: f64, dead: i64) -> Sample {
        let bytes = (inbox_mb * 1e6) as i64;
        Sample {
            t,
            window_s: 10.0,
            published: consumed,
            consumed,
            published_per_sec: consumed as f64 / 10.0,
            consumed_per_sec: consumed as f64 / 10.0,
            latency_ms: conveyor_benchkit::Percentiles::of(&[1.0, 2.0, 10.0]),
            backlog: 0,
            producers_paused: 0.0,
            outbox_pending: 0,
            inbox_pending: 0,
            wal_bytes: consumed as f64 * 1000.0,
            autovacuum_workers: 0,
            oldest_xact_s: Some(0.01),
            tables: vec![TableStats {
                name: "inbox".into(),
                total_bytes: bytes,
                table_bytes: bytes * 3 / 4,
                index_bytes: bytes / 4,
                indexes: vec![IndexSize { name: "inbox_pkey".into(), bytes: bytes / 4, scans: 0, entries_read: 0 }],
                live_tup: 1000,
                dead_tup: dead,
                autovacuum_count: (t / 20.0) as i64,
                autoanalyze_count: 0,
                last_autovacuum_ago_s: None,
                tup_ins: 0,
                tup_upd: 0,
                tup_del: 0,
            }],
            held: false,
            hold_xmin_age: None,
            probes: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_people_write_them() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        for bad in ["", "m", "30x", "1h30", "-5s", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
        assert_eq!(mb(1_500_000.0), "1.5 MB");
    }
}
