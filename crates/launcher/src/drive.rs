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
    /// Seeds the choice of product and customer (one line of quantity 1, both uniform).
    pub seed: u64,
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

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
            let pick = splitmix64(opts.seed.wrapping_add(handled));
            let customer = customers[(pick % customers.len() as u64) as usize];
            let product = products[((pick >> 32) % products.len() as u64) as usize];
            let shop = shop.clone();
            set.spawn(async move {
                let key = Uuid::now_v7().to_string();
                let t = Instant::now();
                let answer = shop.place_order(&key, customer, &[(product, 1)]).await;
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

    #[test]
    fn catalogs_round_trip() {
        let (p, c) = (vec![Uuid::now_v7(), Uuid::now_v7()], vec![Uuid::now_v7()]);
        assert_eq!(parse_catalog(&catalog_text(&p, &c)).unwrap(), (p, c));
        assert!(parse_catalog("product x").is_err());
        assert!(parse_catalog(&format!("customer {}", Uuid::now_v7())).is_err());
    }
}
