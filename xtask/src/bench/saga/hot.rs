//! Hot products, a flash sale (ARCHITECTURE §4.8): a few fresh products with limited
//! stock, orders of 1–3 lines × 1–4 units over only those, at the highest rate the shop
//! sustained with orders spread over the whole catalog. Batches of the stock worker then
//! lock the same few items all the time; the queue's lock keys make them queue instead of
//! deadlock. Measured from the databases once every order has ended: the ended orders per
//! second (the ramp's rules, a cancelled order counting as ended), placed → ended latency,
//! deadlocks, every item's levels against its stock and the confirmed orders, and the
//! declined payments' releases (in the choreography stock releases on `payment.declined`;
//! in the orchestration on the coordinator's `stock.release`).

mod check;
pub mod report;
mod sql;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use conveyor_benchkit::Percentiles;
use conveyor_contracts::{Event, SagaMode, service};
use conveyor_launcher::Shop;
use serde::Serialize;
use uuid::Uuid;

pub use check::{Item, Orders, Releases, Targets};
use super::ramp::{self, Drive, DriverSetup, Outcome, Rules, Second};
use super::stack::{DUE_SQL, OUTBOX_SQL, db_stats, drain, parallel, stats_delta};
use super::{Settings, query_u64s};
use crate::bench::psql;
use crate::proc::Signals;

#[derive(Debug, Clone, Serialize)]
pub struct Hot {
    pub products: Vec<Uuid>,
    /// Units each product started with.
    pub stock: i64,
    pub max_lines: u32,
    pub max_quantity: u32,
    pub customers: usize,
    /// Of them, with an empty balance: their payments are declined.
    pub broke_customers: usize,
    /// The offered rate: the highest sustained with orders spread over the catalog
    /// (`spread_rate`), or the ramp's first rate when none was sustained.
    pub rate: f64,
    pub spread_rate: Option<f64>,
    pub drive: Drive,
    pub outcome: Outcome,
    pub sustained: bool,
    pub failure: Option<String>,
    /// Orders ended (confirmed or cancelled) per second over the second half.
    pub ended_per_sec: f64,
    /// What the phase sustained: the offered rate when sustained, else `ended_per_sec`.
    pub hot_rate: f64,
    pub orders: Orders,
    /// Seconds from the start to the placement of the first order cancelled out of stock.
    pub sold_out_after_s: Option<f64>,
    /// Placed → ended (confirmed or cancelled) per order, ms (order database timestamps).
    pub latency_ms: Option<Percentiles>,
    /// From the schedule's end until every order ended and every message was handled.
    pub drain_s: f64,
    /// PostgreSQL deadlocks during the phase, by service database.
    pub deadlocks: BTreeMap<String, u64>,
    pub items: Vec<Item>,
    pub releases: Releases,
    pub series: Vec<Second>,
    pub targets: Targets,
}

/// What the phase needs of the running shop.
pub struct Shopfront<'a> {
    pub shop: &'a Shop,
    /// The saga the shop runs.
    pub mode: SagaMode,
    pub pg_bin: &'a Path,
    /// Service → database URL.
    pub databases: &'a BTreeMap<String, String>,
    pub driver_bin: &'a Path,
    pub order_api: &'a str,
    pub log_dir: &'a Path,
    /// The seeded customers (ample balances).
    pub customers: &'a [Uuid],
}

/// Runs the sale at `rate` (the highest spread rate sustained, `spread`, if any).
pub async fn run(s: &Settings, f: &Shopfront<'_>, spread: Option<f64>, rate: f64, seed: u64, signals: &mut Signals) -> Result<Result<Hot, i32>> {
    let stock = s.hot_stock.unwrap_or_else(|| check::default_stock(rate, s.hot_secs, s.hot_products));
    let broke = check::broke_customers(f.customers.len(), s.hot_decline_share);
    println!(
        "\n== hot products: {} fresh products with {stock} units each; orders of 1–{} lines × 1–{} units over only those at {rate:.0}/s for {:.0} s ({}); {broke} of {} customers cannot pay ==",
        s.hot_products,
        check::MAX_LINES,
        check::MAX_QUANTITY,
        s.hot_secs,
        spread.map_or("the first rate: no spread rate was sustained".to_owned(), |_| "the highest spread rate sustained".to_owned()),
        f.customers.len() + broke
    );
    let created = Instant::now();
    let (products, mut customers) = tokio::select! {
        c = create(f.shop, s.hot_products as usize, stock, broke) => c?,
        sig = signals.wait() => return Ok(Err(sig)),
    };
    println!("   ✓ created and synchronized to order and stock in {:.1} s", created.elapsed().as_secs_f64());
    customers.extend_from_slice(f.customers);
    let catalog = f.log_dir.join("saga-driver-hot-catalog.txt");
    std::fs::write(&catalog, conveyor_launcher::drive::catalog_text(&products, &customers)).with_context(|| format!("writing {}", catalog.display()))?;
    let issuer = f.log_dir.join("issuer.json");
    let driver = DriverSetup {
        binary: f.driver_bin,
        order_api: f.order_api,
        issuer: &issuer,
        catalog: &catalog,
        max_in_flight: s.max_in_flight,
        max_lines: check::MAX_LINES,
        max_quantity: check::MAX_QUANTITY,
    };
    let (order_db, stock_db, payment_db) = (&f.databases[service::ORDER], &f.databases[service::STOCK], &f.databases[service::PAYMENT]);

    let stats_before = step!(db_stats(f.pg_bin, order_db, signals).await);
    let drive = step!(ramp::drive(&driver, rate, s.hot_secs, seed, signals).await);
    let drain_started = Instant::now();
    let limit = Duration::from_secs_f64(s.drain_secs);
    let mut left = step!(drain(f.pg_bin, order_db, limit, signals).await).map(|n| format!("{n} orders still not ended {:.0} s after the phase", s.drain_secs));
    if left.is_none() {
        left = step!(settle(f.pg_bin, &release_path(f.mode, f.databases), limit, signals).await);
    }
    let drain_s = drain_started.elapsed().as_secs_f64();
    let read_until = ramp::unix_now();

    let times = ramp::parse_order_times(&step!(psql(f.pg_bin, order_db, &ramp::order_times_sql(drive.start_unix - 0.001, read_until), signals).await))?;
    let outcome = ramp::outcome(&times, drive.start_unix, drive.end_unix);
    let rules = Rules { cancelled_ends_well: true, ..Rules::default() };
    let failure = ramp::verdict(&drive, &outcome, &rules).or(left);
    let ended: Vec<f64> = times.iter().filter_map(|o| o.terminal.map(|t| (t - o.placed) * 1000.0)).collect();
    let list = products.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(",");
    let rows = sql::parse_orders(&step!(psql(f.pg_bin, order_db, &sql::orders_sql(&list), signals).await))?;
    let reserved: BTreeSet<Uuid> = sql::parse_ids(&step!(psql(f.pg_bin, stock_db, &sql::reserved_sql(&list), signals).await))?;
    let orders = check::reconcile(&rows, &reserved);
    let ordered = step!(psql(f.pg_bin, order_db, &sql::units_sql(&list), signals).await);
    let levels = step!(psql(f.pg_bin, stock_db, &sql::levels_sql(&list), signals).await);
    let items = sql::parse_items(&products, stock, &ordered, &levels)?;
    let from = drive.start_unix - 0.001;
    let declined = sql::parse_times(&step!(psql(f.pg_bin, payment_db, &sql::declined_sql(from), signals).await))?;
    let released = sql::parse_times(&step!(psql(f.pg_bin, stock_db, &sql::released_sql(from), signals).await))?.into_iter().collect();
    let waiting = query_u64s(&step!(psql(f.pg_bin, stock_db, &sql::releases_waiting_sql(release_topic(f.mode)), signals).await))?;
    let releases = check::releases(&declined, &released, waiting[0], waiting[1]);
    // Last, to give the backends time to report the phase's deadlocks (they flush their
    // counters about once a second; a step of the ramp reads them the same way).
    let stats_after = step!(db_stats(f.pg_bin, order_db, signals).await);
    let deadlocks = stats_delta(&stats_before, &stats_after, |s| s.deadlocks);

    let ended_per_sec = outcome.terminal_second_half as f64 / (drive.seconds / 2.0);
    let hot_rate = check::hot_rate(rate, failure.is_none(), ended_per_sec);
    let latency_ms = Percentiles::of(&ended);
    let targets = check::targets(hot_rate, spread, latency_ms.as_ref(), &orders, &deadlocks, &items, &releases);
    let hot = Hot {
        stock,
        max_lines: check::MAX_LINES,
        max_quantity: check::MAX_QUANTITY,
        customers: customers.len(),
        broke_customers: broke,
        rate,
        spread_rate: spread,
        sustained: failure.is_none(),
        failure,
        ended_per_sec,
        hot_rate,
        sold_out_after_s: orders.first_out_of_stock.map(|t| t - drive.start_unix),
        orders,
        latency_ms,
        drain_s,
        deadlocks,
        items,
        releases,
        series: ramp::series(&times, drive.start_unix, drive.start_unix, read_until),
        targets,
        products,
        drive,
        outcome,
    };
    println!("{}", report::console(&hot));
    Ok(Ok(hot))
}

/// The hot products (waiting until order and stock have them) and the customers who
/// cannot pay.
async fn create(shop: &Shop, products: usize, stock: i64, broke: usize) -> Result<(Vec<Uuid>, Vec<Uuid>)> {
    let mut ids = parallel(products, |i, shop| async move { shop.create_product(&format!("Hot product {i}"), 500 + i as i64, "EUR", stock).await }, shop).await?;
    ids.sort(); // UUID v7: in creation order, for the report
    let synced = std::sync::Arc::new(ids.clone());
    parallel(ids.len(), |i, shop| {
        let ids = synced.clone();
        async move { shop.wait_synced(ids[i - 1], Duration::from_secs(120)).await }
    }, shop)
    .await?;
    let customers = parallel(broke, |i, shop| async move { shop.create_customer(Uuid::now_v7(), &format!("Hot customer {i} (cannot pay)"), "EUR", 0).await }, shop).await?;
    Ok((ids, customers))
}

/// The message that makes stock release a declined order's reservation.
fn release_topic(mode: SagaMode) -> &'static str {
    match mode {
        SagaMode::Choreography => conveyor_contracts::PaymentDeclined::TOPIC,
        SagaMode::Orchestration => conveyor_contracts::ReleaseStock::TOPIC,
    }
}

/// Where a declined payment goes until stock has released the reservation: the queues to
/// look at, in the order the messages pass them, with what each holds (its label, its
/// database, the SQL that counts its messages).
fn release_path(mode: SagaMode, databases: &BTreeMap<String, String>) -> Vec<(&'static str, &str, &'static str)> {
    let db = |svc: &str| databases[svc].as_str();
    let mut path = vec![("payment's outbox", db(service::PAYMENT), OUTBOX_SQL)];
    if mode == SagaMode::Orchestration {
        path.push(("the coordinator's inbox", db(service::COORDINATOR), DUE_SQL));
        path.push(("the coordinator's outbox", db(service::COORDINATOR), OUTBOX_SQL));
    }
    path.push(("stock's inbox", db(service::STOCK), sql::PENDING_SQL));
    path
}

/// After every order ended: waits until the declined payments have reached stock and the
/// stock worker has handled every message (its releases), looking at `path` (see
/// [`release_path`]). `Some(why)` when `limit` passed.
async fn settle(pg_bin: &Path, path: &[(&str, &str, &str)], limit: Duration, signals: &mut Signals) -> Result<Result<Option<String>, i32>> {
    let deadline = Instant::now() + limit;
    loop {
        // In this order: once a queue is empty, nothing more comes to the ones after it.
        let mut waiting = None;
        for &(what, url, count_sql) in path {
            let n = query_u64s(&step!(psql(pg_bin, url, count_sql, signals).await))?[0];
            if n > 0 {
                waiting = Some(format!("{n} messages in {what}"));
                break;
            }
        }
        let Some(waiting) = waiting else { return Ok(Ok(None)) };
        if Instant::now() > deadline {
            return Ok(Ok(Some(format!("{waiting} still pending {:.0} s after the orders ended", limit.as_secs_f64()))));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}


/// A sale as a run could measure it: 5 products of 100 units, every target met.
#[cfg(test)]
pub fn sample() -> Hot {
    let products: Vec<Uuid> = (1..=5).map(Uuid::from_u128).collect();
    let items: Vec<Item> = products.iter().map(|p| Item { product: *p, stock: 100, asked: 190, sold: 100, available: 0, reserved: 100, held: 100 }).collect();
    let orders = Orders { placed: 400, confirmed: 180, out_of_stock: 190, payment_declined: 30, first_out_of_stock: Some(1_000_014.5), ..Orders::default() };
    let releases = Releases { declined: 30, released: 30, latency_ms: Percentiles::of(&[8.0, 40.0, 45.0]), ..Releases::default() };
    let latency_ms = Percentiles::of(&[30.0, 80.0, 420.0]);
    let deadlocks = BTreeMap::from([("order".to_owned(), 0), ("stock".to_owned(), 0)]);
    let targets = check::targets(20.0, Some(20.0), latency_ms.as_ref(), &orders, &deadlocks, &items, &releases);
    Hot {
        products,
        stock: 100,
        max_lines: check::MAX_LINES,
        max_quantity: check::MAX_QUANTITY,
        customers: 22,
        broke_customers: 2,
        rate: 20.0,
        spread_rate: Some(20.0),
        drive: Drive { rate: 20.0, seconds: 20.0, scheduled: 400, sent: 400, accepted: 400, start_unix: 1_000_000.0, end_unix: 1_000_020.0, ..Drive::default() },
        outcome: Outcome { placed: 400, confirmed_second_half: 10, terminal_second_half: 199, cancelled: 220, backlog_end: 3, backlog_mid: 2 },
        sustained: true,
        failure: None,
        ended_per_sec: 19.9,
        hot_rate: 20.0,
        sold_out_after_s: Some(14.5),
        orders,
        latency_ms,
        drain_s: 0.4,
        deadlocks,
        items,
        releases,
        series: vec![Second { t: 1.0, placed: 20.0, confirmed: 15.0, terminal: 18.0, backlog: 2.0 }],
        targets,
    }
}
