//! The figures of a run with a held xmin horizon, phase by phase (pure functions).
//!
//! - **Phases**: before the hold (after the first sample, which is warm-up), while it is
//!   held, after it. The sample ticks fall on the hold's edges, so every window is in one.
//! - **Throughput while held**: messages handled per second during ÷ before; target ≥ 0.95.
//! - **p99 while held**: publish → handled p99 of every message handled during the hold ÷
//!   the same before it (older reports without whole-phase latencies: the mean of the
//!   windows' p99); target ≤ 2.
//! - **Catch-up**: from the hold's end to the first sample whose backlog is back at its
//!   level before the hold (the largest backlog sampled before it, at least one consumer
//!   batch); target ≤ 60 s, told to one sample interval. Not caught up by the end of a run
//!   whose after-phase is shorter than the target: cannot tell.
//! - **Claim cost**: per claim probe, the index entries one claim read, over the first and
//!   the last third of the hold; flat when last ≤ first × 1.5 + 10 entries. A claim that
//!   walks the hold's dead entries reads more the longer the hold lasts. The claim indexes'
//!   counters give the same per index scan (every scan: sweeps and wake-up probes too).

use conveyor_benchkit::Percentiles;
use conveyor_benches::ratio;
use serde::{Deserialize, Serialize};

use super::summary::{mean, rate};
use super::system::ClaimIndex;
use super::{HoldPlan, Sample};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HoldTargets {
    /// Handled per second during ÷ before, at least.
    pub throughput_ratio: f64,
    /// p99 during ÷ before, at most.
    pub p99_ratio: f64,
    /// Seconds from the hold's end until the backlog is back, at most.
    pub catch_up_s: f64,
    /// A claim's entries over the last third of the hold ≤ over the first third × this + slack.
    pub claim_growth: f64,
    pub claim_slack_entries: f64,
}

impl Default for HoldTargets {
    fn default() -> Self {
        HoldTargets { throughput_ratio: 0.95, p99_ratio: 2.0, catch_up_s: 60.0, claim_growth: 1.5, claim_slack_entries: 10.0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Before,
    During,
    After,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Before, Phase::During, Phase::After];

    pub fn label(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::During => "held",
            Phase::After => "after",
        }
    }
}

/// The phase of a sample's window (by its middle).
pub fn phase_of(s: &Sample, plan: &HoldPlan) -> Phase {
    let mid = s.t - s.window_s / 2.0;
    if mid < plan.start_s {
        Phase::Before
    } else if mid > plan.end_s {
        Phase::After
    } else {
        Phase::During
    }
}

/// The index ranges of the three phases in `samples`; the first sample is warm-up and in
/// none of them (when there are three or more).
pub fn split(samples: &[Sample], plan: &HoldPlan) -> [std::ops::Range<usize>; 3] {
    let skip = usize::from(samples.len() >= 3);
    let mut ranges = [skip..skip, skip..skip, skip..skip];
    let mut at = skip;
    for (k, phase) in Phase::ALL.iter().enumerate() {
        let start = at;
        while at < samples.len() && phase_of(&samples[at], plan) == *phase {
            at += 1;
        }
        ranges[k] = start..at;
    }
    ranges
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseFigures {
    pub phase: Phase,
    pub from_s: f64,
    pub to_s: f64,
    pub samples: usize,
    pub msgs_per_sec: Option<f64>,
    pub published_per_sec: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// p50 and p99 are of every message of the phase (else: the mean of the windows').
    pub whole_phase_latency: bool,
    pub worst_window_p99_ms: Option<f64>,
    pub backlog_mean: Option<f64>,
    pub backlog_max: i64,
    pub tables: Vec<PhaseTable>,
    pub indexes: Vec<PhaseIndex>,
    pub probes: Vec<PhaseProbe>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseTable {
    pub name: String,
    pub max_total_bytes: i64,
    pub end_total_bytes: i64,
    pub max_dead_tup: i64,
    pub end_dead_tup: i64,
}

/// A claim index over a phase, from its counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseIndex {
    pub table: String,
    pub index: String,
    pub scans_per_sec: Option<f64>,
    pub entries_per_scan: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseProbe {
    pub name: String,
    pub mean_entries: Option<f64>,
    pub max_entries: Option<i64>,
    pub mean_ms: Option<f64>,
}

/// How a claim's cost moved while the hold lasted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimGrowth {
    /// A probe's name, or `table.index (per scan)` for an index's counters.
    pub name: String,
    pub before: Option<f64>,
    pub early_hold: Option<f64>,
    pub late_hold: Option<f64>,
    pub after: Option<f64>,
    /// late ÷ early.
    pub growth: Option<f64>,
    /// Judged for the probes only (an index's counters mix every kind of scan).
    pub flat: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldSummary {
    pub start_s: f64,
    pub end_s: f64,
    pub targets: HoldTargets,
    pub phases: Vec<PhaseFigures>,
    pub throughput_ratio: Option<f64>,
    pub throughput_met: Option<bool>,
    pub p99_ratio: Option<f64>,
    pub p99_met: Option<bool>,
    /// The backlog counted as caught up.
    pub backlog_level: i64,
    pub caught_up_after_s: Option<f64>,
    pub catch_up_met: Option<bool>,
    pub claim: Vec<ClaimGrowth>,
    /// Every held window found each holding connection's backend_xmin set (`None`: no
    /// held window was sampled).
    pub xmin_held: Option<bool>,
    pub max_xmin_age: Option<i64>,
}


/// Index entries read per scan and scans per second over `range`, from the counters at its
/// last sample less those at the sample before it.
pub fn index_over(samples: &[Sample], range: std::ops::Range<usize>, table: &str, index: &str) -> (Option<f64>, Option<f64>) {
    if range.is_empty() {
        return (None, None);
    }
    let at = |i: usize| samples[i].index(table, index).map(|x| (x.scans, x.entries_read));
    let before = if range.start == 0 { Some((0, 0)) } else { at(range.start - 1) };
    let (Some((s0, e0)), Some((s1, e1))) = (before, at(range.end - 1)) else { return (None, None) };
    let secs: f64 = samples[range].iter().map(|s| s.window_s).sum();
    let scans = s1 - s0;
    ((secs > 0.0).then(|| scans as f64 / secs), (scans > 0).then(|| (e1 - e0) as f64 / scans as f64))
}

fn probe_mean(samples: &[Sample], name: &str) -> Option<f64> {
    mean(samples.iter().filter_map(|s| s.probe(name)).map(|p| p.entries_read as f64))
}

fn figures(all: &[Sample], range: std::ops::Range<usize>, phase: Phase, latency: Option<&Percentiles>, claim: &[ClaimIndex]) -> PhaseFigures {
    let span = &all[range.clone()];
    let windows = |f: fn(&Percentiles) -> f64| mean(span.iter().filter_map(|s| s.latency_ms.as_ref().map(f)));
    let names: Vec<String> = span.first().map(|s| s.tables.iter().map(|t| t.name.clone()).collect()).unwrap_or_default();
    let probes: Vec<String> = span.first().map(|s| s.probes.iter().map(|p| p.name.clone()).collect()).unwrap_or_default();
    PhaseFigures {
        phase,
        from_s: span.first().map(|s| s.t - s.window_s).unwrap_or(0.0),
        to_s: span.last().map(|s| s.t).unwrap_or(0.0),
        samples: span.len(),
        msgs_per_sec: rate(span, |s| s.consumed),
        published_per_sec: rate(span, |s| s.published),
        p50_ms: latency.map(|l| l.p50).or_else(|| windows(|l| l.p50)),
        p99_ms: latency.map(|l| l.p99).or_else(|| windows(|l| l.p99)),
        whole_phase_latency: latency.is_some(),
        worst_window_p99_ms: span.iter().filter_map(|s| s.latency_ms.map(|l| l.p99)).reduce(f64::max),
        backlog_mean: mean(span.iter().map(|s| s.backlog as f64)),
        backlog_max: span.iter().map(|s| s.backlog).max().unwrap_or(0),
        tables: names
            .iter()
            .map(|n| {
                let of = |f: fn(&super::TableStats) -> i64| span.iter().filter_map(|s| s.table(n)).map(f);
                PhaseTable {
                    name: n.clone(),
                    max_total_bytes: of(|t| t.total_bytes).max().unwrap_or(0),
                    end_total_bytes: of(|t| t.total_bytes).next_back().unwrap_or(0),
                    max_dead_tup: of(|t| t.dead_tup).max().unwrap_or(0),
                    end_dead_tup: of(|t| t.dead_tup).next_back().unwrap_or(0),
                }
            })
            .collect(),
        indexes: claim
            .iter()
            .map(|c| {
                let (scans_per_sec, entries_per_scan) = index_over(all, range.clone(), &c.table, &c.index);
                PhaseIndex { table: c.table.clone(), index: c.index.clone(), scans_per_sec, entries_per_scan }
            })
            .collect(),
        probes: probes
            .iter()
            .map(|n| PhaseProbe {
                name: n.clone(),
                mean_entries: probe_mean(span, n),
                max_entries: span.iter().filter_map(|s| s.probe(n)).map(|p| p.entries_read).max(),
                mean_ms: mean(span.iter().filter_map(|s| s.probe(n)).map(|p| p.ms)),
            })
            .collect(),
    }
}

/// The first sample at or after the hold's end whose backlog is at most `level`: seconds
/// after the end (0 when the backlog never rose above it).
pub fn catch_up_s(samples: &[Sample], end_s: f64, level: i64) -> Option<f64> {
    samples.iter().filter(|s| s.t >= end_s - 1e-6).find(|s| s.backlog <= level).map(|s| (s.t - end_s).max(0.0))
}

/// The hold's figures. `phase_latency`: the whole-phase latencies the run recorded (before,
/// during, after), empty when unknown; `min_level`: the smallest backlog counted as caught up.
pub fn summarize(
    samples: &[Sample],
    plan: &HoldPlan,
    targets: HoldTargets,
    phase_latency: &[Option<Percentiles>],
    claim: &[ClaimIndex],
    min_level: i64,
) -> HoldSummary {
    let ranges = split(samples, plan);
    let phases: Vec<PhaseFigures> = Phase::ALL
        .iter()
        .enumerate()
        .map(|(k, &p)| figures(samples, ranges[k].clone(), p, phase_latency.get(k).and_then(|l| l.as_ref()), claim))
        .collect();
    let (before, during) = (&phases[0], &phases[1]);
    let throughput_ratio = if before.samples > 0 && during.samples > 0 { ratio(during.msgs_per_sec, before.msgs_per_sec) } else { None };
    let p99_ratio = ratio(during.p99_ms, before.p99_ms);
    let backlog_level = before.backlog_max.max(min_level);
    let caught = if during.samples > 0 { catch_up_s(samples, plan.end_s, backlog_level) } else { None };
    let observed_after = samples.last().map(|s| s.t - plan.end_s).unwrap_or(0.0);
    let catch_up_met = match caught {
        Some(x) => Some(x <= targets.catch_up_s),
        None if during.samples > 0 && observed_after >= targets.catch_up_s => Some(false),
        None => None,
    };

    // Thirds of the hold, for how the claim's cost moved while it lasted.
    let held = ranges[1].clone();
    let third = (held.len() / 3).max(1).min(held.len());
    let (early, late) = (held.start..held.start + third, held.end - third..held.end);
    let mut growth = Vec::new();
    for p in &during.probes {
        let (e, l) = (probe_mean(&samples[early.clone()], &p.name), probe_mean(&samples[late.clone()], &p.name));
        growth.push(ClaimGrowth {
            name: p.name.clone(),
            before: probe_mean(&samples[ranges[0].clone()], &p.name),
            early_hold: e,
            late_hold: l,
            after: probe_mean(&samples[ranges[2].clone()], &p.name),
            growth: ratio(l, e),
            flat: e.zip(l).map(|(e, l)| l <= e * targets.claim_growth + targets.claim_slack_entries),
        });
    }
    for c in claim {
        let per_scan = |r: std::ops::Range<usize>| index_over(samples, r, &c.table, &c.index).1;
        let (e, l) = (per_scan(early.clone()), per_scan(late.clone()));
        growth.push(ClaimGrowth {
            name: format!("{}.{} (per scan)", c.table, c.index),
            before: per_scan(ranges[0].clone()),
            early_hold: e,
            late_hold: l,
            after: per_scan(ranges[2].clone()),
            growth: ratio(l, e),
            flat: None,
        });
    }
    let held_samples = &samples[held];
    HoldSummary {
        start_s: plan.start_s,
        end_s: plan.end_s,
        targets,
        throughput_met: throughput_ratio.map(|r| r >= targets.throughput_ratio),
        throughput_ratio,
        p99_met: p99_ratio.map(|r| r <= targets.p99_ratio),
        p99_ratio,
        backlog_level,
        caught_up_after_s: caught,
        catch_up_met,
        claim: growth,
        xmin_held: (!held_samples.is_empty()).then(|| held_samples.iter().all(|s| s.hold_xmin_age.is_some())),
        max_xmin_age: held_samples.iter().filter_map(|s| s.hold_xmin_age).max(),
        phases,
    }
}

#[cfg(test)]
#[path = "phases_tests.rs"]
mod tests;
