//! The report's section on the held xmin horizon: the verdicts of every system side by
//! side, then each phase's figures (before, held, after), then how to read them.

use std::fmt::Write as _;

use super::phases::{HoldSummary, PhaseFigures};
use super::report::{Report, Run};
use super::{mb, thousands};

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "n/a".to_owned())
}

/// Each name once, in order of first appearance.
fn unique<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

fn verdict(v: Option<bool>, yes: &str, no: &str) -> String {
    match v {
        Some(true) => yes.to_owned(),
        Some(false) => format!("**{no}**"),
        None => "cannot tell".to_owned(),
    }
}

/// Appends the section to `m` (runs without hold figures are left out).
pub fn section(m: &mut String, r: &Report) {
    let runs: Vec<(&Run, &HoldSummary)> = r.runs.iter().filter_map(|x| x.hold.as_ref().map(|h| (x, h))).collect();
    let Some((_, first)) = runs.first() else { return };
    let t = first.targets;
    let _ = writeln!(m, "\n## Held xmin horizon\n");
    let _ = writeln!(
        m,
        "From t = {:.0} s to {:.0} s ({:.0} s, centred in the {:.0} s run) one connection per queue database held a snapshot: \
         `BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT txid_current(); SELECT count(*) FROM <its queue table>`, committed at \
         the end. While it is open no row version deleted or updated after it can be removed, by vacuum or by an index scan \
         marking its entry dead.\n",
        first.start_s,
        first.end_s,
        first.end_s - first.start_s,
        r.settings.duration_s
    );

    let _ = writeln!(m, "| target | {} |", runs.iter().map(|(x, _)| x.name()).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(m, "|---|{}", "---|".repeat(runs.len()));
    let row = |m: &mut String, label: String, cell: &dyn Fn(&HoldSummary) -> String| {
        let cells: Vec<String> = runs.iter().map(|(_, h)| cell(h)).collect();
        let _ = writeln!(m, "| {label} | {} |", cells.join(" | "));
    };
    row(m, format!("throughput held ÷ before ≥ {:.2}", t.throughput_ratio), &|h| {
        format!("{} {}", opt(h.throughput_ratio, |v| format!("{v:.3}")), verdict(h.throughput_met, "met", "MISSED"))
    });
    row(m, format!("p99 held ÷ before ≤ {:.1}", t.p99_ratio), &|h| {
        format!("{} {}", opt(h.p99_ratio, |v| format!("{v:.2}")), verdict(h.p99_met, "met", "MISSED"))
    });
    row(m, format!("backlog back to its level within {:.0} s of the end", t.catch_up_s), &|h| {
        format!("{} (level {}) {}", opt(h.caught_up_after_s, |v| format!("{v:.0} s")), thousands(h.backlog_level as f64), verdict(h.catch_up_met, "met", "MISSED"))
    });
    row(m, format!("claim cost flat while held (last third ≤ first × {:.1} + {:.0} entries)", t.claim_growth, t.claim_slack_entries), &|h| {
        let probes: Vec<String> = h
            .claim
            .iter()
            .filter(|c| c.flat.is_some())
            .map(|c| {
                format!("{} {} → {} {}", c.name, opt(c.early_hold, thousands), opt(c.late_hold, thousands), verdict(c.flat, "flat", "GROWS"))
            })
            .collect();
        probes.join("; ")
    });
    row(m, "snapshot held (backend_xmin set at every held sample)".into(), &|h| {
        format!("{} (horizon held back by up to {} transactions)", verdict(h.xmin_held, "yes", "NO"), opt(h.max_xmin_age.map(|a| a as f64), thousands))
    });

    phase_table(m, &runs);

    let _ = writeln!(
        m,
        "\nHow to read it: throughput and latency are of messages handled in each phase (p50 / p99 of every message of the \
         phase; the first sample is warm-up and in none). At a fixed offered rate a system that keeps up handles what is \
         offered; one that falls behind shows a lower rate, a growing backlog and a catch-up after the hold. Dead tuples \
         pile up while the snapshot is held (nothing can be removed) and fall once vacuum runs after it. Claim cost: a \
         **claim probe** runs the system's own claim statement once per sample in a rolled-back transaction and counts the \
         index entries it read (ours with a claim floor where the engine keeps its own; pgmq's `read` reads from the smallest \
         msg_id); **entries per scan** are from `pg_stat_user_indexes` over all scans of the index in the phase (for ours: \
         floored claims, the sweeps below the floor (bounded, and one a minute from the index's start), wake-up probes; pgmq's pkey: reads and deletes). A \
         claim whose cost grows through the hold walks the hold's dead entries."
    );
}

/// Each phase's figures, systems side by side.
fn phase_table(m: &mut String, runs: &[(&Run, &HoldSummary)]) {
    let phases: Vec<(&str, &PhaseFigures)> =
        runs.iter().flat_map(|(x, h)| h.phases.iter().map(move |p| (x.system.label(), p))).collect();
    let head: Vec<String> = phases.iter().map(|(sys, p)| format!("{sys} {}", p.phase.label())).collect();
    let _ = writeln!(m, "\n| phase | {} |", head.join(" | "));
    let _ = writeln!(m, "|---|{}", "---:|".repeat(phases.len()));
    let row = |m: &mut String, label: &str, cell: &dyn Fn(&PhaseFigures) -> Option<String>| {
        let cells: Vec<String> = phases.iter().map(|(_, p)| cell(p).unwrap_or_default()).collect();
        let _ = writeln!(m, "| {label} | {} |", cells.join(" | "));
    };
    row(m, "t (s)", &|p| (p.samples > 0).then(|| format!("{:.0}–{:.0}", p.from_s, p.to_s)));
    row(m, "handled msgs/s", &|p| p.msgs_per_sec.map(thousands));
    row(m, "published msgs/s", &|p| p.published_per_sec.map(thousands));
    row(m, "p50 / p99 ms", &|p| p.p99_ms.map(|p99| format!("{} / {p99:.1}", opt(p.p50_ms, |v| format!("{v:.1}")))));
    row(m, "worst window p99 ms", &|p| p.worst_window_p99_ms.map(|v| format!("{v:.1}")));
    row(m, "backlog mean / max", &|p| p.backlog_mean.map(|b| format!("{} / {}", thousands(b), thousands(p.backlog_max as f64))));
    for name in unique(phases.iter().flat_map(|(_, p)| p.tables.iter().map(|t| t.name.as_str()))) {
        row(m, &format!("{name} size max / at end"), &|p| {
            p.tables.iter().find(|t| t.name == name).map(|t| format!("{} / {}", mb(t.max_total_bytes as f64), mb(t.end_total_bytes as f64)))
        });
        row(m, &format!("{name} dead tuples max / at end"), &|p| {
            p.tables.iter().find(|t| t.name == name).map(|t| format!("{} / {}", thousands(t.max_dead_tup as f64), thousands(t.end_dead_tup as f64)))
        });
    }
    for name in unique(phases.iter().flat_map(|(_, p)| p.probes.iter().map(|x| x.name.as_str()))) {
        row(m, &format!("{name} probe: entries per claim mean / max (ms)"), &|p| {
            p.probes.iter().find(|x| x.name == name).and_then(|x| {
                x.mean_entries.map(|e| {
                    format!("{} / {} ({})", thousands(e), opt(x.max_entries.map(|v| v as f64), thousands), opt(x.mean_ms, |v| format!("{v:.1}")))
                })
            })
        });
    }
    for name in unique(phases.iter().flat_map(|(_, p)| p.indexes.iter().map(|x| x.index.as_str()))) {
        row(m, &format!("{name}: entries per scan (scans/s)"), &|p| {
            p.indexes.iter().find(|x| x.index == name).map(|x| {
                format!("{} ({})", opt(x.entries_per_scan, |v| format!("{v:.1}")), opt(x.scans_per_sec, |v| format!("{v:.0}")))
            })
        });
    }
}
