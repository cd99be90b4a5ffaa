//! The coordinator's saga against a real PostgreSQL: messages delivered into its inbox as
//! a relay would, its handlers run by the engine, the commands it sends read from its outbox.

use std::time::Duration;

use chrono::Utc;
use conveyor_contracts::{
    Currency, Money, OrderLine, OrderReplied, OrderSummary, PaymentOutcome, PaymentReplied, SagaDeadline, StartSaga, StockOutcome, StockReplied,
};
use conveyor_coordinator::{MIGRATOR, Settings, http, saga};
use conveyor_platform::testing::{TestApi, deliver, drain, migrated_db, outbox};
use conveyor_queue::Consumer;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

fn eur(amount_minor: i64) -> Money {
    Money { amount_minor, currency: "EUR".parse::<Currency>().unwrap() }
}

fn order() -> OrderSummary {
    OrderSummary {
        order_id: Uuid::now_v7(),
        customer_id: Uuid::now_v7(),
        lines: vec![OrderLine { product_id: Uuid::now_v7(), quantity: 2, unit_price: eur(250) }],
        total: eur(500),
        placed_at: Utc::now(),
    }
}

fn coordinator(pool: &PgPool, step_timeout: Duration) -> Consumer {
    saga::subscribe(Consumer::new(pool.clone()), Settings { step_timeout })
}

const LONG: Duration = Duration::from_secs(600);

async fn state(pool: &PgPool, order_id: Uuid) -> (String, Option<String>) {
    sqlx::query_as("SELECT state, reason FROM sagas WHERE order_id = $1").bind(order_id).fetch_one(pool).await.unwrap()
}

/// Topics the coordinator has sent since the outbox was last cleared, and clears it (as a relay would).
async fn sent(pool: &PgPool) -> Vec<(String, Value)> {
    let out = outbox(pool).await;
    sqlx::query("DELETE FROM conveyor.outbox").execute(pool).await.unwrap();
    out
}

fn topics(out: &[(String, Value)]) -> Vec<&str> {
    out.iter().map(|(t, _)| t.as_str()).collect()
}

fn captured(order: &OrderSummary, payment_id: Uuid) -> PaymentReplied {
    PaymentReplied { order_id: order.order_id, outcome: PaymentOutcome::Captured, payment_id: Some(payment_id), amount: Some(order.total), reason: String::new() }
}

/// Runs `consumer` until the saga of `order_id` leaves `from` (its deadline is a delayed
/// message: it becomes claimable only when due), for at most 30 s.
async fn drain_until_moved(pool: &PgPool, consumer: &Consumer, order_id: Uuid, from: &str) {
    let limit = tokio::time::Instant::now() + Duration::from_secs(30);
    while state(pool, order_id).await.0 == from {
        assert!(tokio::time::Instant::now() < limit, "the saga of {order_id} stayed {from} for 30 s");
        drain(consumer).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_confirmed_saga_sends_each_command_once_and_records_every_reply() {
    let pool = migrated_db(&MIGRATOR).await;
    let c = coordinator(&pool, LONG);
    let o = order();
    deliver(&pool, &StartSaga { order: o.clone() }).await;
    deliver(&pool, &StartSaga { order: o.clone() }).await; // a repeated start
    drain(&c).await;
    let out = sent(&pool).await;
    assert_eq!(topics(&out), ["stock.reserve"], "one reservation, however often the saga is started");
    assert_eq!(out[0].1["order"]["order_id"], json!(o.order_id));
    assert_eq!(state(&pool, o.order_id).await.0, "reserving");

    deliver(&pool, &StockReplied { order_id: o.order_id, outcome: StockOutcome::Reserved, reason: String::new() }).await;
    drain(&c).await;
    let out = sent(&pool).await;
    assert_eq!(topics(&out), ["payment.capture"]);
    assert_eq!(out[0].1["order"]["total"]["amount_minor"], json!(500));

    let payment_id = Uuid::now_v7();
    deliver(&pool, &captured(&o, payment_id)).await;
    drain(&c).await;
    // The same reply again (payment answers a repeated command the same way): nothing more.
    deliver(&pool, &captured(&o, payment_id)).await;
    drain(&c).await;
    let out = sent(&pool).await;
    assert_eq!(topics(&out), ["order.confirm"]);
    assert_eq!(out[0].1["payment_id"], json!(payment_id));

    deliver(&pool, &OrderReplied { order_id: o.order_id, status: "confirmed".into() }).await;
    drain(&c).await;
    assert_eq!(state(&pool, o.order_id).await, ("confirmed".into(), None));
    assert!(sent(&pool).await.is_empty());

    let steps: Vec<(String, bool, Option<String>)> =
        sqlx::query_as("SELECT step, compensation, outcome FROM saga_steps WHERE order_id = $1 ORDER BY n").bind(o.order_id).fetch_all(&pool).await.unwrap();
    let expected = [("reserve_stock", "reserved"), ("capture_payment", "captured"), ("confirm_order", "confirmed")];
    assert_eq!(steps, expected.map(|(s, r)| (s.to_owned(), false, Some(r.to_owned()))));
    // Its deadlines, once due, find the saga moved on and do nothing.
    for step in ["reserve_stock", "capture_payment"] {
        deliver(&pool, &SagaDeadline { order_id: o.order_id, step: step.into() }).await;
    }
    drain(&c).await;
    assert!(sent(&pool).await.is_empty());
    assert_eq!(state(&pool, o.order_id).await.0, "confirmed");
}

#[tokio::test]
async fn a_declined_payment_releases_the_stock_and_cancels_the_order() {
    let pool = migrated_db(&MIGRATOR).await;
    let c = coordinator(&pool, LONG);
    let o = order();
    deliver(&pool, &StartSaga { order: o.clone() }).await;
    deliver(&pool, &StockReplied { order_id: o.order_id, outcome: StockOutcome::Reserved, reason: String::new() }).await;
    drain(&c).await;
    sent(&pool).await;
    let declined = PaymentReplied { order_id: o.order_id, outcome: PaymentOutcome::Declined, payment_id: None, amount: None, reason: "balance 3.00 EUR is short of 5.00 EUR".into() };
    deliver(&pool, &declined).await;
    drain(&c).await;
    let out = sent(&pool).await;
    assert_eq!(topics(&out), ["stock.release", "order.cancel"]);
    assert_eq!(out[1].1["reason"], json!("payment_declined"));
    assert_eq!(out[1].1["detail"], json!("balance 3.00 EUR is short of 5.00 EUR"));
    deliver(&pool, &StockReplied { order_id: o.order_id, outcome: StockOutcome::Released, reason: String::new() }).await;
    deliver(&pool, &OrderReplied { order_id: o.order_id, status: "cancelled".into() }).await;
    drain(&c).await;
    assert_eq!(state(&pool, o.order_id).await, ("cancelled".into(), Some("payment_declined".into())));
    let release: (bool, Option<String>) = sqlx::query_as("SELECT compensation, outcome FROM saga_steps WHERE order_id = $1 AND step = 'release_stock'")
        .bind(o.order_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(release, (true, Some("released".into())));
}

#[tokio::test]
async fn out_of_stock_cancels_without_compensation() {
    let pool = migrated_db(&MIGRATOR).await;
    let c = coordinator(&pool, LONG);
    let o = order();
    deliver(&pool, &StartSaga { order: o.clone() }).await;
    deliver(&pool, &StockReplied { order_id: o.order_id, outcome: StockOutcome::Rejected, reason: "product x: 2 requested, 0 available".into() }).await;
    drain(&c).await;
    let out = sent(&pool).await;
    assert_eq!(topics(&out), ["stock.reserve", "order.cancel"]);
    assert_eq!(out[1].1["reason"], json!("out_of_stock"));
}

#[tokio::test]
async fn a_payment_that_never_answers_times_out_and_a_late_capture_is_refunded_once() {
    let pool = migrated_db(&MIGRATOR).await;
    let c = coordinator(&pool, Duration::from_millis(300));
    let o = order();
    deliver(&pool, &StartSaga { order: o.clone() }).await;
    deliver(&pool, &StockReplied { order_id: o.order_id, outcome: StockOutcome::Reserved, reason: String::new() }).await;
    drain(&c).await;
    assert_eq!(topics(&sent(&pool).await), ["stock.reserve", "payment.capture"]);

    // Nobody answers: the deadline, a delayed message, comes due.
    drain_until_moved(&pool, &c, o.order_id, "paying").await;
    assert_eq!(state(&pool, o.order_id).await, ("cancelling".into(), Some("timeout".into())));
    let out = sent(&pool).await;
    assert_eq!(topics(&out), ["stock.release", "order.cancel"]);
    assert_eq!(out[1].1["reason"], json!("timeout"));
    let timed_out: bool = sqlx::query_scalar("SELECT timed_out_at IS NOT NULL FROM saga_steps WHERE order_id = $1 AND step = 'capture_payment'")
        .bind(o.order_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(timed_out);

    // Payment captures after all, and says so twice: one refund.
    let payment_id = Uuid::now_v7();
    deliver(&pool, &captured(&o, payment_id)).await;
    deliver(&pool, &captured(&o, payment_id)).await;
    drain(&c).await;
    let out = sent(&pool).await;
    assert_eq!(topics(&out), ["payment.refund"]);
    assert_eq!(out[0].1["order_id"], json!(o.order_id));
    deliver(&pool, &OrderReplied { order_id: o.order_id, status: "cancelled".into() }).await;
    deliver(&pool, &PaymentReplied { order_id: o.order_id, outcome: PaymentOutcome::Refunded, payment_id: Some(payment_id), amount: Some(o.total), reason: String::new() })
        .await;
    drain(&c).await;
    assert_eq!(state(&pool, o.order_id).await, ("cancelled".into(), Some("timeout".into())));
    let refund: (bool, Option<String>) = sqlx::query_as("SELECT compensation, outcome FROM saga_steps WHERE order_id = $1 AND step = 'refund_payment'")
        .bind(o.order_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(refund, (true, Some("refunded".into())));
}

#[tokio::test]
async fn stock_that_never_answers_times_out_and_the_reservation_is_released() {
    let pool = migrated_db(&MIGRATOR).await;
    let c = coordinator(&pool, Duration::from_millis(300));
    let o = order();
    deliver(&pool, &StartSaga { order: o.clone() }).await;
    drain(&c).await;
    sent(&pool).await;
    drain_until_moved(&pool, &c, o.order_id, "reserving").await;
    let out = sent(&pool).await;
    assert_eq!(topics(&out), ["stock.release", "order.cancel"]);
    // The reservation comes late: the release already sent gives it back; nothing more to send.
    deliver(&pool, &StockReplied { order_id: o.order_id, outcome: StockOutcome::Reserved, reason: String::new() }).await;
    drain(&c).await;
    assert!(sent(&pool).await.is_empty());
    assert_eq!(state(&pool, o.order_id).await, ("cancelling".into(), Some("timeout".into())));
}

#[tokio::test]
async fn a_reply_for_an_unknown_saga_is_a_dead_letter() {
    let pool = migrated_db(&MIGRATOR).await;
    let c = coordinator(&pool, LONG);
    let id = deliver(&pool, &OrderReplied { order_id: Uuid::now_v7(), status: "confirmed".into() }).await;
    drain(&c).await;
    assert_eq!(conveyor_platform::testing::inbox_state(&pool, id).await.0, "dead");
}

#[tokio::test]
async fn the_api_shows_a_saga_with_its_steps_and_finds_stuck_ones() {
    let pool = migrated_db(&MIGRATOR).await;
    let c = coordinator(&pool, LONG);
    let o = order();
    deliver(&pool, &StartSaga { order: o.clone() }).await;
    drain(&c).await;
    let api = TestApi::new(conveyor_coordinator::SERVICE, pool.clone(), http::router(), pool.clone());

    let r = api.get(&format!("/sagas/{}", o.order_id)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let saga = &r.json;
    assert_eq!(saga["state"], json!("reserving"));
    assert_eq!(saga["steps"][0]["step"], json!("reserve_stock"));
    assert!(saga["steps"][0]["deadline"].is_string());

    let r = api.get("/sagas?state=reserving").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let page = &r.json;
    assert_eq!(page["items"][0]["order_id"], json!(o.order_id));
    assert!(page["items"][0].get("steps").is_none());
    let r = api.get("/sagas?state=reserving&older_than=1h").await;
    assert_eq!(r.json["items"], json!([]), "not stuck for an hour yet");

    for (uri, status, needle) in [
        (format!("/sagas/{}", Uuid::now_v7()), 404, "no saga for order"),
        ("/sagas/not-a-uuid".to_owned(), 400, ""),
        ("/sagas?state=lost".to_owned(), 400, "state must be one of"),
        ("/sagas?older_than=5".to_owned(), 400, "older_than must be"),
        ("/sagas?older_than=1000d".to_owned(), 400, "older_than must be"),
        ("/sagas?limit=0".to_owned(), 400, "limit"),
        ("/sagas?colour=red".to_owned(), 400, "colour"),
    ] {
        let r = api.get(&uri).await;
        assert_eq!(r.status, status, "{uri}: {}", r.text);
        assert_eq!(r.content_type(), "application/problem+json", "{uri}");
        assert!(r.text.contains(needle), "{uri}: {}", r.text);
    }
    let r = api.as_customer(o.customer_id).get(&format!("/sagas/{}", o.order_id)).await;
    assert_eq!(r.status, 403, "customers do not inspect sagas: {}", r.text);
    assert_eq!(api.anonymous().get("/sagas").await.status, 401);
}
