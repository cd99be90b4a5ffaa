//! A goose load test of a running Conveyor shop (see README.md).
//!
//! Four scenarios, weighted like a shop's traffic: browse the catalog (40), view a product
//! (30: catalog, then its stock), place an order and poll it until it is confirmed or
//! cancelled (20), list a customer's orders (10). Every request goes to a full URL, so one
//! goose run drives catalog-, order-, stock- and payment-api at once. The saga's latency
//! (the order's 201 answer → the poll that sees `confirmed`/`cancelled`) is recorded both in
//! goose's report (as `SAGA order placed → …`) and, exactly, in `summary.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use conveyor_benchkit::{Chart, Machine, Percentiles, Series, Timeline, write_svg};
use goose::config::GooseConfiguration;
use goose::goose::GooseResponse;
use goose::metrics::{GooseMetrics, GooseRequestMetricTimingData};
use goose::prelude::*;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};
use uuid::Uuid;

/// How long one order may take to reach `confirmed`/`cancelled` before it counts as unfinished.
pub const SAGA_LIMIT: Duration = Duration::from_secs(60);
/// The poll interval of an order.
pub const POLL: Duration = Duration::from_millis(20);
/// Balance of each customer the load test creates (10^11 EUR): never declined.
const RICH_BALANCE_MINOR: i64 = 10_000_000_000_000;
/// Products whose available stock is below this are restocked by `RESTOCK` before the run.
const LOW_STOCK: i64 = 100_000;
const RESTOCK: i64 = 1_000_000;
/// Name of the custom (non-HTTP) measurement in goose's metrics.
const SAGA_METHOD: &str = "SAGA";

/// The base URLs of the APIs the load test talks to.
#[derive(Debug, Clone)]
pub struct Targets {
    pub catalog: String,
    pub order: String,
    pub stock: String,
    pub payment: String,
}

/// Our own flags (each with an environment variable); everything else goes to goose.
#[derive(Debug, Clone)]
pub struct Options {
    pub targets: Targets,
    /// Where the machine-readable summary goes.
    pub summary_file: PathBuf,
    /// How many rich customers to create on payment-api before the run.
    pub customers: usize,
    /// The issuer the shop trusts (`issuer.json` in the log directory of `cargo xtask up`):
    /// the load test signs an operator's token (to prepare) and each buyer's own.
    pub issuer_file: PathBuf,
    /// Goose's own options (users, increase rate, run time, report files, …).
    pub goose_args: Vec<String>,
}

/// (flag, environment variable, default)
pub const FLAGS: &[(&str, &str, &str)] = &[
    ("--catalog", "CONVEYOR_CATALOG_URL", "http://127.0.0.1:8081"),
    ("--order", "CONVEYOR_ORDER_URL", "http://127.0.0.1:8082"),
    ("--stock", "CONVEYOR_STOCK_URL", "http://127.0.0.1:8083"),
    ("--payment", "CONVEYOR_PAYMENT_URL", "http://127.0.0.1:8084"),
    ("--summary-file", "CONVEYOR_LOADTEST_SUMMARY", "target/loadtest/summary.json"),
    ("--customers", "CONVEYOR_LOADTEST_CUSTOMERS", "20"),
    ("--issuer", "CONVEYOR_ISSUER_FILE", ""),
];

pub const DEFAULT_REPORT: &str = "target/loadtest/report.html";

pub fn usage() -> String {
    let mut s = String::from(
        "conveyor-loadtest: a goose load test of a running Conveyor shop.\n\nConveyor options (flag, or environment variable; default):\n",
    );
    for (flag, env, default) in FLAGS {
        s.push_str(&format!("  {flag:<16} {env:<30} {default}\n"));
    }
    s.push_str(&format!(
        "\nEvery other option is goose's (below), e.g. --users 20 --increase-rate 5 --run-time 60s\n--report-file {DEFAULT_REPORT} (the default when no --report-file is given).\n"
    ));
    s
}

impl Options {
    /// Splits the command line (without the program name) into ours and goose's.
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Options> {
        let mut ours: BTreeMap<&str, String> = BTreeMap::new();
        let mut goose_args = Vec::new();
        let mut args = args.into_iter();
        'next: while let Some(arg) = args.next() {
            for (flag, _, _) in FLAGS {
                if arg == *flag {
                    let value = args.next().with_context(|| format!("{flag} needs a value"))?;
                    ours.insert(flag, value);
                    continue 'next;
                }
                if let Some(value) = arg.strip_prefix(&format!("{flag}=")) {
                    ours.insert(flag, value.to_owned());
                    continue 'next;
                }
            }
            goose_args.push(arg);
        }
        let get = |flag: &str| -> String {
            let (_, env, default) = FLAGS.iter().find(|(f, _, _)| *f == flag).expect("known flag");
            ours.get(flag).cloned().or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty())).unwrap_or_else(|| default.to_string())
        };
        let trim = |u: String| u.trim_end_matches('/').to_owned();
        Ok(Options {
            targets: Targets { catalog: trim(get("--catalog")), order: trim(get("--order")), stock: trim(get("--stock")), payment: trim(get("--payment")) },
            summary_file: get("--summary-file").into(),
            customers: get("--customers").parse().context("--customers: not a number")?,
            issuer_file: Some(get("--issuer")).filter(|f| !f.is_empty()).context("--issuer is required: the issuer file of the shop's stack (`issuer.json` in its log directory; `cargo xtask up` prints it)")?.into(),
            goose_args,
        })
    }
}

/// What the scenarios share: where to go, what to buy, who buys, and the sagas seen.
struct Shared {
    t: Targets,
    products: Vec<Uuid>,
    /// Who places orders: the load test's rich customers and Alice.
    buyers: Vec<Uuid>,
    /// Whose orders get listed: the buyers and Bob.
    listed: Vec<Uuid>,
    /// `Bearer <token>` of each buyer and listed customer: each acts as themself.
    tokens: HashMap<Uuid, String>,
    /// Sagas ended per second, with their latencies in milliseconds.
    sagas: Mutex<Timeline>,
    confirmed: AtomicU64,
    cancelled: AtomicU64,
    unfinished: AtomicU64,
    cancel_reasons: Mutex<BTreeMap<String, u64>>,
}

static SHARED: RwLock<Option<Arc<Shared>>> = RwLock::new(None);

fn shared() -> Arc<Shared> {
    SHARED.read().expect("not poisoned").clone().expect("set before the run")
}

/// Prepares the shop, runs goose, writes and returns the summary.
pub async fn run(opts: Options) -> Result<Value> {
    let mut config = GooseConfiguration::parse_args_default(&opts.goose_args).map_err(|e| anyhow::anyhow!("goose options: {e}"))?;
    if config.report_file.is_empty() {
        config.report_file.push(DEFAULT_REPORT.to_owned());
    }
    for file in config.report_file.iter().map(PathBuf::from).chain([opts.summary_file.clone()]) {
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let reports = config.report_file.clone();

    let shared = Arc::new(prepare(&opts).await?);
    *SHARED.write().expect("not poisoned") = Some(shared.clone());
    println!(
        "conveyor-loadtest: {} products, {} buyers; catalog {} order {} stock {} payment {}",
        shared.products.len(),
        shared.buyers.len(),
        opts.targets.catalog,
        opts.targets.order,
        opts.targets.stock,
        opts.targets.payment
    );

    let started = chrono::Utc::now();
    let clock = Instant::now();
    *shared.sagas.lock().expect("not poisoned") = Timeline::new(clock, Duration::from_secs(1));
    let metrics = GooseAttack::initialize_with_config(config)?
        .register_scenario(scenario!("browse catalog").set_weight(40)?.register_transaction(transaction!(browse).set_name("browse")))
        .register_scenario(scenario!("view product").set_weight(30)?.register_transaction(transaction!(view_product).set_name("view product")))
        .register_scenario(scenario!("place order").set_weight(20)?.register_transaction(transaction!(place_order).set_name("place order and poll")))
        .register_scenario(scenario!("list orders").set_weight(10)?.register_transaction(transaction!(list_orders).set_name("list orders")))
        .set_default(GooseDefault::Host, opts.targets.catalog.as_str())?
        .set_default(GooseDefault::Users, 8)?
        .set_default(GooseDefault::RunTime, 30)?
        .set_default(GooseDefault::NoTelnet, true)?
        // Count the whole run, ramp-up included, as the saga figures do.
        .set_default(GooseDefault::NoResetMetrics, true)?
        .execute()
        .await?;

    let summary = summarize(&opts, &shared, &metrics, &reports, started, clock.elapsed());
    std::fs::write(&opts.summary_file, serde_json::to_string_pretty(&summary)? + "\n").with_context(|| format!("writing {}", opts.summary_file.display()))?;
    let plot = opts.summary_file.with_extension("svg");
    write_plot(&plot, &shared.sagas.lock().expect("not poisoned"))?;
    print_summary(&summary);
    println!("conveyor-loadtest: summary {}, plot {}, report {}", opts.summary_file.display(), plot.display(), reports.join(", "));
    Ok(summary)
}

/// Reads the products, tops up their stock, creates the rich customers.
async fn prepare(opts: &Options) -> Result<Shared> {
    let t = &opts.targets;
    let issuer = conveyor_platform::auth::DevIssuer::load(&opts.issuer_file)?;
    // Preparing (restocking, creating customers) is an operator's work.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", issuer.operator()).parse()?);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).default_headers(headers).build()?;
    let page: Value = http.get(format!("{}/products?limit=100", t.catalog)).send().await.with_context(|| format!("catalog-api at {}", t.catalog))?.error_for_status()?.json().await?;
    let products: Vec<Uuid> = page["items"].as_array().into_iter().flatten().filter_map(|p| p["id"].as_str()?.parse().ok()).collect();
    if products.is_empty() {
        bail!("catalog-api at {} lists no products: load the demo data first (`cargo xtask up` does)", t.catalog);
    }
    let mut orderable = Vec::new();
    for id in &products {
        let resp = http.get(format!("{}/items/{id}", t.stock)).send().await?;
        if !resp.status().is_success() {
            continue; // not (yet) known to stock: leave it to browsing
        }
        let item: Value = resp.json().await?;
        let on_hand = item["available"].as_i64().unwrap_or(0) + item["reserved"].as_i64().unwrap_or(0);
        if item["available"].as_i64().unwrap_or(0) < LOW_STOCK {
            let quantity = RESTOCK.min(conveyor_contracts::limits::MAX_STOCK - on_hand);
            if quantity > 0 {
                http.post(format!("{}/items/{id}/restock", t.stock)).json(&json!({ "quantity": quantity })).send().await?.error_for_status().with_context(|| format!("restocking {id}"))?;
            }
        }
        orderable.push(*id);
    }
    if orderable.is_empty() {
        bail!("no product of catalog-api is known to stock-api at {}", t.stock);
    }
    let mut buyers = Vec::new();
    let stamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
    for i in 0..opts.customers {
        let id = Uuid::now_v7();
        let body = json!({"id": id, "name": format!("Load test customer {} ({stamp})", i + 1), "currency": "EUR", "balance_minor": RICH_BALANCE_MINOR});
        http.post(format!("{}/customers", t.payment)).json(&body).send().await.with_context(|| format!("payment-api at {}", t.payment))?.error_for_status().context("creating a customer")?;
        buyers.push(id);
    }
    let known = |id: Uuid| {
        let http = http.clone();
        let url = format!("{}/customers/{id}", t.payment);
        async move { http.get(url).send().await.is_ok_and(|r| r.status().is_success()) }
    };
    if known(conveyor_launcher::demo::ALICE).await {
        buyers.push(conveyor_launcher::demo::ALICE);
    }
    if buyers.is_empty() {
        bail!("no customer to place orders: --customers 0 and Alice ({}) is not on payment-api", conveyor_launcher::demo::ALICE);
    }
    let mut listed = buyers.clone();
    listed.push(conveyor_launcher::demo::BOB);
    let tokens = listed.iter().map(|id| (*id, format!("Bearer {}", issuer.customer(*id)))).collect();
    Ok(Shared {
        t: t.clone(),
        products: orderable,
        buyers,
        listed,
        tokens,
        sagas: Mutex::new(Timeline::new(Instant::now(), Duration::from_secs(1))),
        confirmed: AtomicU64::new(0),
        cancelled: AtomicU64::new(0),
        unfinished: AtomicU64::new(0),
        cancel_reasons: Mutex::new(BTreeMap::new()),
    })
}

fn pick(from: &[Uuid]) -> Uuid {
    *from.choose(&mut rand::rng()).expect("never empty")
}

/// A GET, with `auth` (`Bearer …`) when the route needs a token.
async fn get(user: &mut GooseUser, url: &str, name: &str, auth: Option<&str>) -> Result<GooseResponse, Box<TransactionError>> {
    let mut request = GooseRequest::builder().method(GooseMethod::Get).path(url).name(name);
    if let Some(auth) = auth {
        request = request.set_request_builder(user.get_request_builder(&GooseMethod::Get, url)?.header("Authorization", auth));
    }
    user.request(request.build()).await
}

async fn browse(user: &mut GooseUser) -> TransactionResult {
    let s = shared();
    get(user, &format!("{}/products?limit=20", s.t.catalog), "catalog /products?limit=20", None).await?;
    Ok(())
}

async fn view_product(user: &mut GooseUser) -> TransactionResult {
    let s = shared();
    let id = pick(&s.products);
    get(user, &format!("{}/products/{id}", s.t.catalog), "catalog /products/{id}", None).await?;
    get(user, &format!("{}/items/{id}", s.t.stock), "stock /items/{id}", None).await?;
    Ok(())
}

async fn list_orders(user: &mut GooseUser) -> TransactionResult {
    let s = shared();
    let id = pick(&s.listed);
    get(user, &format!("{}/customers/{id}/orders", s.t.order), "order /customers/{id}/orders", Some(&s.tokens[&id])).await?;
    Ok(())
}

async fn place_order(user: &mut GooseUser) -> TransactionResult {
    let s = shared();
    let (customer, product) = (pick(&s.buyers), pick(&s.products));
    let url = format!("{}/orders", s.t.order);
    let body = json!({"customer_id": customer, "lines": [{"product_id": product, "quantity": 1}]});
    let auth = &s.tokens[&customer];
    let builder = user.get_request_builder(&GooseMethod::Post, &url)?.header("Idempotency-Key", Uuid::now_v7().to_string()).header("Authorization", auth).json(&body);
    let request = GooseRequest::builder().method(GooseMethod::Post).path(url.as_str()).name("order /orders").expect_status_code(201).set_request_builder(builder).build();
    let response = user.request(request).await?;
    // A failed POST is in goose's metrics already; only an accepted order has a saga.
    let Ok(answer) = response.response else { return Ok(()) };
    if answer.status() != 201 {
        return Ok(());
    }
    let placed = Instant::now();
    let Some(id) = answer.json::<Value>().await.ok().and_then(|v| v["id"].as_str().map(str::to_owned)) else { return Ok(()) };
    let order_url = format!("{}/orders/{id}", s.t.order);
    loop {
        let response = get(user, &order_url, "order /orders/{id}", Some(auth)).await?;
        let order = match response.response {
            Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
            _ => None,
        };
        let status = order.as_ref().and_then(|o| o["status"].as_str());
        match status {
            Some("confirmed") | Some("cancelled") => {
                let took = placed.elapsed();
                s.sagas.lock().expect("not poisoned").record(Instant::now(), took.as_secs_f64() * 1000.0);
                if status == Some("confirmed") {
                    s.confirmed.fetch_add(1, Ordering::Relaxed);
                } else {
                    s.cancelled.fetch_add(1, Ordering::Relaxed);
                    let reason = order.as_ref().and_then(|o| o["reason"].as_str()).unwrap_or("unknown").to_owned();
                    *s.cancel_reasons.lock().expect("not poisoned").entry(reason).or_default() += 1;
                }
                let name = format!("order placed → {}", status.unwrap_or_default());
                user.record_custom_request_duration(SAGA_METHOD, &name, took, true, None, None).await?;
                return Ok(());
            }
            _ if placed.elapsed() > SAGA_LIMIT => {
                s.unfinished.fetch_add(1, Ordering::Relaxed);
                let error = format!("order {id} not confirmed or cancelled after {SAGA_LIMIT:?}");
                user.record_custom_request_duration(SAGA_METHOD, "order placed → unfinished", placed.elapsed(), false, None, Some(&error)).await?;
                return Ok(());
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

fn timing(t: &GooseRequestMetricTimingData) -> Value {
    json!({
        "min": ms(t.minimum_time_us),
        "mean": if t.counter == 0 { 0.0 } else { ms(t.total_time_us / t.counter as u64) },
        "p50": ms(t.percentile_us(0.50)),
        "p95": ms(t.percentile_us(0.95)),
        "p99": ms(t.percentile_us(0.99)),
        "max": ms(t.maximum_time_us),
    })
}

/// Milliseconds to two decimals.
fn round_ms(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Sagas ended per second, and their latency, over the run.
fn write_plot(path: &Path, sagas: &Timeline) -> Result<()> {
    let points = sagas.points();
    let latency = |q: fn(&Percentiles) -> f64| points.iter().filter_map(move |p| p.latency.as_ref().map(|l| (p.t, q(l))));
    write_svg(
        path,
        &[
            Chart::new("Sagas ended per second (confirmed or cancelled)", "seconds", "sagas/s").line(Series::new("sagas", points.iter().map(|p| (p.t, p.per_sec)))),
            Chart::new("Saga latency, placed → terminal, per second", "seconds", "ms")
                .line(Series::new("p50", latency(|l| l.p50)))
                .line(Series::new("p99", latency(|l| l.p99)))
                .line(Series::new("max", latency(|l| l.max))),
        ],
    )
}

/// Rates are per second of the whole run (ramp-up included: goose does not reset its
/// metrics here, so its counts cover the same time).
fn summarize(opts: &Options, s: &Shared, m: &GooseMetrics, reports: &[String], started: chrono::DateTime<chrono::Utc>, elapsed: Duration) -> Value {
    let secs = elapsed.as_secs_f64().max(0.001);
    let per_s = |n: usize| (n as f64 / secs * 10.0).round() / 10.0;
    let mut requests = serde_json::Map::new();
    let (mut total, mut failed, mut status_5xx) = (0usize, 0usize, 0usize);
    let mut names: Vec<&String> = m.requests.keys().collect();
    names.sort();
    for key in names {
        let r = &m.requests[key];
        let custom = r.method_label() == SAGA_METHOD;
        let count = r.success_count + r.fail_count;
        let codes: BTreeMap<String, usize> = r.status_code_counts.iter().map(|(c, n)| (c.to_string(), *n)).collect();
        let fives: usize = r.status_code_counts.iter().filter(|(c, _)| **c >= 500).map(|(_, n)| n).sum();
        if !custom {
            total += count;
            failed += r.fail_count;
            status_5xx += fives;
        }
        requests.insert(
            key.clone(),
            json!({
                "method": r.method_label(),
                "name": r.path,
                "count": count,
                "success": r.success_count,
                "fail": r.fail_count,
                "per_s": per_s(count),
                "status_codes": codes,
                "ms": timing(&r.raw_data),
            }),
        );
    }
    let sagas = s.sagas.lock().expect("not poisoned").clone();
    let p = sagas.latency().unwrap_or(Percentiles { count: 0, mean: 0.0, p50: 0.0, p95: 0.0, p99: 0.0, max: 0.0 });
    let saga_ms = json!({"p50": round_ms(p.p50), "p95": round_ms(p.p95), "p99": round_ms(p.p99), "max": round_ms(p.max), "mean": round_ms(p.mean)});
    let timeline: Vec<Value> = sagas
        .points()
        .iter()
        .map(|x| json!({"t_s": x.t, "ended": x.count, "p50_ms": x.latency.map(|l| round_ms(l.p50)), "p99_ms": x.latency.map(|l| round_ms(l.p99))}))
        .collect();
    let count = sagas.total() as usize;
    let scenarios: Vec<Value> = m.scenarios.iter().map(|sc| json!({"name": &*sc.name, "users": sc.users.len(), "iterations": sc.run_times.counter, "ms": timing(&sc.run_times)})).collect();
    let errors: Vec<Value> = m.errors.values().map(|e| json!({"method": e.method_label(), "name": e.name, "error": e.error, "occurrences": e.occurrences})).collect();
    json!({
        "tool": format!("conveyor-loadtest {} (goose 0.19.0)", env!("CARGO_PKG_VERSION")),
        "started": started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "finished": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "run": {
            "duration_s": (secs * 10.0).round() / 10.0,
            "users": m.maximum_users,
            "goose_args": opts.goose_args,
            "targets": {"catalog": s.t.catalog, "order": s.t.order, "stock": s.t.stock, "payment": s.t.payment},
            "products": s.products.len(),
            "buyers": s.buyers.len(),
            "poll_ms": POLL.as_millis() as u64,
            "reports": reports,
        },
        "machine": machine(),
        "totals": {"requests": total, "per_s": per_s(total), "failed": failed, "status_5xx": status_5xx},
        "sagas": {
            "count": count,
            "per_s": per_s(count),
            "confirmed": s.confirmed.load(Ordering::Relaxed),
            "cancelled": s.cancelled.load(Ordering::Relaxed),
            "cancel_reasons": *s.cancel_reasons.lock().expect("not poisoned"),
            "unfinished": s.unfinished.load(Ordering::Relaxed),
            "measured": "the order's 201 answer → the first poll (every 20 ms) that shows confirmed or cancelled",
            "ms": saga_ms,
            "per_second": timeline,
        },
        "scenarios": scenarios,
        "requests": requests,
        "errors": errors,
    })
}

fn machine() -> Value {
    let m = Machine::detect();
    json!({
        "cpus": m.cpus,
        "cpu_model": m.cpu_model,
        "memory_gib": m.memory_gib,
        "os": m.os,
        "kernel": m.kernel,
        "described": m.describe(),
        "load_average": std::fs::read_to_string("/proc/loadavg").ok().map(|s| s.trim().to_owned()),
        "debug_build": cfg!(debug_assertions),
    })
}

/// A few lines for people.
pub fn print_summary(s: &Value) {
    println!();
    println!(
        "Load test: {} users for {} s on {} CPUs: {} requests ({} req/s), {} failed, {} with status 5xx",
        s["run"]["users"], s["run"]["duration_s"], s["machine"]["cpus"], s["totals"]["requests"], s["totals"]["per_s"], s["totals"]["failed"], s["totals"]["status_5xx"]
    );
    let g = &s["sagas"];
    println!(
        "Sagas: {} ({} confirmed, {} cancelled, {} unfinished), {}/s; placed → terminal p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
        g["count"], g["confirmed"], g["cancelled"], g["unfinished"], g["per_s"], g["ms"]["p50"], g["ms"]["p95"], g["ms"]["p99"], g["ms"]["max"]
    );
    if let Some(requests) = s["requests"].as_object() {
        for (name, r) in requests {
            println!(
                "  {name:<46} {:>7} ({:>6}/s, {} failed)  p50 {} ms  p95 {} ms  p99 {} ms",
                r["count"], r["per_s"], r["fail"], r["ms"]["p50"], r["ms"]["p95"], r["ms"]["p99"]
            );
        }
    }
}

/// Reads a summary back (for checks).
pub fn read_summary(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_our_flags_from_goose_flags() {
        let args = ["--order", "http://h:1/", "--users", "3", "--stock=http://s:2", "--run-time", "5s", "--customers", "2", "--issuer", "/x/issuer.json"];
        let o = Options::from_args(args.map(String::from)).unwrap();
        assert_eq!(o.targets.order, "http://h:1");
        assert_eq!(o.targets.stock, "http://s:2");
        assert_eq!(o.customers, 2);
        assert_eq!(o.issuer_file, PathBuf::from("/x/issuer.json"));
        assert_eq!(o.goose_args, ["--users", "3", "--run-time", "5s"]);
        GooseConfiguration::parse_args_default(&o.goose_args).unwrap();
    }

    #[test]
    fn the_issuer_is_required() {
        // SAFETY: no other test of this binary reads the variable.
        unsafe { std::env::remove_var("CONVEYOR_ISSUER_FILE") };
        let err = Options::from_args(["--order", "http://h:1"].map(String::from)).unwrap_err();
        assert!(format!("{err:#}").contains("--issuer is required"), "{err:#}");
    }
}
