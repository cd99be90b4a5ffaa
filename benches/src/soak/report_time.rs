//! What changes over time: the report's table of samples (per system) and its charts
//! (every system on the same charts).

use std::fmt::Write as _;

use conveyor_benchkit::{Chart, Series};

use super::report::{Report, Run, opt};
use super::{Sample, mb, thousands};

/// Every sample, or about 24 spread over the run.
pub fn over_time(m: &mut String, run: &Run) {
    let samples = &run.samples;
    let tables: Vec<&str> = run.summary.tables.iter().map(|t| t.name.as_str()).collect();
    let probes: Vec<&str> = samples.first().map(|s| s.probes.iter().map(|p| p.name.as_str()).collect()).unwrap_or_default();
    let mut head = "| t (s) | handled/s | published/s | p50 / p99 ms | backlog |".to_owned();
    for t in &tables {
        head += &format!(" {t} size / dead tuples |");
    }
    for p in &probes {
        head += &format!(" {p}: entries |");
    }
    for c in &run.claim_indexes {
        head += &format!(" {}: entries / scan |", c.index);
    }
    head += " WAL MB/s |";
    let _ = writeln!(m, "\n### Over time\n");
    let _ = writeln!(m, "{head}");
    let _ = writeln!(m, "|{}", "---:|".repeat(head.matches(" |").count()));
    let step = samples.len().div_ceil(24).max(1);
    for (i, x) in samples.iter().enumerate() {
        // Every held window's edges are shown, whatever the step.
        let edge = samples.get(i + 1).is_some_and(|n| n.held != x.held) || (i > 0 && samples[i - 1].held != x.held);
        if i % step != 0 && i + 1 != samples.len() && !edge {
            continue;
        }
        let mut row = format!(
            "| {:.0}{} | {} | {} | {} | {} |",
            x.t,
            if x.held { " held" } else { "" },
            thousands(x.consumed_per_sec),
            thousands(x.published_per_sec),
            x.latency_ms.map(|p| format!("{:.1} / {:.1}", p.p50, p.p99)).unwrap_or_else(|| "n/a".into()),
            x.backlog
        );
        for t in &tables {
            row += &x.table(t).map(|t| format!(" {} / {} |", mb(t.total_bytes as f64), thousands(t.dead_tup as f64))).unwrap_or_else(|| " |".into());
        }
        for p in &probes {
            row += &x.probe(p).map(|p| format!(" {} |", thousands(p.entries_read as f64))).unwrap_or_else(|| " |".into());
        }
        for c in &run.claim_indexes {
            let (_, per_scan) = super::phases::index_over(samples, i..i + 1, &c.table, &c.index);
            row += &format!(" {} |", opt(per_scan, |v| format!("{v:.1}")));
        }
        row += &format!(" {:.1} |", x.wal_bytes / x.window_s.max(1e-9) / 1e6);
        let _ = writeln!(m, "{row}");
    }
}

/// Every run's series on the same charts, named by system.
pub fn charts(r: &Report) -> Vec<Chart> {
    let held = r.settings.hold.map(|h| format!(" — xmin held t = {:.0}–{:.0} s", h.start_s, h.end_s)).unwrap_or_default();
    let mut throughput = Chart::new(format!("Throughput (handled){held}"), "time (s)", "msgs/s");
    let mut latency = Chart::new(format!("Publish → handled p99 per window{held}"), "time (s)", "ms");
    let mut probes = Chart::new(format!("Claim probe: index entries one claim reads{held}"), "time (s)", "entries");
    let mut per_scan = Chart::new(format!("Claim indexes: entries read per scan (pg_stat_user_indexes){held}"), "time (s)", "entries");
    let mut size = Chart::new("Queue table size (pg_total_relation_size)", "time (s)", "MB");
    let mut dead = Chart::new("Dead tuples (pg_stat_user_tables)", "time (s)", "tuples");
    let mut backlog = Chart::new("Backlog (published, not yet handled)", "time (s)", "messages");
    for run in &r.runs {
        let sys = run.system.label();
        let samples = &run.samples;
        let pts = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> { samples.iter().filter_map(|s| f(s).map(|y| (s.t, y))).collect() };
        throughput = throughput.line(Series::new(format!("{sys} handled"), pts(&|s| Some(s.consumed_per_sec))));
        latency = latency.line(Series::new(format!("{sys} p99"), pts(&|s| s.latency_ms.map(|l| l.p99))));
        backlog = backlog.line(Series::new(sys, pts(&|s| Some(s.backlog as f64))));
        for name in samples.first().map(|s| s.probes.iter().map(|p| p.name.clone()).collect::<Vec<_>>()).unwrap_or_default() {
            probes = probes.line(Series::new(format!("{sys} {name}"), pts(&|s| s.probe(&name).map(|p| p.entries_read as f64))));
        }
        for c in &run.claim_indexes {
            let points = (0..samples.len())
                .filter_map(|i| super::phases::index_over(samples, i..i + 1, &c.table, &c.index).1.map(|y| (samples[i].t, y)))
                .collect::<Vec<_>>();
            per_scan = per_scan.line(Series::new(format!("{sys} {}", c.index), points));
        }
        for t in &run.summary.tables {
            size = size.line(Series::new(format!("{sys} {}", t.name), pts(&|s| s.table(&t.name).map(|x| x.total_bytes as f64 / 1e6))));
            dead = dead.line(Series::new(format!("{sys} {}", t.name), pts(&|s| s.table(&t.name).map(|x| x.dead_tup as f64))));
        }
    }
    vec![throughput, latency, probes, per_scan, size, dead, backlog]
}
