//! The common body of every `<svc>-migrator`: flags, then [`conveyor_platform::run_migrator`].

use clap::Parser;
use conveyor_platform::{DbArgs, GrantArgs, LogArgs};
use conveyor_platform::db::Migrator;

/// Applies the queue schema and this service's migrations to its database, grants the
/// runtime and relay roles their privileges, then exits (0 when the database is up to date).
/// Safe to run again and from several places at once.
#[derive(Debug, Parser)]
pub struct Args {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub grants: GrantArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Parses the flags (with `name` in `--help`) and migrates.
pub fn main(service: &'static str, process: &'static str, migrator: &'static Migrator) -> anyhow::Result<()> {
    let args = Args::parse_from_name(process);
    tokio::runtime::Runtime::new()?.block_on(conveyor_platform::run_migrator(service, process, args.db, args.grants, args.log, migrator))
}

impl Args {
    fn parse_from_name(process: &'static str) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let cmd = Args::command()
            .name(process)
            .version(env!("CARGO_PKG_VERSION"))
            .about(format!("Conveyor {process}: applies the queue schema and the service's migrations, grants the runtime and relay roles their privileges, then exits."));
        let matches = cmd.get_matches();
        Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}
