//! The soak's result files: `soak-report.json` (everything), `soak-report.md` (what a person
//! reads) and `soak-report.svg` (throughput, latency, claim cost, sizes, dead tuples and
//! backlog over time, every system on the same charts). The hold's section is in
//! [`super::report_hold`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use conveyor_benchkit::{Machine, Percentiles, write_json, write_svg};
use serde::{Deserialize, Serialize};

use super::phases::HoldSummary;
use super::stats::ServerInfo;
use super::summary::Summary;
use super::system::{ClaimIndex, System};
use super::{Sample, Settings, mb, thousands};

/// Did every message get through? Checked after the load stopped and the backlog drained
/// (pgmq: the rows left in its queue table count as the inbox's; it has no outbox).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consistency {
    pub published: u64,
    pub handled: u64,
    /// Published and not handled when the drain gave up (0: drained).
    pub left_after_drain: i64,
    /// What the database still held after the drain: outbox rows, inbox pending or running
    /// rows, dead letters.
    pub outbox_after: i64,
    pub inbox_pending_after: i64,
    pub dead_after: i64,
    pub publish_errors: u64,
    /// Offered messages a paced producer could not send in time (`--rate` only).
    pub missed_offers: u64,
}

impl Consistency {
    pub fn all_handled(&self) -> bool {
        self.left_after_drain == 0 && self.outbox_after == 0 && self.inbox_pending_after == 0 && self.dead_after == 0 && self.handled >= self.published
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub generated_unix: u64,
    pub machine: Machine,
    pub postgres: ServerInfo,
    pub settings: Settings,
    /// Set when a signal ended the run early (the report covers what ran).
    pub interrupted: bool,
    /// One per system, in the order they ran.
    pub runs: Vec<Run>,
}

/// One system's run under the schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub system: System,
    /// pgmq's version; `None` for ours.
    pub version: Option<String>,
    /// The indexes its claims read, whose counters the report shows.
    pub claim_indexes: Vec<ClaimIndex>,
    pub interrupted: bool,
    pub summary: Summary,
    /// The held horizon's figures (`--hold-xmin`).
    pub hold: Option<HoldSummary>,
    pub consistency: Consistency,
    /// Publish → handled over each whole phase (before, during and after the hold).
    pub phase_latency_ms: Vec<Option<Percentiles>>,
    pub samples: Vec<Sample>,
}

impl Run {
    /// A run with its summary and hold figures computed from its samples
    /// (`naptime_s`: the server's autovacuum_naptime).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        system: System,
        version: Option<String>,
        claim_indexes: Vec<ClaimIndex>,
        interrupted: bool,
        consistency: Consistency,
        phase_latency_ms: Vec<Option<Percentiles>>,
        samples: Vec<Sample>,
        cfg: &Settings,
        naptime_s: f64,
    ) -> Run {
        let summary = super::summary::summarize(&samples, cfg, naptime_s);
        // Caught up: back to the backlog before the hold, or within one consumer batch.
        let hold = cfg
            .hold
            .map(|plan| super::phases::summarize(&samples, &plan, cfg.hold_targets, &phase_latency_ms, &claim_indexes, cfg.consumer_batch));
        Run { system, version, claim_indexes, interrupted, summary, hold, consistency, phase_latency_ms, samples }
    }

    /// "pgmq 1.11.0", "ours".
    pub fn name(&self) -> String {
        match &self.version {
            Some(v) => format!("{} {v}", self.system.label()),
            None => self.system.label().to_owned(),
        }
    }
}

pub struct Written {
    pub json: PathBuf,
    pub md: PathBuf,
    pub svg: PathBuf,
    pub markdown: String,
}

/// Writes the three files into `dir`.
pub fn write(dir: &Path, report: &Report) -> Result<Written> {
    let json = dir.join("soak-report.json");
    let md = dir.join("soak-report.md");
    let svg = dir.join("soak-report.svg");
    write_json(&json, report)?;
    let markdown = markdown(report);
    std::fs::write(&md, &markdown).map_err(|e| anyhow::anyhow!("could not write {}: {e}", md.display()))?;
    write_svg(&svg, &super::report_time::charts(report))?;
    Ok(Written { json, md, svg, markdown })
}

pub(super) fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "n/a".to_owned())
}

fn verdict(v: Option<bool>, yes: &str, no: &str) -> String {
    match v {
        Some(true) => yes.to_owned(),
        Some(false) => no.to_owned(),
        None => "cannot tell".to_owned(),
    }
}

/// The report for people.
pub fn markdown(r: &Report) -> String {
    let cfg = &r.settings;
    let mut m = String::new();
    let _ = writeln!(m, "# Queue soak report\n");
    if cfg.quick {
        let _ = writeln!(m, "**QUICK smoke run: checks the harness end to end; its figures are not a measurement.**\n");
    }
    if r.interrupted {
        let _ = writeln!(m, "**Interrupted: the run stopped early; the figures cover what ran.**\n");
    }
    let load = match cfg.rate {
        Some(rate) => format!("fixed offered rate {} msgs/s", thousands(rate)),
        None => format!("closed loop at full speed, producers paused above {} messages in flight", thousands(cfg.max_pending as f64)),
    };
    let names: Vec<String> = r.runs.iter().map(Run::name).collect();
    let _ = writeln!(
        m,
        "{:.0} s ({:.1} min) per system ({}, one after the other, each on fresh databases) on {}; {} ({}).\n",
        cfg.duration_s,
        cfg.duration_s / 60.0,
        names.join(", "),
        r.machine.describe(),
        r.postgres.version.split(" on ").next().unwrap_or(&r.postgres.version),
        cfg.server
    );
    let _ = writeln!(
        m,
        "The same load for each: {} producers publishing {} ~220-byte message(s) per transaction ({load}); {} consumer loops \
         (batch {}). Sampled every {} s.\n",
        cfg.producers, cfg.publish_batch, cfg.consumers, cfg.consumer_batch, cfg.sample_interval_s
    );
    for run in &r.runs {
        let pulled = run.system == System::Ours && run.version.as_deref() == Some("pull");
        let extra = match run.system {
            System::Ours if pulled => format!(
                " Idle loops poll every {} s; the publisher's pruner deletes what every subscriber has passed every {} s (batch {}).",
                cfg.poll_interval_s, cfg.prune_interval_s, cfg.prune_batch
            ),
            System::Ours => format!(
                " {} relay loop(s) (batch {}); idle loops poll every {} s; the pruner deletes done rows after a {} s window every {} s \
                 (batch {}; production: 1 h every 30 s).",
                cfg.relays, cfg.relay_batch, cfg.poll_interval_s, cfg.prune_window_s, cfg.prune_interval_s, cfg.prune_batch
            ),
            System::Pgmq => String::new(),
        };
        let path = if pulled { System::PULLED_PATH } else { run.system.path() };
        let _ = writeln!(m, "- **{}**: {}.{extra}", run.name(), path);
    }
    if cfg.hold.is_some() {
        super::report_hold::section(&mut m, r);
    }
    for run in &r.runs {
        run_section(&mut m, r, run);
    }
    m
}

/// One system's verdicts, tables, latency and samples over time.
fn run_section(m: &mut String, r: &Report, run: &Run) {
    let (s, cfg) = (&run.summary, &r.settings);
    let _ = writeln!(m, "\n## {}\n", run.name());
    if run.interrupted {
        let _ = writeln!(m, "**Interrupted: the figures cover the {:.0} s that ran.**\n", s.duration_s);
    }
    let t = &s.throughput;
    let _ = writeln!(m, "### Verdict\n");
    let _ = writeln!(
        m,
        "- **Throughput** (handled): {} msgs/s over t = {:.0}–{:.0} s, {} msgs/s over t = {:.0}–{:.0} s: end ÷ start = **{}** \
         (target ≥ {:.2}: **{}**). Mean {} msgs/s.",
        opt(t.start_msgs_per_sec, thousands),
        t.start_from_s,
        t.start_from_s + t.start_span_s,
        opt(t.end_msgs_per_sec, thousands),
        t.end_from_s,
        t.end_from_s + t.end_span_s,
        opt(t.end_over_start, |v| format!("{v:.3}")),
        t.target_end_over_start,
        verdict(t.meets_target, "met", "MISSED"),
        opt(t.mean_msgs_per_sec, thousands),
    );
    for x in &s.tables {
        let _ = writeln!(
            m,
            "- **{} size**: largest {} over the first half, {} over the second (×{}), slope over the second half {}/min: \
             bounded **{}** (second-half max ≤ first-half max × {:.2} + {}{}). Most tuples held (live + dead) {} → {}, \
             largest size per tuple {} → {} bytes.",
            x.name,
            mb(x.first_half_max_bytes as f64),
            mb(x.second_half_max_bytes as f64),
            opt(x.growth, |v| format!("{v:.2}")),
            opt(x.second_half_slope_bytes_per_min, mb),
            verdict(x.bounded, "yes", "NO"),
            1.0 + cfg.size_tolerance,
            mb(cfg.size_slack_bytes as f64),
            if x.bounded.is_none() {
                format!("; the table reaches its steady size after {:.0} s, more than half this run", x.steady_after_s)
            } else {
                String::new()
            },
            thousands(x.first_half_max_tuples as f64),
            thousands(x.second_half_max_tuples as f64),
            opt(x.first_half_bytes_per_tuple, thousands),
            opt(x.second_half_bytes_per_tuple, thousands)
        );
    }
    let _ = writeln!(
        m,
        "- Handled per second over the first half {}, over the second {} (a table that keeps a fixed time of messages grows with the rate).",
        opt(s.first_half_msgs_per_sec, thousands),
        opt(s.second_half_msgs_per_sec, thousands)
    );
    let c = &run.consistency;
    let _ = writeln!(
        m,
        "- **Every message through**: {} published, {} handled; after the drain {} in flight, outbox {}, inbox pending {}, dead {}: **{}**.{}",
        thousands(c.published as f64),
        thousands(c.handled as f64),
        c.left_after_drain,
        c.outbox_after,
        c.inbox_pending_after,
        c.dead_after,
        if c.all_handled() { "yes" } else { "NO" },
        if c.publish_errors > 0 { format!(" {} publishing transactions failed.", c.publish_errors) } else { String::new() }
    );
    if c.missed_offers > 0 {
        let _ = writeln!(m, "- {} offered messages could not be sent within a second of their time.", thousands(c.missed_offers as f64));
    }
    if !s.findings.is_empty() {
        let _ = writeln!(m, "\nWhat the figures point at:\n");
        for f in &s.findings {
            let _ = writeln!(m, "- {f}");
        }
    }

    let _ = writeln!(m, "\n### Queue tables\n");
    let _ = writeln!(m, "| table | max size | final size (table + indexes) | dead tuples max / final | live tuples max / final | autovacuums |");
    let _ = writeln!(m, "|---|---:|---:|---:|---:|---:|");
    for x in &s.tables {
        let _ = writeln!(
            m,
            "| {} | {} | {} ({} + {}) | {} / {} | {} / {} | {} |",
            x.name,
            mb(x.max_total_bytes as f64),
            mb(x.final_total_bytes as f64),
            mb(x.final_table_bytes as f64),
            mb(x.final_index_bytes as f64),
            thousands(x.max_dead_tup as f64),
            thousands(x.final_dead_tup as f64),
            thousands(x.max_live_tup as f64),
            thousands(x.final_live_tup as f64),
            x.autovacuums
        );
    }
    let _ = writeln!(m, "\n| index | first-half max | second-half max | final |");
    let _ = writeln!(m, "|---|---:|---:|---:|");
    for x in &s.tables {
        for i in &x.indexes {
            let _ = writeln!(
                m,
                "| {}.{} | {} | {} | {} |",
                x.name,
                i.name,
                mb(i.first_half_max_bytes as f64),
                mb(i.second_half_max_bytes as f64),
                mb(i.final_bytes as f64)
            );
        }
    }

    if let Some(naptime) = r.postgres.settings.get("autovacuum_naptime") {
        let runs: Vec<String> = s.tables.iter().map(|x| format!("{} on the {}", x.autovacuums, x.name)).collect();
        let _ = writeln!(
            m,
            "\nAutovacuum ran {} in {:.0} s. autovacuum_naptime = {naptime}: the launcher visits each database at most once per \
             naptime, so dead tuples pile up for up to a naptime between runs whatever the per-table thresholds say.",
            runs.join(" and "),
            s.duration_s
        );
    }

    let l = &s.latency;
    let ms = |v: f64| format!("{v:.1} ms");
    let _ = writeln!(m, "\n### Latency and cost\n");
    let _ = writeln!(
        m,
        "- Publish (producer's BEGIN) → handled, mean of the per-window percentiles: p50 {} → {}, p99 {} → {} (start → end); worst window p99 {}.",
        opt(l.start_p50_ms, ms),
        opt(l.end_p50_ms, ms),
        opt(l.start_p99_ms, ms),
        opt(l.end_p99_ms, ms),
        opt(l.max_p99_ms, ms)
    );
    let _ = writeln!(
        m,
        "- Windows with a p99 above {:.0} ms: {} of {}; the longest a message waited: {}.",
        super::summary::STALL_MS,
        l.windows_over_stall,
        s.samples,
        opt(l.max_wait_s, |v| format!("{v:.2} s"))
    );
    let _ = writeln!(
        m,
        "- WAL: {} per message handled (the whole cluster). Producers paused at the cap {:.1} % of the run.",
        opt(s.wal_bytes_per_msg, |v| format!("{} bytes", thousands(v))),
        s.producers_paused * 100.0
    );
    let settings: Vec<String> = r.postgres.settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(m, "- Server settings: {}.", settings.join(", "));
    for (table, o) in &r.postgres.table_options {
        // Keys are schema-qualified (older reports: ours' bare names).
        let (schema, name) = table.split_once('.').unwrap_or(("conveyor", table));
        if s.tables.iter().any(|t| t.name == name) {
            let _ = writeln!(m, "- {schema}.{name} options: {}.", if o.is_empty() { "none".to_owned() } else { o.join(", ") });
        }
    }

    super::report_time::over_time(m, run);
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
