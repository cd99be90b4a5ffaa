//! Fault injection for demos and chaos runs, switched while the shop runs (docs/faults.md):
//! the simulated processor can be slow, fail (the message is retried) or decline, each as
//! its flag says. The flags live in the payment database (`conveyor_platform::faults`); an
//! operator sets them with `PATCH /admin/faults` or `cargo xtask fault set payment.…`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use conveyor_platform::faults::{Faults, Flag};
use conveyor_queue::HandlerError;
use rand::Rng;

/// The payment service's fault flags; all 0 (off) unless an operator sets them.
pub static FLAGS: [Flag; 3] = [
    Flag {
        name: "decline_rate",
        description: "Fraction of payments (0 to 1) declined as if by the card issuer; the order is cancelled.",
        min: 0.0,
        max: 1.0,
        integer: false,
    },
    Flag {
        name: "error_rate",
        description: "Fraction of capture attempts (0 to 1) failing with a processor error before anything is written; the message is retried.",
        min: 0.0,
        max: 1.0,
        integer: false,
    },
    Flag {
        name: "latency_ms",
        description: "The simulated processor answers this many milliseconds (0 to 60000) after the message was published; until then the message waits in the inbox, holding no transaction.",
        min: 0.0,
        max: 60_000.0,
        integer: true,
    },
];

/// The reason of a simulated decline.
pub const ISSUER_DECLINE: &str = "declined by the card issuer (simulated)";

/// What the simulated processor does with one attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Not answered yet: look again after this long.
    Wait(Duration),
    /// A processor error: the attempt fails and is retried.
    Fail,
    /// The issuer declines.
    Decline,
    /// The payment goes ahead under the usual rules.
    Proceed,
}

/// The flags' values at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Settings {
    pub decline_rate: f64,
    pub error_rate: f64,
    pub latency: Duration,
}

impl Settings {
    pub fn of(faults: &Faults) -> Self {
        Settings { decline_rate: faults.get("decline_rate"), error_rate: faults.get("error_rate"), latency: faults.millis("latency_ms") }
    }

    /// The verdict on an attempt at a message published `age` ago, given two uniform draws
    /// in [0, 1) (`error`, `decline`): pure, so the rules are tested without chance.
    pub fn decide(&self, age: Duration, error: f64, decline: f64) -> Verdict {
        if age < self.latency {
            return Verdict::Wait(self.latency - age);
        }
        if error < self.error_rate {
            return Verdict::Fail;
        }
        if decline < self.decline_rate {
            return Verdict::Decline;
        }
        Verdict::Proceed
    }
}

/// Plays the processor's part for a message published at `published_at`: snoozes it (not
/// an attempt, no transaction held) until the latency has passed, then fails the attempt
/// (`Err`), declines (`Ok(Some(reason))`) or lets the payment go ahead (`Ok(None)`).
pub fn apply(faults: &Faults, published_at: DateTime<Utc>) -> Result<Option<&'static str>, HandlerError> {
    let settings = Settings::of(faults);
    if settings == Settings::default() {
        return Ok(None);
    }
    let age = (Utc::now() - published_at).to_std().unwrap_or_default();
    let (error, decline) = {
        let mut rng = rand::rng();
        (rng.random::<f64>(), rng.random::<f64>())
    };
    match settings.decide(age, error, decline) {
        Verdict::Wait(left) => Err(HandlerError::snooze(left, anyhow::anyhow!("simulated processor latency: the answer comes in {} ms", left.as_millis()))),
        Verdict::Fail => Err(HandlerError::retry(anyhow::anyhow!("simulated processor error"))),
        Verdict::Decline => Ok(Some(ISSUER_DECLINE)),
        Verdict::Proceed => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_processor_waits_then_fails_then_declines_as_the_flags_say() {
        let ms = Duration::from_millis;
        let off = Settings::default();
        assert_eq!(off.decide(ms(0), 0.0, 0.0), Verdict::Proceed);
        let slow = Settings { latency: ms(500), ..off };
        assert_eq!(slow.decide(ms(200), 0.0, 0.0), Verdict::Wait(ms(300)));
        assert_eq!(slow.decide(ms(500), 0.0, 0.0), Verdict::Proceed);
        let failing = Settings { error_rate: 0.25, decline_rate: 1.0, ..off };
        assert_eq!(failing.decide(ms(0), 0.2, 0.9), Verdict::Fail);
        assert_eq!(failing.decide(ms(0), 0.3, 0.9), Verdict::Decline);
        let declining = Settings { decline_rate: 0.5, ..off };
        assert_eq!(declining.decide(ms(0), 0.0, 0.49), Verdict::Decline);
        assert_eq!(declining.decide(ms(0), 0.0, 0.5), Verdict::Proceed);
        // Latency comes first: a declined payment is declined after the wait too.
        assert_eq!(Settings { latency: ms(10), ..declining }.decide(ms(0), 0.0, 0.0), Verdict::Wait(ms(10)));
    }

    #[test]
    fn the_flags_are_declared_with_their_ranges() {
        let flag = |name| conveyor_platform::faults::find(&FLAGS, name).unwrap();
        assert!(flag("decline_rate").check(1.0).is_ok() && flag("decline_rate").check(1.01).is_err());
        assert!(flag("error_rate").check(-0.1).is_err());
        assert!(flag("latency_ms").check(60_000.0).is_ok() && flag("latency_ms").check(60_001.0).is_err());
        assert!(flag("latency_ms").check(1.5).is_err());
    }
}
