//! A rate step: the open-loop driver run for it (the `saga-driver` process), the verdict
//! on it, the search for the highest sustained rate, and what the order database says
//! about a step's orders.

use std::path::Path;

use anyhow::{Context, Result};
use conveyor_benchkit::Percentiles;
use conveyor_launcher::drive::DriveReport;
use serde::Serialize;

use crate::proc::{self, Signals};

/// What the driver did in one step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Drive {
    pub rate: f64,
    pub seconds: f64,
    /// Requests the schedule called for.
    pub scheduled: u64,
    pub sent: u64,
    /// Scheduled but never sent: the in-flight limit was reached (the API fell behind).
    pub unsent: u64,
    /// 201 Created.
    pub accepted: u64,
    /// Any other status.
    pub rejected: u64,
    /// No answer (connection error, timeout).
    pub errors: u64,
    pub first_problem: Option<String>,
    pub max_in_flight: usize,
    /// POST /orders response times as the driver saw them, ms.
    pub response_ms: Option<Percentiles>,
    /// Unix seconds of the first scheduled send and of the end of the schedule.
    pub start_unix: f64,
    pub end_unix: f64,
}

pub use conveyor_launcher::drive::unix_now;

/// Where and how hard the driver places orders.
pub struct DriverSetup<'a> {
    /// The `saga-driver` binary (built with the shop: release for real runs).
    pub binary: &'a Path,
    pub order_api: &'a str,
    /// The stack's issuer (`Stack::issuer_file`): the driver signs each customer's token.
    pub issuer: &'a Path,
    /// Its products and customers (`conveyor_launcher::drive::catalog_text`).
    pub catalog: &'a Path,
    pub max_in_flight: usize,
    /// Each order has 1 to `max_lines` lines of 1 to `max_quantity` units (1 and 1: one
    /// unit of one product).
    pub max_lines: u32,
    pub max_quantity: u32,
}

/// Places orders at `rate` per second for `seconds`, open loop, with the `saga-driver`
/// process (each order on schedule whatever the earlier answers take; see
/// `conveyor_launcher::drive`).
pub async fn drive(d: &DriverSetup<'_>, rate: f64, seconds: f64, seed: u64, signals: &mut Signals) -> Result<Result<Drive, i32>> {
    let mut cmd = tokio::process::Command::new(d.binary);
    cmd.arg("--order-api").arg(d.order_api).arg("--catalog").arg(d.catalog).arg("--issuer").arg(d.issuer);
    cmd.args(["--rate", &rate.to_string(), "--seconds", &seconds.to_string(), "--max-in-flight", &d.max_in_flight.to_string(), "--seed", &seed.to_string()]);
    cmd.args(["--max-lines", &d.max_lines.to_string(), "--max-quantity", &d.max_quantity.to_string()]);
    let out = match proc::capture(cmd, signals).await? {
        Ok(out) => out,
        Err(sig) => return Ok(Err(sig)),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        anyhow::bail!("{} failed ({}):\n{stdout}{}", d.binary.display(), out.status, String::from_utf8_lossy(&out.stderr));
    }
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).with_context(|| format!("the driver's report is not JSON: {stdout}"))?;
    let r = DriveReport::from_json(&json)?;
    Ok(Ok(Drive {
        rate,
        seconds,
        scheduled: r.scheduled,
        sent: r.sent,
        unsent: r.unsent,
        accepted: r.accepted,
        rejected: r.rejected,
        errors: r.errors,
        first_problem: r.first_problem,
        max_in_flight: r.max_in_flight,
        response_ms: Percentiles::of(&r.response_ms),
        start_unix: r.start_unix,
        end_unix: r.end_unix,
    }))
}

/// One order of a step as the order database has it: unix seconds of placement (the
/// placing transaction's `now()`) and of its terminal status (the settling transaction's
/// `now()`, from the status history), and whether it was confirmed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrderTimes {
    pub placed: f64,
    pub terminal: Option<f64>,
    pub confirmed: bool,
}

/// Parses psql's `placed|terminal|status` lines.
pub fn parse_order_times(text: &str) -> anyhow::Result<Vec<OrderTimes>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            anyhow::ensure!(f.len() == 3, "unexpected line from the order database: {l:?}");
            let placed = f[0].parse().map_err(|_| anyhow::anyhow!("bad time in {l:?}"))?;
            let terminal = if f[1].is_empty() { None } else { Some(f[1].parse().map_err(|_| anyhow::anyhow!("bad time in {l:?}"))?) };
            Ok(OrderTimes { placed, terminal, confirmed: f[2] == "confirmed" })
        })
        .collect()
}

/// The SQL that lists the orders placed in `[from, to)` (unix seconds) for [`parse_order_times`].
pub fn order_times_sql(from: f64, to: f64) -> String {
    format!(
        "SELECT extract(epoch FROM o.created_at), extract(epoch FROM h.at), o.status \
         FROM orders o LEFT JOIN order_status_history h ON h.order_id = o.id AND h.status <> 'placed' \
         WHERE o.created_at >= to_timestamp({from}) AND o.created_at < to_timestamp({to})"
    )
}

/// What a step's orders show, from the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Outcome {
    /// Orders placed in the step (committed).
    pub placed: u64,
    /// Confirmed in the second half of the step (the first half lets the pipeline fill).
    pub confirmed_second_half: u64,
    /// Confirmed or cancelled in the second half of the step.
    pub terminal_second_half: u64,
    /// Cancelled at any time (in the ramp it should stay 0: stock and balances are ample).
    pub cancelled: u64,
    /// Placed but not terminal at the end of the step, and half-way through it.
    pub backlog_end: u64,
    pub backlog_mid: u64,
}

pub fn outcome(orders: &[OrderTimes], start: f64, end: f64) -> Outcome {
    let backlog_at = |t: f64| orders.iter().filter(|o| o.placed <= t && o.terminal.is_none_or(|x| x > t)).count() as u64;
    let second_half = |o: &&OrderTimes| o.terminal.is_some_and(|t| t >= (start + end) / 2.0 && t < end);
    Outcome {
        placed: orders.len() as u64,
        confirmed_second_half: orders.iter().filter(second_half).filter(|o| o.confirmed).count() as u64,
        terminal_second_half: orders.iter().filter(second_half).count() as u64,
        cancelled: orders.iter().filter(|o| o.terminal.is_some() && !o.confirmed).count() as u64,
        backlog_end: backlog_at(end),
        backlog_mid: backlog_at((start + end) / 2.0),
    }
}

/// One second of a series: orders placed, confirmed and ended (confirmed or cancelled) in
/// it, and the backlog at its end.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Second {
    /// The second's end, in seconds from the series' origin.
    pub t: f64,
    pub placed: f64,
    pub confirmed: f64,
    pub terminal: f64,
    pub backlog: f64,
}

/// Per-second series from `from` until the second that holds `to`, `t` in seconds from
/// `origin`.
pub fn series(orders: &[OrderTimes], origin: f64, from: f64, to: f64) -> Vec<Second> {
    let mut out = Vec::new();
    let mut t = from;
    while t < to {
        let end = t + 1.0;
        let ended = |o: &&OrderTimes| o.terminal.is_some_and(|x| x >= t && x < end);
        out.push(Second {
            t: end - origin,
            placed: orders.iter().filter(|o| o.placed >= t && o.placed < end).count() as f64,
            confirmed: orders.iter().filter(ended).filter(|o| o.confirmed).count() as f64,
            terminal: orders.iter().filter(ended).count() as f64,
            backlog: orders.iter().filter(|o| o.placed < end && o.terminal.is_none_or(|x| x >= end)).count() as f64,
        });
        t = end;
    }
    out
}

/// When a step counts as sustained.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rules {
    /// Confirmed per second over the step's second half ≥ this share of the offered rate.
    pub min_confirmed_share: f64,
    /// Backlog at the end ≤ this many seconds' worth of the offered rate …
    pub max_backlog_secs: f64,
    /// … or this many orders, whichever is more (low rates).
    pub backlog_floor: u64,
    /// The backlog may grow by at most this many seconds' worth over the second half.
    pub max_growth_secs: f64,
    /// Cancelled orders count as ended like confirmed ones (the hot phase: a sale that
    /// sells out cancels orders, rightly); otherwise one cancelled order fails the step
    /// (the ramp: stock and balances are ample).
    pub cancelled_ends_well: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { min_confirmed_share: 0.95, max_backlog_secs: 1.0, backlog_floor: 20, max_growth_secs: 0.25, cancelled_ends_well: false }
    }
}

/// Why a step failed, or `None` when it was sustained.
pub fn verdict(d: &Drive, o: &Outcome, rules: &Rules) -> Option<String> {
    if d.unsent > 0 {
        return Some(format!("{} of {} orders never sent: {} requests were in flight (the order API fell behind)", d.unsent, d.scheduled, d.max_in_flight));
    }
    if d.rejected + d.errors > 0 {
        return Some(format!("{} orders refused, {} failed: {}", d.rejected, d.errors, d.first_problem.as_deref().unwrap_or("?")));
    }
    if o.cancelled > 0 && !rules.cancelled_ends_well {
        return Some(format!("{} orders cancelled (stock and balances should be ample)", o.cancelled));
    }
    let (what, ended) = if rules.cancelled_ends_well { ("ended", o.terminal_second_half) } else { ("confirmed", o.confirmed_second_half) };
    let per_sec = ended as f64 / (d.seconds / 2.0);
    let share = per_sec / d.rate.max(1e-9);
    if share < rules.min_confirmed_share {
        return Some(format!("{what} {per_sec:.0}/s, {:.0}% of the offered {:.0}/s", share * 100.0, d.rate));
    }
    let max_backlog = ((d.rate * rules.max_backlog_secs) as u64).max(rules.backlog_floor);
    if o.backlog_end > max_backlog {
        return Some(format!("backlog {} at the end (more than {max_backlog}, {} s worth)", o.backlog_end, rules.max_backlog_secs));
    }
    let max_growth = ((d.rate * rules.max_growth_secs) as u64).max(rules.backlog_floor / 2);
    if o.backlog_end > o.backlog_mid + max_growth {
        return Some(format!("backlog growing: {} half-way, {} at the end", o.backlog_mid, o.backlog_end));
    }
    None
}

/// The search for the highest sustained rate: geometric steps up until one fails, then
/// bisection between the best sustained and the lowest failed rate.
#[derive(Debug, Clone, Serialize)]
pub struct Search {
    pub start: f64,
    pub factor: f64,
    /// Bisection stops when failed / sustained is within 1 + this.
    pub precision: f64,
    pub max_bisections: u32,
    /// No rate above this is tried (the ramp stops there, sustained).
    pub max_rate: f64,
    /// Rates tried so far, with whether they were sustained.
    pub tried: Vec<(f64, bool)>,
}

impl Search {
    pub fn best(&self) -> Option<f64> {
        self.tried.iter().filter(|(_, ok)| *ok).map(|(r, _)| *r).max_by(f64::total_cmp)
    }

    fn lowest_failed_above(&self, floor: f64) -> Option<f64> {
        self.tried.iter().filter(|(r, ok)| !*ok && *r > floor).map(|(r, _)| *r).min_by(f64::total_cmp)
    }

    /// The next rate to try, or `None` when the search is over.
    pub fn next(&self) -> Option<f64> {
        let Some(&(last, _)) = self.tried.last() else { return Some(self.start) };
        let best = self.best();
        let failed = self.lowest_failed_above(best.unwrap_or(0.0));
        match failed {
            None => {
                let next = (last * self.factor).round();
                (last < self.max_rate).then(|| next.min(self.max_rate))
            }
            Some(hi) => {
                let lo = best.unwrap_or(0.0);
                let first_failure = self.tried.iter().position(|(_, ok)| !*ok).expect("a failure");
                let bisections = (self.tried.len() - 1 - first_failure) as u32;
                if bisections >= self.max_bisections || (lo > 0.0 && hi / lo <= 1.0 + self.precision) {
                    return None;
                }
                let mid = ((lo + hi) / 2.0).round();
                (mid > lo && mid < hi).then_some(mid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(rate: f64) -> Drive {
        Drive { rate, seconds: 10.0, scheduled: (rate * 10.0) as u64, sent: (rate * 10.0) as u64, accepted: (rate * 10.0) as u64, ..Drive::default() }
    }

    #[test]
    fn a_step_that_keeps_up_is_sustained() {
        let o = Outcome { placed: 1000, confirmed_second_half: 495, terminal_second_half: 495, cancelled: 0, backlog_end: 12, backlog_mid: 10 };
        assert_eq!(verdict(&drive(100.0), &o, &Rules::default()), None);
    }

    #[test]
    fn steps_fail_for_each_reason() {
        let r = Rules::default();
        let ok = Outcome { placed: 1000, confirmed_second_half: 495, terminal_second_half: 495, cancelled: 0, backlog_end: 12, backlog_mid: 10 };
        let slow = Outcome { confirmed_second_half: 450, terminal_second_half: 450, ..ok };
        assert!(verdict(&drive(100.0), &slow, &r).unwrap().contains("confirmed 90/s, 90%"));
        let deep = Outcome { backlog_end: 150, ..ok };
        assert!(verdict(&drive(100.0), &deep, &r).unwrap().contains("backlog 150"));
        let growing = Outcome { backlog_end: 90, backlog_mid: 20, ..ok };
        assert!(verdict(&drive(100.0), &growing, &r).unwrap().contains("growing"));
        let cancelled = Outcome { cancelled: 1, ..ok };
        assert!(verdict(&drive(100.0), &cancelled, &r).unwrap().contains("cancelled"));
        let unsent = Drive { unsent: 5, sent: 995, max_in_flight: 64, ..drive(100.0) };
        assert!(verdict(&unsent, &ok, &r).unwrap().contains("never sent"));
        let refused = Drive { rejected: 1, first_problem: Some("POST /orders answered 503".into()), ..drive(100.0) };
        assert!(verdict(&refused, &ok, &r).unwrap().contains("503"));
        // A low rate may keep a few orders in flight: the floor.
        let low = Outcome { placed: 50, confirmed_second_half: 25, terminal_second_half: 25, cancelled: 0, backlog_end: 15, backlog_mid: 14 };
        assert_eq!(verdict(&drive(5.0), &low, &r), None);
    }

    #[test]
    fn a_sale_counts_cancelled_orders_as_ended() {
        let sale = Rules { cancelled_ends_well: true, ..Rules::default() };
        // Sold out half-way: few confirmations in the second half, many cancellations.
        let sold_out = Outcome { placed: 1000, confirmed_second_half: 40, terminal_second_half: 496, cancelled: 480, backlog_end: 12, backlog_mid: 10 };
        assert_eq!(verdict(&drive(100.0), &sold_out, &sale), None);
        assert!(verdict(&drive(100.0), &sold_out, &Rules::default()).unwrap().contains("480 orders cancelled"));
        let slow = Outcome { terminal_second_half: 400, ..sold_out };
        assert!(verdict(&drive(100.0), &slow, &sale).unwrap().contains("ended 80/s, 80%"));
        let growing = Outcome { backlog_end: 90, backlog_mid: 20, ..sold_out };
        assert!(verdict(&drive(100.0), &growing, &sale).unwrap().contains("growing"));
    }

    fn search() -> Search {
        Search { start: 100.0, factor: 1.5, precision: 0.1, max_bisections: 3, max_rate: 100_000.0, tried: vec![] }
    }

    #[test]
    fn the_search_ramps_up_then_bisects() {
        let mut s = search();
        let capacity = 400.0;
        let mut rates = Vec::new();
        while let Some(r) = s.next() {
            rates.push(r);
            s.tried.push((r, r <= capacity));
            assert!(rates.len() < 20, "{rates:?}");
        }
        // 100, 150, 225, 338, 507 (fails), then 423 (fails), 381, 402 (fails): 3 bisections.
        assert_eq!(rates, [100.0, 150.0, 225.0, 338.0, 507.0, 423.0, 381.0, 402.0]);
        assert_eq!(s.best(), Some(381.0));
    }

    #[test]
    fn the_search_stops_when_close_enough_or_at_the_cap() {
        let mut s = Search { max_bisections: 10, ..search() };
        s.tried = vec![(100.0, true), (150.0, false)];
        assert_eq!(s.next(), Some(125.0));
        s.tried.push((125.0, true));
        assert_eq!(s.next(), Some(138.0));
        s.tried.push((138.0, true));
        // 150 / 138 < 1.1: done.
        assert_eq!(s.next(), None);
        let mut capped = Search { max_rate: 200.0, ..search() };
        capped.tried = vec![(100.0, true), (150.0, true)];
        assert_eq!(capped.next(), Some(200.0));
        capped.tried.push((200.0, true));
        assert_eq!(capped.next(), None);
        assert_eq!(capped.best(), Some(200.0));
    }

    #[test]
    fn a_first_step_that_fails_bisects_downwards() {
        let mut s = search();
        s.tried = vec![(100.0, false)];
        assert_eq!(s.next(), Some(50.0));
        s.tried.push((50.0, true));
        assert_eq!(s.next(), Some(75.0));
    }

    #[test]
    fn outcomes_and_series_come_from_the_order_times() {
        let o = |placed: f64, terminal: Option<f64>| OrderTimes { placed, terminal, confirmed: true };
        let cancelled = OrderTimes { placed: 100.6, terminal: Some(101.6), confirmed: false };
        let orders = [o(100.1, Some(100.2)), o(100.5, Some(101.5)), o(101.2, None), o(101.9, Some(102.5)), cancelled];
        let out = outcome(&orders, 100.0, 102.0);
        assert_eq!(out, Outcome { placed: 5, confirmed_second_half: 1, terminal_second_half: 2, cancelled: 1, backlog_end: 2, backlog_mid: 2 });
        let s = series(&orders, 100.0, 100.0, 101.5);
        let second = |t, placed, confirmed, terminal, backlog| Second { t, placed, confirmed, terminal, backlog };
        assert_eq!(s, vec![second(1.0, 3.0, 1.0, 1.0, 2.0), second(2.0, 2.0, 1.0, 2.0, 2.0)]);
        let parsed = parse_order_times("100.5|101.25|confirmed\n101|||\n").unwrap_err();
        assert!(parsed.to_string().contains("unexpected line"));
        let parsed = parse_order_times("100.5|101.25|confirmed\n101||placed\n").unwrap();
        assert_eq!(parsed, vec![OrderTimes { placed: 100.5, terminal: Some(101.25), confirmed: true }, OrderTimes { placed: 101.0, terminal: None, confirmed: false }]);
    }
}
