//! The plan's properties: repeatable from its seed, every fault comes up, all undone.

use super::*;

fn plan(seed: u64, round: u32, secs: u64, kinds: &[FaultKind]) -> Vec<Step> {
    schedule(
        seed,
        round,
        Duration::from_secs(secs),
        kinds,
        &Pace::default(),
    )
}

#[test]
fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
    for seed in [0, 1, 42, u64::MAX] {
        assert_eq!(
            plan(seed, 0, 60, &FaultKind::ALL),
            plan(seed, 0, 60, &FaultKind::ALL)
        );
        assert_ne!(
            plan(seed, 0, 60, &FaultKind::ALL),
            plan(seed.wrapping_add(1), 0, 60, &FaultKind::ALL)
        );
        assert_ne!(
            plan(seed, 0, 60, &FaultKind::ALL),
            plan(seed, 1, 60, &FaultKind::ALL),
            "each round its own plan"
        );
    }
    // The order of --faults does not matter.
    let mut reversed = FaultKind::ALL;
    reversed.reverse();
    assert_eq!(plan(7, 0, 60, &FaultKind::ALL), plan(7, 0, 60, &reversed));
}

#[test]
fn every_kind_of_fault_and_every_flag_comes_up_in_a_few_minutes() {
    for seed in 0..50 {
        let steps = plan(seed, 0, 240, &FaultKind::ALL);
        let has = |f: &dyn Fn(&Action) -> bool| steps.iter().any(|s| f(&s.action));
        assert!(
            has(&|a| matches!(a, Action::Kill { process } if process.ends_with("-worker"))),
            "seed {seed}: no worker killed"
        );
        assert!(
            has(&|a| matches!(a, Action::Kill { process } if process.ends_with("-api"))),
            "seed {seed}: no API killed"
        );
        assert!(
            has(&|a| *a == Action::PgRestart),
            "seed {seed}: no PostgreSQL restart"
        );
        assert!(
            has(&|a| matches!(a, Action::SetFlag { value, .. } if *value > 0.0)),
            "seed {seed}: no flag"
        );
    }
    // Over many rounds, every process and every flag.
    let all: Vec<Step> = (0..20)
        .flat_map(|r| plan(3, r, 60, &FaultKind::ALL))
        .collect();
    for p in targets(FaultKind::KillWorkers)
        .into_iter()
        .chain(targets(FaultKind::KillApis))
    {
        assert!(
            all.iter()
                .any(|s| s.action == Action::Kill { process: p.clone() }),
            "{p} never killed"
        );
    }
    for f in FLAGS {
        assert!(all.iter().any(|s| matches!(&s.action, Action::SetFlag { flag, value, .. } if flag == f.flag && *value >= f.low && *value <= f.high)), "{} never on", f.flag);
    }
    // One minute, the default round: a few of each on average.
    let minute: Vec<usize> = (0..100)
        .map(|seed| {
            plan(seed, 0, 60, &FaultKind::ALL)
                .iter()
                .filter(|s| {
                    !matches!(s.action, Action::Start { .. })
                        && !matches!(s.action, Action::SetFlag { value, .. } if value == 0.0)
                })
                .count()
        })
        .collect();
    let mean = minute.iter().sum::<usize>() as f64 / minute.len() as f64;
    assert!((7.0..=14.0).contains(&mean), "{mean} faults a minute");
}

#[test]
fn only_the_chosen_kinds_and_everything_undone_within_the_round() {
    for seed in 0..100 {
        let steps = plan(seed, 2, 60, &[FaultKind::KillApis, FaultKind::Flags]);
        assert!(!steps.is_empty());
        assert!(
            steps.windows(2).all(|w| w[0].at <= w[1].at),
            "in time order"
        );
        assert!(steps.iter().all(|s| s.at <= Duration::from_secs(60)));
        let mut down: Vec<String> = Vec::new();
        let mut on: Vec<String> = Vec::new();
        for s in &steps {
            match &s.action {
                Action::Kill { process } => {
                    assert!(process.ends_with("-api"), "{process}");
                    assert!(!down.contains(process), "{process} killed while down");
                    down.push(process.clone());
                }
                Action::Start { process } => {
                    let i = down
                        .iter()
                        .position(|p| p == process)
                        .expect("started after its kill");
                    down.remove(i);
                }
                Action::SetFlag {
                    service,
                    flag,
                    value,
                } => {
                    let name = format!("{service}.{flag}");
                    if *value == 0.0 {
                        let i = on.iter().position(|p| *p == name).expect("off after on");
                        on.remove(i);
                    } else {
                        assert!(!on.contains(&name), "{name} switched on twice");
                        on.push(name);
                    }
                }
                Action::PgRestart => panic!("PostgreSQL restarts were not chosen"),
            }
        }
        assert!(
            down.is_empty() && on.is_empty(),
            "seed {seed}: left down {down:?}, on {on:?}"
        );
    }
    assert!(plan(1, 0, 60, &[]).is_empty());
    let pg = plan(1, 0, 300, &[FaultKind::PgRestart]);
    assert!(
        pg.windows(2)
            .all(|w| w[1].at - w[0].at >= Pace::default().pg_spacing)
    );
}

#[test]
fn flag_values_are_in_range_and_rounded() {
    for seed in 0..200 {
        for s in plan(seed, 0, 60, &[FaultKind::Flags]) {
            let Action::SetFlag { flag, value, .. } = s.action else {
                unreachable!()
            };
            let range = FLAGS.iter().find(|f| f.flag == flag).unwrap();
            assert!(
                value == 0.0 || (range.low - 1e-9..=range.high + 1e-9).contains(&value),
                "{flag} = {value}"
            );
            let steps = value / range.step;
            assert!((steps - steps.round()).abs() < 1e-6, "{flag} = {value}");
        }
    }
}
