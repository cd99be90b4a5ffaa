//! Configuration groups. Every field is a flag with an environment fallback, documented in
//! `--help`; the defaults are the safe ones for a local run.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// The service's own database.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL URL of this service's database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Most connections this process opens to it.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,
}

/// Where the HTTP server listens.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address to listen on for HTTP (the API, or a worker's health and metrics).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// JSON lines, one object per event.
    Json,
    /// Human-readable lines.
    Text,
    /// Text on a terminal, JSON otherwise.
    Auto,
}

/// Logging. The level comes from `RUST_LOG` (default `info`).
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
}

/// Everything an API binary needs besides its own settings.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub auth: crate::auth::AuthArgs,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
}

/// Everything a worker binary needs besides its own settings.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// Messages handled at once by this worker's consumers.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Messages claimed per batch.
    #[arg(long, env = "WORKER_BATCH_SIZE", default_value_t = 50)]
    pub batch_size: i64,
    /// How often an idle loop polls when no notification arrives.
    #[arg(long, env = "WORKER_POLL_INTERVAL", value_parser = parse_duration, default_value = "1s")]
    pub poll_interval: Duration,
    /// How long in-flight handlers get to finish on shutdown.
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "10s")]
    pub shutdown_grace: Duration,
}

/// How messages travel between the shop's services (the same for every worker of a shop).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Each publisher's relay copies its messages into its subscribers' inboxes.
    #[default]
    Push,
    /// Each subscriber reads its publishers' outboxes with cursors of its own
    /// (`conveyor_queue::pull`); no relay runs.
    Pull,
}

impl Delivery {
    /// The flag's value (`--delivery push`, `DELIVERY=pull`).
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Push => "push",
            Delivery::Pull => "pull",
        }
    }
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a worker's messages travel (see [`Delivery`]), and the other services' databases
/// that needs: its subscribers' (push) or its publishers' (pull).
#[derive(Debug, Clone, Args)]
pub struct DeliveryArgs {
    /// push: this service's relay delivers into its subscribers' inboxes; pull: this
    /// worker reads its publishers' outboxes, and nothing is relayed.
    #[arg(long, env = "DELIVERY", value_enum, default_value_t = Delivery::Push)]
    pub delivery: Delivery,
    /// push: a subscriber's inbox database, as `name=postgres://…` (its relay role; repeat
    /// the flag, or separate entries with commas in the environment variable).
    #[arg(long = "subscriber", env = "SUBSCRIBERS", value_delimiter = ',', value_parser = conveyor_queue::parse_subscriber, hide_env_values = true)]
    pub subscribers: Vec<(String, String)>,
    /// pull: a publisher's database this worker reads the outbox of, as `name=postgres://…`
    /// (its puller role; repeat the flag, or separate entries with commas).
    #[arg(long = "publisher", env = "PUBLISHERS", value_delimiter = ',', value_parser = conveyor_queue::parse_subscriber, hide_env_values = true)]
    pub publishers: Vec<(String, String)>,
}

/// Who a migrator grants privileges to in its database (see `grants`). The roles exist
/// beforehand: whoever provisions the databases creates them (docs/databases.md).
#[derive(Debug, Clone, Default, Args)]
pub struct GrantArgs {
    /// The role the service's APIs and workers connect as: DML on the service's and the
    /// queue's tables, nothing else. Naming a role here or below also closes the database to
    /// everyone else; naming none grants nothing (PostgreSQL's defaults: anyone may connect).
    #[arg(long, env = "RUNTIME_ROLE")]
    pub runtime_role: Option<String>,
    /// A role other services' relays deliver into this database's inbox with: INSERT on the
    /// inbox, nothing else (repeat the flag, or separate roles with commas).
    #[arg(long = "relay-role", env = "RELAY_ROLES", value_delimiter = ',')]
    pub relay_roles: Vec<String>,
    /// A role other services' workers pull this database's outbox with: SELECT on the
    /// outbox, and their position reports into `conveyor.pull_positions`; nothing else
    /// (repeat the flag, or separate roles with commas).
    #[arg(long = "puller-role", env = "PULLER_ROLES", value_delimiter = ',')]
    pub puller_roles: Vec<String>,
}

/// `250ms`, `3s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (e.g. 250ms, 3s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
