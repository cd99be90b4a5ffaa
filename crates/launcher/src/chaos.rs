//! Chaos: orders driven at a steady rate while processes are SIGKILLed and started again,
//! PostgreSQL is crash-restarted and fault flags are switched; then the faults stop, the
//! shop settles and the audit ([`crate::audit`]) says whether any promise was broken.
//!
//! This module is the plan, a pure function of the seed ([`schedule`]): what happens when
//! in a round. [`orders`] drives the orders (idempotently retried, every accepted id kept),
//! [`inject`] carries the plan out against a running [`crate::Stack`], and [`run`] ties the
//! rounds, the settling and the audit together. `cargo xtask chaos` is a thin shell on top.

pub mod inject;
pub mod orders;
mod report;
mod run;

use std::time::Duration;

use serde::Serialize;

pub use report::{ChaosReport, Counts, RoundReport, Settled, TimelineEntry};
pub use run::{ChaosOptions, run};

/// A kind of fault `--faults` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL a worker, start it again after a short pause.
    KillWorkers,
    /// SIGKILL an API, start it again after a short pause.
    KillApis,
    /// Crash PostgreSQL (`pg_ctl stop -m immediate`) and start it again (crash recovery).
    PgRestart,
    /// Switch a fault flag (payment decline/error/latency, notification receiver down,
    /// stock slowdown) on for a while.
    Flags,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] = [
        FaultKind::KillWorkers,
        FaultKind::KillApis,
        FaultKind::PgRestart,
        FaultKind::Flags,
    ];
}

/// A fault flag chaos switches, with the range its "on" value is drawn from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlagRange {
    pub service: &'static str,
    pub flag: &'static str,
    pub low: f64,
    pub high: f64,
    /// Values are rounded to a multiple of this.
    pub step: f64,
}

/// Every flag of the interface, with values that hurt without stopping the shop.
pub const FLAGS: &[FlagRange] = &[
    FlagRange {
        service: "payment",
        flag: "decline_rate",
        low: 0.2,
        high: 0.8,
        step: 0.1,
    },
    FlagRange {
        service: "payment",
        flag: "error_rate",
        low: 0.2,
        high: 0.6,
        step: 0.1,
    },
    FlagRange {
        service: "payment",
        flag: "latency_ms",
        low: 200.0,
        high: 3000.0,
        step: 100.0,
    },
    FlagRange {
        service: "notification",
        flag: "receiver_down",
        low: 1.0,
        high: 1.0,
        step: 1.0,
    },
    FlagRange {
        service: "stock",
        flag: "slowdown_ms",
        low: 50.0,
        high: 500.0,
        step: 50.0,
    },
];

/// The services with fault flags.
pub fn flag_services() -> Vec<&'static str> {
    let mut s: Vec<&str> = FLAGS.iter().map(|f| f.service).collect();
    s.sort();
    s.dedup();
    s
}

/// One thing the injector does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// SIGKILL a process of the stack (`payment-worker`, `order-api`, …).
    Kill { process: String },
    /// Start a killed process again and wait until it is ready.
    Start { process: String },
    /// `pg_ctl stop -m immediate`, then start again.
    PgRestart,
    /// Set one fault flag (0 switches it off).
    SetFlag {
        service: String,
        flag: String,
        value: f64,
    },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Kill { process } => write!(f, "SIGKILL {process}"),
            Action::Start { process } => write!(f, "start {process}"),
            Action::PgRestart => write!(f, "PostgreSQL immediate stop + start"),
            Action::SetFlag {
                service,
                flag,
                value,
            } if *value == 0.0 => write!(f, "{service}.{flag} off"),
            Action::SetFlag {
                service,
                flag,
                value,
            } => write!(f, "{service}.{flag} = {value}"),
        }
    }
}

/// An action at a time after the start of its round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    #[serde(rename = "at_s", serialize_with = "secs")]
    pub at: Duration,
    #[serde(flatten)]
    pub action: Action,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// How often faults come and how long they last.
#[derive(Debug, Clone, PartialEq)]
pub struct Pace {
    /// Mean time between two faults (gaps are uniform in half to one and a half of it).
    pub mean_gap: Duration,
    /// A killed process stays down for a time uniform in this range.
    pub down: (Duration, Duration),
    /// A flag stays on for a time uniform in this range.
    pub flag_on: (Duration, Duration),
    /// Two PostgreSQL restarts are at least this far apart.
    pub pg_spacing: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            mean_gap: Duration::from_secs(5),
            down: (Duration::from_millis(500), Duration::from_secs(5)),
            flag_on: (Duration::from_secs(3), Duration::from_secs(15)),
            pg_spacing: Duration::from_secs(10),
        }
    }
}

/// A small generator whose sequence is fixed by its seed for good (a run is repeated from
/// its printed seed whatever version of `rand` is in use): SplitMix64, as the saga driver's
/// order picking.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        SeededRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        crate::drive::splitmix64(self.0)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n); 0 when n is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn between(&mut self, (low, high): (Duration, Duration)) -> Duration {
        low + (high.saturating_sub(low)).mul_f64(self.unit())
    }
}

/// The seed of round `round` (from 0) of a run with `seed`.
pub fn round_seed(seed: u64, round: u32) -> u64 {
    crate::drive::splitmix64(seed ^ (u64::from(round) << 32 | 0xc4a0))
}

/// The processes chaos may kill, by kind: every worker, every API (the webhook receiver is
/// the customer's, not ours: `receiver_down` stands for its outages).
pub fn targets(kind: FaultKind) -> Vec<String> {
    let role = match kind {
        FaultKind::KillWorkers => "worker",
        FaultKind::KillApis => "api",
        _ => return Vec::new(),
    };
    conveyor_contracts::service::ALL
        .iter()
        .map(|s| format!("{s}-{role}"))
        .collect()
}

/// The plan of one round of `duration`: every step in time order, a pure function of the
/// arguments. A kill is followed by the start of the same process, a flag switched on by
/// the same flag off, both within the round; a process is not killed again (nor a flag
/// switched again) while it is still down (on).
pub fn schedule(
    seed: u64,
    round: u32,
    duration: Duration,
    kinds: &[FaultKind],
    pace: &Pace,
) -> Vec<Step> {
    let mut rng = SeededRng::new(round_seed(seed, round));
    let mut steps = Vec::new();
    let mut busy: Vec<(String, Duration)> = Vec::new(); // process or flag → until
    let mut last_pg: Option<Duration> = None;
    let mut kinds = kinds.to_vec();
    kinds.sort();
    kinds.dedup();
    let mut t = Duration::ZERO;
    loop {
        t += pace.mean_gap.mul_f64(0.5 + rng.unit());
        if kinds.is_empty() || t >= duration {
            break;
        }
        let kind = kinds[rng.below(kinds.len())];
        let free = |name: &str| !busy.iter().any(|(n, until)| n == name && *until > t);
        match kind {
            FaultKind::KillWorkers | FaultKind::KillApis => {
                let candidates: Vec<String> =
                    targets(kind).into_iter().filter(|p| free(p)).collect();
                if candidates.is_empty() {
                    continue;
                }
                let process = candidates[rng.below(candidates.len())].clone();
                let back = (t + rng.between(pace.down)).min(duration);
                busy.push((process.clone(), back));
                steps.push(Step {
                    at: t,
                    action: Action::Kill {
                        process: process.clone(),
                    },
                });
                steps.push(Step {
                    at: back,
                    action: Action::Start { process },
                });
            }
            FaultKind::PgRestart => {
                if last_pg.is_some_and(|p| t < p + pace.pg_spacing) {
                    continue;
                }
                last_pg = Some(t);
                steps.push(Step {
                    at: t,
                    action: Action::PgRestart,
                });
            }
            FaultKind::Flags => {
                let candidates: Vec<&FlagRange> = FLAGS
                    .iter()
                    .filter(|f| free(&format!("{}.{}", f.service, f.flag)))
                    .collect();
                if candidates.is_empty() {
                    continue;
                }
                let f = candidates[rng.below(candidates.len())];
                let value = ((f.low + (f.high - f.low) * rng.unit()) / f.step).round() * f.step;
                let value = (value * 1000.0).round() / 1000.0;
                let off = (t + rng.between(pace.flag_on)).min(duration);
                busy.push((format!("{}.{}", f.service, f.flag), off));
                let set = |value: f64| Action::SetFlag {
                    service: f.service.into(),
                    flag: f.flag.into(),
                    value,
                };
                steps.push(Step {
                    at: t,
                    action: set(value),
                });
                steps.push(Step {
                    at: off,
                    action: set(0.0),
                });
            }
        }
    }
    // Stable: a start and a kill at the same instant stay in the order they were planned.
    steps.sort_by_key(|s| s.at);
    steps
}

#[cfg(test)]
mod tests;
