//! `cargo xtask bench soak`: the queue engine end to end for a long time (default 30 min),
//! and pgmq through the same schedule, recording throughput, latency, the queue tables' size
//! and dead tuples over time, to show whether throughput stays flat and bloat bounded; with
//! `--hold-xmin`, through a held xmin horizon in the middle of each run. The measuring is done by the binary
//! `soak` of `conveyor-benches` (`benches/src/bin/soak.rs`); this builds it, gives it a
//! private durable PostgreSQL (or DATABASE_URL's server), runs it and stops everything on
//! every path, Ctrl-C included (the binary then still writes the report of what ran).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Result, bail};
use conveyor_devpg::ClusterOptions;

use crate::proc::{self, Outcome, Signals};
use crate::{Postgres, cargo, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Smoke mode (about half a minute): per system a 9 s run sampled every second with the
    /// xmin held from 3 s to 6 s, a 3 s done-retention pruned every second, debug build.
    /// Checks the harness end to end, never a speed.
    #[arg(long)]
    pub quick: bool,
    /// How long the load runs per system, e.g. 30m, 5m, 90s [default: 30m; 9s with --quick].
    #[arg(long)]
    pub duration: Option<String>,
    /// Hold the xmin horizon back for this long, centred in each run (a REPEATABLE READ
    /// snapshot in every queue database), e.g. 10m [default: none; 3s with --quick].
    #[arg(long)]
    pub hold_xmin: Option<String>,
    /// The systems to run one after the other, e.g. ours or ours,pgmq [default: ours,pgmq].
    #[arg(long)]
    pub systems: Option<String>,
    /// A fixed offered rate in messages/s instead of the closed loop at full speed.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Producer tasks [default: 4].
    #[arg(long)]
    pub producers: Option<usize>,
    /// Consumer claim loops [default: 4, as the workers run].
    #[arg(long)]
    pub consumers: Option<usize>,
    /// More options for the soak binary, after `--` (see
    /// `cargo run -p conveyor-benches --bin soak -- --help`), e.g. `-- --prune-window 2m`.
    #[arg(last = true, value_name = "SOAK_ARGS")]
    pub extra: Vec<String>,
}

impl Args {
    /// The soak binary's arguments (without the database URL, passed in the environment).
    fn soak_args(&self, server: &str) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--server".into(), server.into()];
        if self.quick {
            a.push("--quick".into());
        }
        let mut opt = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                a.push(name.into());
                a.push(v.into());
            }
        };
        opt("--duration", self.duration.clone());
        opt("--hold-xmin", self.hold_xmin.clone());
        opt("--systems", self.systems.clone());
        opt("--rate", self.rate.map(|r| r.to_string()));
        opt("--producers", self.producers.map(|n| n.to_string()));
        opt("--consumers", self.consumers.map(|n| n.to_string()));
        a.extend(self.extra.iter().map(OsString::from));
        a
    }
}

/// `<target>/{debug,release}/soak`.
fn soak_binary(release: bool) -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("target"),
    };
    target.join(if release { "release" } else { "debug" }).join("soak")
}

pub async fn run(args: Args, signals: &mut Signals) -> Result<i32> {
    // Build first: a build error fails fast, and no compiler runs while the soak measures.
    // A real run is a release build; --quick stays in the debug profile so that CI does not
    // pay for a release build of the workspace.
    let release = !args.quick;
    println!(
        "\n== building the soak (cargo build -p conveyor-benches --bin soak{}) ==",
        if release { " --release" } else { "" }
    );
    let mut build = tokio::process::Command::new(cargo());
    build.args(["build", "-p", "conveyor-benches", "--bin", "soak"]).current_dir(workspace_root());
    if release {
        build.arg("--release");
    }
    match proc::run(build, signals).await? {
        Outcome::Exited(0) => {}
        Outcome::Exited(code) => bail!("building the soak failed (exit code {code})"),
        Outcome::Interrupted(sig) => return Ok(128 + sig),
    }

    let Some(pg) = Postgres::acquire(ClusterOptions { name: "soak".into(), durable: true, ..Default::default() }, signals).await? else {
        return Ok(130);
    };
    let server = if pg.cluster.is_some() { "private durable cluster" } else { "DATABASE_URL" };
    let mut cmd = tokio::process::Command::new(soak_binary(release));
    cmd.args(args.soak_args(server)).current_dir(workspace_root()).env("DATABASE_URL", &pg.admin_url);
    println!("\n== soak ==");
    let outcome = proc::run(cmd, signals).await;
    pg.stop().await;
    match outcome? {
        Outcome::Exited(0) => Ok(0),
        Outcome::Exited(code) => bail!("the soak failed (exit code {code}); PostgreSQL stopped"),
        Outcome::Interrupted(sig) => {
            eprintln!("xtask: interrupted (signal {sig}); the soak wrote the report of what ran, PostgreSQL stopped");
            Ok(128 + sig)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn options_reach_the_soak_binary() {
        let cli = Cli::try_parse_from([
            "soak", "--duration", "20m", "--hold-xmin", "10m", "--systems", "ours,pgmq", "--rate", "800", "--producers", "8", "--", "--prune-window", "2m",
        ])
        .unwrap();
        let got: Vec<String> = cli.args.soak_args("DATABASE_URL").into_iter().map(|s| s.into_string().unwrap()).collect();
        assert_eq!(
            got,
            [
                "--server", "DATABASE_URL", "--duration", "20m", "--hold-xmin", "10m", "--systems", "ours,pgmq", "--rate", "800", "--producers", "8",
                "--prune-window", "2m"
            ]
        );
        let quick = Cli::try_parse_from(["soak", "--quick"]).unwrap();
        let got: Vec<String> = quick.args.soak_args("private durable cluster").into_iter().map(|s| s.into_string().unwrap()).collect();
        assert_eq!(got, ["--server", "private durable cluster", "--quick"]);
        assert!(soak_binary(true).ends_with("release/soak") && soak_binary(false).ends_with("debug/soak"));
    }
}
