//! `cargo xtask bench queue`: a raw-SQL reference measured with pgbench, the queue engine's
//! criterion benchmarks (crate `conveyor-benches`), and a report comparing the two.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use conveyor_devpg::ClusterOptions;
use serde::{Deserialize, Serialize};

use crate::proc::{self, Outcome, Signals};
use crate::{Postgres, cargo, pg_version, workspace_root};

#[derive(clap::Args)]
pub struct QueueArgs {
    /// Smoke mode: 2 s per reference scenario, and BENCH_QUICK=1 and the debug build for the
    /// engine benchmarks.
    #[arg(long)]
    quick: bool,
    /// Only measure the pgbench reference (skip `cargo bench -p conveyor-benches`).
    #[arg(long)]
    reference_only: bool,
}

/// Wake-up latency target for p50, in milliseconds.
const WAKEUP_TARGET_MS: f64 = 5.0;
/// A message whose backoff ends at t is claimed by t + this (p99), the consumer idle.
const RETRY_TARGET_MS: f64 = 50.0;

/// A ~200-byte order event, the reference payload.
pub(crate) const PAYLOAD: &str = r#"{"event":"order.placed","order_id":"0190f3c2-7d4e-7a61-9b2c-3f5e8d1a4b6c","customer_id":"c-000042","currency":"EUR","total_cents":12999,"lines":[{"sku":"SKU-000123","qty":2},{"sku":"SKU-004567","qty":1}],"channel":"web"}"#;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RefResult {
    name: String,
    batch: u32,
    tps: f64,
    msgs_per_sec: f64,
    latency_avg_ms: Option<f64>,
    /// msgs/s of each pass (before and after the engine) when there were two.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    passes_msgs_per_sec: Vec<f64>,
}

/// The mean of two reference passes, scenario by scenario, keeping each pass's figure.
fn mean_of_passes(first: Vec<RefResult>, second: Vec<RefResult>) -> Vec<RefResult> {
    first
        .into_iter()
        .map(|a| match second.iter().find(|b| b.name == a.name && b.batch == a.batch) {
            None => a,
            Some(b) => RefResult {
                tps: (a.tps + b.tps) / 2.0,
                msgs_per_sec: (a.msgs_per_sec + b.msgs_per_sec) / 2.0,
                latency_avg_ms: a.latency_avg_ms.zip(b.latency_avg_ms).map(|(x, y)| (x + y) / 2.0),
                passes_msgs_per_sec: vec![a.msgs_per_sec, b.msgs_per_sec],
                name: a.name,
                batch: a.batch,
            },
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EngineResult {
    name: String,
    batch: u32,
    msgs_per_sec: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Wakeup {
    p50: f64,
    p95: f64,
    p99: f64,
    samples: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EngineJson {
    clients: u32,
    results: Vec<EngineResult>,
    wakeup_ms: Option<Wakeup>,
    /// End of a retry's backoff → its handler starting, idle consumer.
    #[serde(default)]
    retry_lateness_ms: Option<Wakeup>,
}

#[derive(Debug, Clone, Serialize)]
struct Ratio {
    engine: String,
    reference: String,
    batch: u32,
    engine_msgs_per_sec: Option<f64>,
    reference_msgs_per_sec: Option<f64>,
    ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    generated_unix: u64,
    postgres: String,
    server: String,
    clients: u32,
    quick: bool,
    reference_seconds: u32,
    reference: Vec<RefResult>,
    engine: Option<EngineJson>,
    ratios: Vec<Ratio>,
    wakeup_target_ms: f64,
    wakeup_p50_meets_target: Option<bool>,
}

fn env_u32(name: &str, default: u32) -> Result<u32> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("{name} must be a positive whole number, got {v:?}")),
        _ => Ok(default),
    }
}

pub async fn queue(args: QueueArgs, signals: &mut Signals) -> Result<i32> {
    let clients = env_u32("BENCH_CLIENTS", 4)?;
    let seconds = if args.quick {
        2
    } else {
        env_u32("BENCH_SECONDS", 10)?
    };
    let Some(pg) = Postgres::acquire(
        ClusterOptions {
            name: "bench".into(),
            durable: true,
            ..Default::default()
        },
        signals,
    )
    .await?
    else {
        return Ok(130);
    };
    let result = queue_inner(&args, &pg, clients, seconds, signals).await;
    pg.stop().await;
    if let Some(sig) = signals.received() {
        eprintln!("xtask: interrupted (signal {sig}); benchmarks and PostgreSQL stopped");
    }
    result
}

async fn queue_inner(
    args: &QueueArgs,
    pg: &Postgres,
    clients: u32,
    seconds: u32,
    signals: &mut Signals,
) -> Result<i32> {
    let bin_dir = match &pg.cluster {
        Some(c) => c.bin_dir().to_path_buf(),
        None => conveyor_devpg::find_pg_bin_dir()?,
    };
    let server = if pg.cluster.is_some() {
        "private durable cluster".to_string()
    } else {
        "DATABASE_URL".to_string()
    };
    let results_dir = conveyor_benchkit::results_dir()?;

    // 0. Build the engine benchmarks first: a build error fails fast, and no compiler runs
    //    while the reference is measured.
    if !args.reference_only {
        println!(
            "\n== building the engine benchmarks (cargo bench -p conveyor-benches --no-run) =="
        );
        let mut cmd = tokio::process::Command::new(cargo());
        cmd.args(["bench", "-p", "conveyor-benches", "--no-run"])
            .args(bench_profile(args.quick))
            .current_dir(workspace_root());
        match proc::run(cmd, signals).await? {
            Outcome::Exited(0) => {}
            Outcome::Exited(code) => {
                bail!("building the engine benchmarks failed (exit code {code})")
            }
            Outcome::Interrupted(sig) => return Ok(128 + sig),
        }
    }

    // 1. The raw-SQL reference.
    println!(
        "\n== reference: raw SQL with pgbench ({clients} clients, {seconds} s per scenario) =="
    );
    let bench_url = conveyor_devpg::create_database(&pg.admin_url, "bench").await?;
    let reference = match reference_scenarios(
        &bin_dir,
        &bench_url,
        &results_dir,
        clients,
        seconds,
        signals,
    )
    .await?
    {
        Ok(r) => r,
        Err(sig) => return Ok(128 + sig),
    };

    // 2. The engine.
    let engine_json_path = results_dir.join("queue-engine.json");
    let engine = if args.reference_only {
        println!("\n== engine: skipped (--reference-only) ==");
        None
    } else {
        println!("\n== engine: cargo bench -p conveyor-benches ==");
        let _ = std::fs::remove_file(&engine_json_path); // never report a stale run
        let mut cmd = tokio::process::Command::new(cargo());
        cmd.args(["bench", "-p", "conveyor-benches"])
            .args(bench_profile(args.quick))
            .current_dir(workspace_root())
            .env("DATABASE_URL", &pg.admin_url)
            .env("BENCH_CLIENTS", clients.to_string());
        if args.quick {
            cmd.env("BENCH_QUICK", "1");
        } else {
            cmd.env_remove("BENCH_QUICK");
        }
        match proc::run(cmd, signals).await? {
            Outcome::Exited(0) => {}
            Outcome::Exited(code) => {
                bail!("cargo bench -p conveyor-benches failed (exit code {code})")
            }
            Outcome::Interrupted(sig) => return Ok(128 + sig),
        }
        let text = std::fs::read_to_string(&engine_json_path).with_context(|| {
            format!(
                "the engine benchmark wrote no results: {} is missing (cargo bench -p \
                 conveyor-benches must write it)",
                engine_json_path.display()
            )
        })?;
        let parsed: EngineJson = serde_json::from_str(&text).with_context(|| {
            format!("{} is not valid engine results", engine_json_path.display())
        })?;
        Some(parsed)
    };

    // 2b. The reference again, after the engine: fsync latency on a shared VM drifts over
    //     minutes, and measuring the reference on both sides of the engine lets the drift
    //     fall on both alike. The report uses the mean of the two passes and shows both.
    let reference = if args.reference_only {
        reference
    } else {
        println!("\n== reference, second pass (after the engine) ==");
        let second = match reference_scenarios(&bin_dir, &bench_url, &results_dir, clients, seconds, signals).await? {
            Ok(r) => r,
            Err(sig) => return Ok(128 + sig),
        };
        mean_of_passes(reference, second)
    };

    // 3. The report.
    let report = build_report(
        pg_version(&bin_dir),
        server,
        clients,
        args.quick,
        seconds,
        reference,
        engine,
    );
    let md = render_markdown(&report);
    println!("\n{md}");
    let json_path = results_dir.join("queue-report.json");
    let md_path = results_dir.join("queue-report.md");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("could not write {}", json_path.display()))?;
    std::fs::write(&md_path, &md)
        .with_context(|| format!("could not write {}", md_path.display()))?;
    let svg_path = results_dir.join("queue-report.svg");
    conveyor_benchkit::write_svg(&svg_path, &charts(&report))?;
    println!(
        "xtask: report written to {}, {} and {}",
        json_path.display(),
        md_path.display(),
        svg_path.display()
    );
    Ok(0)
}

/// The smoke run builds the engine benchmarks in the debug profile, which CI has built
/// already, instead of an optimised build of the whole dependency tree.
fn bench_profile(quick: bool) -> &'static [&'static str] {
    if quick { &["--profile", "dev"] } else { &[] }
}

/// Run SQL with psql; returns its output (unaligned, tuples only).
pub(crate) async fn psql(
    bin_dir: &Path,
    url: &str,
    sql: &str,
    signals: &mut Signals,
) -> Result<Result<String, i32>> {
    let mut cmd = tokio::process::Command::new(bin_dir.join("psql"));
    cmd.args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        url,
        "-c",
        sql,
    ]);
    match proc::capture(cmd, signals).await? {
        Err(sig) => Ok(Err(sig)),
        Ok(out) if out.status.success() => {
            Ok(Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()))
        }
        Ok(out) => bail!(
            "psql failed ({}) running {sql:?}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `?` for psql/pgbench results: an error propagates, a signal returns `Ok(Err(sig))`.
macro_rules! step {
    ($e:expr) => {
        match $e? {
            Ok(v) => v,
            Err(sig) => return Ok(Err(sig)),
        }
    };
}

// After `step!`, so that the harnesses below can use it.
pub mod peers;
pub mod saga;
pub mod soak;

pub(crate) fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn reference_scenarios(
    bin_dir: &Path,
    url: &str,
    results_dir: &Path,
    clients: u32,
    seconds: u32,
    signals: &mut Signals,
) -> Result<Result<Vec<RefResult>, i32>> {
    let payload = sql_literal(PAYLOAD);
    step!(
        psql(
            bin_dir,
            url,
            "DROP TABLE IF EXISTS ref_queue; CREATE TABLE ref_queue (id bigserial primary key, \
             payload jsonb not null, created_at timestamptz not null default now())",
            signals
        )
        .await
    );
    let scripts = results_dir.join("pgbench");
    std::fs::create_dir_all(&scripts)?;

    let mut results: Vec<RefResult> = Vec::new();
    for batch in [1u32, 100] {
        let sql = if batch == 1 {
            format!("INSERT INTO ref_queue (payload) VALUES ({payload}::jsonb);\n")
        } else {
            format!(
                "INSERT INTO ref_queue (payload) SELECT {payload}::jsonb FROM generate_series(1, {batch});\n"
            )
        };
        let script = scripts.join(format!("raw_insert_b{batch}.sql"));
        std::fs::write(&script, sql)?;
        step!(psql(bin_dir, url, "TRUNCATE ref_queue", signals).await);
        step!(psql(bin_dir, url, "VACUUM ANALYZE ref_queue", signals).await);
        // Every measurement, reference or engine, starts right after a checkpoint.
        step!(psql(bin_dir, url, "CHECKPOINT", signals).await);
        let r = step!(
            pgbench(
                bin_dir,
                url,
                &script,
                "raw_insert",
                batch,
                clients,
                seconds,
                signals
            )
            .await
        );
        results.push(r);
    }

    for batch in [1u32, 100] {
        let sql = format!(
            "WITH c AS (SELECT id FROM ref_queue ORDER BY id LIMIT {batch} FOR UPDATE SKIP LOCKED) \
             DELETE FROM ref_queue q USING c WHERE q.id = c.id;\n"
        );
        let script = scripts.join(format!("raw_claim_delete_b{batch}.sql"));
        std::fs::write(&script, sql)?;
        // Prefill enough that the queue never runs empty: 1.5× what inserting managed in the
        // same time (claim-delete is rarely faster), grown 4× and re-run if it did run empty.
        let insert_rate = results
            .iter()
            .find(|r| r.name == "raw_insert" && r.batch == batch)
            .map(|r| r.msgs_per_sec)
            .unwrap_or(10_000.0);
        let mut prefill = ((insert_rate * seconds as f64 * 1.5) as u64 + 10_000).min(20_000_000);
        let mut attempt = 0;
        loop {
            attempt += 1;
            step!(psql(bin_dir, url, "TRUNCATE ref_queue", signals).await);
            println!(
                "   prefilling ref_queue with {prefill} messages for raw_claim_delete b{batch}"
            );
            step!(
                psql(
                    bin_dir,
                    url,
                    &format!(
                        "INSERT INTO ref_queue (payload) SELECT {payload}::jsonb FROM generate_series(1, {prefill})"
                    ),
                    signals
                )
                .await
            );
            step!(psql(bin_dir, url, "VACUUM ANALYZE ref_queue", signals).await);
        // Every measurement, reference or engine, starts right after a checkpoint.
        step!(psql(bin_dir, url, "CHECKPOINT", signals).await);
            let r = step!(
                pgbench(
                    bin_dir,
                    url,
                    &script,
                    "raw_claim_delete",
                    batch,
                    clients,
                    seconds,
                    signals
                )
                .await
            );
            let left: u64 =
                step!(psql(bin_dir, url, "SELECT count(*) FROM ref_queue", signals).await)
                    .parse()
                    .context("count(*) was not a number")?;
            if left >= (batch * clients) as u64 {
                results.push(r);
                break;
            }
            if attempt >= 3 {
                bail!(
                    "raw_claim_delete b{batch}: the queue ran empty even with {prefill} prefilled messages"
                );
            }
            println!("   the queue ran empty ({left} left); measuring again with 4× the prefill");
            prefill *= 4;
        }
    }
    step!(psql(bin_dir, url, "DROP TABLE ref_queue", signals).await);

    // The engine's own claim SQL replayed by pgbench (BEGIN; claim-and-mark-done; COMMIT):
    // the ceiling of its transaction shape, so the report can tell what the shape costs
    // (against raw_claim_delete) from what the client costs (engine against this).
    let migrations = workspace_root().join("crates/queue/migrations");
    let mut files: Vec<_> = std::fs::read_dir(&migrations)
        .with_context(|| format!("cannot read {}", migrations.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    step!(psql(bin_dir, url, "DROP SCHEMA IF EXISTS conveyor CASCADE", signals).await);
    for f in &files {
        step!(psql(bin_dir, url, &std::fs::read_to_string(f)?, signals).await);
    }
    for batch in [1u32, 100] {
        let claim = conveyor_queue::sql::TX_CLAIM
            .replace("$1", "'{bench.event}'")
            .replace("$2", &batch.to_string())
            .replace("$3", "NULL");
        let script = scripts.join(format!("engine_sql_claim_b{batch}.sql"));
        std::fs::write(&script, format!("BEGIN;\n{};\nCOMMIT;\n", claim.replace('\n', " ")))?;
        let prefill = results
            .iter()
            .find(|r| r.name == "raw_claim_delete" && r.batch == batch)
            .map(|r| (r.msgs_per_sec * seconds as f64 * 2.0) as u64 + 10_000)
            .unwrap_or(200_000)
            .min(20_000_000);
        step!(psql(bin_dir, url, "TRUNCATE conveyor.inbox", signals).await);
        step!(
            psql(
                bin_dir,
                url,
                &format!(
                    "INSERT INTO conveyor.inbox (message_id, topic, payload, published_at) \
                     SELECT gen_random_uuid(), 'bench.event', {payload}::jsonb, now() FROM generate_series(1, {prefill})"
                ),
                signals
            )
            .await
        );
        step!(psql(bin_dir, url, "VACUUM ANALYZE conveyor.inbox", signals).await);
        step!(psql(bin_dir, url, "CHECKPOINT", signals).await);
        let r = step!(pgbench(bin_dir, url, &script, "engine_sql_claim", batch, clients, seconds, signals).await);
        let pending: u64 = step!(psql(bin_dir, url, "SELECT count(*) FROM conveyor.inbox WHERE state = 'pending'", signals).await)
            .parse()
            .context("count(*) was not a number")?;
        if pending < (batch * clients) as u64 {
            bail!("engine_sql_claim b{batch}: the inbox ran empty with {prefill} prefilled messages");
        }
        results.push(r);
    }
    step!(psql(bin_dir, url, "DROP SCHEMA conveyor CASCADE", signals).await);
    Ok(Ok(results))
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn pgbench(
    bin_dir: &Path,
    url: &str,
    script: &Path,
    name: &str,
    batch: u32,
    clients: u32,
    seconds: u32,
    signals: &mut Signals,
) -> Result<Result<RefResult, i32>> {
    let mut cmd = tokio::process::Command::new(bin_dir.join("pgbench"));
    cmd.arg("-n")
        .args(["-M", "prepared"])
        .arg("-c")
        .arg(clients.to_string())
        .arg("-j")
        .arg(clients.min(2).to_string())
        .arg("-T")
        .arg(seconds.to_string())
        .arg("-f")
        .arg(script)
        .arg(url);
    let out = match proc::capture(cmd, signals).await? {
        Ok(out) => out,
        Err(sig) => return Ok(Err(sig)),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "pgbench {name} b{batch} failed ({}):\n{stdout}{stderr}",
            out.status
        );
    }
    let (tps, latency) = parse_pgbench(&stdout).with_context(|| {
        format!("no tps in pgbench output for {name} b{batch}:\n{stdout}{stderr}")
    })?;
    let r = RefResult {
        name: name.to_string(),
        batch,
        tps,
        msgs_per_sec: tps * batch as f64,
        latency_avg_ms: latency,
        passes_msgs_per_sec: Vec::new(),
    };
    println!(
        "   {:<18} b{:<4} {:>10.1} tps  {:>12.1} msgs/s{}",
        name,
        batch,
        r.tps,
        r.msgs_per_sec,
        latency
            .map(|l| format!("  (avg latency {l:.2} ms)"))
            .unwrap_or_default()
    );
    Ok(Ok(r))
}

/// `(tps, average latency ms)` from pgbench's summary.
pub(crate) fn parse_pgbench(out: &str) -> Option<(f64, Option<f64>)> {
    let number_after = |line: &str, prefix: &str| -> Option<f64> {
        line.trim()
            .strip_prefix(prefix)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let tps = out.lines().find_map(|l| number_after(l, "tps = "))?;
    let latency = out
        .lines()
        .find_map(|l| number_after(l, "latency average = "));
    Some((tps, latency))
}

fn build_report(
    postgres: String,
    server: String,
    clients: u32,
    quick: bool,
    seconds: u32,
    reference: Vec<RefResult>,
    engine: Option<EngineJson>,
) -> Report {
    let mut ratios = Vec::new();
    if let Some(e) = &engine {
        for (eng, refname) in [
            ("publish", "raw_insert"),
            ("claim_complete", "raw_claim_delete"),
            ("claim_complete", "engine_sql_claim"),
        ] {
            for batch in [1u32, 100] {
                let em = e
                    .results
                    .iter()
                    .find(|r| r.name == eng && r.batch == batch)
                    .map(|r| r.msgs_per_sec);
                let rm = reference
                    .iter()
                    .find(|r| r.name == refname && r.batch == batch)
                    .map(|r| r.msgs_per_sec);
                let ratio = match (em, rm) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                };
                ratios.push(Ratio {
                    engine: eng.to_string(),
                    reference: refname.to_string(),
                    batch,
                    engine_msgs_per_sec: em,
                    reference_msgs_per_sec: rm,
                    ratio,
                });
            }
        }
    }
    let wakeup_p50_meets_target = engine
        .as_ref()
        .and_then(|e| e.wakeup_ms.as_ref())
        .map(|w| w.p50 < WAKEUP_TARGET_MS);
    Report {
        generated_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        postgres,
        server,
        clients,
        quick,
        reference_seconds: seconds,
        reference,
        engine,
        ratios,
        wakeup_target_ms: WAKEUP_TARGET_MS,
        wakeup_p50_meets_target,
    }
}

/// Messages per second against the batch size: the engine's operations next to the raw-SQL
/// scenarios they compare with.
fn charts(r: &Report) -> Vec<conveyor_benchkit::Chart> {
    use conveyor_benchkit::{Chart, Series};
    let reference = |name: &str| {
        Series::new(
            format!("{name} (pgbench)"),
            r.reference.iter().filter(|x| x.name == name).map(|x| (x.batch as f64, x.msgs_per_sec)),
        )
    };
    let engine = |name: &str| {
        Series::new(
            format!("{name} (engine)"),
            r.engine.iter().flat_map(|e| &e.results).filter(|x| x.name == name).map(|x| (x.batch as f64, x.msgs_per_sec)),
        )
    };
    vec![
        Chart::new("Publish: engine vs raw INSERT", "messages per transaction", "msgs/s")
            .line(engine("publish"))
            .line(reference("raw_insert")),
        Chart::new("Consume: engine vs raw SKIP LOCKED claim", "messages per claim", "msgs/s")
            .line(engine("claim_complete"))
            .line(reference("raw_claim_delete"))
            .line(reference("engine_sql_claim")),
        Chart::new("Relay: outbox to inbox", "messages per batch", "msgs/s").line(engine("relay")),
    ]
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "n/a".to_string())
}

fn render_markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Queue benchmark report\n");
    let _ = writeln!(
        s,
        "{} ({}), {} clients{}; reference: pgbench -M prepared, {} s per scenario, ~{}-byte JSON payload, the mean of a pass before and a pass after the engine.\n",
        r.postgres,
        r.server,
        r.clients,
        if r.quick {
            ", QUICK smoke run (not a measurement)"
        } else {
            ""
        },
        r.reference_seconds,
        PAYLOAD.len()
    );
    let _ = writeln!(s, "## Raw-SQL reference (pgbench)\n");
    let _ = writeln!(s, "| scenario | batch | tps | msgs/s | msgs/s before / after the engine |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for x in &r.reference {
        let passes = x.passes_msgs_per_sec.iter().map(|m| format!("{m:.1}")).collect::<Vec<_>>().join(" / ");
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {} |",
            x.name, x.batch, x.tps, x.msgs_per_sec, passes
        );
    }
    match &r.engine {
        None => {
            let _ = writeln!(s, "\n## Queue engine\n\nnot measured (--reference-only)");
        }
        Some(e) => {
            let _ = writeln!(s, "\n## Queue engine ({} clients)\n", e.clients);
            let _ = writeln!(s, "| operation | batch | msgs/s |");
            let _ = writeln!(s, "|---|---:|---:|");
            for x in &e.results {
                let _ = writeln!(s, "| {} | {} | {:.1} |", x.name, x.batch, x.msgs_per_sec);
            }
            let _ = writeln!(s, "\n## Engine vs raw SQL\n");
            let _ = writeln!(
                s,
                "| engine | reference | batch | engine msgs/s | reference msgs/s | engine / reference |"
            );
            let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
            for x in &r.ratios {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} |",
                    x.engine,
                    x.reference,
                    x.batch,
                    opt(x.engine_msgs_per_sec, 1),
                    opt(x.reference_msgs_per_sec, 1),
                    x.ratio
                        .map(|v| format!("{v:.2}×"))
                        .unwrap_or_else(|| "n/a".into())
                );
            }
            let _ = writeln!(s, "\n## Wake-up latency (publish → consumer sees it)\n");
            match &e.wakeup_ms {
                Some(w) => {
                    let _ = writeln!(
                        s,
                        "p50 {:.2} ms (target < {:.0} ms: {}), p95 {:.2} ms, p99 {:.2} ms, {} samples",
                        w.p50,
                        r.wakeup_target_ms,
                        if w.p50 < r.wakeup_target_ms {
                            "met"
                        } else {
                            "MISSED"
                        },
                        w.p95,
                        w.p99,
                        w.samples
                    );
                }
                None => {
                    let _ = writeln!(s, "not reported by the engine benchmark");
                }
            }
            let _ = writeln!(s, "\n## Retries on time (end of backoff → handler start, idle consumer, its poll 10 minutes away)\n");
            match &e.retry_lateness_ms {
                Some(w) => {
                    let _ = writeln!(
                        s,
                        "p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms (target ≤ {RETRY_TARGET_MS:.0} ms: {}), {} samples",
                        w.p50,
                        w.p95,
                        w.p99,
                        if w.p99 <= RETRY_TARGET_MS { "met" } else { "MISSED" },
                        w.samples
                    );
                }
                None => {
                    let _ = writeln!(s, "not reported by the engine benchmark");
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_15_output() {
        let out = "transaction type: x.sql\nscaling factor: 1\nquery mode: prepared\n\
                   number of clients: 4\nnumber of threads: 2\nduration: 2 s\n\
                   number of transactions actually processed: 2000\n\
                   latency average = 3.998 ms\ninitial connection time = 5.1 ms\n\
                   tps = 1000.456789 (without initial connection time)\n";
        let (tps, lat) = parse_pgbench(out).unwrap();
        assert!((tps - 1000.456789).abs() < 1e-9);
        assert_eq!(lat, Some(3.998));
    }

    #[test]
    fn payload_is_about_200_bytes_of_json() {
        assert!((180..=240).contains(&PAYLOAD.len()), "{}", PAYLOAD.len());
        serde_json::from_str::<serde_json::Value>(PAYLOAD).unwrap();
    }

    #[test]
    fn report_computes_ratios() {
        let reference = vec![
            RefResult {
                name: "raw_insert".into(),
                batch: 1,
                tps: 100.0,
                msgs_per_sec: 100.0,
                latency_avg_ms: None,
                passes_msgs_per_sec: Vec::new(),
            },
            RefResult {
                name: "raw_insert".into(),
                batch: 100,
                tps: 10.0,
                msgs_per_sec: 1000.0,
                latency_avg_ms: None,
                passes_msgs_per_sec: Vec::new(),
            },
        ];
        let engine: EngineJson = serde_json::from_str(
            r#"{"clients":4,"results":[{"name":"publish","batch":1,"msgs_per_sec":50.0},
                {"name":"publish","batch":100,"msgs_per_sec":2000.0}],
                "wakeup_ms":{"p50":1.2,"p95":2.0,"p99":3.1,"samples":200}}"#,
        )
        .unwrap();
        let r = build_report(
            "PostgreSQL 15".into(),
            "x".into(),
            4,
            false,
            10,
            reference,
            Some(engine),
        );
        let p1 = r
            .ratios
            .iter()
            .find(|x| x.engine == "publish" && x.batch == 1)
            .unwrap();
        assert_eq!(p1.ratio, Some(0.5));
        let p100 = r
            .ratios
            .iter()
            .find(|x| x.engine == "publish" && x.batch == 100)
            .unwrap();
        assert_eq!(p100.ratio, Some(2.0));
        let c1 = r
            .ratios
            .iter()
            .find(|x| x.engine == "claim_complete" && x.batch == 1)
            .unwrap();
        assert_eq!(c1.ratio, None);
        assert_eq!(r.wakeup_p50_meets_target, Some(true));
        let charts = charts(&r);
        assert_eq!(charts[0].series[0].points, [(1.0, 50.0), (100.0, 2000.0)]);
        assert_eq!(charts[0].series[1].points, [(1.0, 100.0), (100.0, 1000.0)]);
        let md = render_markdown(&r);
        assert!(md.contains("0.50×") && md.contains("met"), "{md}");
    }

    #[test]
    fn two_reference_passes_average_and_keep_both() {
        let pass = |m: f64| {
            vec![RefResult {
                name: "raw_insert".into(),
                batch: 1,
                tps: m,
                msgs_per_sec: m,
                latency_avg_ms: Some(1.0),
                passes_msgs_per_sec: Vec::new(),
            }]
        };
        let mean = mean_of_passes(pass(100.0), pass(300.0));
        assert_eq!(mean[0].msgs_per_sec, 200.0);
        assert_eq!(mean[0].passes_msgs_per_sec, [100.0, 300.0]);
        assert!(render_markdown(&build_report("PG".into(), "x".into(), 4, false, 10, mean, None)).contains("100.0 / 300.0"));
    }
}
