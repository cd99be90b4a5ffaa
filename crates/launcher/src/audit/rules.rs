//! The audit's rules as pure functions of what was read (a [`Snapshot`]): no database, no
//! network, so every formula is unit-tested here. `docs/audit.md` states each formula.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use super::snapshot::{DeadLetter, Delivery, Order, PaymentRow, Projected, Queue, Reservation, Snapshot, Status};
use super::{Options, Rule, RuleReport, Verdict};

/// One rule's findings as they are made: a count of what was checked, every violation
/// counted, the first `max` kept as examples.
struct Check {
    report: RuleReport,
    max: usize,
}

impl Check {
    fn new(rule: Rule, options: &Options) -> Check {
        let report = RuleReport { id: rule.id(), title: rule.title(), verdict: Verdict::Pass, checked: 0, violations: 0, examples: Vec::new(), notes: Vec::new() };
        Check { report, max: options.examples }
    }

    fn checked(&mut self, n: usize) {
        self.report.checked += n as u64;
    }

    fn fail(&mut self, example: impl FnOnce() -> String) {
        self.report.violations += 1;
        if self.report.examples.len() < self.max {
            self.report.examples.push(example());
        }
    }

    /// `count` violations, of which the first rows read are `examples`.
    fn fail_listed(&mut self, count: i64, examples: impl IntoIterator<Item = String>) {
        self.report.violations += count.max(0) as u64;
        let room = self.max.saturating_sub(self.report.examples.len());
        self.report.examples.extend(examples.into_iter().take(room.min(count.max(0) as usize)));
    }

    fn note(&mut self, note: impl Into<String>) {
        self.report.notes.push(note.into());
    }

    fn skip(mut self, why: impl Into<String>) -> RuleReport {
        self.report.verdict = Verdict::Skipped;
        self.report.notes.push(why.into());
        self.report
    }

    fn finish(mut self) -> RuleReport {
        if self.report.violations > 0 {
            self.report.verdict = Verdict::Fail;
        }
        self.report
    }
}

fn missing(what: &[&str]) -> String {
    format!("not checked: no {} to read", what.join(" or "))
}

/// Every rule, in the order they are reported.
pub(crate) fn check_all(s: &Snapshot, o: &Options) -> Vec<RuleReport> {
    vec![
        orders_terminal(s, o),
        accepted_exist(s, o),
        read_model(s, o),
        stock_levels(s, o),
        stock_reservations(s, o),
        captures(s, o),
        balances(s, o),
        notifications(s, o),
        outboxes_empty(s, o),
        inboxes_drained(s, o),
        dead_letters(s, o),
    ]
}

fn orders_terminal(s: &Snapshot, o: &Options) -> RuleReport {
    let mut c = Check::new(Rule::OrdersTerminal, o);
    let Some(orders) = &s.orders else { return c.skip(missing(&["order database"])) };
    c.checked(orders.orders.len());
    let mut placed: Vec<(&Uuid, &Order)> = orders.orders.iter().filter(|(_, o)| o.status == Status::Placed).collect();
    placed.sort_by_key(|(id, o)| (-o.age_secs, **id));
    for (id, order) in placed {
        c.fail(|| format!("order {id} is still placed, {} s after it was placed (customer {}, total {} {})", order.age_secs, order.customer, order.total, order.currency));
    }
    c.finish()
}

fn accepted_exist(s: &Snapshot, o: &Options) -> RuleReport {
    let mut c = Check::new(Rule::AcceptedExist, o);
    if s.accepted.is_empty() {
        c.note("no accepted order ids were given (--accepted FILE): nothing to check");
        return c.finish();
    }
    let Some(orders) = &s.orders else { return c.skip(missing(&["order database"])) };
    c.checked(s.accepted.len());
    for id in &s.accepted {
        if !orders.orders.contains_key(id) {
            c.fail(|| format!("order {id} was accepted (201) but does not exist"));
        }
    }
    c.finish()
}

/// Each order's view against its stream: at its version, with its status. A view behind
/// its stream is lag, and a violation only once the stream's last event is older than the
/// grace; a view at the stream's version that says another status is a projection bug.
fn read_model(s: &Snapshot, o: &Options) -> RuleReport {
    let mut c = Check::new(Rule::ReadModel, o);
    let Some(orders) = &s.orders else { return c.skip(missing(&["order database"])) };
    c.checked(orders.projected.len());
    let grace = o.grace.as_secs() as i64;
    let mut ids: Vec<(&Uuid, &Projected)> = orders.projected.iter().collect();
    ids.sort_by_key(|(id, _)| **id);
    let mut behind = 0;
    for (id, p) in ids {
        let status = orders.orders.get(id).map(|o| o.status);
        match p.view {
            Some((version, view_status)) if version == p.stream_version => {
                if Some(view_status) != status {
                    c.fail(|| format!("order {id}: its view says {view_status:?} at version {version}, its stream {status:?}"));
                }
            }
            _ if p.last_age_secs <= grace => behind += 1,
            None => c.fail(|| format!("order {id} has no view, {} s after its last event (stream version {})", p.last_age_secs, p.stream_version)),
            Some((version, _)) => c.fail(|| {
                format!("order {id}: its view is at version {version}, its stream at {}, last appended {} s ago", p.stream_version, p.last_age_secs)
            }),
        }
    }
    if behind > 0 {
        c.note(format!("{behind} views behind their streams by less than the grace (the projector's lag)"));
    }
    c.finish()
}

/// Each item's levels against its movements: available = initial + restock + release −
/// reserve, reserved = reserve − release, neither below zero.
fn stock_levels(s: &Snapshot, o: &Options) -> RuleReport {
    let mut c = Check::new(Rule::StockLevels, o);
    let Some(stock) = &s.stock else { return c.skip(missing(&["stock database"])) };
    c.checked(stock.items.len());
    for i in &stock.items {
        let available = i.initial + i.restock + i.release - i.reserve;
        let reserved = i.reserve - i.release;
        if i.available < 0 || i.reserved < 0 {
            c.fail(|| format!("product {}: available {}, reserved {}: below zero", i.product, i.available, i.reserved));
        } else if i.available != available || i.reserved != reserved {
            c.fail(|| {
                format!(
                    "product {}: available {} and reserved {}, but its movements give {available} and {reserved} (initial {} + restock {} + release {} − reserve {})",
                    i.product, i.available, i.reserved, i.initial, i.restock, i.release, i.reserve
                )
            });
        }
    }
    c.finish()
}

/// What is reserved is what orders hold: per item, reserved = Σ lines of confirmed orders +
/// Σ reservations still held by orders not yet terminal; per order, a confirmed order holds
/// a reservation of exactly its lines, a cancelled one holds none.
fn stock_reservations(s: &Snapshot, o: &Options) -> RuleReport {
    let mut c = Check::new(Rule::StockReservations, o);
    let (Some(orders), Some(stock)) = (&s.orders, &s.stock) else { return c.skip(missing(&["order database", "stock database"])) };
    let mut expected: BTreeMap<Uuid, i64> = BTreeMap::new();
    let mut ids: Vec<&Uuid> = orders.orders.keys().collect();
    ids.sort();
    for id in ids {
        let order = &orders.orders[id];
        let reservation = stock.reservations.get(id);
        let held = reservation.filter(|r| r.state == "reserved");
        match order.status {
            Status::Confirmed => {
                let lines = orders.lines.get(id).cloned().unwrap_or_default();
                for (product, qty) in &lines {
                    *expected.entry(*product).or_default() += qty;
                }
                match reservation {
                    None => c.fail(|| format!("order {id} is confirmed but stock has no reservation for it")),
                    Some(r) if r.state != "reserved" => c.fail(|| format!("order {id} is confirmed but its reservation is {}", r.state)),
                    Some(r) if r.lines != lines => c.fail(|| format!("order {id} is confirmed with lines {} but its reservation holds {}", show(&lines), show(&r.lines))),
                    Some(_) => {}
                }
            }
            Status::Placed => {
                for (product, qty) in held.map(|r| &r.lines).into_iter().flatten() {
                    *expected.entry(*product).or_default() += qty;
                }
            }
            Status::Cancelled => {
                if let Some(r) = held {
                    c.fail(|| format!("order {id} is cancelled ({}) but still holds a reservation of {}", order.reason.as_deref().unwrap_or("?"), show(&r.lines)));
                }
            }
        }
    }
    let mut orphans: Vec<(&Uuid, &Reservation)> = stock.reservations.iter().filter(|(id, r)| r.state == "reserved" && !orders.orders.contains_key(id)).collect();
    orphans.sort_by_key(|(id, _)| **id);
    for (id, r) in orphans {
        c.fail(|| format!("a reservation of {} is held for order {id}, which the order service does not have", show(&r.lines)));
    }
    for item in &stock.items {
        let want = expected.remove(&item.product).unwrap_or(0);
        if item.reserved != want {
            c.fail(|| format!("product {}: reserved {}, but confirmed and in-flight orders hold {want}", item.product, item.reserved));
        }
    }
    for (product, want) in expected {
        c.fail(|| format!("product {product}: orders hold {want} but stock has no such item"));
    }
    c.checked(orders.orders.len() + stock.items.len());
    c.finish()
}

fn show(lines: &BTreeMap<Uuid, i64>) -> String {
    let parts: Vec<String> = lines.iter().map(|(p, q)| format!("{q} × {p}")).collect();
    if parts.is_empty() { "nothing".into() } else { parts.join(", ") }
}

/// At most one capture per order; a confirmed order captured once, for its total; nothing
/// kept for a cancelled order; the payments table and the ledger agree.
fn captures(s: &Snapshot, o: &Options) -> RuleReport {
    let mut c = Check::new(Rule::Captures, o);
    let (Some(orders), Some(payment)) = (&s.orders, &s.payment) else { return c.skip(missing(&["order database", "payment database"])) };
    let mut captured: HashMap<Uuid, Vec<&PaymentRow>> = HashMap::new();
    // A refunded payment was captured first: it counts as a capture, and its refund must be in the ledger.
    for p in payment.payments.iter().filter(|p| p.status == "captured" || p.status == "refunded") {
        captured.entry(p.order).or_default().push(p);
    }
    let mut ids: Vec<Uuid> = orders.orders.keys().chain(captured.keys()).chain(payment.charges.keys()).copied().collect();
    ids.sort();
    ids.dedup();
    c.checked(ids.len());
    for id in ids {
        let rows = captured.get(&id).map(Vec::as_slice).unwrap_or_default();
        let charges = payment.charges.get(&id).copied().unwrap_or_default();
        let kept = -(charges.captured + charges.refunded);
        if rows.len() > 1 || charges.captures > 1 {
            c.fail(|| format!("order {id} was captured more than once: {} captured payments, {} ledger captures totalling {}", rows.len(), charges.captures, -charges.captured));
            continue;
        }
        let row_amount = rows.first().map(|p| p.amount);
        if row_amount.unwrap_or(0) != -charges.captured {
            c.fail(|| {
                format!(
                    "order {id}: the payments table says captured {}, the ledger's captures total {}",
                    row_amount.map_or("nothing".into(), |a| a.to_string()),
                    -charges.captured
                )
            });
            continue;
        }
        let refunded_row = rows.first().is_some_and(|p| p.status == "refunded");
        if refunded_row != (charges.refunded != 0) && row_amount != Some(0) {
            c.fail(|| format!("order {id}: the payments table says {}, the ledger's refunds total {}", if refunded_row { "refunded" } else { "not refunded" }, charges.refunded));
            continue;
        }
        match orders.orders.get(&id) {
            None => c.fail(|| format!("{} captured for order {id}, which the order service does not have", kept)),
            Some(order) if order.status == Status::Confirmed && refunded_row => c.fail(|| format!("order {id} is confirmed but its payment was refunded")),
            Some(order) if order.status == Status::Cancelled && kept != 0 => {
                c.fail(|| format!("order {id} is cancelled ({}) but {kept} {} of its capture is kept", order.reason.as_deref().unwrap_or("?"), order.currency))
            }
            Some(order) if order.status == Status::Confirmed => match rows.first() {
                None => c.fail(|| format!("order {id} is confirmed but was never captured")),
                Some(p) if p.amount != order.total || p.currency != order.currency => {
                    c.fail(|| format!("order {id} is confirmed for {} {} but {} {} was captured", order.total, order.currency, p.amount, p.currency))
                }
                Some(_) => {}
            },
            Some(_) => {}
        }
    }
    c.finish()
}

/// Each balance is the sum of its ledger: opening balance + top-ups − captures + refunds.
fn balances(s: &Snapshot, o: &Options) -> RuleReport {
    let mut c = Check::new(Rule::Balances, o);
    let Some(payment) = &s.payment else { return c.skip(missing(&["payment database"])) };
    c.checked(payment.customers.len());
    for cu in &payment.customers {
        if cu.balance < 0 {
            c.fail(|| format!("customer {}: balance {} is below zero", cu.id, cu.balance));
        } else if cu.balance != cu.ledger {
            let other = if cu.other != 0 { format!(" + other {}", cu.other) } else { String::new() };
            c.fail(|| {
                format!(
                    "customer {}: balance {} but the ledger gives {} (opening {} + top-ups {} − captures {} + refunds {}{other})",
                    cu.id, cu.balance, cu.ledger, cu.open, cu.top_ups, -cu.captures, cu.refunds
                )
            });
        }
    }
    c.finish()
}

/// Exactly one notification per terminal order, of its outcome: one record in the
/// notification service and one delivery at the receiver; none for an unknown order.
fn notifications(s: &Snapshot, o: &Options) -> RuleReport {
    let mut c = Check::new(Rule::Notifications, o);
    let (Some(orders), Some(records)) = (&s.orders, &s.notifications) else { return c.skip(missing(&["order database", "notification database"])) };
    let mut delivered: HashMap<Uuid, Vec<&Delivery>> = HashMap::new();
    if let Some(sink) = &s.sink {
        for d in &sink.deliveries {
            match d.order.filter(|id| orders.orders.contains_key(id)) {
                Some(id) => delivered.entry(id).or_default().push(d),
                None => c.fail(|| {
                    format!(
                        "the receiver got a notification (key {}) for no known order: order {}",
                        d.key.as_deref().unwrap_or("none"),
                        d.order.map_or("missing".into(), |o| o.to_string())
                    )
                }),
            }
        }
        if sink.repeats > 0 {
            c.note(format!("{} posts repeated an Idempotency-Key already received; the receiver deduplicated them (a retry after a lost answer)", sink.repeats));
        }
    } else {
        c.note("the webhook receiver was not checked (no sink URL): records only");
    }
    let mut ids: Vec<&Uuid> = orders.orders.keys().collect();
    ids.sort();
    let mut terminal = 0;
    for id in ids {
        let order = &orders.orders[id];
        let want = match order.status {
            Status::Placed => continue,
            Status::Confirmed => "order.confirmed",
            Status::Cancelled => "order.cancelled",
        };
        terminal += 1;
        let empty = BTreeMap::new();
        let recorded = records.get(id).unwrap_or(&empty);
        let right = recorded.get(want).copied().unwrap_or(0);
        let wrong: i64 = recorded.iter().filter(|(t, _)| *t != want).map(|(_, n)| n).sum();
        if right != 1 || wrong != 0 {
            c.fail(|| format!("order {id} ({want}): {right} {want} notification records, {wrong} of another type (want exactly 1)"));
        }
        if s.sink.is_some() {
            let got = delivered.get(id).map(Vec::as_slice).unwrap_or_default();
            let right = got.iter().filter(|d| d.event_type.as_deref() == Some(want)).count();
            if right != 1 || got.len() != 1 {
                let keys: Vec<&str> = got.iter().map(|d| d.key.as_deref().unwrap_or("no key")).collect();
                c.fail(|| {
                    format!(
                        "order {id} ({want}): the receiver got {} distinct notifications, {right} of them {want} (keys: {})",
                        got.len(),
                        if keys.is_empty() { "none".into() } else { keys.join(", ") }
                    )
                });
            }
        }
    }
    let mut unknown: Vec<&Uuid> = records.keys().filter(|id| !orders.orders.contains_key(id)).collect();
    unknown.sort();
    for id in unknown {
        c.fail(|| format!("a notification is recorded for order {id}, which the order service does not have"));
    }
    c.checked(terminal);
    c.finish()
}

fn outboxes_empty(s: &Snapshot, o: &Options) -> RuleReport {
    let mut c = Check::new(Rule::OutboxesEmpty, o);
    if s.queues.is_empty() {
        return c.skip(missing(&["database"]));
    }
    c.checked(s.queues.len());
    for q in &s.queues {
        c.fail_listed(q.outbox, q.outbox_examples.iter().map(|e| format!("{} outbox: {e}", q.service)));
        if q.relaying > 0 {
            c.note(format!("{} outbox: {} messages published within the grace, being relayed", q.service, q.relaying));
        }
    }
    c.finish()
}

fn inboxes_drained(s: &Snapshot, o: &Options) -> RuleReport {
    let mut c = Check::new(Rule::InboxesDrained, o);
    if s.queues.is_empty() {
        return c.skip(missing(&["database"]));
    }
    c.checked(s.queues.len());
    for q in &s.queues {
        c.fail_listed(q.overdue, q.overdue_examples.iter().map(|e| format!("{} inbox: {e}", q.service)));
        if q.waiting > 0 {
            c.note(format!("{} inbox: {} messages wait for their time (a retry's backoff, or due within the grace)", q.service, q.waiting));
        }
    }
    c.finish()
}

fn dead_letters(s: &Snapshot, o: &Options) -> RuleReport {
    let mut c = Check::new(Rule::DeadLetters, o);
    if s.queues.is_empty() {
        return c.skip(missing(&["database"]));
    }
    c.checked(s.queues.len());
    let listed = |q: &Queue, d: &DeadLetter| {
        format!("{} inbox: {} message {} dead after {} attempts: {}", q.service, d.topic, d.id, d.attempts, d.last_error.as_deref().unwrap_or("no error recorded"))
    };
    for q in &s.queues {
        if o.allow_dead {
            for d in &q.dead_examples {
                c.note(listed(q, d));
            }
            if q.dead > q.dead_examples.len() as i64 {
                c.note(format!("{} inbox: {} more dead letters", q.service, q.dead - q.dead_examples.len() as i64));
            }
            continue;
        }
        c.fail_listed(q.dead, q.dead_examples.iter().map(|d| listed(q, d)));
    }
    if o.allow_dead {
        let total: i64 = s.queues.iter().map(|q| q.dead).sum();
        c.note(format!("{total} dead letters, allowed (--allow-dead)"));
    }
    c.finish()
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
