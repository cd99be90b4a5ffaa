//! `cargo xtask audit`: the shop's invariants checked across every service database and the
//! webhook receiver of a running shop (`conveyor_launcher::audit`; rules in docs/audit.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use conveyor_launcher::StackInfo;
use conveyor_launcher::audit::{self, Options, Targets};

use crate::proc::Signals;
use crate::workspace_root;

/// Exit codes: 0 every rule passed, 1 a rule found a violation, 2 the audit could not run.
#[derive(clap::Args, Debug)]
#[command(after_help = "Exit status: 0 when every rule passes, 1 on a violation, 2 when the audit cannot run (a database or the receiver unreachable: the message says which).\n\
Against `cargo xtask up`: run it with no options. Against another deployment: give every service's database URL (the owner's, or any role that can read every table) and the receiver's URL.")]
pub struct Args {
    /// The `stack.json` of a running stack (written by `cargo xtask up` in its log directory).
    /// Default: the newest one under target/conveyor-up/, unless --database-url is given.
    #[arg(long, value_name = "PATH")]
    stack: Option<PathBuf>,
    /// A service's database, as `service=URL` (repeat the flag: catalog, order, stock,
    /// payment, notification). Replaces the stack's URL for that service.
    #[arg(long = "database-url", value_name = "SERVICE=URL", value_parser = service_url)]
    database_urls: Vec<(String, String)>,
    /// The webhook receiver's base URL (GET /notifications lists what it received). Without
    /// it and without a stack, only the notification records are checked.
    #[arg(long, value_name = "URL")]
    sink_url: Option<String>,
    /// Orders the client was told were accepted: one order id per line (blank lines and `#`
    /// comments skipped); each must exist.
    #[arg(long, value_name = "FILE")]
    accepted: Option<PathBuf>,
    /// Where to write the report as JSON (a Markdown copy goes beside it, `.md`); default
    /// target/audit/audit.json in the workspace.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// An inbox message pending this long past its due time is overdue (`250ms`, `3s`, `2m`).
    #[arg(long, value_parser = audit::parse_duration, default_value = "60s")]
    grace: Duration,
    /// List dead letters without counting them as violations.
    #[arg(long)]
    allow_dead: bool,
    /// Examples shown per rule.
    #[arg(long, default_value_t = 10)]
    examples: usize,
}

fn service_url(s: &str) -> Result<(String, String), String> {
    let (svc, url) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected SERVICE=URL, e.g. order=postgres://…/orders"))?;
    if svc.is_empty() || url.is_empty() {
        return Err(format!("{s:?}: expected SERVICE=URL"));
    }
    Ok((svc.to_owned(), url.to_owned()))
}

/// Returns the exit code.
pub async fn run(args: Args, signals: &mut Signals) -> Result<i32> {
    let (targets, source) = match targets(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("xtask: audit cannot run: {e:#}");
            return Ok(2);
        }
    };
    println!(
        "xtask: auditing {source}: databases {}; webhook receiver {}",
        targets.databases.keys().cloned().collect::<Vec<_>>().join(", "),
        if targets.sink.is_empty() { "not checked" } else { &targets.sink }
    );
    let options = Options { grace: args.grace, allow_dead: args.allow_dead, examples: args.examples };
    let report = tokio::select! {
        r = audit::run_with(&targets, &options) => r,
        sig = signals.wait() => return Ok(128 + sig),
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xtask: audit cannot run: {e:#}");
            if source.starts_with("the stack of") {
                eprintln!("xtask: is that stack still running? `cargo xtask up` starts one (and writes a new stack.json); --stack picks another");
            }
            return Ok(2);
        }
    };
    print!("{}", report.to_text());
    let json = args.json.clone().unwrap_or_else(|| workspace_root().join("target").join("audit").join("audit.json"));
    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&json, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", json.display()))?;
    let md = json.with_extension("md");
    std::fs::write(&md, report.to_markdown()).with_context(|| format!("writing {}", md.display()))?;
    println!("xtask: report in {} and {}", json.display(), md.display());
    Ok(if report.passed() { 0 } else { 1 })
}

/// What to audit, and a phrase saying where it came from.
fn targets(args: &Args) -> Result<(Targets, String)> {
    let stack = match &args.stack {
        Some(path) => Some(path.clone()),
        None if args.database_urls.is_empty() => Some(newest_stack(&workspace_root().join("target").join("conveyor-up"))?),
        None => None,
    };
    let (mut targets, source) = match &stack {
        Some(path) => (Targets::from_info(&StackInfo::read(path)?), format!("the stack of {}", path.display())),
        None => (Targets { databases: BTreeMap::new(), sink: String::new(), accepted: Vec::new() }, "the given databases".to_owned()),
    };
    targets.databases.extend(args.database_urls.iter().cloned());
    if let Some(url) = &args.sink_url {
        targets.sink = url.clone();
    }
    if let Some(path) = &args.accepted {
        targets.accepted = read_accepted(path)?;
    }
    Ok((targets, source))
}

/// The `stack.json` of the newest `cargo xtask up` run (its log directory is
/// target/conveyor-up/run-<seconds>).
pub(crate) fn newest_stack(dir: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("no stack to audit: {} does not exist (start one with `cargo xtask up`, or give --stack or --database-url)", dir.display()))?;
    let mut runs: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path().join(conveyor_launcher::STACK_FILE)).filter(|p| p.is_file()).collect();
    runs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    runs.pop().with_context(|| format!("no stack to audit: no run under {} has a {} (start one with `cargo xtask up`)", dir.display(), conveyor_launcher::STACK_FILE))
}

fn read_accepted(path: &Path) -> Result<Vec<uuid::Uuid>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_accepted(&text).with_context(|| format!("in {}", path.display()))
}

fn parse_accepted(text: &str) -> Result<Vec<uuid::Uuid>> {
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.parse() {
            Ok(id) => ids.push(id),
            Err(_) => bail!("line {}: {line:?} is not an order id", n + 1),
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_ids_are_one_per_line() {
        let id = uuid::Uuid::now_v7();
        assert_eq!(parse_accepted(&format!("# accepted\n{id}\n\n  {id}  \n")).unwrap(), [id, id]);
        let e = parse_accepted("x\n").unwrap_err().to_string();
        assert!(e.contains("line 1: \"x\" is not an order id"), "{e}");
    }

    #[test]
    fn database_urls_are_service_equals_url() {
        assert_eq!(service_url("order=postgres://h/orders").unwrap(), ("order".into(), "postgres://h/orders".into()));
        assert!(service_url("postgres://h/orders").is_err());
    }

    #[test]
    fn the_newest_stack_is_found() {
        let dir = std::env::temp_dir().join(format!("xtask-audit-{}", uuid::Uuid::now_v7()));
        assert!(newest_stack(&dir).unwrap_err().to_string().contains("cargo xtask up"));
        let epoch = std::time::SystemTime::UNIX_EPOCH;
        // Written newest first: the modification time decides, not the order or the name.
        for (run, secs) in [("run-2", 2000), ("run-1", 1000)] {
            std::fs::create_dir_all(dir.join(run)).unwrap();
            let file = std::fs::File::create(dir.join(run).join("stack.json")).unwrap();
            file.set_modified(epoch + Duration::from_secs(secs)).unwrap();
        }
        std::fs::create_dir_all(dir.join("run-3")).unwrap();
        assert_eq!(newest_stack(&dir).unwrap(), dir.join("run-2").join("stack.json"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
