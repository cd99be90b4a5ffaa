//! The soak's result files: `soak-report.json` (everything), `soak-report.md` (what a person
//! reads) and `soak-report.svg` (throughput, latency, sizes, dead tuples and backlog over time).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use conveyor_benchkit::{Chart, Machine, Series, write_json, write_svg};
use serde::{Deserialize, Serialize};

use super::stats::ServerInfo;
use super::summary::Summary;
use super::{Sample, Settings, mb, thousands};

/// Did every message get through? Checked after the load stopped and the backlog drained.
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
    pub summary: Summary,
    pub consistency: Consistency,
    pub samples: Vec<Sample>,
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
    write_svg(&svg, &charts(&report.samples))?;
    Ok(Written { json, md, svg, markdown })
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
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
    let (s, cfg) = (&r.summary, &r.settings);
    let mut m = String::new();
    let _ = writeln!(m, "# Queue soak report\n");
    if cfg.quick {
        let _ = writeln!(m, "**QUICK smoke run: checks the harness end to end; its figures are not a measurement.**\n");
    }
    if r.interrupted {
        let _ = writeln!(m, "**Interrupted: the run stopped early; the figures cover the {:.0} s that ran.**\n", s.duration_s);
    }
    let load = match cfg.rate {
        Some(rate) => format!("fixed offered rate {} msgs/s", thousands(rate)),
        None => format!("closed loop at full speed, producers paused above {} messages in flight", thousands(cfg.max_pending as f64)),
    };
    let _ = writeln!(
        m,
        "{:.0} s ({:.1} min) on {}; {} ({}).\n",
        s.duration_s,
        s.duration_s / 60.0,
        r.machine.describe(),
        r.postgres.version.split(" on ").next().unwrap_or(&r.postgres.version),
        cfg.server
    );
    let _ = writeln!(
        m,
        "The engine end to end: {} producers publishing {} ~220-byte message(s) per transaction into the outbox ({load}); \
         {} relay loop(s) (batch {}) into the subscriber's inbox in another database; {} transaction-mode consumer loops \
         (batch {}) marking them done; idle loops poll every {} s; the pruner deleting done rows after a {} s window every {} s \
         (batch {}; production: 1 h every 30 s). Sampled every {} s.\n",
        cfg.producers,
        cfg.publish_batch,
        cfg.relays,
        cfg.relay_batch,
        cfg.consumers,
        cfg.consumer_batch,
        cfg.poll_interval_s,
        cfg.prune_window_s,
        cfg.prune_interval_s,
        cfg.prune_batch,
        cfg.sample_interval_s
    );

    let t = &s.throughput;
    let _ = writeln!(m, "## Verdict\n");
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
    let c = &r.consistency;
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

    let _ = writeln!(m, "\n## Queue tables\n");
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
    let _ = writeln!(m, "\n## Latency and cost\n");
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
        "- Windows with a p99 above {:.0} ms: {} of {}; oldest message seen waiting: {}.",
        super::summary::STALL_MS,
        l.windows_over_stall,
        s.samples,
        opt(l.max_oldest_pending_s, |v| format!("{v:.2} s"))
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
        let _ = writeln!(m, "- conveyor.{table} options: {}.", if o.is_empty() { "none".to_owned() } else { o.join(", ") });
    }

    let _ = writeln!(m, "\n## Over time\n");
    let _ = writeln!(m, "| t (s) | handled/s | published/s | p50 / p99 ms | backlog | outbox | inbox | inbox dead tuples | autovacuums outbox / inbox | WAL MB/s |");
    let _ = writeln!(m, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let step = r.samples.len().div_ceil(24).max(1);
    for (i, x) in r.samples.iter().enumerate() {
        if i % step != 0 && i + 1 != r.samples.len() {
            continue;
        }
        let size = |n: &str| x.table(n).map(|t| mb(t.total_bytes as f64)).unwrap_or_default();
        let av = |n: &str| x.table(n).map(|t| t.autovacuum_count).unwrap_or(0);
        let _ = writeln!(
            m,
            "| {:.0} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {:.1} |",
            x.t,
            thousands(x.consumed_per_sec),
            thousands(x.published_per_sec),
            x.latency_ms.map(|p| format!("{:.1} / {:.1}", p.p50, p.p99)).unwrap_or_else(|| "n/a".into()),
            x.backlog,
            size("outbox"),
            size("inbox"),
            x.table("inbox").map(|t| thousands(t.dead_tup as f64)).unwrap_or_default(),
            av("outbox"),
            av("inbox"),
            x.wal_bytes / x.window_s.max(1e-9) / 1e6
        );
    }
    m
}

fn charts(samples: &[Sample]) -> Vec<Chart> {
    let pts = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> { samples.iter().filter_map(|s| f(s).map(|y| (s.t, y))).collect() };
    let table = |name: &'static str, f: fn(&super::TableStats) -> f64| move |s: &Sample| s.table(name).map(f);
    vec![
        Chart::new("Throughput", "time (s)", "msgs/s")
            .line(Series::new("handled", pts(&|s| Some(s.consumed_per_sec))))
            .line(Series::new("published", pts(&|s| Some(s.published_per_sec)))),
        Chart::new("Publish → handled latency per window", "time (s)", "ms")
            .line(Series::new("p50", pts(&|s| s.latency_ms.map(|l| l.p50))))
            .line(Series::new("p95", pts(&|s| s.latency_ms.map(|l| l.p95))))
            .line(Series::new("p99", pts(&|s| s.latency_ms.map(|l| l.p99)))),
        Chart::new("Queue table size (pg_total_relation_size)", "time (s)", "MB")
            .line(Series::new("inbox total", pts(&table("inbox", |t| t.total_bytes as f64 / 1e6))))
            .line(Series::new("inbox table", pts(&table("inbox", |t| t.table_bytes as f64 / 1e6))))
            .line(Series::new("inbox indexes", pts(&table("inbox", |t| t.index_bytes as f64 / 1e6))))
            .line(Series::new("outbox total", pts(&table("outbox", |t| t.total_bytes as f64 / 1e6)))),
        Chart::new("Tuples (pg_stat_user_tables)", "time (s)", "tuples")
            .line(Series::new("inbox dead", pts(&table("inbox", |t| t.dead_tup as f64))))
            .line(Series::new("outbox dead", pts(&table("outbox", |t| t.dead_tup as f64))))
            .line(Series::new("inbox live", pts(&table("inbox", |t| t.live_tup as f64)))),
        Chart::new("Waiting messages", "time (s)", "messages")
            .line(Series::new("outbox", pts(&|s| Some(s.outbox_pending as f64))))
            .line(Series::new("inbox pending", pts(&|s| Some(s.inbox_pending as f64)))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::fixtures::{sample, settings};
    use crate::soak::summary::summarize;

    fn report(samples: Vec<Sample>) -> Report {
        let cfg = settings();
        Report {
            generated_unix: 0,
            machine: Machine::detect(),
            postgres: ServerInfo {
                version: "PostgreSQL 15.18 on x86_64-pc-linux-gnu".into(),
                settings: [("autovacuum_naptime".to_owned(), "60 (s)".to_owned())].into(),
                table_options: [("inbox".to_owned(), vec!["fillfactor=90".to_owned()])].into(),
            },
            summary: summarize(&samples, &cfg, 0.0),
            settings: cfg,
            interrupted: false,
            consistency: Consistency {
                published: 10_000,
                handled: 10_000,
                left_after_drain: 0,
                outbox_after: 0,
                inbox_pending_after: 0,
                dead_after: 0,
                publish_errors: 0,
                missed_offers: 0,
            },
            samples,
        }
    }

    #[test]
    fn the_markdown_states_the_verdicts_and_the_files_are_written() {
        let r = report((1..=10).map(|i| sample(i as f64 * 10.0, 1000, 10.0, 100)).collect());
        let md = markdown(&r);
        for text in [
            "end ÷ start = **1.000** (target ≥ 0.90: **met**)",
            "**inbox size**: largest 10.0 MB over the first half, 10.0 MB over the second (×1.00)",
            "bounded **yes**",
            "**Every message through**: 10,000 published, 10,000 handled",
            "Autovacuum ran 5 on the inbox in 100 s. autovacuum_naptime = 60 (s)",
            "| inbox.inbox_pkey | 2.5 MB | 2.5 MB | 2.5 MB |",
            "conveyor.inbox options: fillfactor=90.",
            "PostgreSQL 15.18 (test)",
        ] {
            assert!(md.contains(text), "{text:?} missing from:\n{md}");
        }
        assert!(!md.contains("QUICK") && !md.contains("Interrupted"));
        assert_eq!(r.postgres.naptime_s(), Some(60.0));

        let dir = std::env::temp_dir().join(format!("soak-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let w = write(&dir, &r).unwrap();
        let back: Report = serde_json::from_str(&std::fs::read_to_string(&w.json).unwrap()).unwrap();
        assert_eq!(back.samples.len(), 10);
        let svg = std::fs::read_to_string(&w.svg).unwrap();
        for title in ["Throughput", "latency", "Queue table size", "Tuples", "Waiting messages"] {
            assert!(svg.contains(title), "{title} missing from the SVG");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missed_target_and_a_lost_message_say_so() {
        let mut samples: Vec<Sample> = (1..=10).map(|i| sample(i as f64 * 10.0, 1000, 10.0, 100)).collect();
        samples[9].consumed = 500;
        let mut r = report(samples);
        r.consistency.inbox_pending_after = 3;
        r.interrupted = true;
        let md = markdown(&r);
        assert!(md.contains("**MISSED**") && md.contains(": **NO**.") && md.contains("Interrupted"), "{md}");
    }
}
