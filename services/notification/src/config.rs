//! The worker's own settings: where to deliver, where to look orders up, and how patient
//! to be with each (timeouts, circuit breakers, retries).

use std::time::Duration;

use anyhow::ensure;
use clap::Args;
use conveyor_platform::config::parse_duration;
use conveyor_queue::{LeaseOptions, RetryPolicy};
use reqwest::Url;

#[derive(Debug, Clone, Args)]
pub struct NotifierArgs {
    /// Where notifications are POSTed (JSON, with an `Idempotency-Key` header). Plain http
    /// only: this build has no TLS (put a proxy in front of an https receiver).
    #[arg(long, env = "NOTIFICATION_WEBHOOK_URL", value_parser = parse_http_url)]
    pub webhook_url: Url,
    /// Base URL of the order API, asked for `GET /orders/{id}` (product names, status).
    #[arg(long, env = "ORDER_API_URL", value_parser = parse_http_url)]
    pub order_api_url: Url,
    /// A file holding the bearer token (an operator's) the lookup presents to the order API;
    /// read at each lookup, so it may be rotated in place (a mounted Secret). Without it the
    /// order API refuses the lookup and notifications are rendered from the event alone.
    #[arg(long, env = "ORDER_API_TOKEN_FILE")]
    pub order_api_token_file: Option<std::path::PathBuf>,
    /// How long the order lookup may take before the event's own data is used instead.
    #[arg(long, env = "NOTIFICATION_LOOKUP_TIMEOUT", value_parser = parse_duration, default_value = "2s")]
    pub lookup_timeout: Duration,
    /// How long one webhook POST may take before it counts as failed.
    #[arg(long, env = "NOTIFICATION_WEBHOOK_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub webhook_timeout: Duration,
    /// Consecutive failures that open a circuit breaker (the webhook's, and the order
    /// lookup's: each has its own, with these settings).
    #[arg(long, env = "NOTIFICATION_BREAKER_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before it lets one probe through.
    #[arg(long, env = "NOTIFICATION_BREAKER_COOLDOWN", value_parser = parse_duration, default_value = "10s")]
    pub breaker_cooldown: Duration,
    /// Delivery attempts per notification before its message is dead. Waiting out an open
    /// breaker does not use attempts up.
    #[arg(long, env = "NOTIFICATION_MAX_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub max_attempts: i32,
    /// Wait after the first failed attempt; it doubles with each further one.
    #[arg(long, env = "NOTIFICATION_RETRY_BASE", value_parser = parse_duration, default_value = "1s")]
    pub retry_base: Duration,
    /// Longest wait between attempts.
    #[arg(long, env = "NOTIFICATION_RETRY_MAX", value_parser = parse_duration, default_value = "30s")]
    pub retry_max: Duration,
    /// How long one message is leased to this worker: it must cover the lookup and the
    /// POST, or a slow attempt is abandoned (and retried).
    #[arg(long, env = "NOTIFICATION_LEASE", value_parser = parse_duration, default_value = "30s")]
    pub lease: Duration,
}

impl NotifierArgs {
    /// Refuses settings under which every slow attempt would outlive its lease.
    pub fn validate(&self) -> anyhow::Result<()> {
        let needed = self.lookup_timeout + self.webhook_timeout + Duration::from_secs(1);
        ensure!(
            self.lease >= needed,
            "--lease ({:?}) must exceed --lookup-timeout + --webhook-timeout by at least 1s ({needed:?}), or slow deliveries are abandoned mid-flight",
            self.lease
        );
        ensure!(self.retry_base <= self.retry_max, "--retry-base ({:?}) is longer than --retry-max ({:?})", self.retry_base, self.retry_max);
        Ok(())
    }

    pub fn lease_options(&self) -> LeaseOptions {
        LeaseOptions { lease: self.lease, retry: RetryPolicy { max_attempts: self.max_attempts, base: self.retry_base, max: self.retry_max, jitter: 0.25 } }
    }
}

fn parse_http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!("{s:?}: only http:// URLs are supported (this build has no TLS)"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: NotifierArgs,
    }

    #[test]
    fn defaults_parse_and_bad_values_are_refused() {
        let cli = Cli::try_parse_from(["x", "--webhook-url", "http://127.0.0.1:9/hook", "--order-api-url", "http://127.0.0.1:8/"]).unwrap();
        cli.args.validate().unwrap();
        assert_eq!(cli.args.lease_options().retry.max_attempts, 8);
        assert_eq!(cli.args.breaker_cooldown, Duration::from_secs(10));
        for bad in [
            ["--webhook-url", "https://example.com/hook"],
            ["--webhook-url", "not a url"],
            ["--breaker-failures", "0"],
            ["--lookup-timeout", "soon"],
        ] {
            let mut argv = vec!["x", "--webhook-url", "http://h/", "--order-api-url", "http://o/"];
            argv.extend(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
        let short = Cli::try_parse_from(["x", "--webhook-url", "http://h/", "--order-api-url", "http://o/", "--lease", "3s"]).unwrap();
        assert!(short.args.validate().unwrap_err().to_string().contains("--lease"));
    }
}
