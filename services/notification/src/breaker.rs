//! A circuit breaker: after `failures` consecutive failed calls to a target it opens and
//! refuses calls for `cooldown`, so an outage costs one timeout per cooldown instead of one
//! per message; then it lets a single probe through (half-open). The probe's success
//! closes it, its failure opens it for another cooldown.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    /// The cooldown is over and one probe is out; everybody else waits for its outcome.
    HalfOpen,
}

pub struct Breaker {
    target: &'static str,
    failures: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

/// Permission to make one call. Report the outcome with [`Permit::succeeded`] or
/// [`Permit::failed`]; a probe dropped without an outcome (its call was cancelled) hands
/// the probe on to the next caller instead of leaving the breaker half-open for ever.
#[must_use = "report the call's outcome on the permit"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Breaker {
    /// A closed breaker for `target` (the metric's label) that opens after `failures`
    /// consecutive failures (at least 1) and stays open for `cooldown`.
    pub fn new(target: &'static str, failures: u32, cooldown: Duration) -> Self {
        metrics::gauge!("conveyor_notification_breaker_open", "target" => target).set(0.0);
        Breaker { target, failures: failures.max(1), cooldown, state: Mutex::new(State::Closed { failures: 0 }) }
    }

    /// A permit to call the target, or how long to wait before asking again.
    pub fn permit(&self) -> Result<Permit<'_>, Duration> {
        let mut state = self.state.lock().expect("breaker lock");
        match *state {
            State::Closed { .. } => Ok(Permit { breaker: self, probe: false, reported: false }),
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Err(until - now);
                }
                *state = State::HalfOpen;
                tracing::info!(breaker = self.target, "circuit breaker half-open: probing");
                Ok(Permit { breaker: self, probe: true, reported: false })
            }
            // The probe finishes within its call's timeout; asking again after a cooldown
            // keeps the waiting callers from polling the breaker.
            State::HalfOpen => Err(self.cooldown),
        }
    }

    /// How much longer the circuit stays open (zero while closed, probing, or due to probe).
    /// Cheap: a consumer whose every message goes to this target asks it before each claim
    /// and waits that long, instead of claiming every waiting message only to snooze it.
    pub fn open_for(&self) -> Duration {
        match *self.state.lock().expect("breaker lock") {
            State::Open { until } => until.saturating_duration_since(Instant::now()),
            State::Closed { .. } | State::HalfOpen => Duration::ZERO,
        }
    }

    fn set(&self, state: &mut State, next: State) {
        let was_closed = matches!(state, State::Closed { .. });
        let closed = matches!(next, State::Closed { .. });
        *state = next;
        if was_closed != closed {
            metrics::gauge!("conveyor_notification_breaker_open", "target" => self.target).set(if closed { 0.0 } else { 1.0 });
        }
    }

    fn succeeded(&self) {
        let mut state = self.state.lock().expect("breaker lock");
        if !matches!(*state, State::Closed { .. }) {
            tracing::info!(breaker = self.target, "circuit breaker closed: the target answers again");
        }
        // Any answer shows the target is back, also one to a call made before the breaker opened.
        self.set(&mut state, State::Closed { failures: 0 });
    }

    fn failed(&self, probe: bool) {
        let mut state = self.state.lock().expect("breaker lock");
        let until = Instant::now() + self.cooldown;
        match *state {
            State::Closed { failures } if failures + 1 >= self.failures => {
                tracing::warn!(breaker = self.target, failures = failures + 1, cooldown_ms = self.cooldown.as_millis() as u64, "circuit breaker open");
                self.set(&mut state, State::Open { until });
            }
            State::Closed { failures } => self.set(&mut state, State::Closed { failures: failures + 1 }),
            State::HalfOpen if probe => {
                tracing::warn!(breaker = self.target, cooldown_ms = self.cooldown.as_millis() as u64, "circuit breaker probe failed: open again");
                self.set(&mut state, State::Open { until });
            }
            // A call from before the breaker opened, failing late: the cooldown already runs.
            State::HalfOpen | State::Open { .. } => {}
        }
    }

    /// A probe that ended without an outcome: the next caller probes at once.
    fn abandoned(&self) {
        let mut state = self.state.lock().expect("breaker lock");
        if *state == State::HalfOpen {
            *state = State::Open { until: Instant::now() };
        }
    }
}

impl Permit<'_> {
    pub fn succeeded(mut self) {
        self.reported = true;
        self.breaker.succeeded();
    }

    pub fn failed(mut self) {
        self.reported = true;
        self.breaker.failed(self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.breaker.abandoned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_millis(200);

    fn fail(b: &Breaker) {
        b.permit().expect("a permit").failed();
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_only() {
        let b = Breaker::new("test", 3, COOLDOWN);
        fail(&b);
        fail(&b);
        b.permit().unwrap().succeeded();
        fail(&b);
        fail(&b);
        assert!(b.permit().is_ok(), "a success resets the count");
        fail(&b);
        assert_eq!(b.permit().err(), Some(COOLDOWN));
        tokio::time::advance(Duration::from_millis(150)).await;
        assert_eq!(b.permit().err(), Some(Duration::from_millis(50)), "callers learn the remaining cooldown");
    }

    #[tokio::test(start_paused = true)]
    async fn open_for_is_the_remaining_cooldown_and_zero_once_a_call_may_go() {
        let b = Breaker::new("test", 1, COOLDOWN);
        assert_eq!(b.open_for(), Duration::ZERO, "closed");
        fail(&b);
        assert_eq!(b.open_for(), COOLDOWN);
        tokio::time::advance(Duration::from_millis(150)).await;
        assert_eq!(b.open_for(), Duration::from_millis(50));
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(b.open_for(), Duration::ZERO, "due to probe");
        let probe = b.permit().expect("the probe");
        assert_eq!(b.open_for(), Duration::ZERO, "probing: claims go on, copies are snoozed by permit()");
        probe.failed();
        assert_eq!(b.open_for(), COOLDOWN, "a failed probe opens it again");
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_probe_through_and_its_success_closes() {
        let b = Breaker::new("test", 1, COOLDOWN);
        fail(&b);
        tokio::time::advance(COOLDOWN).await;
        let probe = b.permit().expect("the probe");
        assert_eq!(b.permit().err(), Some(COOLDOWN), "one probe at a time");
        probe.succeeded();
        assert!(b.permit().is_ok());
        b.permit().expect("closed").succeeded();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_a_full_cooldown() {
        let b = Breaker::new("test", 2, COOLDOWN);
        fail(&b);
        fail(&b);
        tokio::time::advance(COOLDOWN).await;
        b.permit().expect("the probe").failed();
        assert_eq!(b.permit().err(), Some(COOLDOWN));
        tokio::time::advance(COOLDOWN).await;
        b.permit().expect("the next probe").succeeded();
        assert!(b.permit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn late_outcomes_and_abandoned_probes_do_not_wedge_it() {
        let b = Breaker::new("test", 1, COOLDOWN);
        let early = b.permit().unwrap();
        let late = b.permit().unwrap();
        early.failed();
        tokio::time::advance(Duration::from_millis(100)).await;
        late.failed();
        assert_eq!(b.permit().err(), Some(Duration::from_millis(100)), "a late failure does not extend the cooldown");
        tokio::time::advance(Duration::from_millis(100)).await;
        drop(b.permit().expect("a probe, then cancelled"));
        let probe = b.permit().expect("the abandoned probe is handed on");
        assert_eq!(b.permit().err(), Some(COOLDOWN));
        drop(probe);
        b.permit().expect("handed on again").succeeded();
        assert!(b.permit().is_ok());
    }
}
