//! Each rule on a small consistent shop (every rule passes), then with one fault planted.

use super::*;
use crate::audit::Report;
use crate::audit::snapshot::{Charges, Customer, Item, Orders, Payment, Projected, Sink, Stock};

const EUR: &str = "EUR";

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// Product 1 (10 units at first, 2 restocked); customer 100 (opened with 10,000); order 11
/// confirmed (3 units, 3,000), order 12 cancelled out of stock, order 13 cancelled for
/// payment (reservation released).
fn shop() -> Snapshot {
    let order = |status, reason: Option<&str>, total| Order { status, reason: reason.map(str::to_owned), customer: id(100), total, currency: EUR.into(), age_secs: 5 };
    let mut orders = Orders::default();
    orders.orders.insert(id(11), order(Status::Confirmed, None, 3000));
    orders.orders.insert(id(12), order(Status::Cancelled, Some("out_of_stock"), 50_000));
    orders.orders.insert(id(13), order(Status::Cancelled, Some("payment_declined"), 99_999));
    orders.lines.insert(id(11), BTreeMap::from([(id(1), 3)]));
    for (n, status) in [(11, Status::Confirmed), (12, Status::Cancelled), (13, Status::Cancelled)] {
        orders.projected.insert(id(n), Projected { stream_version: 4, last_age_secs: 5, view: Some((4, status)) });
    }
    let mut stock = Stock::default();
    stock.items.push(Item { product: id(1), available: 9, reserved: 3, initial: 10, restock: 2, reserve: 3 + 1, release: 1 });
    stock.reservations.insert(id(11), Reservation { state: "reserved".into(), lines: BTreeMap::from([(id(1), 3)]) });
    stock.reservations.insert(id(12), Reservation { state: "rejected".into(), lines: BTreeMap::new() });
    stock.reservations.insert(id(13), Reservation { state: "released".into(), lines: BTreeMap::new() });
    let payment = Payment {
        payments: vec![PaymentRow { order: id(11), amount: 3000, currency: EUR.into(), status: "captured".into() }],
        charges: HashMap::from([(id(11), Charges { captures: 1, captured: -3000, refunded: 0 })]),
        customers: vec![Customer { id: id(100), balance: 7000, ledger: 7000, open: 10_000, captures: -3000, ..Customer::default() }],
    };
    let notifications = HashMap::from([
        (id(11), BTreeMap::from([("order.confirmed".to_owned(), 1)])),
        (id(12), BTreeMap::from([("order.cancelled".to_owned(), 1)])),
        (id(13), BTreeMap::from([("order.cancelled".to_owned(), 1)])),
    ]);
    let delivery = |o: u128, t: &str| Delivery { key: Some(format!("{}:{t}", id(o))), order: Some(id(o)), event_type: Some(t.into()) };
    let sink = Sink { deliveries: vec![delivery(11, "order.confirmed"), delivery(12, "order.cancelled"), delivery(13, "order.cancelled")], repeats: 0 };
    let queues = ["catalog", "order", "stock"].iter().map(|s| Queue { service: s.to_string(), ..Queue::default() }).collect();
    Snapshot { orders: Some(orders), stock: Some(stock), payment: Some(payment), notifications: Some(notifications), sink: Some(sink), queues, accepted: vec![id(11), id(12)] }
}

fn report(s: &Snapshot, o: &Options) -> Report {
    let rules = check_all(s, o);
    Report { passed: rules.iter().all(|r| r.verdict != Verdict::Fail), options: o.clone(), databases: vec![], sink: None, duration_ms: 0, rules }
}

/// The ids of the failed rules, and the first example of the one expected.
fn failing(s: &Snapshot) -> (Vec<&'static str>, Report) {
    let r = report(s, &Options::default());
    (r.failed(), r)
}

fn assert_only(s: &Snapshot, rule: &str, needle: &str) {
    let (failed, r) = failing(s);
    assert_eq!(failed, [rule], "{}", r.to_text());
    let examples = &r.rule(rule).unwrap().examples;
    assert!(examples.iter().any(|e| e.contains(needle)), "{needle:?} not in {examples:?}");
}

#[test]
fn a_consistent_shop_passes_every_rule() {
    let r = report(&shop(), &Options::default());
    assert!(r.passed(), "{}", r.to_text());
    assert_eq!(r.rules.len(), Rule::ALL.len());
    assert_eq!(r.rule("orders_terminal").unwrap().checked, 3);
    assert_eq!(r.rule("notifications").unwrap().checked, 3);
    assert!(r.rules.iter().all(|x| x.verdict == Verdict::Pass));
}

#[test]
fn an_order_left_placed_fails_only_the_terminal_rule() {
    let mut s = shop();
    let orders = s.orders.as_mut().unwrap();
    orders.orders.get_mut(&id(11)).unwrap().status = Status::Placed;
    orders.projected.get_mut(&id(11)).unwrap().view = Some((4, Status::Placed));
    // Its reservation still counts as held (in flight), so stock stays consistent.
    assert_only(&s, "orders_terminal", &format!("order {} is still placed", id(11)));
}

#[test]
fn a_view_that_disagrees_with_its_stream_or_lags_past_the_grace_is_reported() {
    let mut s = shop();
    s.orders.as_mut().unwrap().projected.get_mut(&id(11)).unwrap().view = Some((4, Status::Placed));
    assert_only(&s, "read_model", &format!("order {}: its view says Placed at version 4, its stream Some(Confirmed)", id(11)));
    // Behind by an event appended 5 s ago: the projector's lag, noted.
    let mut s = shop();
    s.orders.as_mut().unwrap().projected.get_mut(&id(12)).unwrap().view = Some((3, Status::Cancelled));
    let r = report(&s, &Options::default());
    assert!(r.passed(), "{}", r.to_text());
    assert!(r.rule("read_model").unwrap().notes[0].contains("1 views behind"), "{:?}", r.rule("read_model"));
    // The same, 61 s later; and a view missing altogether.
    let p = s.orders.as_mut().unwrap().projected.get_mut(&id(12)).unwrap();
    p.last_age_secs = 61;
    assert_only(&s, "read_model", "its view is at version 3, its stream at 4, last appended 61 s ago");
    let p = s.orders.as_mut().unwrap().projected.get_mut(&id(13)).unwrap();
    (p.view, p.last_age_secs) = (None, 61);
    assert_eq!(failing(&s).1.rule("read_model").unwrap().violations, 2);
}

#[test]
fn an_accepted_order_that_does_not_exist_is_reported() {
    let mut s = shop();
    s.accepted.push(id(99));
    assert_only(&s, "accepted_orders_exist", &id(99).to_string());
    s.accepted.clear();
    let r = report(&s, &Options::default());
    assert_eq!(r.rule("accepted_orders_exist").unwrap().checked, 0);
    assert!(r.passed());
}

#[test]
fn stock_levels_follow_their_movements_and_never_go_below_zero() {
    let mut s = shop();
    s.stock.as_mut().unwrap().items[0].available += 1;
    assert_only(&s, "stock_levels", "movements give 9 and 3");
    let mut s = shop();
    let item = &mut s.stock.as_mut().unwrap().items[0];
    (item.available, item.release) = (-1, item.release - 10);
    assert!(failing(&s).1.rule("stock_levels").unwrap().examples[0].contains("below zero"));
}

#[test]
fn a_confirmed_order_without_its_reservation_fails_the_reservation_rule() {
    let mut s = shop();
    s.stock.as_mut().unwrap().reservations.get_mut(&id(11)).unwrap().state = "released".into();
    assert_only(&s, "stock_reservations", "its reservation is released");
}

#[test]
fn a_cancelled_order_still_holding_stock_is_a_leak() {
    let mut s = shop();
    let stock = s.stock.as_mut().unwrap();
    stock.reservations.insert(id(13), Reservation { state: "reserved".into(), lines: BTreeMap::from([(id(1), 1)]) });
    let item = &mut stock.items[0];
    (item.available, item.reserved, item.release) = (8, 4, 0);
    let (failed, r) = failing(&s);
    assert_eq!(failed, ["stock_reservations"], "{}", r.to_text());
    let examples = &r.rule("stock_reservations").unwrap().examples;
    assert!(examples[0].contains("is cancelled (payment_declined) but still holds"), "{examples:?}");
    assert!(examples[1].contains("reserved 4, but confirmed and in-flight orders hold 3"), "{examples:?}");
}

#[test]
fn reserved_stock_counts_the_reservations_of_orders_in_flight() {
    let mut s = shop();
    let orders = s.orders.as_mut().unwrap();
    let placed = Order { status: Status::Placed, reason: None, customer: id(100), total: 1000, currency: EUR.into(), age_secs: 1 };
    orders.orders.insert(id(14), placed);
    let stock = s.stock.as_mut().unwrap();
    stock.reservations.insert(id(14), Reservation { state: "reserved".into(), lines: BTreeMap::from([(id(1), 2)]) });
    let item = &mut stock.items[0];
    (item.available, item.reserved, item.reserve) = (7, 5, 6);
    let (failed, _) = failing(&s);
    assert_eq!(failed, ["orders_terminal"], "only the order in flight is reported");
}

#[test]
fn a_second_capture_is_reported_even_when_the_balance_agrees() {
    let mut s = shop();
    let p = s.payment.as_mut().unwrap();
    p.charges.insert(id(11), Charges { captures: 2, captured: -3001, refunded: 0 });
    (p.customers[0].balance, p.customers[0].ledger, p.customers[0].captures) = (6999, 6999, -3001);
    assert_only(&s, "captures", "captured more than once");
}

#[test]
fn a_capture_kept_for_a_cancelled_order_is_reported_unless_refunded() {
    let mut s = shop();
    let p = s.payment.as_mut().unwrap();
    p.payments.push(PaymentRow { order: id(12), amount: 500, currency: EUR.into(), status: "captured".into() });
    p.charges.insert(id(12), Charges { captures: 1, captured: -500, refunded: 0 });
    assert_only(&s, "captures", "is cancelled (out_of_stock) but 500 EUR");
    // Refunded: payment marks the payment so and writes the refund in the ledger.
    let p = s.payment.as_mut().unwrap();
    p.charges.get_mut(&id(12)).unwrap().refunded = 500;
    p.payments.last_mut().unwrap().status = "refunded".into();
    assert!(failing(&s).0.is_empty(), "a refunded capture is not kept");
}

#[test]
fn a_refunded_payment_is_a_capture_given_back_and_the_ledger_must_show_the_refund() {
    let mut s = shop();
    let p = s.payment.as_mut().unwrap();
    // Order 13 (cancelled) was captured after all, then refunded: what the orchestrated saga does with a late capture.
    p.payments.push(PaymentRow { order: id(13), amount: 500, currency: EUR.into(), status: "refunded".into() });
    p.charges.insert(id(13), Charges { captures: 1, captured: -500, refunded: 500 });
    assert!(failing(&s).0.is_empty(), "{}", failing(&s).1.to_text());
    s.payment.as_mut().unwrap().charges.get_mut(&id(13)).unwrap().refunded = 0;
    assert_only(&s, "captures", "the payments table says refunded, the ledger's refunds total 0");
    // A confirmed order whose payment was refunded has not been paid for.
    let mut s = shop();
    let p = s.payment.as_mut().unwrap();
    p.payments[0].status = "refunded".into();
    p.charges.get_mut(&id(11)).unwrap().refunded = 3000;
    assert_only(&s, "captures", "confirmed but its payment was refunded");
}

#[test]
fn a_confirmed_order_must_be_captured_once_for_its_total() {
    let mut s = shop();
    let p = s.payment.as_mut().unwrap();
    p.payments.clear();
    p.charges.clear();
    (p.customers[0].balance, p.customers[0].ledger, p.customers[0].captures) = (10_000, 10_000, 0);
    assert_only(&s, "captures", "never captured");
    let mut s = shop();
    s.payment.as_mut().unwrap().payments[0].amount = 2999;
    assert_only(&s, "captures", "the payments table says captured 2999");
}

#[test]
fn a_balance_that_is_not_its_ledger_is_reported() {
    let mut s = shop();
    s.payment.as_mut().unwrap().customers[0].balance += 1;
    assert_only(&s, "balances", "balance 7001 but the ledger gives 7000 (opening 10000 + top-ups 0 − captures 3000 + refunds 0)");
}

#[test]
fn notifications_are_one_per_terminal_order_recorded_and_received() {
    let mut s = shop();
    s.notifications.as_mut().unwrap().remove(&id(12));
    assert_only(&s, "notifications", &format!("order {} (order.cancelled): 0 order.cancelled notification records", id(12)));

    let mut s = shop();
    s.sink.as_mut().unwrap().deliveries.push(Delivery { key: Some("another".into()), order: Some(id(11)), event_type: Some("order.confirmed".into()) });
    assert_only(&s, "notifications", "the receiver got 2 distinct notifications, 2 of them order.confirmed (keys: ");

    let mut s = shop();
    s.sink.as_mut().unwrap().deliveries.push(Delivery { key: None, order: Some(id(77)), event_type: None });
    assert_only(&s, "notifications", "for no known order");

    // A repeated key the receiver deduplicated is a note, not a violation.
    let mut s = shop();
    s.sink.as_mut().unwrap().repeats = 2;
    let r = report(&s, &Options::default());
    assert!(r.passed());
    assert!(r.rule("notifications").unwrap().notes[0].starts_with("2 posts repeated"));

    // Without a receiver, the records alone are checked.
    let mut s = shop();
    s.sink = None;
    s.notifications.as_mut().unwrap().get_mut(&id(11)).unwrap().insert("order.cancelled".into(), 1);
    assert_only(&s, "notifications", "1 of another type");
}

#[test]
fn queue_rules_count_every_row_and_keep_only_examples() {
    let mut s = shop();
    s.queues[1].outbox = 25;
    s.queues[1].outbox_examples = (0..10).map(|n| format!("row {n}")).collect();
    let o = Options { examples: 3, ..Options::default() };
    let r = report(&s, &o);
    let rule = r.rule("outboxes_empty").unwrap();
    assert_eq!((rule.verdict, rule.violations, rule.examples.len()), (Verdict::Fail, 25, 3));
    assert_eq!(rule.examples[0], "order outbox: row 0");
    assert!(r.to_text().contains("… and 22 more"));
    assert_eq!(r.failed(), ["outboxes_empty"]);
    // Rows published within the grace are being relayed: noted, not a violation.
    let mut s = shop();
    s.queues[0].relaying = 2;
    let r = report(&s, &Options::default());
    assert!(r.passed(), "{}", r.to_text());
    assert!(r.rule("outboxes_empty").unwrap().notes[0].contains("catalog outbox: 2 messages published within the grace"));

    let mut s = shop();
    s.queues[2].overdue = 1;
    s.queues[2].overdue_examples = vec!["order.placed message x pending, due 90 s ago (attempts 0)".into()];
    s.queues[2].waiting = 4;
    let r = report(&s, &Options::default());
    assert_eq!(r.failed(), ["inboxes_drained"]);
    assert!(r.rule("inboxes_drained").unwrap().notes[0].contains("stock inbox: 4 messages wait"));
}

#[test]
fn dead_letters_fail_unless_allowed_and_are_listed_either_way() {
    let mut s = shop();
    s.queues[2].dead = 1;
    s.queues[2].dead_examples = vec![DeadLetter { id: id(5), topic: "order.placed".into(), attempts: 3, last_error: Some("boom".into()) }];
    let listed = format!("stock inbox: order.placed message {} dead after 3 attempts: boom", id(5));
    assert_only(&s, "dead_letters", &listed);
    let r = report(&s, &Options { allow_dead: true, ..Options::default() });
    assert!(r.passed());
    let rule = r.rule("dead_letters").unwrap();
    assert_eq!(rule.notes, [listed, "1 dead letters, allowed (--allow-dead)".to_owned()]);
}

#[test]
fn rules_without_their_database_are_skipped_not_failed() {
    let mut s = shop();
    s.payment = None;
    let r = report(&s, &Options::default());
    assert!(r.passed());
    for rule in ["captures", "balances"] {
        assert_eq!(r.rule(rule).unwrap().verdict, Verdict::Skipped);
    }
    assert_eq!(r.rule("stock_levels").unwrap().verdict, Verdict::Pass);
}

#[test]
fn the_report_reads_as_markdown_and_serializes() {
    let mut s = shop();
    s.accepted.push(id(99));
    let r = report(&s, &Options::default());
    let md = r.to_markdown();
    assert!(md.starts_with("# Audit: FAILED"), "{md}");
    assert!(md.contains("| `accepted_orders_exist` | **FAIL** | 3 | 1 |"), "{md}");
    assert!(md.contains(&format!("- order {} was accepted (201) but does not exist", id(99))), "{md}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["passed"], false);
    assert_eq!(json["options"]["grace"], 60.0);
    assert_eq!(json["rules"][1]["verdict"], "fail");
    assert_eq!(json["rules"][0]["id"], "orders_terminal");
}
