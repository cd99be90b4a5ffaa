//! Carries a round's plan out against the running stack: SIGKILLs and starts processes,
//! crash-restarts PostgreSQL, switches fault flags, each at its time, and writes down what
//! happened. A process that exits without being killed (say, when PostgreSQL went away) is
//! noted and started again, as a supervisor would.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Result;
use conveyor_devpg::PgCluster;
use serde_json::json;

use super::{Action, Step, TimelineEntry, flag_services};
use crate::{Shop, Stack, process_names};

/// A flag switch that fails (its API is down, PostgreSQL restarts) is tried again this much
/// later, this many times at most.
const FLAG_RETRY: Duration = Duration::from_secs(1);
const FLAG_ATTEMPTS: u32 = 30;

/// What was injected, in numbers.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Injected {
    pub kills: u64,
    /// Processes started again (after a kill, or after exiting on their own).
    pub restarts: u64,
    pub pg_restarts: u64,
    /// Flag switches, on and off.
    pub flag_switches: u64,
    /// Processes that exited without being killed.
    pub unexpected_exits: u64,
    /// Actions that failed for good (each is in the timeline with its error; a flag switch
    /// tried again later counts only if its last attempt failed).
    pub failed: u64,
}

pub struct Injector<'a> {
    stack: &'a mut Stack,
    pg: Option<&'a PgCluster>,
    shop: Shop,
    /// Hears each timeline entry as it happens.
    say: &'a (dyn Fn(&str) + Sync),
    /// When the run began: every entry's `t_s` counts from here.
    epoch: Instant,
    pub timeline: Vec<TimelineEntry>,
    pub injected: Injected,
}

impl<'a> Injector<'a> {
    /// `pg`: the private cluster to crash-restart; `None` when the server is not ours (a
    /// [`Action::PgRestart`] then fails, so leave that kind out of the plan).
    pub fn new(
        stack: &'a mut Stack,
        pg: Option<&'a PgCluster>,
        epoch: Instant,
        say: &'a (dyn Fn(&str) + Sync),
    ) -> Self {
        let shop = stack.shop();
        Injector {
            stack,
            pg,
            shop,
            say,
            epoch,
            timeline: Vec::new(),
            injected: Injected::default(),
        }
    }

    /// Performs `steps` at their times after now (a step whose time has passed, because the
    /// one before took long, runs at once).
    pub async fn play(&mut self, round: u32, steps: &[Step]) {
        let start = tokio::time::Instant::now();
        let mut queue: VecDeque<(Duration, Action, u32)> =
            steps.iter().map(|s| (s.at, s.action.clone(), 1)).collect();
        while let Some((at, action, attempt)) = queue.pop_front() {
            tokio::time::sleep_until(start + at).await;
            let retry = matches!(action, Action::SetFlag { .. }) && attempt < FLAG_ATTEMPTS;
            let t = Instant::now();
            match self.act(&action).await {
                Ok(()) => {
                    self.note(Some(round), action.to_string(), t, None);
                    // Off now: a retry of switching it on, still waiting, is moot.
                    if let Action::SetFlag {
                        service,
                        flag,
                        value: 0.0,
                    } = &action
                    {
                        queue.retain(|(_, a, n)| !(*n > 1 && matches!(a, Action::SetFlag { service: s, flag: f, .. } if s == service && f == flag)));
                    }
                }
                Err(e) if retry => {
                    self.note(
                        Some(round),
                        action.to_string(),
                        t,
                        Some(format!("{e:#} (trying again in {FLAG_RETRY:?})")),
                    );
                    let again = start.elapsed() + FLAG_RETRY;
                    let i = queue
                        .iter()
                        .position(|(t, _, _)| *t > again)
                        .unwrap_or(queue.len());
                    queue.insert(i, (again, action, attempt + 1));
                }
                Err(e) => {
                    self.injected.failed += 1;
                    self.note(Some(round), action.to_string(), t, Some(format!("{e:#}")));
                }
            }
            self.supervise(Some(round)).await;
        }
    }

    /// Does one action and notes it in the timeline; whether it worked (a failure is
    /// counted in [`Injected::failed`]).
    pub async fn perform(&mut self, round: Option<u32>, action: &Action) -> bool {
        let t = Instant::now();
        let result = self.act(action).await;
        self.injected.failed += u64::from(result.is_err());
        self.note(
            round,
            action.to_string(),
            t,
            result.as_ref().err().map(|e| format!("{e:#}")),
        );
        result.is_ok()
    }

    async fn act(&mut self, action: &Action) -> Result<()> {
        match action {
            Action::Kill { process } => self
                .stack
                .kill(process)
                .await
                .map(|()| self.injected.kills += 1),
            Action::Start { process } => self
                .stack
                .start_process(process)
                .await
                .map(|()| self.injected.restarts += 1),
            Action::PgRestart => match self.pg {
                // pg_ctl blocks; the driver runs on another task, which the runtime moves
                // to its other thread meanwhile.
                Some(pg) => tokio::task::block_in_place(|| pg.restart_immediate())
                    .map(|()| self.injected.pg_restarts += 1),
                None => Err(anyhow::anyhow!(
                    "PostgreSQL is not a private cluster of this run"
                )),
            },
            Action::SetFlag {
                service,
                flag,
                value,
            } => set_flag(&self.shop, service, flag, *value)
                .await
                .map(|()| self.injected.flag_switches += 1),
        }
    }

    /// Starts again every process that exited on its own since the last look.
    pub async fn supervise(&mut self, round: Option<u32>) {
        for (name, status) in self.stack.take_exited() {
            self.injected.unexpected_exits += 1;
            self.note(
                round,
                format!("{name} exited on its own ({status})"),
                Instant::now(),
                None,
            );
            self.perform(round, &Action::Start { process: name }).await;
        }
    }

    /// Every process of the stack running again (started if it is not), and (with
    /// `flags`) every fault flag off; fails, saying what, if that cannot be done within
    /// `limit`.
    pub async fn restore(&mut self, flags: bool, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let mut to_clear = if flags { flag_services() } else { Vec::new() };
        loop {
            self.supervise(None).await;
            let mut missing = Vec::new();
            for name in process_names() {
                if self.stack.pid(&name).is_none()
                    && !self
                        .perform(
                            None,
                            &Action::Start {
                                process: name.clone(),
                            },
                        )
                        .await
                {
                    missing.push(name);
                }
            }
            let mut failed = Vec::new();
            for service in std::mem::take(&mut to_clear) {
                let t = Instant::now();
                match self.shop.clear_faults(service).await {
                    Ok(()) => self.note(None, format!("{service}: every flag off"), t, None),
                    Err(e) => failed.push((service, t, format!("{e:#}"))),
                }
            }
            if missing.is_empty() && failed.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let flags: Vec<&str> = failed.iter().map(|(s, _, _)| *s).collect();
                for (service, t, e) in failed {
                    self.note(None, format!("{service}: every flag off"), t, Some(e));
                }
                anyhow::bail!(
                    "within {limit:?}: not running {missing:?}, flags not cleared on {flags:?}"
                );
            }
            to_clear = failed.into_iter().map(|(s, _, _)| s).collect();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn note(&mut self, round: Option<u32>, what: String, started: Instant, error: Option<String>) {
        let t_s = started.duration_since(self.epoch).as_secs_f64();
        let failed = error
            .as_deref()
            .map(|e| format!("  FAILED: {}", e.lines().next().unwrap_or("")))
            .unwrap_or_default();
        (self.say)(&format!("  {t_s:>7.1} s  {what}{failed}"));
        self.timeline.push(TimelineEntry {
            round,
            t_s: round3(started.duration_since(self.epoch).as_secs_f64()),
            what,
            took_ms: started.elapsed().as_millis() as u64,
            error,
        });
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One flag of `service` (`PATCH /admin/faults`).
async fn set_flag(shop: &Shop, service: &str, flag: &str, value: f64) -> Result<()> {
    shop.set_faults(service, &json!({ flag: value }))
        .await
        .map(drop)
}
