//! An open-loop load driver: orders placed through `POST /orders` at a fixed rate, each on
//! its schedule whatever the earlier answers take, for the saga benchmark
//! (`cargo xtask bench saga`). It runs as its own process (`saga-driver`, built with the
//! shop, so in release for real runs) so that the client's cost is the one of optimized
//! code and shows up as a process of its own.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::Shop;

/// What to drive.
#[derive(Debug, Clone)]
pub struct DriveOptions {
    /// Orders per second.
    pub rate: f64,
    pub duration: Duration,
    /// Requests in flight at most; a scheduled order beyond it is counted unsent (not
    /// delayed: the schedule never shifts).
    pub max_in_flight: usize,
    /// Seeds the choice of customer and lines (see [`pick`]).
    pub seed: u64,
    /// Lines per order: 1 to this many (uniform), each for another product as far as there
    /// are products (the order API refuses a product in two lines). 1: one line.
    pub max_lines: u32,
    /// Units per line: 1 to this many (uniform). 1: one unit.
    pub max_quantity: u32,
}

/// What the driver did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DriveReport {
    pub scheduled: u64,
    pub sent: u64,
    pub unsent: u64,
    /// 201 Created.
    pub accepted: u64,
    /// Any other status.
    pub rejected: u64,
    /// No answer (connection error, timeout).
    pub errors: u64,
    pub first_problem: Option<String>,
    pub max_in_flight: usize,
    /// Response time of every accepted order, ms.
    pub response_ms: Vec<f64>,
    /// Unix seconds of the first scheduled send and of the end of the schedule.
    pub start_unix: f64,
    pub end_unix: f64,
}

/// Seconds since the Unix epoch, with fractions.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The customer and the lines (product index, quantity) of the `n`th order of a run, chosen
/// from the seed alone, so a run can be repeated. The customer and the first product come
/// from one draw, as they always did: with one line of one unit the orders are those of a
/// driver without lines or quantities. Further products are drawn and, when taken already,
/// moved to the next free index.
pub fn pick(opts: &DriveOptions, n: u64, customers: usize, products: usize) -> (usize, Vec<(usize, i64)>) {
    let first = splitmix64(opts.seed.wrapping_add(n));
    let customer = (first % customers as u64) as usize;
    let mut state = first;
    let mut next = |bound: u64| {
        state = splitmix64(state);
        state % bound.max(1)
    };
    let count = (1 + next(opts.max_lines.into()) as usize).min(products);
    let mut lines: Vec<(usize, i64)> = Vec::with_capacity(count);
    for i in 0..count {
        let mut product = if i == 0 { ((first >> 32) % products as u64) as usize } else { next(products as u64) as usize };
        while lines.iter().any(|(p, _)| *p == product) {
            product = (product + 1) % products;
        }
        lines.push((product, 1 + next(opts.max_quantity.into()) as i64));
    }
    (customer, lines)
}

/// Places orders for `products` × `customers` as `opts` says; returns once every request
/// sent has its answer.
pub async fn drive(shop: &Shop, products: &[Uuid], customers: &[Uuid], opts: &DriveOptions) -> DriveReport {
    assert!(!products.is_empty() && !customers.is_empty(), "nothing to order");
    let total = (opts.rate * opts.duration.as_secs_f64()).round() as u64;
    let mut r = DriveReport { scheduled: total, ..DriveReport::default() };
    r.response_ms.reserve(total as usize);
    let mut set: JoinSet<(Duration, Result<u16, String>)> = JoinSet::new();
    let start = tokio::time::Instant::now();
    r.start_unix = unix_now();
    let mut handled = 0u64; // sent + unsent
    while handled < total {
        // The next order is due at handled / rate; the timer wakes at millisecond
        // granularity, so at high rates several are due at each wake-up.
        tokio::time::sleep_until(start + Duration::from_secs_f64(handled as f64 / opts.rate)).await;
        let due = ((start.elapsed().as_secs_f64() * opts.rate) as u64 + 1).min(total);
        while let Some(done) = set.try_join_next() {
            record(&mut r, done);
        }
        while handled < due {
            handled += 1;
            if set.len() >= opts.max_in_flight {
                r.unsent += 1;
                continue;
            }
            let (customer, lines) = pick(opts, handled, customers.len(), products.len());
            let customer = customers[customer];
            let lines: Vec<(Uuid, i64)> = lines.into_iter().map(|(p, q)| (products[p], q)).collect();
            let shop = shop.clone();
            set.spawn(async move {
                let key = Uuid::now_v7().to_string();
                let t = Instant::now();
                let answer = shop.place_order(&key, customer, &lines).await;
                (t.elapsed(), answer.map(|(status, _)| status).map_err(|e| format!("{e:#}")))
            });
            r.sent += 1;
            r.max_in_flight = r.max_in_flight.max(set.len());
        }
    }
    r.end_unix = unix_now();
    while let Some(done) = set.join_next().await {
        record(&mut r, done);
    }
    r
}

fn record(r: &mut DriveReport, done: Result<(Duration, Result<u16, String>), tokio::task::JoinError>) {
    match done {
        Ok((took, Ok(201))) => {
            r.accepted += 1;
            r.response_ms.push(took.as_secs_f64() * 1000.0);
        }
        Ok((_, Ok(status))) => {
            r.rejected += 1;
            r.first_problem.get_or_insert_with(|| format!("POST /orders answered {status}"));
        }
        Ok((_, Err(e))) => {
            r.errors += 1;
            r.first_problem.get_or_insert(e);
        }
        Err(e) => {
            r.errors += 1;
            r.first_problem.get_or_insert_with(|| format!("request task failed: {e}"));
        }
    }
}

impl DriveReport {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a drive report is plain data")
    }

    pub fn from_json(v: &Value) -> Result<DriveReport> {
        DriveReport::deserialize(v).context("the driver's report is not complete")
    }
}

/// The driver's catalog file: one `product <uuid>` or `customer <uuid>` per line.
pub fn parse_catalog(text: &str) -> Result<(Vec<Uuid>, Vec<Uuid>)> {
    let (mut products, mut customers) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (kind, id) = line.split_once(' ').with_context(|| format!("bad catalog line {line:?}"))?;
        let id: Uuid = id.trim().parse().with_context(|| format!("bad id in {line:?}"))?;
        match kind {
            "product" => products.push(id),
            "customer" => customers.push(id),
            _ => anyhow::bail!("bad catalog line {line:?}"),
        }
    }
    anyhow::ensure!(!products.is_empty() && !customers.is_empty(), "the catalog needs a product and a customer");
    Ok((products, customers))
}

/// The catalog file for [`parse_catalog`].
pub fn catalog_text(products: &[Uuid], customers: &[Uuid]) -> String {
    products.iter().map(|p| format!("product {p}\n")).chain(customers.iter().map(|c| format!("customer {c}\n"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_survive_json() {
        let r = DriveReport {
            scheduled: 10,
            sent: 9,
            unsent: 1,
            accepted: 8,
            rejected: 1,
            errors: 0,
            first_problem: Some("POST /orders answered 503".into()),
            max_in_flight: 4,
            response_ms: vec![1.5, 2.0],
            start_unix: 100.25,
            end_unix: 110.5,
        };
        assert_eq!(DriveReport::from_json(&r.to_json()).unwrap(), r);
        assert!(DriveReport::from_json(&json!({"sent": 1})).is_err());
    }

    fn opts(seed: u64, max_lines: u32, max_quantity: u32) -> DriveOptions {
        DriveOptions { rate: 1.0, duration: Duration::from_secs(1), max_in_flight: 1, seed, max_lines, max_quantity }
    }

    #[test]
    fn one_line_of_one_unit_is_the_pick_it_always_was() {
        for n in 1..500 {
            let old = splitmix64(7u64.wrapping_add(n));
            let expected = ((old % 30) as usize, vec![(((old >> 32) % 1000) as usize, 1)]);
            assert_eq!(pick(&opts(7, 1, 1), n, 30, 1000), expected);
        }
    }

    #[test]
    fn lines_are_distinct_products_within_the_bounds() {
        let (mut counts, mut quantities) = ([0u32; 4], [0u32; 5]);
        for n in 1..2000 {
            let (customer, lines) = pick(&opts(3, 3, 4), n, 10, 5);
            assert!(customer < 10);
            assert!((1..=3).contains(&lines.len()), "{lines:?}");
            counts[lines.len()] += 1;
            let mut products: Vec<usize> = lines.iter().map(|(p, _)| *p).collect();
            products.sort();
            products.dedup();
            assert_eq!(products.len(), lines.len(), "a product in two lines: {lines:?}");
            for (p, q) in &lines {
                assert!(*p < 5 && (1..=4).contains(q), "{lines:?}");
                quantities[*q as usize] += 1;
            }
            assert_eq!(pick(&opts(3, 3, 4), n, 10, 5), (customer, lines), "the same seed, the same order");
        }
        // Every count and quantity comes up, about uniformly.
        assert!(counts[1..].iter().all(|c| *c > 500), "{counts:?}");
        assert!(quantities[1..].iter().all(|q| *q > 700), "{quantities:?}");
        // More lines than products: one line per product.
        for n in 1..100 {
            let (_, lines) = pick(&opts(5, 50, 1), n, 1, 2);
            assert!(lines.len() <= 2 && lines.iter().all(|(p, q)| *p < 2 && *q == 1));
        }
        assert!((1..100).any(|n| pick(&opts(5, 50, 1), n, 1, 2).1.len() == 2));
    }

    #[test]
    fn catalogs_round_trip() {
        let (p, c) = (vec![Uuid::now_v7(), Uuid::now_v7()], vec![Uuid::now_v7()]);
        assert_eq!(parse_catalog(&catalog_text(&p, &c)).unwrap(), (p, c));
        assert!(parse_catalog("product x").is_err());
        assert!(parse_catalog(&format!("customer {}", Uuid::now_v7())).is_err());
    }
}
