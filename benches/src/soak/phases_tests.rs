use super::*;
use crate::soak::ProbeReading;
use crate::soak::fixtures::sample;

/// Nine 10 s windows; the hold from 30 s to 60 s.
fn plan() -> HoldPlan {
    HoldPlan { start_s: 30.0, end_s: 60.0 }
}

/// `consumed` per window, backlog, probe entries and the inbox claim index's counters
/// (scans and entries added in each window) given per sample.
fn run(consumed: [u64; 9], backlog: [i64; 9], probe: [i64; 9], per_scan: [i64; 9]) -> Vec<Sample> {
    let (mut scans, mut entries) = (0, 0);
    (0..9)
        .map(|i| {
            let mut s = sample((i + 1) as f64 * 10.0, consumed[i], 10.0, 0);
            s.backlog = backlog[i];
            s.held = (3..6).contains(&i);
            s.hold_xmin_age = s.held.then_some(100 * i as i64);
            s.probes = vec![ProbeReading { name: "inbox claim".into(), entries_read: probe[i], rows: 50, ms: 1.0 }];
            scans += 100;
            entries += 100 * per_scan[i];
            s.tables[0].indexes.push(crate::soak::IndexSize { name: "inbox_claim_idx".into(), bytes: 8192, scans, entries_read: entries });
            s
        })
        .collect()
}

fn claim() -> Vec<ClaimIndex> {
    vec![ClaimIndex { table: "inbox".into(), index: "inbox_claim_idx".into(), read_by: "claims".into() }]
}

#[test]
fn the_samples_split_into_before_during_and_after_without_the_warm_up() {
    let s = run([1000; 9], [0; 9], [0; 9], [1; 9]);
    let [a, b, c] = split(&s, &plan());
    assert_eq!((a, b, c), (1..3, 3..6, 6..9));
    assert_eq!(phase_of(&s[2], &plan()), Phase::Before, "the window ending at the hold's start");
    assert_eq!(phase_of(&s[5], &plan()), Phase::During, "the window ending at its end");
    // Interrupted during the hold: no after-phase.
    assert_eq!(split(&s[..5], &plan()), [1..3, 3..5, 5..5]);
}

#[test]
fn a_hold_that_costs_nothing_meets_every_target() {
    let s = run([1000, 1000, 1000, 980, 990, 1000, 1000, 1000, 1000], [5, 40, 30, 35, 50, 20, 10, 40, 30], [400; 9], [2, 2, 2, 9, 9, 9, 2, 2, 2]);
    let lat = [Percentiles::of(&[1.0, 10.0]), Percentiles::of(&[1.0, 15.0]), Percentiles::of(&[1.0, 9.0])];
    let h = summarize(&s, &plan(), HoldTargets::default(), &lat, &claim(), 50);
    let (before, during) = (&h.phases[0], &h.phases[1]);
    assert_eq!((before.samples, during.samples, h.phases[2].samples), (2, 3, 3));
    assert_eq!((before.from_s, before.to_s, during.from_s, during.to_s), (10.0, 30.0, 30.0, 60.0));
    assert_eq!((before.msgs_per_sec, during.msgs_per_sec), (Some(100.0), Some(99.0)));
    assert!((h.throughput_ratio.unwrap() - 0.99).abs() < 1e-12);
    assert_eq!(h.throughput_met, Some(true));
    assert_eq!((before.p99_ms, during.p99_ms, h.p99_ratio, h.p99_met), (Some(10.0), Some(15.0), Some(1.5), Some(true)));
    assert!(before.whole_phase_latency);
    // Level: the largest backlog before (40), at least the given 50; the end's 20 is below.
    assert_eq!((h.backlog_level, h.caught_up_after_s, h.catch_up_met), (50, Some(0.0), Some(true)));
    assert_eq!((h.xmin_held, h.max_xmin_age), (Some(true), Some(500)));
    let probe = &h.claim[0];
    assert_eq!((probe.before, probe.early_hold, probe.late_hold, probe.flat), (Some(400.0), Some(400.0), Some(400.0), Some(true)));
    let index = &h.claim[1];
    assert_eq!(index.name, "inbox.inbox_claim_idx (per scan)");
    assert_eq!((index.before, index.early_hold, index.after, index.flat), (Some(2.0), Some(9.0), Some(2.0), None));
    assert_eq!(during.indexes[0].scans_per_sec, Some(10.0));
    assert_eq!(during.indexes[0].entries_per_scan, Some(9.0));
}

#[test]
fn a_hold_that_slows_the_claims_misses_and_says_why() {
    // The claims walk more and more dead entries; throughput and p99 suffer; the backlog
    // drains 20 s after the hold.
    let s = run(
        [1000, 1000, 1000, 900, 700, 500, 1500, 1200, 1000],
        [10, 30, 30, 1000, 4000, 9000, 3000, 30, 20],
        [5, 5, 5, 1000, 5000, 9000, 9000, 5, 5],
        [1; 9],
    );
    let h = summarize(&s, &plan(), HoldTargets::default(), &[], &claim(), 50);
    assert!((h.throughput_ratio.unwrap() - 0.7).abs() < 1e-12);
    assert_eq!(h.throughput_met, Some(false));
    assert!(!h.phases[1].whole_phase_latency, "the windows' mean stands in for older reports");
    assert_eq!((h.caught_up_after_s, h.catch_up_met), (Some(20.0), Some(true)));
    let probe = &h.claim[0];
    assert_eq!((probe.early_hold, probe.late_hold, probe.growth, probe.flat), (Some(1000.0), Some(9000.0), Some(9.0), Some(false)));
    assert_eq!(probe.after, Some((9000.0 + 5.0 + 5.0) / 3.0));
}

#[test]
fn a_backlog_not_back_by_the_end_misses_only_when_the_target_s_time_was_watched() {
    let mut s = run([1000; 9], [10, 10, 10, 500, 900, 900, 900, 900, 900], [0; 9], [1; 9]);
    let targets = HoldTargets::default();
    // 30 s watched after the hold, target 60 s: cannot tell.
    let h = summarize(&s, &plan(), targets, &[], &claim(), 10);
    assert_eq!((h.caught_up_after_s, h.catch_up_met), (None, None));
    // 30 s watched, target 20 s: missed.
    let h = summarize(&s, &plan(), HoldTargets { catch_up_s: 20.0, ..targets }, &[], &claim(), 10);
    assert_eq!(h.catch_up_met, Some(false));
    // Back 30 s after the end: later than a 20 s target, within 60 s.
    s[8].backlog = 5;
    assert_eq!(catch_up_s(&s, 60.0, 10), Some(30.0));
    assert_eq!(summarize(&s, &plan(), targets, &[], &claim(), 10).catch_up_met, Some(true));
    // A held window whose check found no snapshot.
    s[4].hold_xmin_age = None;
    assert_eq!(summarize(&s, &plan(), targets, &[], &claim(), 10).xmin_held, Some(false));
}
