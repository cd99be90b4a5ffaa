//! The orders of a chaos run: a few products with limited stock and a few customers, half
//! with limited balances (so that reservations contend, and some orders are cancelled for want
//! of stock and some declined for want of money), and a driver that places orders at a
//! steady rate, each with an `Idempotency-Key` it keeps while it retries, recording every
//! order the API said it accepted.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::SeededRng;
use crate::Shop;
use crate::drive::{DriveOptions, pick};

/// The part of the expected demand (in units) that is in stock. Half the customers can pay
/// for everything they order, so stock runs out about two thirds into the run; from then
/// on orders are cancelled `out_of_stock`.
const STOCK_SHARE: f64 = 0.35;
/// The part of what they order that the other half of the customers can pay for: their
/// orders are declined (`payment_declined`, the reservation released) from early on.
const POOR_SHARE: f64 = 0.15;

/// What a run orders from, and how much of it there is.
#[derive(Debug, Clone, Serialize)]
pub struct Shelf {
    pub products: Vec<Uuid>,
    pub customers: Vec<Uuid>,
    /// Initial stock of each product.
    pub stock_each: i64,
    /// Initial balance of the customers at even positions (enough for all they order) and
    /// of those at odd positions (not), in minor units (EUR).
    pub rich_balance: i64,
    pub poor_balance: i64,
}

/// Creates `products` products (prices from the seed) with stock for about a third of the
/// units `expected_orders` orders of up to `max_lines` × `max_quantity` ask for, and
/// `customers` customers, half of whom cannot pay for most of what they order; waits until
/// the products reached order and stock.
pub async fn stock_the_shelf(
    shop: &Shop,
    seed: u64,
    products: usize,
    customers: usize,
    expected_orders: u64,
    max_lines: u32,
    max_quantity: u32,
) -> Result<Shelf> {
    anyhow::ensure!(
        products > 0 && customers > 0,
        "chaos needs at least one product and one customer"
    );
    let mut rng = SeededRng::new(seed ^ 0x5e1f);
    let lines = (1.0 + f64::from(max_lines)) / 2.0;
    let lines = lines.min(products as f64);
    let units = expected_orders as f64 * lines * (1.0 + f64::from(max_quantity)) / 2.0;
    let stock_each = ((units / products as f64) * STOCK_SHARE).ceil().max(1.0) as i64;
    let prices: Vec<i64> = (0..products)
        .map(|_| 500 + 50 * rng.below(91) as i64)
        .collect();
    let mean_price = prices.iter().sum::<i64>() as f64 / products as f64;
    let spend = units * mean_price / customers as f64;
    let rich_balance = (spend * 1.5).ceil() as i64;
    let poor_balance = (spend * POOR_SHARE).ceil().max(mean_price) as i64;
    let run = Uuid::now_v7().simple().to_string();
    let mut ids = Vec::with_capacity(products);
    for (i, price) in prices.iter().enumerate() {
        ids.push(
            shop.create_product(
                &format!("chaos {} product {i}", &run[run.len() - 6..]),
                *price,
                "EUR",
                stock_each,
            )
            .await?,
        );
    }
    let mut who = Vec::with_capacity(customers);
    for i in 0..customers {
        let balance = if i % 2 == 0 {
            rich_balance
        } else {
            poor_balance
        };
        who.push(
            shop.create_customer(
                Uuid::now_v7(),
                &format!("chaos customer {i}"),
                "EUR",
                balance,
            )
            .await?,
        );
    }
    for p in &ids {
        shop.wait_synced(*p, Duration::from_secs(60)).await?;
    }
    Ok(Shelf {
        products: ids,
        customers: who,
        stock_each,
        rich_balance,
        poor_balance,
    })
}

/// What the driver did in one round.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Placed {
    pub scheduled: u64,
    /// Not sent: too many requests were waiting for an answer already.
    pub unsent: u64,
    /// Every order id `POST /orders` answered 201 for.
    pub accepted: Vec<Uuid>,
    /// Orders that took more than one request (same key) to be answered.
    pub retried: u64,
    /// Orders never answered 201 within the retry bound (the order may exist all the same).
    pub unanswered: u64,
    /// Orders answered with a 4xx other than "key in use" (none expected).
    pub refused: u64,
    /// The first few problems, for the report.
    pub problems: Vec<String>,
}

/// How one order's requests ended.
enum Answer {
    Accepted { id: Uuid, attempts: u32 },
    Refused(String),
    Unanswered(String),
}

/// Places orders at `opts.rate` for `opts.duration` (order `n` of the round picked from the
/// seed by [`pick`]); returns when every order has its answer or gave up. A request that
/// gets no answer, a 5xx or a 409 "key in use" is sent again with the same key (with
/// backoff, for up to `give_up`): the idempotency key makes the retry safe.
pub async fn place_orders(
    shop: &Shop,
    shelf: &Shelf,
    opts: &DriveOptions,
    give_up: Duration,
) -> Placed {
    let total = (opts.rate * opts.duration.as_secs_f64()).round() as u64;
    let mut placed = Placed {
        scheduled: total,
        ..Placed::default()
    };
    let mut set: JoinSet<Answer> = JoinSet::new();
    let start = tokio::time::Instant::now();
    for n in 0..total {
        tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / opts.rate)).await;
        while let Some(done) = set.try_join_next() {
            record(&mut placed, done);
        }
        if set.len() >= opts.max_in_flight {
            placed.unsent += 1;
            continue;
        }
        let (customer, lines) = pick(opts, n + 1, shelf.customers.len(), shelf.products.len());
        let customer = shelf.customers[customer];
        let lines: Vec<(Uuid, i64)> = lines
            .into_iter()
            .map(|(p, q)| (shelf.products[p], q))
            .collect();
        let shop = shop.clone();
        set.spawn(async move { place_one(&shop, customer, &lines, give_up).await });
    }
    while let Some(done) = set.join_next().await {
        record(&mut placed, done);
    }
    placed
}

fn record(p: &mut Placed, done: Result<Answer, tokio::task::JoinError>) {
    let problem = |p: &mut Placed, what: String| {
        if p.problems.len() < 5 {
            p.problems.push(what);
        }
    };
    match done {
        Ok(Answer::Accepted { id, attempts }) => {
            p.accepted.push(id);
            p.retried += u64::from(attempts > 1);
        }
        Ok(Answer::Refused(why)) => {
            p.refused += 1;
            problem(p, why);
        }
        Ok(Answer::Unanswered(why)) => {
            p.unanswered += 1;
            problem(p, why);
        }
        Err(e) => {
            p.unanswered += 1;
            problem(p, format!("order task failed: {e}"));
        }
    }
}

async fn place_one(
    shop: &Shop,
    customer: Uuid,
    lines: &[(Uuid, i64)],
    give_up: Duration,
) -> Answer {
    let key = Uuid::now_v7().to_string();
    let deadline = Instant::now() + give_up;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match shop.place_order(&key, customer, lines).await {
            Ok((201, body)) => {
                return match body["id"].as_str().and_then(|s| s.parse().ok()) {
                    Some(id) => Answer::Accepted { id, attempts },
                    None => {
                        Answer::Refused(format!("POST /orders answered 201 without an id: {body}"))
                    }
                };
            }
            Ok((status, body))
                if status >= 500 || status == 429 || (status == 409 && in_use(&body)) =>
            {
                format!("{status} {}", detail(&body))
            }
            Ok((status, body)) => {
                return Answer::Refused(format!(
                    "POST /orders answered {status}: {}",
                    detail(&body)
                ));
            }
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            return Answer::Unanswered(format!(
                "no 201 for key {key} after {attempts} attempts in {give_up:?}; last: {last}"
            ));
        }
        let backoff =
            Duration::from_millis(100 * 2u64.pow(attempts.min(5))).min(Duration::from_secs(2));
        tokio::time::sleep(backoff).await;
    }
}

/// A 409 that says the key is being used by a request still running (ours, sent before).
fn in_use(body: &Value) -> bool {
    detail(body).contains("in use")
}

fn detail(body: &Value) -> String {
    body["detail"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string())
}

/// How the accepted orders ended, from the order service's database.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Outcomes {
    pub confirmed: u64,
    pub cancelled_out_of_stock: u64,
    pub cancelled_payment_declined: u64,
    /// Neither confirmed nor cancelled (yet).
    pub placed: u64,
    /// Accepted but not in the database at all.
    pub missing: u64,
}

/// Counts the accepted orders by status (and cancellation reason).
pub async fn outcomes(orders_db: &sqlx::PgPool, accepted: &[Uuid]) -> Result<Outcomes> {
    let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT status, reason, count(*) FROM orders WHERE id = ANY($1) GROUP BY status, reason",
    )
    .bind(accepted)
    .fetch_all(orders_db)
    .await
    .context("counting the accepted orders")?;
    let mut o = Outcomes::default();
    let mut found = 0;
    for (status, reason, n) in rows {
        found += n as u64;
        match (status.as_str(), reason.as_deref()) {
            ("confirmed", _) => o.confirmed += n as u64,
            ("cancelled", Some("payment_declined")) => o.cancelled_payment_declined += n as u64,
            ("cancelled", _) => o.cancelled_out_of_stock += n as u64,
            _ => o.placed += n as u64,
        }
    }
    let mut distinct = accepted.to_vec();
    distinct.sort();
    distinct.dedup();
    o.missing = distinct.len() as u64 - found.min(distinct.len() as u64);
    Ok(o)
}

impl Shelf {
    /// "4 products with 210 in stock each, 8 customers: 4 with 2500.00 EUR, 4 with 250.00 EUR"
    pub fn describe(&self) -> String {
        let eur = |minor: i64| format!("{}.{:02} EUR", minor / 100, minor % 100);
        let n = self.customers.len();
        format!(
            "{} products with {} in stock each, {n} customers: {} with {}, {} with {}",
            self.products.len(),
            self.stock_each,
            n.div_ceil(2),
            eur(self.rich_balance),
            n / 2,
            eur(self.poor_balance)
        )
    }
}
