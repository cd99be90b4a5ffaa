//! What the hot phase's figures mean: the stock it starts with, the orders counted by how
//! they ended and checked against their reservations, the units sold against the stock,
//! and the targets. Pure: the phase (`hot`) reads the databases, this decides.

use std::collections::{BTreeMap, BTreeSet};

use conveyor_benchkit::Percentiles;
use conveyor_contracts::limits;
use serde::Serialize;
use uuid::Uuid;

/// Lines per order in the hot phase: 1 to this many, each for another hot product.
pub const MAX_LINES: u32 = 3;
/// Units per line: 1 to this many.
pub const MAX_QUANTITY: u32 = 4;
/// The hot phase's rate ÷ the highest rate sustained with orders spread over the catalog.
pub const RATE_RATIO_TARGET: f64 = 0.8;
/// Placed → ended (confirmed or cancelled), p99, ms.
pub const P99_TARGET_MS: f64 = 1000.0;

/// Units each hot product starts with, unless `--hot-stock` says: about half of what the
/// phase's orders will ask of each, so that it sells out part-way through.
pub fn default_stock(rate: f64, secs: f64, products: u32) -> i64 {
    let products = products.max(1);
    let lines = (1..=MAX_LINES).map(|l| l.min(products) as f64).sum::<f64>() / MAX_LINES as f64;
    let units_per_order = lines * (1 + MAX_QUANTITY) as f64 / 2.0;
    ((rate * secs * units_per_order / products as f64 / 2.0).round() as i64).clamp(1, limits::MAX_STOCK)
}

/// Customers with an empty balance to add to `ample` ones, so that `share` of the orders
/// (customers are picked uniformly) are declined.
pub fn broke_customers(ample: usize, share: f64) -> usize {
    if share <= 0.0 { 0 } else { (ample as f64 * share / (1.0 - share)).round().max(1.0) as usize }
}

/// One order of the phase, from the order database.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderRow {
    pub id: Uuid,
    pub status: String,
    /// Empty unless cancelled.
    pub reason: String,
    /// Unix seconds.
    pub placed: f64,
}

/// The phase's orders by how they ended, checked against the stock's reservations.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Orders {
    pub placed: u64,
    pub confirmed: u64,
    pub out_of_stock: u64,
    pub payment_declined: u64,
    /// Still `placed` when read, after the drain.
    pub not_terminal: u64,
    /// Confirmed orders without a `reserved` reservation: sold units the stock does not hold.
    pub confirmed_unreserved: u64,
    /// Cancelled orders whose reservation is still `reserved`: a release that never
    /// happened (or is still waiting).
    pub stuck_releases: u64,
    /// Unix seconds of the placement of the first order cancelled out of stock.
    pub first_out_of_stock: Option<f64>,
}

/// Counts `orders` and checks them against the ids of the `reserved` reservations.
pub fn reconcile(orders: &[OrderRow], reserved: &BTreeSet<Uuid>) -> Orders {
    let mut o = Orders { placed: orders.len() as u64, ..Orders::default() };
    for row in orders {
        let holds = reserved.contains(&row.id);
        match (row.status.as_str(), row.reason.as_str()) {
            ("confirmed", _) => {
                o.confirmed += 1;
                o.confirmed_unreserved += u64::from(!holds);
            }
            ("cancelled", reason) => {
                if reason == "out_of_stock" {
                    o.out_of_stock += 1;
                    o.first_out_of_stock = Some(o.first_out_of_stock.map_or(row.placed, |t| t.min(row.placed)));
                } else {
                    o.payment_declined += 1;
                }
                o.stuck_releases += u64::from(holds);
            }
            _ => o.not_terminal += 1,
        }
    }
    o
}

/// One hot product: its stock's levels against what was ordered and sold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub product: Uuid,
    /// Units it started with.
    pub stock: i64,
    /// Units the phase's orders asked for (order database).
    pub asked: i64,
    /// Units of confirmed orders (order database).
    pub sold: i64,
    /// The stock's levels (stock database).
    pub available: i64,
    pub reserved: i64,
    /// Units of the `reserved` reservations (stock database).
    pub held: i64,
}

impl Item {
    /// What is wrong with the levels once every order has ended; empty when nothing is.
    pub fn problems(&self) -> Vec<String> {
        let p = self.product;
        let mut out = Vec::new();
        if self.reserved > self.stock {
            out.push(format!("{p}: {} units reserved of a stock of {} (oversold)", self.reserved, self.stock));
        }
        if self.available + self.reserved != self.stock {
            out.push(format!("{p}: available {} + reserved {} ≠ the stock {}", self.available, self.reserved, self.stock));
        }
        if self.reserved != self.held {
            out.push(format!("{p}: reserved {} ≠ {} units of the reserved reservations", self.reserved, self.held));
        }
        if self.sold != self.reserved {
            out.push(format!("{p}: {} units of confirmed orders ≠ {} reserved", self.sold, self.reserved));
        }
        out
    }
}

/// The declined payments' releases.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Releases {
    /// Payments declined in the phase (payment database).
    pub declined: u64,
    /// Of them, with the reservation released (stock database), and without.
    pub released: u64,
    pub unreleased: u64,
    /// Messages that release (`payment.declined`; orchestrated, the coordinator's
    /// `stock.release`) still waiting in stock's inbox after the drain, or dead.
    pub pending: u64,
    pub dead: u64,
    /// Declined (the declining transaction's `now()`, which publishes `payment.declined`)
    /// → released (the releasing transaction's `now()`), ms.
    pub latency_ms: Option<Percentiles>,
}

/// Matches the declined payments (order, unix seconds) with the released reservations.
pub fn releases(declined: &[(Uuid, f64)], released: &BTreeMap<Uuid, f64>, pending: u64, dead: u64) -> Releases {
    let waits: Vec<f64> = declined.iter().filter_map(|(order, at)| released.get(order).map(|r| (r - at) * 1000.0)).collect();
    Releases {
        declined: declined.len() as u64,
        released: waits.len() as u64,
        unreleased: (declined.len() - waits.len()) as u64,
        pending,
        dead,
        latency_ms: Percentiles::of(&waits),
    }
}

/// The phase against the targets. `None`: not measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Targets {
    /// The hot rate ÷ the highest rate sustained with orders spread over the catalog.
    pub rate_ratio: Option<f64>,
    pub rate_ratio_min: f64,
    pub rate_met: Option<bool>,
    pub p99_ms: Option<f64>,
    pub p99_ms_max: f64,
    /// Every order ended, and p99 within the target.
    pub p99_met: Option<bool>,
    pub deadlocks: u64,
    pub deadlocks_met: bool,
    /// Every hot item's levels add up and match the confirmed orders.
    pub sold_problems: Vec<String>,
    pub sold_met: bool,
    /// No cancelled order still holds units, and every release was handled.
    pub releases_met: bool,
    pub all_met: bool,
}

/// The rate the hot phase sustained: the offered rate when it was sustained, else the
/// ended orders per second it managed over its second half (at most the offered rate).
pub fn hot_rate(offered: f64, sustained: bool, ended_per_sec: f64) -> f64 {
    if sustained { offered } else { ended_per_sec.min(offered) }
}

pub fn targets(hot_rate: f64, spread: Option<f64>, latency: Option<&Percentiles>, orders: &Orders, deadlocks: &BTreeMap<String, u64>, items: &[Item], releases: &Releases) -> Targets {
    let rate_ratio = spread.filter(|s| *s > 0.0).map(|s| hot_rate / s);
    let p99_ms = latency.map(|l| l.p99);
    let p99_met = match (p99_ms, orders.not_terminal) {
        (_, n) if n > 0 => Some(false),
        (Some(p), _) => Some(p <= P99_TARGET_MS),
        (None, _) => None,
    };
    let deadlocks: u64 = deadlocks.values().sum();
    let mut sold_problems: Vec<String> = items.iter().flat_map(Item::problems).collect();
    if orders.confirmed_unreserved > 0 {
        sold_problems.push(format!("{} confirmed orders hold no reservation", orders.confirmed_unreserved));
    }
    let releases_met = orders.stuck_releases == 0 && releases.unreleased == 0 && releases.dead == 0 && releases.pending == 0;
    let rate_met = rate_ratio.map(|r| r >= RATE_RATIO_TARGET);
    let all_met = rate_met == Some(true) && p99_met == Some(true) && deadlocks == 0 && sold_problems.is_empty() && releases_met;
    Targets {
        rate_ratio,
        rate_ratio_min: RATE_RATIO_TARGET,
        rate_met,
        p99_ms,
        p99_ms_max: P99_TARGET_MS,
        p99_met,
        deadlocks,
        deadlocks_met: deadlocks == 0,
        sold_met: sold_problems.is_empty(),
        sold_problems,
        releases_met,
        all_met,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_stock_is_half_of_what_is_asked() {
        // 100/s × 30 s = 3,000 orders × 2 lines × 2.5 units over 5 products: 3,000 each.
        assert_eq!(default_stock(100.0, 30.0, 5), 1500);
        // One product: every order has one line.
        assert_eq!(default_stock(100.0, 30.0, 1), 3750);
        assert_eq!(default_stock(0.1, 1.0, 5), 1);
        assert_eq!((broke_customers(10_000, 0.1), broke_customers(20, 0.1), broke_customers(20, 0.0)), (1111, 2, 0));
    }

    fn row(n: u128, status: &str, reason: &str, placed: f64) -> OrderRow {
        OrderRow { id: Uuid::from_u128(n), status: status.into(), reason: reason.into(), placed }
    }

    #[test]
    fn orders_are_counted_and_checked_against_reservations() {
        let orders = [
            row(1, "confirmed", "", 10.0),
            row(2, "confirmed", "", 10.1),
            row(3, "cancelled", "out_of_stock", 12.0),
            row(4, "cancelled", "out_of_stock", 11.5),
            row(5, "cancelled", "payment_declined", 10.2),
            row(6, "cancelled", "payment_declined", 10.3),
            row(7, "placed", "", 13.0),
        ];
        // 2 lost its reservation; 6 was never released.
        let reserved: BTreeSet<Uuid> = [1, 6].into_iter().map(Uuid::from_u128).collect();
        let o = reconcile(&orders, &reserved);
        let expected = Orders {
            placed: 7,
            confirmed: 2,
            out_of_stock: 2,
            payment_declined: 2,
            not_terminal: 1,
            confirmed_unreserved: 1,
            stuck_releases: 1,
            first_out_of_stock: Some(11.5),
        };
        assert_eq!(o, expected);
    }

    fn item(stock: i64, sold: i64, available: i64, reserved: i64, held: i64) -> Item {
        Item { product: Uuid::from_u128(9), stock, asked: 2 * stock, sold, available, reserved, held }
    }

    #[test]
    fn declined_payments_are_matched_with_their_releases() {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let released = BTreeMap::from([(a, 10.02), (b, 11.5), (Uuid::from_u128(4), 9.0)]);
        let r = releases(&[(a, 10.0), (b, 11.0), (c, 12.0)], &released, 1, 0);
        assert_eq!((r.declined, r.released, r.unreleased, r.pending, r.dead), (3, 2, 1, 1, 0));
        let l = r.latency_ms.unwrap();
        assert!((l.max - 500.0).abs() < 1e-6 && (l.p50 - 20.0).abs() < 1e-6, "{l:?}");
        assert_eq!(releases(&[], &released, 0, 0), Releases::default());
    }

    #[test]
    fn items_add_up_or_say_why_not() {
        assert!(item(100, 100, 0, 100, 100).problems().is_empty());
        assert!(item(100, 60, 40, 60, 60).problems().is_empty());
        let oversold = item(100, 103, 0, 103, 103).problems();
        assert!(oversold.iter().any(|p| p.contains("oversold")) && oversold.iter().any(|p| p.contains("≠ the stock 100")), "{oversold:?}");
        assert!(item(100, 60, 30, 60, 60).problems()[0].contains("available 30 + reserved 60"));
        assert!(item(100, 60, 40, 60, 55).problems()[0].contains("55 units of the reserved reservations"));
        assert!(item(100, 58, 40, 60, 60).problems()[0].contains("58 units of confirmed orders"));
    }

    fn good() -> (Orders, Vec<Item>, Releases, Percentiles) {
        let orders = Orders { placed: 10, confirmed: 5, out_of_stock: 4, payment_declined: 1, ..Orders::default() };
        let releases = releases(&[(Uuid::from_u128(5), 10.0)], &BTreeMap::from([(Uuid::from_u128(5), 10.05)]), 0, 0);
        (orders, vec![item(100, 100, 0, 100, 100)], releases, Percentiles::of(&[10.0, 20.0, 900.0]).unwrap())
    }

    #[test]
    fn the_targets_are_met_only_together() {
        let (orders, items, releases, lat) = good();
        let none = BTreeMap::new();
        let t = targets(hot_rate(100.0, true, 97.0), Some(100.0), Some(&lat), &orders, &none, &items, &releases);
        assert!(t.all_met && t.rate_ratio == Some(1.0) && t.p99_met == Some(true), "{t:?}");
        // Not sustained: the rate is what ended per second, here 78% of the spread rate.
        let t = targets(hot_rate(100.0, false, 78.0), Some(100.0), Some(&lat), &orders, &none, &items, &releases);
        assert_eq!((t.rate_met, t.all_met), (Some(false), false));
        let slow = Percentiles::of(&[10.0, 1500.0]).unwrap();
        assert_eq!(targets(100.0, Some(100.0), Some(&slow), &orders, &none, &items, &releases).p99_met, Some(false));
        let unended = Orders { not_terminal: 1, ..orders.clone() };
        assert_eq!(targets(100.0, Some(100.0), Some(&lat), &unended, &none, &items, &releases).p99_met, Some(false));
        let deadlocked = BTreeMap::from([("stock".to_owned(), 2), ("order".to_owned(), 0)]);
        let t = targets(100.0, Some(100.0), Some(&lat), &orders, &deadlocked, &items, &releases);
        assert_eq!((t.deadlocks, t.deadlocks_met, t.all_met), (2, false, false));
        let t = targets(100.0, Some(100.0), Some(&lat), &orders, &none, &[item(100, 101, 0, 101, 101)], &releases);
        assert!(!t.sold_met && !t.all_met && t.sold_problems.iter().any(|p| p.contains("oversold")), "{t:?}");
        let stuck = Orders { stuck_releases: 1, ..orders.clone() };
        assert!(!targets(100.0, Some(100.0), Some(&lat), &stuck, &none, &items, &releases).releases_met);
        let pending = Releases { pending: 1, ..releases.clone() };
        assert!(!targets(100.0, Some(100.0), Some(&lat), &orders, &none, &items, &pending).releases_met);
        let unreleased = Releases { unreleased: 1, ..releases.clone() };
        assert!(!targets(100.0, Some(100.0), Some(&lat), &orders, &none, &items, &unreleased).releases_met);
        // No spread rate was sustained: the ratio is not measured, so not every target is met.
        let t = targets(100.0, None, Some(&lat), &orders, &none, &items, &releases);
        assert_eq!((t.rate_ratio, t.rate_met, t.all_met), (None, None, false));
    }
}
