//! Fault injection for demos and chaos tests: the simulated processor can be slow, fail
//! (the message is retried) or decline, each at a configured rate.

use std::time::Duration;

use conveyor_platform::config::parse_duration;
use conveyor_queue::HandlerError;
use rand::Rng;

/// What the simulated processor does besides following the rules. All off by default.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct Faults {
    /// Fraction of payments (0 to 1) declined as if by the card issuer.
    #[arg(long, env = "PAYMENT_DECLINE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub decline_rate: f64,
    /// Fraction of attempts (0 to 1) that fail with a processor error before writing
    /// anything; the message is retried.
    #[arg(long, env = "PAYMENT_ERROR_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,
    /// How long the processor takes to answer (e.g. 200ms). The handler waits inside its
    /// transaction, as a real processor call in this position would hold it.
    #[arg(long, env = "PAYMENT_LATENCY", default_value = "0ms", value_parser = parse_duration)]
    pub latency: Duration,
}

/// The reason of a simulated decline.
pub const ISSUER_DECLINE: &str = "declined by the card issuer (simulated)";

impl Faults {
    /// Plays the processor's part: waits, then fails the attempt (`Err`), declines
    /// (`Ok(Some(reason))`) or lets the payment go ahead (`Ok(None)`).
    pub async fn apply(&self) -> Result<Option<&'static str>, HandlerError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let (error, decline) = {
            let mut rng = rand::rng();
            (rng.random_bool(self.error_rate), rng.random_bool(self.decline_rate))
        };
        if error {
            return Err(HandlerError::retry(anyhow::anyhow!("simulated processor error")));
        }
        Ok(decline.then_some(ISSUER_DECLINE))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("{s:?} is not a rate: give a number from 0 to 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_fractions() {
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        assert_eq!(parse_rate("1"), Ok(1.0));
        for bad in ["-0.1", "1.5", "NaN", "often", ""] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
