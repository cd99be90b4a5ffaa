use super::*;
use crate::soak::fixtures::{sample, settings};
use crate::soak::{HoldPlan, ProbeReading};

fn consistency() -> Consistency {
    Consistency {
        published: 10_000,
        handled: 10_000,
        left_after_drain: 0,
        outbox_after: 0,
        inbox_pending_after: 0,
        dead_after: 0,
        publish_errors: 0,
        missed_offers: 0,
    }
}

fn report(cfg: Settings, runs: Vec<(System, Vec<Sample>)>) -> Report {
    let runs = runs
        .into_iter()
        .map(|(system, samples)| {
            let version = (system == System::Pgmq).then(|| "1.11.0".to_owned());
            Run::new(system, version, Vec::new(), false, consistency(), Vec::new(), samples, &cfg, 0.0)
        })
        .collect();
    Report {
        generated_unix: 0,
        machine: Machine::detect(),
        postgres: ServerInfo {
            version: "PostgreSQL 15.18 on x86_64-pc-linux-gnu".into(),
            settings: [("autovacuum_naptime".to_owned(), "60 (s)".to_owned())].into(),
            table_options: [("conveyor.inbox".to_owned(), vec!["fillfactor=90".to_owned()])].into(),
        },
        settings: cfg,
        interrupted: false,
        runs,
    }
}

fn flat() -> Vec<Sample> {
    (1..=10).map(|i| sample(i as f64 * 10.0, 1000, 10.0, 100)).collect()
}

#[test]
fn the_markdown_states_the_verdicts_and_the_files_are_written() {
    let r = report(settings(), vec![(System::Ours, flat())]);
    let md = markdown(&r);
    for text in [
        "## ours\n",
        "end ÷ start = **1.000** (target ≥ 0.90: **met**)",
        "**inbox size**: largest 10.0 MB over the first half, 10.0 MB over the second (×1.00)",
        "bounded **yes**",
        "**Every message through**: 10,000 published, 10,000 handled",
        "Autovacuum ran 5 on the inbox in 100 s. autovacuum_naptime = 60 (s)",
        "| inbox.inbox_pkey | 2.5 MB | 2.5 MB | 2.5 MB |",
        "conveyor.inbox options: fillfactor=90.",
        "PostgreSQL 15.18 (test)",
        "| t (s) | handled/s | published/s | p50 / p99 ms | backlog | inbox size / dead tuples | WAL MB/s |",
        "| 50 | 100 | 100 | 2.0 / 10.0 | 0 | 10.0 MB / 100 | 0.1 |",
    ] {
        assert!(md.contains(text), "{text:?} missing from:\n{md}");
    }
    assert!(!md.contains("QUICK") && !md.contains("Interrupted") && !md.contains("Held xmin horizon"));
    assert_eq!(r.postgres.naptime_s(), Some(60.0));

    let dir = std::env::temp_dir().join(format!("soak-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let w = write(&dir, &r).unwrap();
    let back: Report = serde_json::from_str(&std::fs::read_to_string(&w.json).unwrap()).unwrap();
    assert_eq!(back, r);
    let svg = std::fs::read_to_string(&w.svg).unwrap();
    for title in ["Throughput", "p99", "Claim probe", "entries read per scan", "Queue table size", "Dead tuples", "Backlog"] {
        assert!(svg.contains(title), "{title} missing from the SVG");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_missed_target_and_a_lost_message_say_so() {
    let mut samples = flat();
    samples[9].consumed = 500;
    let mut r = report(settings(), vec![(System::Ours, samples)]);
    r.runs[0].consistency.inbox_pending_after = 3;
    r.interrupted = true;
    let md = markdown(&r);
    assert!(md.contains("**MISSED**") && md.contains(": **NO**.") && md.contains("Interrupted"), "{md}");
}

/// Ten 10 s windows, held from 30 s to 70 s: the probe reads `held_entries(window)` while held.
fn held(consumed_held: u64, held_entries: fn(usize) -> i64, table: &str) -> Vec<Sample> {
    (0..10)
        .map(|i| {
            let is_held = (3..7).contains(&i);
            let mut s = sample((i + 1) as f64 * 10.0, if is_held { consumed_held } else { 1000 }, 10.0, if is_held { 50_000 } else { 100 });
            s.tables[0].name = table.into();
            s.held = is_held;
            s.hold_xmin_age = is_held.then_some(1234);
            let entries = if is_held { held_entries(i) } else { 60 };
            s.probes = vec![ProbeReading { name: format!("{table} claim"), entries_read: entries, rows: 50, ms: 0.5 }];
            s
        })
        .collect()
}

#[test]
fn the_hold_section_sets_the_systems_side_by_side() {
    let cfg = Settings { hold: Some(HoldPlan { start_s: 30.0, end_s: 70.0 }), systems: vec![System::Ours, System::Pgmq], ..settings() };
    let ours = held(1000, |_| 400, "inbox");
    let pgmq = held(700, |i| 2000 * i as i64, "q_soak");
    let r = report(cfg, vec![(System::Ours, ours), (System::Pgmq, pgmq)]);
    let md = markdown(&r);
    for text in [
        "## Held xmin horizon",
        "From t = 30 s to 70 s (40 s, centred in the 100 s run)",
        "| target | ours | pgmq 1.11.0 |",
        "| throughput held ÷ before ≥ 0.95 | 1.000 met | 0.700 **MISSED** |",
        "| p99 held ÷ before ≤ 2.0 | 1.00 met | 1.00 met |",
        "inbox claim 400 → 400 flat",
        "q_soak claim 6,000 → 12,000 **GROWS**",
        "| snapshot held (backend_xmin set at every held sample) | yes (horizon held back by up to 1,234 transactions) |",
        "| phase | ours before | ours held | ours after | pgmq before | pgmq held | pgmq after |",
        "| t (s) | 10–30 | 30–70 | 70–100 | 10–30 | 30–70 | 70–100 |",
        "| handled msgs/s | 100 | 100 | 100 | 100 | 70 | 100 |",
        "| inbox dead tuples max / at end | 100 / 100 | 50,000 / 50,000 | 100 / 100 |  |  |  |",
        "| q_soak dead tuples max / at end |  |  |  | 100 / 100 | 50,000 / 50,000 | 100 / 100 |",
        "| inbox claim probe: entries per claim mean / max (ms) | 60 / 60 (0.5) | 400 / 400 (0.5) | 60 / 60 (0.5) |",
        "## pgmq 1.11.0",
        "| 40 held |",
    ] {
        assert!(md.contains(text), "{text:?} missing from:\n{md}");
    }
}
