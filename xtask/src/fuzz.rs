//! `cargo xtask fuzz`: schemathesis against every API's `/openapi.json`, on a stack of its
//! own (private PostgreSQL or DATABASE_URL's server, every migrator, API and worker, demo
//! data), with an operator's token from the stack's issuer. Each API's run is bounded
//! (examples per operation, seconds per API); the checks: no 5xx, and every answer, errors
//! included, as documented — its status, its content type (every error is
//! `application/problem+json`) and its schema. Exits non-zero when any API fails one.
//! schemathesis lives in a venv under target/ (`xtask/fuzz-requirements.txt`, pinned),
//! installed when missing or when the requirements change.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use conveyor_devpg::ClusterOptions;
use conveyor_launcher::{Stack, StackOptions, demo};

use crate::proc::{self, Outcome, Signals};
use crate::{Postgres, workspace_root};

/// What every response is checked for (schemathesis' names).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Test cases per operation in each of schemathesis' phases (--max-examples).
    #[arg(long, default_value_t = 20)]
    max_examples: u32,
    /// Seconds each API's run may take at most (--max-time).
    #[arg(long, default_value_t = 40)]
    max_time: u32,
    /// Only these APIs (catalog, order, stock, payment, notification; default every one).
    #[arg(long = "api", value_delimiter = ',')]
    apis: Vec<String>,
    /// schemathesis' random seed; by default a new one, printed, so that a failure can be
    /// replayed with the same cases.
    #[arg(long)]
    seed: Option<u64>,
}

pub async fn fuzz(args: FuzzArgs, signals: &mut Signals) -> Result<i32> {
    let started = Instant::now();
    let apis: Vec<&str> = conveyor_contracts::service::ALL.into_iter().filter(|s| args.apis.is_empty() || args.apis.iter().any(|a| a == s)).collect();
    anyhow::ensure!(!apis.is_empty(), "--api names none of {}", conveyor_contracts::service::ALL.join(", "));
    let schemathesis = match venv(signals).await? {
        Ok(path) => path,
        Err(code) => return Ok(code),
    };
    println!("xtask: building the binaries (cargo build --workspace --bins)");
    if let Some(code) = crate::build_bins(true, false, signals).await? {
        return Ok(code);
    }
    let Some(pg) = Postgres::acquire(ClusterOptions { name: "fuzz".into(), ..Default::default() }, signals).await? else {
        return Ok(130);
    };
    let result = with_stack(&args, &apis, &schemathesis, pg.admin_url.clone(), signals).await;
    pg.stop().await;
    let code = result?;
    println!("xtask: fuzz {} in {:.0} s", if code == 0 { "passed" } else { "FAILED" }, started.elapsed().as_secs_f64());
    Ok(code)
}

async fn with_stack(args: &FuzzArgs, apis: &[&str], schemathesis: &Path, admin_url: String, signals: &mut Signals) -> Result<i32> {
    let target = workspace_root().join("target");
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let run_dir = target.join("conveyor-fuzz").join(format!("run-{secs}"));
    // The binaries just built (or CONVEYOR_BIN_DIR's, like the e2e tests).
    let mut opts = StackOptions::new(admin_url, conveyor_launcher::default_bin_dir(), run_dir.join("logs"));
    opts.log_format = "text".into();
    opts.base_port = None;
    // Databases of their own (fuzz_catalog, …), reused by the next run like `up` reuses its.
    opts.db_prefix = "fuzz_".into();
    let stack = tokio::select! {
        s = Stack::start(opts, |line| println!("  ✓ {line}")) => s?,
        sig = signals.wait() => return Ok(128 + sig),
    };
    let result = run_all(args, apis, schemathesis, &stack, &run_dir, signals).await;
    println!("xtask: stopping the shop (logs in {})", run_dir.join("logs").display());
    let stopped = stack.stop().await;
    let code = result?;
    stopped?;
    Ok(code)
}

async fn run_all(args: &FuzzArgs, apis: &[&str], schemathesis: &Path, stack: &Stack, run_dir: &Path, signals: &mut Signals) -> Result<i32> {
    // Real data to find: lists with items, so their schemas are checked too.
    let shop = stack.shop();
    tokio::select! {
        d = demo::seed(&shop) => { d.context("loading the demo data")?; }
        sig = signals.wait() => return Ok(128 + sig),
    }
    let seed = args.seed.unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos() as u64).unwrap_or(0));
    let auth = format!("Authorization: Bearer {}", stack.issuer.operator());
    let mut failed = Vec::new();
    for api in apis {
        let url = &stack.api[*api];
        let reports = run_dir.join(api);
        println!("\nxtask: schemathesis against {api}-api ({url}/openapi.json), seed {seed}, at most {} s", args.max_time);
        let mut cmd = tokio::process::Command::new(schemathesis);
        cmd.arg("run").arg(format!("{url}/openapi.json"));
        cmd.args(["--checks", CHECKS, "--header", &auth, "--workers", "1", "--wait-for-schema", "30", "--request-timeout", "10"]);
        cmd.args(["--max-examples", &args.max_examples.to_string(), "--max-time", &args.max_time.to_string(), "--seed", &seed.to_string()]);
        cmd.args(["--report", "junit,ndjson", "--report-dir"]).arg(&reports);
        // The token is a secret of this run only; the output need not hide it.
        cmd.args(["--output-sanitize", "false"]).env("SCHEMATHESIS_TELEMETRY", "false").env("NO_COLOR", "1");
        match proc::run(cmd, signals).await? {
            Outcome::Exited(0) => {}
            Outcome::Exited(code) => failed.push(format!("{api} (exit code {code}; reports in {})", reports.display())),
            Outcome::Interrupted(sig) => return Ok(128 + sig),
        }
    }
    if failed.is_empty() {
        println!("\nxtask: every API passed ({}): no 5xx, every answer as documented", apis.join(", "));
        Ok(0)
    } else {
        eprintln!("\nxtask: schemathesis found failures in: {}\n  replay with: cargo xtask fuzz --seed {seed} --api <name>", failed.join("; "));
        Ok(1)
    }
}

/// target/fuzz-venv with the pinned schemathesis: made when missing or when the
/// requirements changed. `Ok(Ok(the schemathesis program))`, or `Ok(Err(exit code))`.
async fn venv(signals: &mut Signals) -> Result<Result<PathBuf, i32>> {
    let root = workspace_root();
    let venv = root.join("target").join("fuzz-venv");
    let requirements = root.join("xtask").join("fuzz-requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).with_context(|| format!("reading {}", requirements.display()))?;
    let stamp = venv.join(".requirements");
    let program = venv.join("bin").join("schemathesis");
    if program.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(Ok(program));
    }
    println!("xtask: installing schemathesis into {} ({})", venv.display(), requirements.display());
    let _ = std::fs::remove_dir_all(&venv);
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let steps: [Vec<std::ffi::OsString>; 2] = [
        vec!["-m".into(), "venv".into(), venv.clone().into()],
        vec!["-m".into(), "pip".into(), "install".into(), "--quiet".into(), "--disable-pip-version-check".into(), "--only-binary=:all:".into(), "-r".into(), requirements.clone().into()],
    ];
    for (i, step) in steps.iter().enumerate() {
        let command = || {
            let mut cmd = tokio::process::Command::new(if i == 0 { PathBuf::from(&python) } else { venv.join("bin").join("python") });
            cmd.args(step);
            cmd
        };
        let mut outcome = proc::run(command(), signals).await?;
        if i == 0 && matches!(outcome, Outcome::Exited(code) if code != 0) && crate::apt::is_root() {
            // Debian's python3 keeps venv in a package of its own.
            let _ = std::fs::remove_dir_all(&venv);
            if let Err(sig) = crate::apt::install(&["python3-venv"], signals).await? {
                return Ok(Err(128 + sig));
            }
            outcome = proc::run(command(), signals).await?;
        }
        match outcome {
            Outcome::Exited(0) => {}
            Outcome::Exited(code) => {
                eprintln!("xtask: could not install schemathesis (exit code {code}); it needs Python 3.11 or newer with venv (Debian: apt-get install python3-venv), or set PYTHON=…");
                return Ok(Err(code));
            }
            Outcome::Interrupted(sig) => return Ok(Err(128 + sig)),
        }
    }
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(Ok(program))
}
