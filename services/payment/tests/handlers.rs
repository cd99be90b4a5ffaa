//! The payment worker's handlers against a real database: stock.reserved and the
//! coordinator's commands delivered into the inbox as the relay would, then handled with
//! `process_once`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use conveyor_contracts::{CapturePayment, RefundPayment, StockReserved, limits};
use conveyor_payment::faults::ISSUER_DECLINE;
use conveyor_platform::testing::{deliver, deliver_with_id, drain, drain_together, inbox_state, outbox};
use conveyor_queue::ConsumerOptions;
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn a_covered_order_is_captured_once_from_the_balance() {
    let (api, pool) = setup().await;
    let ada = customer(&api, "EUR", 10_000).await;
    let order = reserved(ada, "EUR", &[(2, 2500), (1, 1000)]);
    let first = deliver(&pool, &order).await;
    let consumer = consumer(&pool, no_faults(&pool));
    assert_eq!(drain(&consumer).await, 1);

    assert_eq!(balance(&pool, ada).await, 4_000);
    assert_eq!(payments(&pool, order.order.order_id).await, [("captured".to_owned(), None)]);
    let events = outbox(&pool).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "payment.captured");
    assert_eq!(events[0].1["order_id"], json!(order.order.order_id));
    assert_eq!(events[0].1["amount"], json!({"amount_minor": 6000, "currency": "EUR"}));
    let listed = api.get(&format!("/orders/{}/payments", order.order.order_id)).await;
    assert_eq!(listed.json[0]["id"], events[0].1["payment_id"], "{}", listed.text);

    // A repeated relay (same id: dropped at its claim, handler not run), then the event
    // republished twice under new ids (the handler's key).
    deliver_with_id(&pool, first, &order).await;
    deliver(&pool, &order).await;
    deliver(&pool, &order).await;
    assert_eq!(drain(&consumer).await, 3);
    assert_eq!(balance(&pool, ada).await, 4_000, "captured once");
    assert_eq!(payments(&pool, order.order.order_id).await.len(), 1);
    assert_eq!(outbox(&pool).await.len(), 1);
    assert_ledger_explains_balances(&pool).await;
}

#[tokio::test]
async fn a_short_balance_declines_and_is_left_untouched() {
    let (api, pool) = setup().await;
    let ada = customer(&api, "EUR", 1_000).await;
    let order = reserved(ada, "EUR", &[(3, 2000)]);
    deliver(&pool, &order).await;
    drain(&consumer(&pool, no_faults(&pool))).await;

    assert_eq!(balance(&pool, ada).await, 1_000);
    let reason = "insufficient balance: needs 60.00 EUR, has 10.00 EUR";
    assert_eq!(payments(&pool, order.order.order_id).await, [("declined".to_owned(), Some(reason.to_owned()))]);
    let events = outbox(&pool).await;
    assert_eq!(events, [("payment.declined".to_owned(), json!({"order_id": order.order.order_id, "reason": reason}))]);
    assert_ledger_explains_balances(&pool).await;
}

#[tokio::test]
async fn orders_that_break_the_rules_are_declined_without_touching_a_balance() {
    let (api, pool) = setup().await;
    let ada = customer(&api, "EUR", 1_000_000).await;
    let stranger = reserved(Uuid::now_v7(), "EUR", &[(1, 100)]);
    let mut overcharged = reserved(ada, "EUR", &[(2, 100)]);
    overcharged.order.total.amount_minor = 150;
    let mut mixed = reserved(ada, "EUR", &[(1, 100), (1, 100)]);
    mixed.order.lines[1].unit_price = money(100, "USD");
    let mut negative = reserved(ada, "EUR", &[(1, 100)]);
    negative.order.lines[0].quantity = -1;
    negative.order.total.amount_minor = -100;
    let dollars = reserved(ada, "USD", &[(1, 100)]);
    for order in [&stranger, &overcharged, &mixed, &negative, &dollars] {
        deliver(&pool, order).await;
    }
    assert_eq!(drain(&consumer(&pool, no_faults(&pool))).await, 5);

    let mut reasons = Vec::new();
    for order in [&stranger, &overcharged, &mixed, &negative, &dollars] {
        match payments(&pool, order.order.order_id).await.as_slice() {
            [(status, Some(reason))] if status == "declined" => reasons.push(reason.clone()),
            other => panic!("expected one declined payment, got {other:?}"),
        }
    }
    assert_eq!(reasons[0], format!("unknown customer {}", stranger.order.customer_id));
    assert_eq!(reasons[1], "amount mismatch: the lines come to 2.00 EUR, the total says 1.50 EUR");
    assert!(reasons[2].starts_with("amount mismatch: product") && reasons[2].contains("currencies differ"), "{}", reasons[2]);
    assert_eq!(reasons[3], "amount mismatch: the total -100 is negative");
    assert_eq!(reasons[4], format!("currency mismatch: customer {ada} pays in EUR, the order is in USD"));
    assert_eq!(balance(&pool, ada).await, 1_000_000);
    let declined: Vec<String> = outbox(&pool).await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(declined, ["payment.declined"; 5]);
}

#[tokio::test]
async fn a_processor_error_retries_the_message_and_writes_nothing() {
    let (api, pool) = setup().await;
    let ada = customer(&api, "EUR", 10_000).await;
    let order = reserved(ada, "EUR", &[(1, 500)]);
    let msg = deliver(&pool, &order).await;
    let failing = consumer(&pool, faults(&pool, json!({"error_rate": 1})).await);
    assert_eq!(failing.process_once().await.unwrap(), 1);

    assert_eq!(inbox_state(&pool, msg).await, ("pending".to_owned(), 1));
    let error: String = sqlx::query_scalar("SELECT errors->0->>'error' FROM conveyor.inbox WHERE message_id = $1").bind(msg).fetch_one(&pool).await.unwrap();
    assert_eq!(error, "simulated processor error");
    assert!(payments(&pool, order.order.order_id).await.is_empty());
    assert_eq!(balance(&pool, ada).await, 10_000);
    assert!(outbox(&pool).await.is_empty());

    // The processor recovers: the retry captures.
    sqlx::query("UPDATE conveyor.inbox SET visible_at = now()").execute(&pool).await.unwrap(); // skip the backoff
    drain(&consumer(&pool, faults(&pool, json!({"error_rate": 0})).await)).await;
    assert_eq!(inbox_state(&pool, msg).await, ("done".to_owned(), 2));
    assert_eq!(balance(&pool, ada).await, 9_500);
}

#[tokio::test]
async fn the_issuer_declines_at_the_decline_rate_after_the_latency() {
    let (api, pool) = setup().await;
    let ada = customer(&api, "EUR", 10_000).await;
    let order = reserved(ada, "EUR", &[(1, 500)]);
    let published = Instant::now(); // no later than the message's published_at
    let msg = deliver(&pool, &order).await;
    let slow_and_strict = consumer(&pool, faults(&pool, json!({"decline_rate": 1, "latency_ms": 400})).await);

    // Not answered yet: the message is snoozed (not an attempt) and nothing is written.
    assert_eq!(slow_and_strict.process_once().await.unwrap(), 1);
    assert_eq!(inbox_state(&pool, msg).await, ("pending".to_owned(), 0));
    let due_in: f64 = sqlx::query_scalar("SELECT extract(epoch FROM visible_at - now())::float8 FROM conveyor.inbox WHERE message_id = $1")
        .bind(msg)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!((0.1..=0.41).contains(&due_in), "snoozed until the processor answers, not {due_in} s");
    assert!(payments(&pool, order.order.order_id).await.is_empty());
    assert!(outbox(&pool).await.is_empty());

    // Once the latency has passed, the processor declines.
    wait_paid(&pool, &slow_and_strict, order.order.order_id).await;
    assert!(published.elapsed() >= Duration::from_millis(400));
    assert_eq!(inbox_state(&pool, msg).await, ("done".to_owned(), 1));
    assert_eq!(payments(&pool, order.order.order_id).await, [("declined".to_owned(), Some(ISSUER_DECLINE.to_owned()))]);
    assert_eq!(balance(&pool, ada).await, 10_000);
    assert_eq!(outbox(&pool).await[0].0, "payment.declined");
}

/// The coordinator's command for an order (what `stock.reserved` carries).
fn command(reserved: &StockReserved) -> CapturePayment {
    CapturePayment { order: reserved.order.clone() }
}

fn refund_of(order_id: Uuid) -> RefundPayment {
    RefundPayment { order_id, reason: "captured after the saga was cancelled".into() }
}

/// The `payment.replied` payloads published so far, in order.
async fn replies(pool: &sqlx::PgPool) -> Vec<serde_json::Value> {
    let published = outbox(pool).await;
    assert!(published.iter().all(|(topic, _)| topic == "payment.replied"), "{published:?}");
    published.into_iter().map(|(_, payload)| payload).collect()
}

/// (kind, amount) of the ledger entries of an order, in order.
async fn entries(pool: &sqlx::PgPool, order_id: Uuid) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT kind, amount_minor FROM ledger WHERE order_id = $1 ORDER BY id").bind(order_id).fetch_all(pool).await.unwrap()
}

async fn payment_id(pool: &sqlx::PgPool, order_id: Uuid) -> Uuid {
    sqlx::query_scalar("SELECT id FROM payments WHERE order_id = $1").bind(order_id).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn a_capture_command_captures_as_stock_reserved_does_and_replies_again_to_repeats() {
    let (api, pool) = setup().await;
    let ada = customer(&api, "EUR", 10_000).await;
    let (covered, short) = (command(&reserved(ada, "EUR", &[(2, 2500), (1, 1000)])), command(&reserved(ada, "EUR", &[(1, 5000)])));
    let consumer = consumer(&pool, no_faults(&pool));
    // Copies in one batch as well as in later ones: each is answered with the first's outcome.
    for c in [&covered, &covered, &short] {
        deliver(&pool, c).await;
    }
    assert_eq!(drain(&consumer).await, 3);
    for c in [&short, &covered] {
        deliver(&pool, c).await;
    }
    assert_eq!(drain(&consumer).await, 2);

    assert_eq!(balance(&pool, ada).await, 4_000, "captured once");
    assert_eq!(payments(&pool, covered.order.order_id).await, [("captured".to_owned(), None)]);
    let why = "insufficient balance: needs 50.00 EUR, has 40.00 EUR";
    assert_eq!(payments(&pool, short.order.order_id).await, [("declined".to_owned(), Some(why.to_owned()))]);
    let captured = json!({"order_id": covered.order.order_id, "outcome": "captured", "payment_id": payment_id(&pool, covered.order.order_id).await,
        "amount": {"amount_minor": 6000, "currency": "EUR"}, "reason": ""});
    let declined = json!({"order_id": short.order.order_id, "outcome": "declined", "payment_id": null, "amount": null, "reason": why});
    assert_eq!(replies(&pool).await, [&captured, &captured, &declined, &declined, &captured].map(Clone::clone));
    assert_ledger_explains_balances(&pool).await;
}

#[tokio::test]
async fn a_refund_gives_a_capture_back_exactly_once() {
    let (api, pool) = setup().await;
    let ada = customer(&api, "EUR", 10_000).await;
    let paid = command(&reserved(ada, "EUR", &[(3, 1500)]));
    let free = command(&reserved(ada, "EUR", &[(1, 0)]));
    let order_id = paid.order.order_id;
    let consumer = consumer(&pool, no_faults(&pool));
    deliver(&pool, &paid).await;
    deliver(&pool, &free).await;
    drain(&consumer).await;
    assert_eq!(balance(&pool, ada).await, 5_500);
    let id = payment_id(&pool, order_id).await;

    deliver(&pool, &refund_of(order_id)).await;
    assert_eq!(drain(&consumer).await, 1);
    assert_eq!(balance(&pool, ada).await, 10_000, "the balance is back where it was");
    assert_eq!(entries(&pool, order_id).await, [("capture".to_owned(), -4_500), ("refund".to_owned(), 4_500)]);
    assert_eq!(payments(&pool, order_id).await, [("refunded".to_owned(), None)]);
    let refunded = json!({"order_id": order_id, "outcome": "refunded", "payment_id": id, "amount": {"amount_minor": 4500, "currency": "EUR"}, "reason": ""});
    assert_eq!(replies(&pool).await[2], refunded);
    let listed = api.get(&format!("/orders/{order_id}/payments")).await;
    assert_eq!((&listed.json[0]["status"], &listed.json[0]["amount"]["amount_minor"]), (&json!("refunded"), &json!(4500)), "{}", listed.text);

    // The refund again (a new message id) and the capture again: answered, nothing changes.
    deliver(&pool, &refund_of(order_id)).await;
    deliver(&pool, &paid).await;
    assert_eq!(drain(&consumer).await, 2);
    assert_eq!(balance(&pool, ada).await, 10_000);
    assert_eq!(entries(&pool, order_id).await.len(), 2, "one capture, one refund");
    assert_eq!(replies(&pool).await[3..], [refunded.clone(), refunded]);

    // A free order's capture and refund are recorded too, both of nothing.
    deliver(&pool, &refund_of(free.order.order_id)).await;
    drain(&consumer).await;
    assert_eq!(entries(&pool, free.order.order_id).await, [("capture".to_owned(), 0), ("refund".to_owned(), 0)]);
    assert_eq!(replies(&pool).await[5]["outcome"], "refunded");
    assert_eq!(balance(&pool, ada).await, 10_000);
    assert_ledger_explains_balances(&pool).await;
}

#[tokio::test]
async fn a_refund_of_an_order_not_captured_refunds_nothing() {
    let (api, pool) = setup().await;
    let ada = customer(&api, "EUR", 1_000).await;
    let declined = reserved(ada, "EUR", &[(1, 5000)]);
    let consumer = consumer(&pool, no_faults(&pool));
    deliver(&pool, &declined).await;
    drain(&consumer).await;
    let unpaid = Uuid::now_v7();
    deliver(&pool, &refund_of(unpaid)).await;
    deliver(&pool, &refund_of(declined.order.order_id)).await;
    assert_eq!(drain(&consumer).await, 2);

    let published = outbox(&pool).await;
    assert_eq!(published[0].0, "payment.declined");
    assert_eq!(
        published[1..].iter().map(|(t, p)| (t.as_str(), p.clone())).collect::<Vec<_>>(),
        [
            ("payment.replied", json!({"order_id": unpaid, "outcome": "nothing_to_refund", "payment_id": null, "amount": null, "reason": "no payment for the order"})),
            ("payment.replied", json!({"order_id": declined.order.order_id, "outcome": "nothing_to_refund", "payment_id": null, "amount": null,
                "reason": "the payment was declined: insufficient balance: needs 50.00 EUR, has 10.00 EUR"})),
        ]
    );
    assert_eq!(balance(&pool, ada).await, 1_000);
    assert_eq!(payments(&pool, declined.order.order_id).await[0].0, "declined");
    assert!(payments(&pool, unpaid).await.is_empty(), "a refund records nothing for an order it has not seen");
    let refunds: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger WHERE kind = 'refund'").fetch_one(&pool).await.unwrap();
    assert_eq!(refunds, 0);
    assert_ledger_explains_balances(&pool).await;
}

/// Copies of refunds (the coordinator's retries) handled by concurrent consumers, beside
/// captures of the same customer: every capture is given back exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_copies_of_refunds_give_each_capture_back_once() {
    let (api, pool) = setup().await;
    let ada = customer(&api, "EUR", 100_000).await;
    let orders: Vec<CapturePayment> = (0..10).map(|_| command(&reserved(ada, "EUR", &[(1, 1000)]))).collect();
    for o in &orders {
        deliver(&pool, o).await;
    }
    drain(&consumer(&pool, no_faults(&pool))).await;
    assert_eq!(balance(&pool, ada).await, 90_000);
    for _ in 0..3 {
        for o in &orders {
            deliver(&pool, &refund_of(o.order.order_id)).await;
        }
    }
    for _ in 0..5 {
        deliver(&pool, &command(&reserved(ada, "EUR", &[(1, 100)]))).await;
    }
    let opts = ConsumerOptions { batch_size: 2, ..ConsumerOptions::default() };
    drain_together(&pool, (0..4).map(|_| consumer(&pool, no_faults(&pool)).with_options(opts.clone())).collect()).await;

    assert_eq!(balance(&pool, ada).await, 100_000 - 5 * 100);
    let refunds: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger WHERE kind = 'refund'").fetch_one(&pool).await.unwrap();
    assert_eq!(refunds, 10);
    let answered: Vec<serde_json::Value> = replies(&pool).await.into_iter().filter(|r| r["outcome"] == "refunded").collect();
    assert_eq!(answered.len(), 30, "every copy answered");
    assert_ledger_explains_balances(&pool).await;
}

/// A balance topped up to its limit after a capture cannot take the capture back: the
/// refund is dead at once, with the reason, and nothing changes.
#[tokio::test]
async fn a_refund_past_the_balance_limit_is_dead_and_changes_nothing() {
    let (api, pool) = setup().await;
    let ada = customer(&api, "EUR", limits::MAX_BALANCE_MINOR).await;
    let paid = command(&reserved(ada, "EUR", &[(1, 700)]));
    let consumer = consumer(&pool, no_faults(&pool));
    deliver(&pool, &paid).await;
    drain(&consumer).await;
    let topped = api.post(&format!("/customers/{ada}/top-up"), json!({"amount_minor": 500})).await;
    assert_eq!(topped.status, 200, "{}", topped.text);

    let msg = deliver(&pool, &refund_of(paid.order.order_id)).await;
    assert_eq!(drain(&consumer).await, 1);
    assert_eq!(inbox_state(&pool, msg).await, ("dead".to_owned(), 1), "no retry can make room");
    let error: String = sqlx::query_scalar("SELECT errors->0->>'error' FROM conveyor.inbox WHERE message_id = $1").bind(msg).fetch_one(&pool).await.unwrap();
    assert_eq!(
        error,
        format!(
            "refunding 7.00 EUR for order {} would take customer {ada}'s balance from {} past the limit of {}",
            paid.order.order_id,
            limits::MAX_BALANCE_MINOR - 200,
            limits::MAX_BALANCE_MINOR
        )
    );
    assert_eq!(balance(&pool, ada).await, limits::MAX_BALANCE_MINOR - 200);
    assert_eq!(payments(&pool, paid.order.order_id).await, [("captured".to_owned(), None)]);
    assert_eq!(outbox(&pool).await.len(), 1, "only the capture's reply");
    assert_ledger_explains_balances(&pool).await;
}

/// Runs `consumer` until the order has a payment (5 s at most).
async fn wait_paid(pool: &sqlx::PgPool, consumer: &conveyor_queue::Consumer, order_id: Uuid) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while payments(pool, order_id).await.is_empty() {
        assert!(Instant::now() < deadline, "order {order_id} not paid or declined within 5 s");
        if consumer.process_once().await.unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The oldest transaction open in the database besides this query's, in seconds.
const OLDEST_TRANSACTION: &str = "\
SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0)::float8 FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_holds_no_transaction_while_captures_wait_and_other_claims_go_on() {
    let (api, pool) = setup().await;
    let ada = customer(&api, "EUR", 100_000).await;
    let slow = faults(&pool, json!({"latency_ms": 1500})).await;
    let orders: Vec<_> = (0..10).map(|_| reserved(ada, "EUR", &[(1, 100)])).collect();
    let published = Instant::now(); // no later than any message's published_at
    for order in &orders {
        deliver(&pool, order).await;
    }
    let opts = ConsumerOptions { concurrency: 2, batch_size: 5, poll_interval: Duration::from_millis(50), shutdown_grace: Duration::from_secs(5) };
    let worker = consumer(&pool, slow).with_options(opts);
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });

    // While every capture waits for the processor, the worker holds no transaction open,
    // and a claim by anyone else goes through at once.
    let mut longest: f64 = 0.0;
    let mut other_claims = 0;
    while published.elapsed() < Duration::from_millis(1200) {
        let oldest: f64 = sqlx::query_scalar(OLDEST_TRANSACTION).fetch_one(&pool).await.unwrap();
        longest = longest.max(oldest);
        let started = Instant::now();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SELECT message_id FROM conveyor.inbox ORDER BY message_id LIMIT 1 FOR UPDATE").fetch_optional(&mut *tx).await.unwrap();
        tx.rollback().await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(300), "a claim of a waiting message was blocked for {:?}", started.elapsed());
        other_claims += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(longest < 0.3, "a transaction stayed open {longest:.3} s while captures waited for the processor");
    assert!(other_claims >= 5);
    let paid: i64 = sqlx::query_scalar("SELECT count(*) FROM payments").fetch_one(&pool).await.unwrap();
    assert_eq!(paid, 0, "captured before the processor answered");
    let counted: i64 = sqlx::query_scalar("SELECT coalesce(sum(attempts), 0) FROM conveyor.inbox").fetch_one(&pool).await.unwrap();
    assert_eq!(counted, 0, "waiting for the processor uses no attempts");

    // Then every capture goes through, once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let captured: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE status = 'captured'").fetch_one(&pool).await.unwrap();
        if captured == 10 {
            break;
        }
        assert!(Instant::now() < deadline, "{captured} of 10 captured 10 s after the latency");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(published.elapsed() >= Duration::from_millis(1500));
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(balance(&pool, ada).await, 100_000 - 10 * 100);
    assert_ledger_explains_balances(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_captures_never_take_a_balance_below_zero() {
    let (api, pool) = setup().await;
    let ada = customer(&api, "EUR", 10_000).await;
    for _ in 0..30 {
        deliver(&pool, &reserved(ada, "EUR", &[(1, 1000)])).await;
    }
    let opts = ConsumerOptions { batch_size: 3, ..ConsumerOptions::default() };
    drain_together(&pool, (0..4).map(|_| consumer(&pool, no_faults(&pool)).with_options(opts.clone())).collect()).await;

    assert_eq!(balance(&pool, ada).await, 0);
    let statuses: Vec<(String, i64)> = sqlx::query_as("SELECT status, count(*) FROM payments GROUP BY status ORDER BY status").fetch_all(&pool).await.unwrap();
    assert_eq!(statuses, [("captured".to_owned(), 10), ("declined".to_owned(), 20)]);
    assert_ledger_explains_balances(&pool).await;
}
