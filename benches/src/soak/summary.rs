//! The figures a soak is judged by, computed from its samples (pure functions).
//!
//! - **Throughput, start against end**: messages handled per second over the first 10 % of
//!   the samples (after the first, which is warm-up) and over the last 10 % (at least one
//!   sample each); the target is
//!   end ÷ start ≥ `target_end_start_ratio` (0.90: "within 10 % of the start"; an end
//!   faster than the start is no degradation).
//! - **Bounded size**, per table: its largest `pg_total_relation_size` over the second half
//!   of the run against its largest over the first half. Bounded when
//!   `max(second half) ≤ max(first half) × (1 + tolerance) + slack`. A table that keeps
//!   growing shows a second-half maximum above the first's, and a positive slope (least
//!   squares over the second half, reported in bytes per minute). A table reaches its steady
//!   size once what it keeps has filled it (the inbox: the pruner's window and one interval)
//!   and autovacuum has made the space of deleted rows reusable (at most once per
//!   autovacuum_naptime); when that is more than half the run, boundedness cannot be told
//!   (`None`).
//!   Size is split into what explains it: the most tuples (live + dead) the table held in
//!   each half, and its largest size ÷ those tuples (bytes per tuple). A table that keeps a
//!   fixed time of messages holds more rows when the rate is higher (more tuples, the same
//!   bytes per tuple); a bloating one has emptier pages or indexes (more bytes per tuple).

use serde::{Deserialize, Serialize};

use super::{Sample, Settings, TableStats};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub duration_s: f64,
    pub samples: usize,
    pub published: u64,
    pub consumed: u64,
    pub throughput: Throughput,
    pub latency: LatencyDrift,
    pub tables: Vec<TableSummary>,
    /// WAL written per message handled, over the whole run.
    pub wal_bytes_per_msg: Option<f64>,
    /// Share of the run producers spent paused at the backlog cap.
    pub producers_paused: f64,
    /// Messages handled per second over each half of the run.
    pub first_half_msgs_per_sec: Option<f64>,
    pub second_half_msgs_per_sec: Option<f64>,
    /// What the figures point at, when a target is missed or something grows.
    pub findings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Where the start and end spans begin (seconds from the start) and how long they are.
    pub start_from_s: f64,
    pub start_span_s: f64,
    pub end_from_s: f64,
    pub end_span_s: f64,
    pub start_msgs_per_sec: Option<f64>,
    pub end_msgs_per_sec: Option<f64>,
    pub end_over_start: Option<f64>,
    pub target_end_over_start: f64,
    pub meets_target: Option<bool>,
    pub mean_msgs_per_sec: Option<f64>,
    /// Published (not handled) per second over the same spans.
    pub start_published_per_sec: Option<f64>,
    pub end_published_per_sec: Option<f64>,
}

/// Mean over the samples of each span of the per-window p50 and p99, in ms; and the
/// stalls: windows whose p99 exceeded [`STALL_MS`], and the longest a message waited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyDrift {
    pub start_p50_ms: Option<f64>,
    pub start_p99_ms: Option<f64>,
    pub end_p50_ms: Option<f64>,
    pub end_p99_ms: Option<f64>,
    pub max_p99_ms: Option<f64>,
    pub windows_over_stall: usize,
    /// The longest publish → handled of any message, in seconds (the windows' maximum).
    #[serde(default)]
    pub max_wait_s: Option<f64>,
    /// Where the backlog waited at the end of that window: `(outbox, inbox)`.
    pub at_oldest_waiting: Option<(i64, i64)>,
}

/// A window whose p99 is above this had messages waiting far longer than a wake-up takes.
pub const STALL_MS: f64 = 500.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSummary {
    pub name: String,
    pub max_total_bytes: i64,
    pub final_total_bytes: i64,
    pub final_table_bytes: i64,
    pub final_index_bytes: i64,
    pub first_half_max_bytes: i64,
    pub second_half_max_bytes: i64,
    /// second half max ÷ first half max.
    pub growth: Option<f64>,
    /// Slope of the total size over the second half, bytes per minute.
    pub second_half_slope_bytes_per_min: Option<f64>,
    /// The most tuples (live + dead) held in each half, and the largest size ÷ those (both
    /// peaks of the half, not necessarily at one sample). Dead tuples stay counted until
    /// vacuum even when page pruning already freed their space, so this can be below a
    /// row's size; what matters is how it moves between the halves.
    pub first_half_max_tuples: i64,
    pub second_half_max_tuples: i64,
    pub first_half_bytes_per_tuple: Option<f64>,
    pub second_half_bytes_per_tuple: Option<f64>,
    /// When the table reaches its steady size (seconds from the start).
    pub steady_after_s: f64,
    pub bounded: Option<bool>,
    pub max_dead_tup: i64,
    pub final_dead_tup: i64,
    pub first_half_max_dead_tup: i64,
    pub second_half_max_dead_tup: i64,
    pub max_live_tup: i64,
    pub final_live_tup: i64,
    pub autovacuums: i64,
    pub indexes: Vec<IndexSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexSummary {
    pub name: String,
    pub first_half_max_bytes: i64,
    pub second_half_max_bytes: i64,
    pub final_bytes: i64,
}

/// The samples of the first and the last 10 % of the run (at least one each; the same
/// sample when there is only one). The very first sample is warm-up (connections, the
/// first wake-ups) and is left out of the start when there are three or more: counting it
/// would lower the start and flatter the ratio.
pub fn edges(samples: &[Sample]) -> (&[Sample], &[Sample]) {
    if samples.is_empty() {
        return (&[], &[]);
    }
    let skip = usize::from(samples.len() >= 3);
    let n = ((samples.len() as f64 / 10.0).round() as usize).clamp(1, samples.len() - skip);
    (&samples[skip..skip + n], &samples[samples.len() - n..])
}

/// Messages per second over `samples` (count ÷ the time their windows cover).
pub fn rate(samples: &[Sample], count: impl Fn(&Sample) -> u64) -> Option<f64> {
    let secs: f64 = samples.iter().map(|s| s.window_s).sum();
    (secs > 0.0).then(|| samples.iter().map(count).sum::<u64>() as f64 / secs)
}

/// Splits at half the run's length: the samples whose window ends by then, and the rest.
pub fn halves(samples: &[Sample]) -> (&[Sample], &[Sample]) {
    let Some(last) = samples.last() else { return (&[], &[]) };
    let mid = last.t / 2.0;
    let i = samples.iter().position(|s| s.t > mid + 1e-9).unwrap_or(samples.len());
    samples.split_at(i)
}

/// Whether a size stayed bounded (see the module docs).
pub fn is_bounded(first_half_max: i64, second_half_max: i64, tolerance: f64, slack_bytes: u64) -> bool {
    second_half_max as f64 <= first_half_max as f64 * (1.0 + tolerance) + slack_bytes as f64
}

/// Least-squares slope of `y` over `x`; `None` for fewer than two distinct x.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    Some(sxy / sxx)
}

/// The longest publish → handled of a window, in seconds.
fn wait_s(s: &Sample) -> Option<f64> {
    s.latency_ms.map(|l| l.max / 1000.0)
}

pub(crate) fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = v.collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn max_of(samples: &[Sample], name: &str, f: impl Fn(&TableStats) -> i64) -> i64 {
    samples.iter().filter_map(|s| s.table(name)).map(f).max().unwrap_or(0)
}

/// When a table reaches its steady size: the inbox keeps done rows for the pruner's window
/// and is pruned every interval; the outbox holds only what waits for the relay. Either
/// way the space of deleted rows is reused only once vacuum has run, and autovacuum comes
/// at most once per `vacuum_every_s` (the server's autovacuum_naptime).
pub fn steady_after_s(table: &str, settings: &Settings, vacuum_every_s: f64) -> f64 {
    let kept = if table == "inbox" { settings.prune_window_s + settings.prune_interval_s } else { 0.0 };
    kept + vacuum_every_s
}

/// The summary of a run's samples; `vacuum_every_s` is the server's autovacuum_naptime.
pub fn summarize(samples: &[Sample], settings: &Settings, vacuum_every_s: f64) -> Summary {
    let (start, end) = edges(samples);
    let duration_s = samples.last().map(|s| s.t).unwrap_or(0.0);
    let start_rate = rate(start, |s| s.consumed);
    let end_rate = rate(end, |s| s.consumed);
    let ratio = match (start_rate, end_rate) {
        (Some(a), Some(b)) if a > 0.0 && samples.len() >= 2 => Some(b / a),
        _ => None,
    };
    let from = |span: &[Sample]| span.first().map(|s| s.t - s.window_s).unwrap_or(0.0);
    let throughput = Throughput {
        start_from_s: from(start),
        end_from_s: from(end),
        start_span_s: start.iter().map(|s| s.window_s).sum(),
        end_span_s: end.iter().map(|s| s.window_s).sum(),
        start_msgs_per_sec: start_rate,
        end_msgs_per_sec: end_rate,
        end_over_start: ratio,
        target_end_over_start: settings.target_end_start_ratio,
        meets_target: ratio.map(|r| r >= settings.target_end_start_ratio),
        mean_msgs_per_sec: rate(samples, |s| s.consumed),
        start_published_per_sec: rate(start, |s| s.published),
        end_published_per_sec: rate(end, |s| s.published),
    };
    let p = |span: &[Sample], f: fn(&conveyor_benchkit::Percentiles) -> f64| mean(span.iter().filter_map(|s| s.latency_ms.as_ref().map(f)));
    let latency = LatencyDrift {
        start_p50_ms: p(start, |l| l.p50),
        start_p99_ms: p(start, |l| l.p99),
        end_p50_ms: p(end, |l| l.p50),
        end_p99_ms: p(end, |l| l.p99),
        max_p99_ms: samples.iter().filter_map(|s| s.latency_ms.map(|l| l.p99)).reduce(f64::max),
        windows_over_stall: samples.iter().filter(|s| s.latency_ms.is_some_and(|l| l.p99 > STALL_MS)).count(),
        max_wait_s: samples.iter().filter_map(wait_s).reduce(f64::max),
        at_oldest_waiting: samples
            .iter()
            .filter(|s| wait_s(s).is_some())
            .max_by(|a, b| wait_s(a).partial_cmp(&wait_s(b)).unwrap_or(std::cmp::Ordering::Equal))
            .map(|s| (s.outbox_pending, s.inbox_pending)),
    };

    let (first, second) = halves(samples);
    let names: Vec<String> = samples.first().map(|s| s.tables.iter().map(|t| t.name.clone()).collect()).unwrap_or_default();
    let tables = names
        .iter()
        .map(|name| {
            let last = samples.last().and_then(|s| s.table(name));
            let first_max = max_of(first, name, |t| t.total_bytes);
            let second_max = max_of(second, name, |t| t.total_bytes);
            let first_tuples = max_of(first, name, |t| t.live_tup + t.dead_tup);
            let second_tuples = max_of(second, name, |t| t.live_tup + t.dead_tup);
            let per_tuple = |bytes: i64, tuples: i64| (tuples > 0).then(|| bytes as f64 / tuples as f64);
            let steady = steady_after_s(name, settings, vacuum_every_s);
            let assessable = !first.is_empty() && !second.is_empty() && steady <= duration_s / 2.0;
            let pts: Vec<(f64, f64)> =
                second.iter().filter_map(|s| s.table(name).map(|t| (s.t / 60.0, t.total_bytes as f64))).collect();
            let index_names: Vec<String> = last.map(|t| t.indexes.iter().map(|i| i.name.clone()).collect()).unwrap_or_default();
            let index_max = |span: &[Sample], index: &str| {
                span.iter()
                    .filter_map(|s| s.table(name))
                    .flat_map(|t| t.indexes.iter().filter(|i| i.name == index).map(|i| i.bytes))
                    .max()
                    .unwrap_or(0)
            };
            TableSummary {
                name: name.clone(),
                max_total_bytes: max_of(samples, name, |t| t.total_bytes),
                final_total_bytes: last.map(|t| t.total_bytes).unwrap_or(0),
                final_table_bytes: last.map(|t| t.table_bytes).unwrap_or(0),
                final_index_bytes: last.map(|t| t.index_bytes).unwrap_or(0),
                first_half_max_bytes: first_max,
                second_half_max_bytes: second_max,
                growth: (first_max > 0 && !second.is_empty()).then(|| second_max as f64 / first_max as f64),
                second_half_slope_bytes_per_min: slope(&pts),
                first_half_max_tuples: first_tuples,
                second_half_max_tuples: second_tuples,
                first_half_bytes_per_tuple: per_tuple(first_max, first_tuples),
                second_half_bytes_per_tuple: per_tuple(second_max, second_tuples),
                steady_after_s: steady,
                bounded: assessable.then(|| is_bounded(first_max, second_max, settings.size_tolerance, settings.size_slack_bytes)),
                max_dead_tup: max_of(samples, name, |t| t.dead_tup),
                final_dead_tup: last.map(|t| t.dead_tup).unwrap_or(0),
                first_half_max_dead_tup: max_of(first, name, |t| t.dead_tup),
                second_half_max_dead_tup: max_of(second, name, |t| t.dead_tup),
                max_live_tup: max_of(samples, name, |t| t.live_tup),
                final_live_tup: last.map(|t| t.live_tup).unwrap_or(0),
                autovacuums: last.map(|t| t.autovacuum_count).unwrap_or(0),
                indexes: index_names
                    .iter()
                    .map(|i| IndexSummary {
                        name: i.clone(),
                        first_half_max_bytes: index_max(first, i),
                        second_half_max_bytes: index_max(second, i),
                        final_bytes: last
                            .and_then(|t| t.indexes.iter().find(|x| &x.name == i))
                            .map(|x| x.bytes)
                            .unwrap_or(0),
                    })
                    .collect(),
            }
        })
        .collect();

    let published: u64 = samples.iter().map(|s| s.published).sum();
    let consumed: u64 = samples.iter().map(|s| s.consumed).sum();
    let wal: f64 = samples.iter().map(|s| s.wal_bytes).sum();
    let run_s: f64 = samples.iter().map(|s| s.window_s).sum();
    let mut summary = Summary {
        duration_s,
        samples: samples.len(),
        published,
        consumed,
        throughput,
        latency,
        tables,
        wal_bytes_per_msg: (consumed > 0).then(|| wal / consumed as f64),
        first_half_msgs_per_sec: rate(first, |s| s.consumed),
        second_half_msgs_per_sec: rate(second, |s| s.consumed),
        producers_paused: if run_s > 0.0 { samples.iter().map(|s| s.producers_paused * s.window_s).sum::<f64>() / run_s } else { 0.0 },
        findings: Vec::new(),
    };
    summary.findings = findings(&summary, samples, settings);
    summary
}

/// Plain statements of what the figures show, for the cases worth a look.
fn findings(s: &Summary, samples: &[Sample], settings: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    let (_, end) = edges(samples);
    if s.throughput.meets_target == Some(false) {
        let paused = mean(end.iter().map(|x| x.producers_paused)).unwrap_or(0.0);
        let pending = mean(end.iter().map(|x| x.inbox_pending as f64)).unwrap_or(0.0);
        if paused > 0.05 {
            out.push(format!(
                "At the end producers were paused at the backlog cap {:.0} % of the time (inbox pending {:.0} on average): the relay or the consumers fell behind, not the producers.",
                paused * 100.0,
                pending
            ));
        } else {
            out.push("At the end producers were not held back by the cap: publishing itself got slower (or the machine was busier).".to_owned());
        }
    }
    for t in &s.tables {
        // Not bounded, or (before the steady state) above what bounded would allow.
        let grew = t.bounded == Some(false)
            || (t.bounded.is_none()
                && !is_bounded(t.first_half_max_bytes, t.second_half_max_bytes, settings.size_tolerance, settings.size_slack_bytes));
        if !grew {
            continue;
        }
        let mut why = Vec::new();
        let tol = 1.0 + settings.size_tolerance;
        let growth = |a: Option<f64>, b: Option<f64>| a.zip(b).filter(|(a, _)| *a > 0.0).map(|(a, b)| b / a);
        let tuples = growth(Some(t.first_half_max_tuples as f64), Some(t.second_half_max_tuples as f64));
        let density = growth(t.first_half_bytes_per_tuple, t.second_half_bytes_per_tuple);
        if let (Some(tuples), Some(density)) = (tuples, density) {
            if density <= tol {
                why.push(format!(
                    "it held more rows at its peak (×{tuples:.2} live + dead tuples), not emptier pages (bytes per tuple ×{density:.2})"
                ));
                if let Some(r) = growth(s.first_half_msgs_per_sec, s.second_half_msgs_per_sec)
                    && r > tol
                {
                    why.push(format!(
                        "the second half handled ×{r:.2} the messages per second of the first ({:.0} against {:.0}): a table that keeps a fixed time of messages grows with the rate (run with --rate for a size verdict independent of the machine's noise)",
                        s.second_half_msgs_per_sec.unwrap_or(0.0),
                        s.first_half_msgs_per_sec.unwrap_or(0.0)
                    ));
                }
            } else {
                why.push(format!(
                    "its bytes per tuple grew ×{density:.2} ({:.0} → {:.0}; most tuples held ×{tuples:.2}): the same rows took more room, the space of deleted rows was reused less (or an index bloats)",
                    t.first_half_bytes_per_tuple.unwrap_or(0.0),
                    t.second_half_bytes_per_tuple.unwrap_or(0.0)
                ));
            }
        }
        if t.second_half_max_dead_tup > t.first_half_max_dead_tup.saturating_mul(2).max(10_000) {
            let why_dead = if settings.hold.is_some() {
                "while the --hold-xmin snapshot was open vacuum could remove none of them"
            } else {
                "autovacuum is not keeping up"
            };
            why.push(format!(
                "dead tuples peaked at {} in the second half against {} in the first: {why_dead} ({} runs in {:.0} s)",
                t.second_half_max_dead_tup, t.first_half_max_dead_tup, t.autovacuums, s.duration_s
            ));
        }
        if t.name == "inbox" {
            let expected = s.throughput.mean_msgs_per_sec.unwrap_or(0.0) * (settings.prune_window_s + settings.prune_interval_s);
            if expected > 0.0 && t.final_live_tup as f64 > expected * 1.5 {
                why.push(format!(
                    "{} live rows at the end, against ≈{:.0} done rows the pruner's window and interval should keep: the pruner is lagging",
                    t.final_live_tup, expected
                ));
            }
        }
        // An index that outgrows its table bloats (the table's own growth is explained above).
        let table_growth = t.growth.unwrap_or(1.0);
        for i in &t.indexes {
            if i.first_half_max_bytes > 0
                && i.second_half_max_bytes as f64 > i.first_half_max_bytes as f64 * table_growth * tol + settings.size_slack_bytes as f64
            {
                why.push(format!(
                    "index {} grew ×{:.2} ({} → {} bytes), more than its table (×{table_growth:.2})",
                    i.name,
                    i.second_half_max_bytes as f64 / i.first_half_max_bytes as f64,
                    i.first_half_max_bytes,
                    i.second_half_max_bytes
                ));
            }
        }
        if why.is_empty() {
            why.push("neither the rows held, bytes per tuple, dead tuples nor one index stands out; look at the sizes over time".to_owned());
        }
        if settings.hold.is_some() {
            why.push("the --hold-xmin snapshot kept the space of every row deleted or updated while it was open from being reused, and a table does not give back what it grew by".to_owned());
        }
        let when = if t.bounded.is_none() {
            format!(" before its steady state (reached after {:.0} s, more than half the run)", t.steady_after_s)
        } else {
            String::new()
        };
        out.push(format!("{} grew{when}: {}.", t.name, why.join("; ")));
    }
    if s.latency.windows_over_stall > 0 {
        let (outbox, inbox) = s.latency.at_oldest_waiting.unwrap_or_default();
        let oldest = s.latency.max_wait_s.unwrap_or(0.0);
        // pgmq has no relay (and its readers long-poll instead of waiting for a wake-up).
        let relayed = samples.first().is_some_and(|x| x.table("outbox").is_some());
        let who = if relayed && outbox >= inbox { "the relay" } else { "the consumers" };
        let why = if relayed && s.producers_paused < 0.05 && oldest <= settings.poll_interval_s * 1.5 {
            format!(
                "the backlog stayed far below the cap, so {who} had capacity: idle, it woke late. A wait of up to the poll interval ({} s) is the polling fallback of a wake-up that did not come (run with a shorter --poll-interval to confirm)",
                settings.poll_interval_s
            )
        } else {
            format!("{who} fell behind")
        };
        out.push(format!(
            "{} of {} windows had a p99 above {STALL_MS:.0} ms; the longest a message waited was {oldest:.2} s ({outbox} messages in the outbox, {inbox} in the inbox at the end of that window): {why}.",
            s.latency.windows_over_stall, s.samples,
        ));
    }
    if let Some(x) = samples.iter().filter_map(|x| x.oldest_xact_s).reduce(f64::max)
        && x > 60.0
    {
        let why = if settings.hold.is_some() { " (the --hold-xmin snapshot, on purpose: see the hold's figures)" } else { "" };
        out.push(format!("A transaction stayed open {x:.0} s{why}: it holds back vacuum's horizon while it lasts."));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::fixtures::{sample, settings};

    #[test]
    fn the_end_is_compared_with_the_start_over_a_tenth_of_the_run_each() {
        // The first sample is warm-up and does not count.
        let samples: Vec<Sample> =
            (1..=20).map(|i| sample(i as f64 * 10.0, match i { 1 => 10, 2 | 3 => 1000, 19 | 20 => 850, _ => 950 }, 10.0, 0)).collect();
        let (start, end) = edges(&samples);
        assert_eq!((start.len(), end.len(), start[0].t, end[0].t), (2, 2, 20.0, 190.0));
        let s = summarize(&samples, &Settings { duration_s: 200.0, ..settings() }, 0.0);
        assert_eq!(s.throughput.start_msgs_per_sec, Some(100.0));
        assert_eq!(s.throughput.end_msgs_per_sec, Some(85.0));
        assert!((s.throughput.end_over_start.unwrap() - 0.85).abs() < 1e-12);
        assert_eq!(s.throughput.meets_target, Some(false));
        assert_eq!(s.throughput.start_span_s, 20.0);
        assert_eq!(s.wal_bytes_per_msg, Some(1000.0));
        assert!(s.findings.iter().any(|f| f.contains("not held back")), "{:?}", s.findings);

        let flat: Vec<Sample> = (1..=10).map(|i| sample(i as f64 * 10.0, 1000, 10.0, 0)).collect();
        let s = summarize(&flat, &settings(), 0.0);
        assert_eq!(s.throughput.end_over_start, Some(1.0));
        assert_eq!(s.throughput.meets_target, Some(true));
        assert!(s.findings.is_empty(), "{:?}", s.findings);
    }

    #[test]
    fn stalled_windows_are_counted_and_located() {
        let mut samples: Vec<Sample> = (1..=10).map(|i| sample(i as f64 * 10.0, 1000, 10.0, 0)).collect();
        samples[4].latency_ms = conveyor_benchkit::Percentiles::of(&[5.0, 900.0]);
        samples[4].outbox_pending = 1500;
        samples[4].tables[0].name = "outbox".into();
        let s = summarize(&samples, &settings(), 0.0);
        assert_eq!(s.latency.windows_over_stall, 1);
        assert_eq!(s.latency.max_wait_s, Some(0.9));
        assert_eq!(s.latency.at_oldest_waiting, Some((1500, 0)));
        let f = s.findings.join("\n");
        assert!(f.contains("1 of 10 windows had a p99 above 500 ms") && f.contains("1500 messages in the outbox"), "{f}");
        // Without a relay (pgmq) the wait is the consumers'.
        assert!(f.contains("the consumers fell behind"), "{f}");
    }

    #[test]
    fn one_sample_has_no_ratio_and_few_samples_still_have_edges() {
        let one = [sample(10.0, 100, 1.0, 0)];
        let s = summarize(&one, &settings(), 0.0);
        assert_eq!(s.throughput.end_over_start, None);
        assert_eq!(s.throughput.meets_target, None);
        let three: Vec<Sample> = (1..=3).map(|i| sample(i as f64, 100 * i, 1.0, 0)).collect();
        let (a, b) = edges(&three);
        assert_eq!((a[0].t, b[0].t, a.len()), (2.0, 3.0, 1));
        let (a, b) = edges(&three[..2]);
        assert_eq!((a[0].t, b[0].t), (1.0, 2.0));
        assert!(summarize(&[], &settings(), 0.0).tables.is_empty());
    }

    #[test]
    fn a_size_that_plateaus_is_bounded_and_one_that_keeps_growing_is_not() {
        // Grows while the pruner's window fills (30 s), then flat with a sawtooth.
        let plateau: Vec<Sample> =
            (1..=10).map(|i| sample(i as f64 * 10.0, 1000, if i <= 3 { i as f64 * 10.0 } else { 30.0 + (i % 2) as f64 }, 5000)).collect();
        let s = summarize(&plateau, &settings(), 0.0);
        let t = &s.tables[0];
        assert_eq!((t.first_half_max_bytes, t.second_half_max_bytes), (31_000_000, 31_000_000));
        assert_eq!(t.bounded, Some(true));
        assert_eq!(t.growth, Some(1.0));
        assert_eq!(t.max_total_bytes, 31_000_000);
        assert_eq!(t.final_total_bytes, 30_000_000);
        assert_eq!(t.autovacuums, 5);
        assert_eq!(t.indexes[0].final_bytes, 7_500_000);

        // 10 MB more every sample, dead tuples piling up.
        let growing: Vec<Sample> = (1..=10).map(|i| sample(i as f64 * 10.0, 1000, i as f64 * 10.0, i * i * 100_000)).collect();
        let s = summarize(&growing, &settings(), 0.0);
        let t = &s.tables[0];
        assert_eq!((t.first_half_max_bytes, t.second_half_max_bytes), (50_000_000, 100_000_000));
        assert_eq!(t.bounded, Some(false));
        assert_eq!(t.growth, Some(2.0));
        let per_min = t.second_half_slope_bytes_per_min.unwrap();
        assert!((per_min - 60_000_000.0).abs() < 1.0, "{per_min}");
        let f = s.findings.join("\n");
        assert!(
            f.contains("inbox grew: it held more rows at its peak (×4.00 live + dead tuples), not emptier pages")
                && f.contains("autovacuum is not keeping up")
                && !f.contains("index inbox_pkey grew"),
            "{f}"
        );
    }

    #[test]
    fn growth_is_told_apart_more_rows_at_a_higher_rate_emptier_pages_a_bloating_index() {
        // The same tuples in ever more bytes, the index growing faster than its table.
        let bloat: Vec<Sample> = (1..=10)
            .map(|i| {
                let mut x = sample(i as f64 * 10.0, 1000, i as f64 * 10.0, 1000);
                x.tables[0].indexes[0].bytes = i * i * 1_000_000;
                x
            })
            .collect();
        let s = summarize(&bloat, &settings(), 0.0);
        let t = &s.tables[0];
        assert_eq!((t.first_half_max_tuples, t.second_half_max_tuples), (2000, 2000));
        assert_eq!((t.first_half_bytes_per_tuple, t.second_half_bytes_per_tuple), (Some(25_000.0), Some(50_000.0)));
        let f = s.findings.join("\n");
        assert!(f.contains("its bytes per tuple grew ×2.00 (25000 → 50000; most tuples held ×1.00)"), "{f}");
        assert!(f.contains("index inbox_pkey grew ×4.00 (25000000 → 100000000 bytes), more than its table (×2.00)"), "{f}");

        // Twice the rate in the second half: twice the rows, the same bytes per tuple.
        let faster: Vec<Sample> = (1..=10)
            .map(|i| {
                let k = if i <= 5 { 1 } else { 2 };
                let mut x = sample(i as f64 * 10.0, 1000 * k as u64, 10.0 * k as f64, 0);
                x.tables[0].live_tup = 1000 * k;
                x
            })
            .collect();
        let s = summarize(&faster, &settings(), 0.0);
        assert_eq!((s.first_half_msgs_per_sec, s.second_half_msgs_per_sec), (Some(100.0), Some(200.0)));
        assert_eq!(s.tables[0].bounded, Some(false));
        let f = s.findings.join("\n");
        assert!(f.contains("(×2.00 live + dead tuples), not emptier pages (bytes per tuple ×1.00)"), "{f}");
        assert!(f.contains("the second half handled ×2.00 the messages per second of the first (200 against 100)"), "{f}");
    }

    #[test]
    fn boundedness_is_not_told_before_the_pruner_reaches_its_steady_state() {
        let samples: Vec<Sample> = (1..=10).map(|i| sample(i as f64 * 10.0, 1000, 10.0, 0)).collect();
        let s = summarize(&samples, &Settings { prune_window_s: 60.0, ..settings() }, 0.0);
        assert_eq!(s.tables[0].bounded, None);
        assert_eq!(s.tables[0].steady_after_s, 70.0);
        // Deleted rows' space is reusable once autovacuum has run: at most once a naptime.
        assert_eq!(steady_after_s("inbox", &settings(), 60.0), 90.0);
        assert_eq!(steady_after_s("outbox", &settings(), 60.0), 60.0);
        assert_eq!(summarize(&samples, &settings(), 60.0).tables[0].bounded, None);
        assert_eq!(summarize(&samples, &settings(), 20.0).tables[0].bounded, Some(true));
    }

    #[test]
    fn the_tolerance_and_slack_are_what_the_docs_say() {
        assert!(is_bounded(100_000_000, 110_000_000, 0.10, 0));
        assert!(!is_bounded(100_000_000, 110_000_001, 0.10, 0));
        assert!(is_bounded(8192, 65536, 0.10, 1 << 20));
        let five: Vec<Sample> = (1..=5).map(|i| sample(i as f64 * 10.0, 1, 1.0, 0)).collect();
        let (a, b) = halves(&five);
        assert_eq!((a.len(), b.len()), (2, 3));
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some(2.0));
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }
}
