//! The shop under load: the stack started with the launcher in one saga mode, seeded with
//! ample stock and balances, driven at rising rates until it no longer keeps up, then at
//! half the highest sustained rate for the latency.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use conveyor_benchkit::{Percentiles, Timeline};
use conveyor_contracts::{SagaMode, limits, service};
use conveyor_launcher::{Shop, Stack, StackOptions, process_names};
use serde::Serialize;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::cpu::{CpuUsage, Sampler};
use super::hot::{self, Hot, Shopfront};
use super::ramp::{self, Drive, DriverSetup, Outcome, Rules, Search};
use super::{Settings, LABELS_SQL, parse_labels, query_u64s};
use crate::bench::psql;
use crate::proc::Signals;

/// Databases of the stack are `saga_<db>`.
pub const DB_PREFIX: &str = "saga_";

/// One rate step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub rate: f64,
    /// Seconds from the start of the ramp.
    pub start_s: f64,
    pub drive: Drive,
    pub outcome: Outcome,
    /// Confirmed per second over the step's second half; placed per second over the step.
    pub confirmed_per_sec: f64,
    pub placed_per_sec: f64,
    pub sustained: bool,
    /// Why not, when not.
    pub failure: Option<String>,
    /// Seconds until every order of the step was terminal after it ended.
    pub drain_s: f64,
    pub cpu: CpuUsage,
    /// PostgreSQL deadlocks during the step, by service database.
    pub deadlocks: BTreeMap<String, u64>,
    /// Transactions (committed and rolled back) per saga placed in the step, by service
    /// database, from pg_stat_database (whose counters lag by up to a second or so).
    pub transactions_per_saga: BTreeMap<String, f64>,
    /// The messages the step's sagas sent; `None` when none was placed.
    pub messages: Option<Messages>,
}

/// The messages a run's sagas sent, as the inboxes of every service have them: each
/// message sent from the run's start on (ids are UUID v7, minted when sent) that reached an
/// inbox, handled (`conveyor.inbox_done`) or not yet (`conveyor.inbox`: the coordinator's
/// deadlines wait there until they are due, `--step-timeout` after they were set, long
/// after the run). A message routed to two services counts twice: it is handled twice.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Messages {
    /// Per saga placed in the run, all topics together.
    pub per_saga: f64,
    /// Per saga placed, by topic.
    pub by_topic: BTreeMap<String, f64>,
    /// Of them, not handled when counted (deadlines not due yet, retries, dead ones).
    pub waiting: u64,
    /// Still in an outbox when counted (not relayed within `--drain-secs`): not counted.
    pub unrelayed: u64,
}

impl Messages {
    /// From the counts by topic (handled, waiting) and the sagas placed.
    fn of(counts: &BTreeMap<String, (u64, u64)>, sagas: u64, unrelayed: u64) -> Option<Messages> {
        (sagas > 0).then_some(())?;
        let per = |n: u64| n as f64 / sagas as f64;
        Some(Messages {
            per_saga: per(counts.values().map(|(done, waiting)| done + waiting).sum()),
            by_topic: counts.iter().map(|(topic, (done, waiting))| (topic.clone(), per(done + waiting))).collect(),
            waiting: counts.values().map(|(_, waiting)| waiting).sum(),
            unrelayed,
        })
    }
}

/// Per-second points over the whole ramp (steps and the drains between them).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RampSeries {
    pub t: Vec<f64>,
    pub offered: Vec<f64>,
    pub placed: Vec<f64>,
    pub confirmed: Vec<f64>,
    pub backlog: Vec<f64>,
}

/// The latency of each hop of the saga at half rate, from the inboxes' timestamps (ms).
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub topic: String,
    pub consumer: String,
    /// On the way from placed to confirmed (not the notification, nor the order's reply
    /// to the coordinator, which come after the confirmation).
    pub on_path: bool,
    pub messages: u64,
    /// Publishing transaction's start → in the subscriber's inbox (the rest of the
    /// publishing transaction, the relay's wake-up and its copy).
    pub relay_ms: [f64; 3],
    /// In the inbox → claimed by the consumer (its transaction's start).
    pub wait_ms: [f64; 3],
}

/// Latency of the orders confirmed in one second of the half-rate run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyPoint {
    /// End of the second, from the start of the run.
    pub t: f64,
    pub p50: f64,
    pub p99: f64,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HalfRate {
    pub rate: f64,
    pub drive: Drive,
    pub outcome: Outcome,
    pub sustained: bool,
    pub failure: Option<String>,
    /// Placed → confirmed per order, ms (order database timestamps).
    pub latency_ms: Option<Percentiles>,
    /// Orders of the run not confirmed when the run was read.
    pub unconfirmed: u64,
    /// Per second of confirmation.
    pub timeline: Vec<LatencyPoint>,
    pub hops: Vec<Hop>,
    pub cpu: CpuUsage,
    /// As for a step: transactions per saga by service database, and messages.
    pub transactions_per_saga: BTreeMap<String, f64>,
    pub messages: Option<Messages>,
}

pub struct StackResults {
    pub mode: SagaMode,
    pub steps: Vec<Step>,
    pub series: RampSeries,
    pub search: Search,
    pub half: Option<HalfRate>,
    /// The hot-products phase, unless `--no-hot`; or why it could not run.
    pub hot: Option<Hot>,
    pub hot_error: Option<String>,
    pub seeded: (usize, usize),
    /// Orchestration: the coordinator's sagas by state once the shop was done (every one
    /// should have ended); `None` in the choreography.
    pub coordinator_sagas: Option<BTreeMap<String, u64>>,
    pub log_dir: std::path::PathBuf,
}

/// Starts the stack in saga mode `mode`, measures, stops it (also on failure or a signal).
pub async fn measure(s: &Settings, mode: SagaMode, admin_url: &str, pg_bin: &Path, app_bin: &Path, log_dir: &Path, signals: &mut Signals) -> Result<Result<StackResults, i32>> {
    let driver = app_bin.join("saga-driver");
    anyhow::ensure!(driver.exists(), "{} not found: it is built with the shop (`cargo build --workspace --bins`)", driver.display());
    for db in databases() {
        step!(psql(pg_bin, admin_url, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"), signals).await);
    }
    let _ = std::fs::remove_dir_all(log_dir);
    let mut opts = StackOptions::new(admin_url.to_owned(), app_bin.to_path_buf(), log_dir.to_path_buf());
    opts.db_prefix = DB_PREFIX.to_owned();
    opts.saga_mode = mode;
    opts.delivery = s.delivery;
    let mut stack = tokio::select! {
        st = Stack::start(opts, |line| println!("   ✓ {line}")) => st?,
        sig = signals.wait() => return Ok(Err(sig)),
    };
    let result = with_stack(s, mode, &mut stack, pg_bin, app_bin, log_dir, signals).await;
    println!("\n== stopping the shop ==");
    let stopped = stack.stop().await;
    let result = result?;
    stopped.context("stopping the shop after the benchmark")?;
    Ok(result)
}

/// The stack's databases, every service's (the coordinator's too), by their names on the server.
fn databases() -> Vec<String> {
    service::ALL.iter().map(|svc| format!("{DB_PREFIX}{}", conveyor_launcher::database_name(svc))).collect()
}

async fn with_stack(s: &Settings, mode: SagaMode, stack: &mut Stack, pg_bin: &Path, app_bin: &Path, log_dir: &Path, signals: &mut Signals) -> Result<Result<StackResults, i32>> {
    let shop = stack.shop();
    println!("\n== seeding {} products (stock {}) and {} customers (balance {}) ==", s.products, limits::MAX_STOCK, s.customers, limits::MAX_BALANCE_MINOR);
    let seeded = Instant::now();
    let (products, customers) = tokio::select! {
        c = seed(&shop, s.products as usize, s.customers as usize) => c?,
        sig = signals.wait() => return Ok(Err(sig)),
    };
    println!("   ✓ seeded and synchronized to order and stock in {:.1} s", seeded.elapsed().as_secs_f64());
    let catalog = log_dir.join("saga-driver-catalog.txt");
    std::fs::write(&catalog, conveyor_launcher::drive::catalog_text(&products, &customers)).with_context(|| format!("writing {}", catalog.display()))?;
    let (driver_bin, order_api) = (app_bin.join("saga-driver"), stack.api["order"].clone());
    let issuer = stack.issuer_file();
    let driver = DriverSetup { binary: &driver_bin, order_api: &order_api, issuer: &issuer, catalog: &catalog, max_in_flight: s.max_in_flight, max_lines: 1, max_quantity: 1 };

    let order_db = stack.databases["order"].clone();
    let processes: Vec<(String, u32)> = process_names().into_iter().filter_map(|n| stack.pid(&n).map(|p| (n, p))).collect();
    let postmaster = super::postmaster(pg_bin, &order_db, signals).await?;
    let sampler = Sampler::new(processes, postmaster);
    let rules = Rules::default();
    let mut search = Search {
        start: s.start_rate,
        factor: s.factor,
        precision: 0.1,
        max_bisections: s.bisections,
        max_rate: s.max_rate,
        tried: Vec::new(),
    };
    println!(
        "\n== ramp: {:.0} s per step from {:.0} orders/s (×{}), then {} bisections; sustained = confirmed ≥ {:.0}% of offered and a bounded backlog ==",
        s.step_secs,
        s.start_rate,
        s.factor,
        s.bisections,
        rules.min_confirmed_share * 100.0
    );
    let mut seq = 0u64;
    if s.warmup_secs > 0.0 {
        // Connections, prepared statements, caches: not part of any step.
        let rate = (s.start_rate / 2.0).max(1.0);
        let warm = step!(ramp::drive(&driver, rate, s.warmup_secs, seq, signals).await);
        seq += warm.scheduled;
        let left = step!(drain(pg_bin, &order_db, Duration::from_secs_f64(s.drain_secs), signals).await);
        println!(
            "   warm-up: {:.0} s at {rate:.0} orders/s, {} accepted{}",
            s.warmup_secs,
            warm.accepted,
            left.map(|n| format!(", {n} still not terminal")).unwrap_or_default()
        );
    }
    let t0 = ramp::unix_now();
    let mut steps = Vec::new();
    let mut series = RampSeries::default();
    while let Some(rate) = search.next() {
        let labels_before = parse_labels(&step!(psql(pg_bin, &order_db, LABELS_SQL, signals).await));
        let stats_before = step!(db_stats(pg_bin, &order_db, signals).await);
        let a = sampler.snapshot();
        let drive = step!(ramp::drive(&driver, rate, s.step_secs, seq, signals).await);
        let b = sampler.snapshot();
        seq += drive.scheduled;
        stack.check_running()?;
        let mut labels = parse_labels(&step!(psql(pg_bin, &order_db, LABELS_SQL, signals).await));
        labels.extend(labels_before);
        let cpu = sampler.usage(&a, &b, &labels);
        let drain_started = Instant::now();
        let drained = step!(drain(pg_bin, &order_db, Duration::from_secs_f64(s.drain_secs), signals).await);
        let drain_s = drain_started.elapsed().as_secs_f64();
        let read_until = ramp::unix_now();
        let stats_after = step!(db_stats(pg_bin, &order_db, signals).await);
        let orders = ramp::parse_order_times(&step!(psql(pg_bin, &order_db, &ramp::order_times_sql(drive.start_unix - 0.001, read_until), signals).await))?;
        let outcome = ramp::outcome(&orders, drive.start_unix, drive.end_unix);
        let mut failure = ramp::verdict(&drive, &outcome, &rules);
        if let (None, Some(left)) = (&failure, drained) {
            failure = Some(format!("{left} orders still not terminal {:.0} s after the step", s.drain_secs));
        }
        let messages = step!(messages(pg_bin, &stack.databases, drive.start_unix - 0.001, outcome.placed, Duration::from_secs_f64(s.drain_secs), signals).await);
        let secs = (drive.end_unix - drive.start_unix).max(1e-3);
        let step = Step {
            rate,
            start_s: drive.start_unix - t0,
            confirmed_per_sec: outcome.confirmed_second_half as f64 / (secs / 2.0),
            placed_per_sec: outcome.placed as f64 / secs,
            sustained: failure.is_none(),
            failure,
            drain_s,
            cpu,
            deadlocks: stats_delta(&stats_before, &stats_after, |s| s.deadlocks).into_iter().filter(|(_, v)| *v > 0).collect(),
            transactions_per_saga: per_saga(&stats_delta(&stats_before, &stats_after, |s| s.transactions), outcome.placed),
            messages,
            drive,
            outcome,
        };
        println!("{}", progress_line(steps.len() + 1, &step));
        for sec in ramp::series(&orders, t0, step.drive.start_unix, read_until) {
            // The second ending at t offered `rate` if it began before the step's end.
            let offered = if sec.t - 1.0 + t0 < step.drive.end_unix { rate } else { 0.0 };
            series.t.push(sec.t);
            series.offered.push(offered);
            series.placed.push(sec.placed);
            series.confirmed.push(sec.confirmed);
            series.backlog.push(sec.backlog);
        }
        search.tried.push((rate, step.sustained));
        steps.push(step);
    }
    let half_rate = match search.best() {
        Some(best) => (best / 2.0).round().max(1.0),
        None => (search.tried.iter().map(|(r, _)| *r).fold(f64::INFINITY, f64::min) / 2.0).round().max(1.0),
    };
    println!(
        "\n== latency: {:.0} s at {half_rate:.0} orders/s (half of {}) ==",
        s.latency_secs,
        search.best().map_or("the lowest rate tried: none was sustained".to_owned(), |b| format!("the highest sustained {b:.0}/s"))
    );
    // The ramp's steps end when every order is terminal; a backlog they left (the
    // notification worker behind at rates above its own; the coordinator's last replies)
    // would share the machine with the latency run. It starts once no inbox holds a message
    // that is due (bounded like a drain; deadlines not due yet do not count).
    if let Some(left) = step!(drain_inboxes(pg_bin, &stack.databases, Duration::from_secs_f64(s.drain_secs), signals).await) {
        println!("   {left} messages still waiting {:.0} s after the ramp; measuring anyway", s.drain_secs);
    }
    let labels_before = parse_labels(&step!(psql(pg_bin, &order_db, LABELS_SQL, signals).await));
    let stats_before = step!(db_stats(pg_bin, &order_db, signals).await);
    let a = sampler.snapshot();
    let drive = step!(ramp::drive(&driver, half_rate, s.latency_secs, seq, signals).await);
    seq += drive.scheduled;
    let b = sampler.snapshot();
    stack.check_running()?;
    let mut labels = parse_labels(&step!(psql(pg_bin, &order_db, LABELS_SQL, signals).await));
    labels.extend(labels_before);
    let cpu = sampler.usage(&a, &b, &labels);
    let drained = step!(drain(pg_bin, &order_db, Duration::from_secs_f64(s.drain_secs), signals).await);
    let read_until = ramp::unix_now();
    let orders = ramp::parse_order_times(&step!(psql(pg_bin, &order_db, &ramp::order_times_sql(drive.start_unix - 0.001, read_until), signals).await))?;
    let outcome = ramp::outcome(&orders, drive.start_unix, drive.end_unix);
    let mut failure = ramp::verdict(&drive, &outcome, &rules);
    if let (None, Some(left)) = (&failure, drained) {
        failure = Some(format!("{left} orders still not terminal {:.0} s after the run", s.drain_secs));
    }
    let stats_after = step!(db_stats(pg_bin, &order_db, signals).await);
    let transactions_per_saga = per_saga(&stats_delta(&stats_before, &stats_after, |s| s.transactions), outcome.placed);
    let messages = step!(messages(pg_bin, &stack.databases, drive.start_unix - 0.001, outcome.placed, Duration::from_secs_f64(s.drain_secs), signals).await);
    let (latency_ms, timeline) = latencies(&orders, drive.start_unix);
    let mut hops = Vec::new();
    for &(db_svc, topic, on_path) in hops_of(mode) {
        let url = &stack.databases[db_svc];
        let text = step!(psql(pg_bin, url, &hop_sql(topic, drive.start_unix, drive.end_unix), signals).await);
        if let Some(hop) = parse_hop(&text, topic, db_svc, on_path) {
            hops.push(hop);
        }
    }
    let half = HalfRate {
        rate: half_rate,
        unconfirmed: orders.iter().filter(|o| !o.confirmed).count() as u64,
        sustained: failure.is_none(),
        failure,
        latency_ms,
        timeline,
        hops,
        cpu,
        transactions_per_saga,
        messages,
        drive,
        outcome,
    };
    match &half.latency_ms {
        Some(l) => println!(
            "   {:.0} orders/s: {} confirmed; placed → confirmed p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}",
            half.rate,
            l.count,
            l.p50,
            l.p95,
            l.p99,
            l.max,
            half.failure.as_ref().map(|f| format!("; NOT sustained: {f}")).unwrap_or_default()
        ),
        None => println!("   no order was confirmed at {:.0} orders/s", half.rate),
    }
    let (mut hot, mut hot_error) = (None, None);
    if s.hot {
        // At the highest rate sustained with orders spread over the catalog; with none, at
        // the first rate (the ratio to the spread rate is then not measured).
        let rate = search.best().unwrap_or(s.start_rate);
        let front = Shopfront { shop: &shop, mode, pg_bin, databases: &stack.databases, driver_bin: &driver_bin, order_api: &order_api, log_dir, customers: &customers };
        match hot::run(s, &front, search.best(), rate, seq, signals).await {
            Ok(Ok(h)) => hot = Some(h),
            Ok(Err(sig)) => return Ok(Err(sig)),
            // The ramp's results stay worth a report.
            Err(e) => {
                println!("   ✗ the hot-products phase failed: {e:#}");
                hot_error = Some(format!("{e:#}"));
            }
        }
        stack.check_running()?;
    }
    let coordinator_sagas = match mode {
        SagaMode::Choreography => None,
        SagaMode::Orchestration => Some(step!(coordinator_sagas(pg_bin, &stack.databases[service::COORDINATOR], Duration::from_secs_f64(s.drain_secs), signals).await)),
    };
    Ok(Ok(StackResults {
        mode,
        steps,
        series,
        search,
        half: Some(half),
        hot,
        hot_error,
        seeded: (products.len(), customers.len()),
        coordinator_sagas,
        log_dir: log_dir.to_path_buf(),
    }))
}

/// The hops of a saga in `mode`, in order: the consumer's service, the topic, and whether
/// it is on the way from placed to confirmed.
fn hops_of(mode: SagaMode) -> &'static [(&'static str, &'static str, bool)] {
    use conveyor_contracts::*;
    match mode {
        SagaMode::Choreography => &[
            (service::STOCK, OrderPlaced::TOPIC, true),
            (service::PAYMENT, StockReserved::TOPIC, true),
            (service::ORDER, PaymentCaptured::TOPIC, true),
            (service::NOTIFICATION, OrderConfirmed::TOPIC, false),
        ],
        SagaMode::Orchestration => &[
            (service::COORDINATOR, StartSaga::TOPIC, true),
            (service::STOCK, ReserveStock::TOPIC, true),
            (service::COORDINATOR, StockReplied::TOPIC, true),
            (service::PAYMENT, CapturePayment::TOPIC, true),
            (service::COORDINATOR, PaymentReplied::TOPIC, true),
            (service::ORDER, ConfirmOrder::TOPIC, true),
            (service::COORDINATOR, OrderReplied::TOPIC, false),
            (service::NOTIFICATION, OrderConfirmed::TOPIC, false),
        ],
    }
}

fn progress_line(n: usize, st: &Step) -> String {
    let top: Vec<String> = st.cpu.ranked().into_iter().take(3).map(|(name, c)| format!("{name} {c:.2}")).collect();
    format!(
        "   step {n:>2}: offered {:>5.0}/s → placed {:>5.0}/s, confirmed {:>5.0}/s, backlog {} (mid {}), POST p99 {} ms; CPU machine {} cores, top: {}; {}",
        st.rate,
        st.placed_per_sec,
        st.confirmed_per_sec,
        st.outcome.backlog_end,
        st.outcome.backlog_mid,
        st.drive.response_ms.map_or("n/a".into(), |p| format!("{:.1}", p.p99)),
        st.cpu.machine_busy.map_or("n/a".into(), |c| format!("{c:.2}")),
        top.join(", "),
        match &st.failure {
            None => "✓ sustained".to_owned(),
            Some(f) => format!("✗ {f}"),
        }
    )
}

/// Creates the products and customers and waits until every product has reached the
/// order and stock services, a few requests at a time.
async fn seed(shop: &Shop, products: usize, customers: usize) -> Result<(Vec<Uuid>, Vec<Uuid>)> {
    let product_ids = parallel(products, |i, shop| async move {
        shop.create_product(&format!("Saga product {i}"), 100 + (i as i64 % 900), "EUR", limits::MAX_STOCK).await
    }, shop)
    .await?;
    let customer_ids = parallel(customers, |i, shop| async move {
        shop.create_customer(Uuid::now_v7(), &format!("Saga customer {i}"), "EUR", limits::MAX_BALANCE_MINOR).await
    }, shop)
    .await?;
    let ids = std::sync::Arc::new(product_ids.clone());
    parallel(product_ids.len(), |i, shop| {
        let ids = ids.clone();
        async move { shop.wait_synced(ids[i - 1], Duration::from_secs(120)).await }
    }, shop)
    .await?;
    Ok((product_ids, customer_ids))
}

/// `f(1..=n)`, 16 at a time, results in completion order.
pub(super) async fn parallel<T, F, Fut>(n: usize, f: F, shop: &Shop) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize, Shop) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    const AT_ONCE: usize = 16;
    let mut out = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    for i in 1..=n {
        if set.len() >= AT_ONCE {
            out.push(set.join_next().await.expect("non-empty")??);
        }
        set.spawn(f(i, shop.clone()));
    }
    while let Some(r) = set.join_next().await {
        out.push(r??);
    }
    Ok(out)
}

/// Waits until no order is `placed` (every saga ended); `Some(left)` when `limit` passed first.
pub(super) async fn drain(pg_bin: &Path, order_db: &str, limit: Duration, signals: &mut Signals) -> Result<Result<Option<u64>, i32>> {
    count_down(pg_bin, order_db, PLACED_SQL, limit, signals).await
}

/// Orders placed and not ended, from the order's event store: those placed less those that
/// ended (an order ends once), two index-only scans. Polled every 100 ms while draining; the
/// `orders` view (`status = 'placed'`) joins the whole store with itself for the same
/// number, twice as slow.
const PLACED_SQL: &str =
    "SELECT (SELECT count(*) FROM order_events WHERE type = 'placed') - (SELECT count(*) FROM order_events WHERE type IN ('confirmed', 'cancelled'))";

/// Waits until `count_sql` counts nothing in the database `url`, or `limit` passes
/// (`Some(left)`).
async fn count_down(pg_bin: &Path, url: &str, count_sql: &str, limit: Duration, signals: &mut Signals) -> Result<Result<Option<u64>, i32>> {
    let deadline = Instant::now() + limit;
    loop {
        let left = query_u64s(&step!(psql(pg_bin, url, count_sql, signals).await))?[0];
        if left == 0 {
            return Ok(Ok(None));
        }
        if Instant::now() > deadline {
            return Ok(Ok(Some(left)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Messages in an inbox that are due: pending and visible, or being handled. (Not the
/// ones whose time has not come: retries after their backoff, the coordinator's deadlines.)
pub(super) const DUE_SQL: &str = "SELECT count(*) FROM conveyor.inbox WHERE state = 'running' OR (state = 'pending' AND visible_at <= now())";

/// Messages published and not relayed (or, pulled, not read by every subscriber) yet.
pub(super) const OUTBOX_SQL: &str = conveyor_queue::sql::OUTBOX_WAITING;

/// Waits until `count_sql` counts nothing in any of `databases` (service → URL), or `limit`
/// passes (`Some(left)`, summed).
async fn count_down_all(pg_bin: &Path, databases: &BTreeMap<String, String>, count_sql: &str, limit: Duration, signals: &mut Signals) -> Result<Result<Option<u64>, i32>> {
    let deadline = Instant::now() + limit;
    loop {
        let mut left = 0;
        for url in databases.values() {
            left += query_u64s(&step!(psql(pg_bin, url, count_sql, signals).await))?[0];
        }
        if left == 0 {
            return Ok(Ok(None));
        }
        if Instant::now() > deadline {
            return Ok(Ok(Some(left)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until no inbox of the stack holds a message that is due, or `limit` passes
/// (`Some(left)`).
async fn drain_inboxes(pg_bin: &Path, databases: &BTreeMap<String, String>, limit: Duration, signals: &mut Signals) -> Result<Result<Option<u64>, i32>> {
    count_down_all(pg_bin, databases, DUE_SQL, limit, signals).await
}

/// The messages sent from `from` (unix seconds) on, per saga of `sagas`: once every outbox
/// is empty (at most `limit`), counted in every inbox (see [`Messages`]).
async fn messages(pg_bin: &Path, databases: &BTreeMap<String, String>, from: f64, sagas: u64, limit: Duration, signals: &mut Signals) -> Result<Result<Option<Messages>, i32>> {
    let unrelayed = step!(count_down_all(pg_bin, databases, OUTBOX_SQL, limit, signals).await).unwrap_or(0);
    let sql = messages_sql(from);
    let mut counts = BTreeMap::new();
    for url in databases.values() {
        add_message_counts(&mut counts, &step!(psql(pg_bin, url, &sql, signals).await))?;
    }
    Ok(Ok(Messages::of(&counts, sagas, unrelayed)))
}

/// Messages sent from `from` (unix seconds) on in one database's inbox, by topic: handled,
/// not handled. Ids are UUID v7, so the smallest id of `from`'s millisecond bounds them on
/// the primary keys (as the pruner's).
fn messages_sql(from: f64) -> String {
    let floor = conveyor_queue::sql::v7_floor(std::time::UNIX_EPOCH + Duration::from_secs_f64(from.max(0.0)));
    format!(
        "SELECT topic, count(*) FILTER (WHERE done), count(*) FILTER (WHERE NOT done) FROM ( \
         SELECT topic, true AS done FROM conveyor.inbox_done WHERE message_id >= '{floor}' \
         UNION ALL SELECT topic, state = 'done' FROM conveyor.inbox WHERE message_id >= '{floor}') m GROUP BY topic"
    )
}

/// Adds psql's `topic|handled|waiting` lines to `counts`.
fn add_message_counts(counts: &mut BTreeMap<String, (u64, u64)>, text: &str) -> Result<()> {
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Some((topic, numbers)) = line.split_once('|') else { anyhow::bail!("unexpected line from an inbox: {line:?}") };
        let n = query_u64s(numbers)?;
        anyhow::ensure!(n.len() == 2, "unexpected line from an inbox: {line:?}");
        let c = counts.entry(topic.to_owned()).or_default();
        *c = (c.0 + n[0], c.1 + n[1]);
    }
    Ok(())
}

/// Orchestration: waits (at most `limit`) until every saga of the coordinator has ended,
/// then counts them by state.
async fn coordinator_sagas(pg_bin: &Path, url: &str, limit: Duration, signals: &mut Signals) -> Result<Result<BTreeMap<String, u64>, i32>> {
    step!(count_down(pg_bin, url, "SELECT count(*) FROM sagas WHERE ended_at IS NULL", limit, signals).await);
    let text = step!(psql(pg_bin, url, "SELECT state, count(*) FROM sagas GROUP BY state", signals).await);
    let mut by = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (state, n) = line.split_once('|').with_context(|| format!("unexpected line from the coordinator: {line:?}"))?;
        by.insert(state.to_owned(), query_u64s(n)?[0]);
    }
    Ok(Ok(by))
}

/// Counters of one database from pg_stat_database.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct DbStats {
    pub deadlocks: u64,
    /// Committed and rolled back.
    pub transactions: u64,
}

/// The counters of each of the stack's databases so far (every service's, the
/// coordinator's too).
pub(super) async fn db_stats(pg_bin: &Path, url: &str, signals: &mut Signals) -> Result<Result<BTreeMap<String, DbStats>, i32>> {
    let names: Vec<String> = databases().iter().map(|db| format!("'{db}'")).collect();
    let sql = format!("SELECT datname, deadlocks, xact_commit + xact_rollback FROM pg_stat_database WHERE datname IN ({})", names.join(", "));
    Ok(Ok(parse_db_stats(&step!(psql(pg_bin, url, &sql, signals).await))))
}

fn parse_db_stats(text: &str) -> BTreeMap<String, DbStats> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let [db, deadlocks, transactions] = f[..] else { return None };
            Some((db.trim_start_matches(DB_PREFIX).to_owned(), DbStats { deadlocks: deadlocks.parse().ok()?, transactions: transactions.parse().ok()? }))
        })
        .collect()
}

pub(super) fn stats_delta(a: &BTreeMap<String, DbStats>, b: &BTreeMap<String, DbStats>, field: impl Fn(&DbStats) -> u64) -> BTreeMap<String, u64> {
    b.iter().map(|(db, s)| (db.clone(), field(s).saturating_sub(a.get(db).map_or(0, &field)))).collect()
}

fn per_saga(counts: &BTreeMap<String, u64>, sagas: u64) -> BTreeMap<String, f64> {
    if sagas == 0 {
        return BTreeMap::new();
    }
    counts.iter().filter(|(db, _)| db.as_str() != "catalog").map(|(db, n)| (db.clone(), *n as f64 / sagas as f64)).collect()
}

/// Placed → confirmed per order, ms, and per second of confirmation (from `origin`).
fn latencies(orders: &[ramp::OrderTimes], origin: f64) -> (Option<Percentiles>, Vec<LatencyPoint>) {
    let start = Instant::now();
    let mut tl = Timeline::new(start, Duration::from_secs(1));
    let mut all = Vec::new();
    for o in orders {
        if let (true, Some(t)) = (o.confirmed, o.terminal) {
            let ms = (t - o.placed) * 1000.0;
            all.push(ms);
            tl.record(start + Duration::from_secs_f64((t - origin).max(0.0)), ms);
        }
    }
    let points = tl.points().into_iter().filter_map(|p| p.latency.map(|l| LatencyPoint { t: p.t, p50: l.p50, p99: l.p99, count: p.count })).collect();
    (Percentiles::of(&all), points)
}

fn hop_sql(topic: &str, from: f64, to: f64) -> String {
    format!(
        "SELECT count(*), \
         percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM received_at - published_at) * 1000), \
         percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM done_at - received_at) * 1000) \
         FROM conveyor.inbox_done WHERE topic = '{topic}' \
         AND published_at >= to_timestamp({from}) AND published_at < to_timestamp({to} + 2)"
    )
}

fn parse_hop(text: &str, topic: &str, consumer: &str, on_path: bool) -> Option<Hop> {
    let f: Vec<&str> = text.trim().split('|').collect();
    let messages: u64 = f.first()?.parse().ok()?;
    let three = |s: &str| -> Option<[f64; 3]> {
        let v: Vec<f64> = s.trim_matches(|c| c == '{' || c == '}').split(',').filter_map(|x| x.parse().ok()).collect();
        (v.len() == 3).then(|| [v[0], v[1], v[2]])
    };
    (messages > 0).then_some(())?;
    Some(Hop { topic: topic.to_owned(), consumer: consumer.to_owned(), on_path, messages, relay_ms: three(f.get(1)?)?, wait_ms: three(f.get(2)?)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_counters_become_transactions_per_saga() {
        let a = parse_db_stats("saga_orders|0|1000\nsaga_stock|1|500\nsaga_catalog|0|10\n");
        let b = parse_db_stats("saga_orders|0|1500\nsaga_stock|3|700\nsaga_catalog|0|12\nbad line\n");
        assert_eq!(b["stock"], DbStats { deadlocks: 3, transactions: 700 });
        assert_eq!(stats_delta(&a, &b, |s| s.deadlocks)["stock"], 2);
        let t = per_saga(&stats_delta(&a, &b, |s| s.transactions), 100);
        assert_eq!((t["orders"], t["stock"], t.contains_key("catalog")), (5.0, 2.0, false));
        assert!(per_saga(&BTreeMap::new(), 0).is_empty());
    }

    #[test]
    fn hops_parse_from_psql() {
        let h = parse_hop("120|{1.5,3.25,4}|{0.5,1,2}", "order.placed", "stock", true).unwrap();
        assert_eq!((h.messages, h.relay_ms, h.wait_ms, h.on_path), (120, [1.5, 3.25, 4.0], [0.5, 1.0, 2.0], true));
        assert!(parse_hop("0||", "x", "y", true).is_none());
    }

    #[test]
    fn each_mode_has_its_hops_and_they_are_routed_so() {
        for mode in SagaMode::ALL {
            let hops = hops_of(mode);
            assert_eq!(hops.iter().filter(|h| !h.2).count(), if mode == SagaMode::Choreography { 1 } else { 2 });
            for &(consumer, topic, _) in hops {
                // Every hop is a route of the contracts (or the hop would count nothing).
                let routed = service::ALL.iter().any(|p| conveyor_contracts::routes(p).subscribers(topic).iter().any(|s| s == consumer));
                assert!(routed, "{topic} → {consumer} is not routed");
            }
        }
    }

    #[test]
    fn messages_are_counted_by_topic_per_saga() {
        let sql = messages_sql(1_700_000_000.5);
        // 1_700_000_000_500 ms is 0x018b_cfe5_69f4: a v7 id's first 48 bits.
        assert!(sql.contains("message_id >= '018bcfe5-69f4-0000-0000-000000000000'"), "{sql}");
        let mut counts = BTreeMap::new();
        add_message_counts(&mut counts, "order.placed|10|0\nsaga.deadline|4|16\n").unwrap();
        add_message_counts(&mut counts, "order.placed|0|0\norder.confirmed|10|0\n").unwrap();
        assert!(add_message_counts(&mut counts, "order.placed|x|0").is_err());
        let m = Messages::of(&counts, 10, 0).unwrap();
        assert_eq!((m.per_saga, m.by_topic["saga.deadline"], m.by_topic["order.placed"], m.waiting), (4.0, 2.0, 1.0, 16));
        assert!(Messages::of(&counts, 0, 0).is_none());
    }

    #[test]
    fn latencies_are_per_confirmed_order() {
        let o = |placed: f64, terminal: Option<f64>, confirmed| ramp::OrderTimes { placed, terminal, confirmed };
        let orders = [o(10.0, Some(10.010), true), o(10.5, Some(10.530), true), o(11.0, Some(12.5), false), o(11.2, None, false)];
        let (p, tl) = latencies(&orders, 10.0);
        let p = p.unwrap();
        assert_eq!(p.count, 2);
        assert!((p.max - 30.0).abs() < 1e-6, "{p:?}");
        assert_eq!(tl.len(), 1);
        assert_eq!(tl[0].count, 2);
    }
}
