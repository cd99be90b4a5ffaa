//! The worker's handler end to end, in-process: a real database, the lease consumer driven
//! by `process_once`, a real webhook receiver (the webhook sink) and a stand-in order API on
//! local sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use conveyor_contracts::{CancelReason, Money, NotificationSent, OrderCancelled, OrderConfirmed, OrderLine, OrderSummary};
use conveyor_notification::{MIGRATOR, Notifier, NotifierArgs, SERVICE, http};
use conveyor_platform::testing::{TestApi, deliver, deliver_with_id, inbox_state, migrated_db, outbox};
use conveyor_queue::{Consumer, ConsumerOptions};
use conveyor_webhook_sink::Sink;
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::time::Instant;
use uuid::Uuid;

const LAMP: Uuid = Uuid::from_u128(1);
const MUG: Uuid = Uuid::from_u128(2);
const COOLDOWN: Duration = Duration::from_millis(500);

fn summary(order_id: Uuid) -> OrderSummary {
    let eur = |amount_minor| Money { amount_minor, currency: "EUR".parse().unwrap() };
    OrderSummary {
        order_id,
        customer_id: Uuid::from_u128(42),
        lines: vec![OrderLine { product_id: LAMP, quantity: 2, unit_price: eur(1250) }, OrderLine { product_id: MUG, quantity: 1, unit_price: eur(99) }],
        total: eur(2599),
        placed_at: Utc::now(),
    }
}

fn confirmed(order_id: Uuid) -> OrderConfirmed {
    OrderConfirmed { order: summary(order_id), confirmed_at: Utc::now() }
}

fn args(webhook: &str, order_api: &str) -> NotifierArgs {
    NotifierArgs {
        webhook_url: webhook.parse().unwrap(),
        order_api_url: order_api.parse().unwrap(),
        order_api_token_file: Some(token_file()),
        lookup_timeout: Duration::from_millis(300),
        webhook_timeout: Duration::from_secs(1),
        breaker_failures: 2,
        breaker_cooldown: COOLDOWN,
        max_attempts: 8,
        retry_base: Duration::from_millis(10),
        retry_max: Duration::from_millis(50),
        lease: Duration::from_secs(5),
    }
}

fn consumer(pool: &PgPool, args: &NotifierArgs) -> Consumer {
    Arc::new(Notifier::new(pool.clone(), args).unwrap()).subscribe(Consumer::new(pool.clone()), args)
}

/// The token the lookup presents: the stand-in order API's `/ok` answers only to it.
const LOOKUP_TOKEN: &str = "lookup-token";

fn token_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("conveyor-lookup-token-{}", Uuid::now_v7()));
    std::fs::write(&path, format!("{LOOKUP_TOKEN}\n")).unwrap();
    path
}

/// An address nothing listens on (for now).
async fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

async fn start_sink(listener: TcpListener) -> (Arc<Sink>, String) {
    let url = format!("http://{}/notifications", listener.local_addr().unwrap());
    let sink = Arc::new(Sink::in_memory(0));
    tokio::spawn(conveyor_webhook_sink::serve(listener, sink.clone(), Default::default()));
    (sink, url)
}

/// A stand-in order API: `/ok` knows the lamp's name (when asked with the lookup's token:
/// a 401 otherwise, as the real API answers), `/slow` never answers in time,
/// `/broken` fails, `/garbage` answers something that is not an order.
async fn start_order_api() -> String {
    let app = Router::new()
        .route(
            "/ok/orders/{id}",
            get(|Path(id): Path<Uuid>, headers: axum::http::HeaderMap| async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {LOOKUP_TOKEN}")) {
                    return (StatusCode::UNAUTHORIZED, axum::Json(json!({"detail": "no token"})));
                }
                (StatusCode::OK, axum::Json(json!({"id": id, "status": "confirmed", "lines": [{"product_id": LAMP, "name": "Desk lamp", "quantity": 2}], "history": []})))
            }),
        )
        .route("/slow/orders/{id}", get(|| tokio::time::sleep(Duration::from_secs(10))))
        .route("/broken/orders/{id}", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }))
        .route("/garbage/orders/{id}", get(|| async { "not an order" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn notifications(pool: &PgPool) -> Vec<(Uuid, String, String, String, i32)> {
    sqlx::query_as("SELECT order_id, subject, body, data_source, attempts FROM notifications ORDER BY created_at").fetch_all(pool).await.unwrap()
}

/// The `notification.sent` events in the outbox (which holds nothing else).
async fn sent(pool: &PgPool) -> Vec<NotificationSent> {
    let outbox = outbox(pool).await;
    assert!(outbox.iter().all(|(topic, _)| topic == "notification.sent"), "{outbox:?}");
    outbox.into_iter().map(|(_, payload)| serde_json::from_value(payload).unwrap()).collect()
}

/// Asserts that `event` announces the one notification recorded for `order`.
async fn announces_the_record(pool: &PgPool, event: &NotificationSent, order: Uuid) {
    let (id, event_type, subject, delivered_at): (Uuid, String, String, DateTime<Utc>) =
        sqlx::query_as("SELECT id, event_type, subject, delivered_at FROM notifications WHERE order_id = $1").bind(order).fetch_one(pool).await.unwrap();
    assert_eq!((event.order_id, event.notification_id, &event.event_type, &event.subject), (order, id, &event_type, &subject));
    // The same instant, to the microsecond the row keeps.
    assert!((event.delivered_at - delivered_at).num_microseconds().unwrap().abs() <= 1, "{} vs {delivered_at}", event.delivered_at);
}

/// A webhook receiver that answers no post until `n` posts are waiting, then 200 to each:
/// the posts were in flight at the same time.
async fn start_gate(n: usize) -> String {
    let gate = Arc::new(tokio::sync::Barrier::new(n));
    let app = Router::new().route(
        "/notifications",
        post(move || {
            let gate = gate.clone();
            async move {
                gate.wait().await;
                StatusCode::OK
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notifications", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn errors(pool: &PgPool, id: Uuid) -> Vec<serde_json::Value> {
    let errors: sqlx::types::Json<Vec<serde_json::Value>> = sqlx::query_scalar("SELECT errors FROM conveyor.inbox WHERE message_id = $1").bind(id).fetch_one(pool).await.unwrap();
    errors.0
}

/// A cooldown long enough that a test sees the consumer wait inside it.
const LONG_COOLDOWN: Duration = Duration::from_secs(2);

/// Right after the breaker opened (within [`LONG_COOLDOWN`]): `ids` are due again (their
/// backoff is over) and still on their first attempt, and a consumer cycle does not claim
/// them but waits for the breaker, holding nothing.
async fn waits_out_the_open_breaker(consumer: &Consumer, pool: &PgPool, ids: &[Uuid]) {
    let due = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM conveyor.inbox WHERE message_id = ANY($1) AND state = 'pending' AND visible_at <= now()")
            .bind(ids)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(1);
    while due().await < ids.len() as i64 {
        assert!(Instant::now() < deadline, "the retries' backoff (10 ms) did not end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(tokio::time::timeout(Duration::from_millis(300), consumer.process_once()).await.is_err(), "a cycle claims nothing while the breaker is open: it waits");
    assert_eq!(due().await, ids.len() as i64, "nothing was claimed or snoozed");
    for &id in ids {
        assert_eq!(inbox_state(pool, id).await, ("pending".into(), 1), "waiting out the breaker uses no attempt");
    }
}

/// Runs consumer cycles until `done` holds; fails after 10 s.
async fn drive_until<F: AsyncFnMut() -> bool>(consumer: &Consumer, what: &str, mut done: F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        consumer.process_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn delivers_once_from_the_stored_template_with_looked_up_names() {
    let pool = migrated_db(&MIGRATOR).await;
    let api = TestApi::new(SERVICE, pool.clone(), http::router(), pool.clone());
    let template = json!({
        "subject": "Order {{ order_id }} is {{ status }}",
        "body": "{% for l in lines %}{{ l.quantity }} x {{ l.name or l.product_id }} @ {{ l.unit_price }}\n{% endfor %}Total {{ total }} ({{ data_source }})",
    });
    assert_eq!(api.put("/templates/order.confirmed", template).await.status, 200);
    let (sink, hook) = start_sink(TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let consumer = consumer(&pool, &args(&hook, &format!("{}/ok", start_order_api().await)));

    let order = Uuid::now_v7();
    let first = deliver(&pool, &confirmed(order)).await;
    assert_eq!(consumer.process_once().await.unwrap(), 1);
    assert_eq!(inbox_state(&pool, first).await, ("done".into(), 1));
    let got = sink.received();
    assert_eq!(got.delivered.len(), 1);
    let post = &got.delivered[0];
    assert_eq!(post.idempotency_key.as_deref(), Some(format!("{order}:order.confirmed").as_str()));
    assert_eq!(post.body["subject"], format!("Order {order} is confirmed"));
    assert_eq!(post.body["body"], format!("2 x Desk lamp @ 12.50 EUR\n1 x {MUG} @ 0.99 EUR\nTotal 25.99 EUR (lookup)"));
    assert_eq!(post.body["customer_id"], Uuid::from_u128(42).to_string());
    assert_eq!(post.body["event_type"], "order.confirmed");

    let listed = api.get(&format!("/orders/{order}/notifications")).await;
    assert_eq!(listed.json.as_array().unwrap().len(), 1, "{}", listed.text);
    assert_eq!(listed.json[0]["id"], post.body["notification_id"]);
    assert_eq!(listed.json[0]["body"], post.body["body"]);
    assert_eq!(listed.json[0]["data_source"], "lookup");
    assert_eq!(listed.json[0]["attempts"], 1);
    // Published in the transaction that recorded it, for the order service.
    let published = sent(&pool).await;
    assert_eq!(published.len(), 1, "{published:?}");
    announces_the_record(&pool, &published[0], order).await;
    assert_eq!(published[0].event_type, "order.confirmed");
    assert_eq!(published[0].subject, format!("Order {order} is confirmed"));

    // The same event again under a new message id (a replay), and the old id again (a
    // repeated relay, which the inbox ignores): nothing more is sent.
    let again = deliver(&pool, &confirmed(order)).await;
    deliver_with_id(&pool, first, &confirmed(order)).await;
    assert_eq!(consumer.process_once().await.unwrap(), 1);
    assert_eq!(inbox_state(&pool, again).await, ("done".into(), 1));
    assert_eq!(sink.received().delivered.len(), 1);
    assert_eq!(sink.received().duplicates, 0);
    assert_eq!(notifications(&pool).await.len(), 1);
    assert_eq!(sent(&pool).await.len(), 1, "nothing more is published");
}

#[tokio::test]
async fn a_notification_two_workers_delivered_at_once_is_recorded_and_published_once() {
    let pool = migrated_db(&MIGRATOR).await;
    // Each worker claims one copy of the same event, finds it not notified yet and posts;
    // the receiver answers neither post before both arrived, so both then record it.
    let args = args(&start_gate(2).await, &format!("http://{}", closed_port().await));
    let one_at_a_time = ConsumerOptions { batch_size: 1, ..ConsumerOptions::default() };
    let [a, b] = [(); 2].map(|_| Arc::new(Notifier::new(pool.clone(), &args).unwrap()).subscribe(Consumer::new(pool.clone()).with_options(one_at_a_time.clone()), &args));
    let order = Uuid::now_v7();
    let ids = [deliver(&pool, &confirmed(order)).await, deliver(&pool, &confirmed(order)).await];
    let both = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(a.process_once(), b.process_once()) }).await;
    let (handled_a, handled_b) = both.expect("both posts reached the receiver together");
    assert_eq!((handled_a.unwrap(), handled_b.unwrap()), (1, 1));
    for id in ids {
        assert_eq!(inbox_state(&pool, id).await, ("done".into(), 1));
    }
    assert_eq!(notifications(&pool).await.len(), 1);
    let published = sent(&pool).await;
    assert_eq!(published.len(), 1, "the record that was already there published nothing: {published:?}");
    announces_the_record(&pool, &published[0], order).await;

    // Replayed later: notified already, so nothing is posted (the gate would hold it) or published.
    let again = deliver(&pool, &confirmed(order)).await;
    let handled = tokio::time::timeout(Duration::from_secs(5), a.process_once()).await.expect("the replay posted nothing");
    assert_eq!(handled.unwrap(), 1);
    assert_eq!(inbox_state(&pool, again).await, ("done".into(), 1));
    assert_eq!(sent(&pool).await.len(), 1);
}

#[tokio::test]
async fn falls_back_to_the_event_whenever_the_lookup_fails() {
    let pool = migrated_db(&MIGRATOR).await;
    let (sink, hook) = start_sink(TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let api = start_order_api().await;
    let bases = [format!("http://{}", closed_port().await), format!("{api}/slow"), format!("{api}/broken"), format!("{api}/garbage")];
    for (i, base) in bases.iter().enumerate() {
        let consumer = consumer(&pool, &args(&hook, base));
        let order = Uuid::now_v7();
        let event = OrderCancelled { order: summary(order), reason: CancelReason::PaymentDeclined, detail: "balance 3.00 EUR < 25.99 EUR".into(), cancelled_at: Utc::now() };
        let id = deliver(&pool, &event).await;
        assert_eq!(consumer.process_once().await.unwrap(), 1, "{base}");
        assert_eq!(inbox_state(&pool, id).await, ("done".into(), 1), "{base}: the lookup never fails the message");
        let body = sink.received().delivered[i].body["body"].as_str().unwrap().to_owned();
        // The seeded template: reason and detail from the event, product ids for names.
        assert!(body.contains("the payment was declined\n(balance 3.00 EUR < 25.99 EUR)"), "{base}: {body}");
        assert!(body.contains(&format!("- 2 x {LAMP} at 12.50 EUR")), "{base}: {body}");
        assert!(body.contains("(25.99 EUR)"), "{base}: {body}");
        let (_, subject, _, source, _) = notifications(&pool).await.into_iter().find(|n| n.0 == order).unwrap();
        assert_eq!(subject, format!("Your order {order} was cancelled"));
        assert_eq!(source, "event", "{base}");
    }
}

#[tokio::test]
async fn the_seeded_template_words_every_cancel_reason() {
    let pool = migrated_db(&MIGRATOR).await;
    let (sink, hook) = start_sink(TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let consumer = consumer(&pool, &args(&hook, &format!("{}/ok", start_order_api().await)));
    for (i, reason) in CancelReason::ALL.into_iter().enumerate() {
        let wording = match reason {
            CancelReason::OutOfStock => "an item is out of stock",
            CancelReason::PaymentDeclined => "the payment was declined",
            CancelReason::Timeout => "it could not be completed in time",
        };
        let order = Uuid::now_v7();
        let id = deliver(&pool, &OrderCancelled { order: summary(order), reason, detail: "the detail".into(), cancelled_at: Utc::now() }).await;
        assert_eq!(consumer.process_once().await.unwrap(), 1, "{reason:?}");
        assert_eq!(inbox_state(&pool, id).await, ("done".into(), 1), "{reason:?}");
        let body = sink.received().delivered[i].body["body"].as_str().unwrap().to_owned();
        assert!(body.contains(&format!("was cancelled because {wording}\n(the detail).")), "{reason:?}: {body}");
    }
    assert_eq!(notifications(&pool).await.len(), CancelReason::ALL.len());
}

#[tokio::test]
async fn two_copies_of_an_event_in_one_batch_are_posted_once() {
    let pool = migrated_db(&MIGRATOR).await;
    let (sink, hook) = start_sink(TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let consumer = consumer(&pool, &args(&hook, &format!("http://{}", closed_port().await)));
    let order = Uuid::now_v7();
    let ids = [deliver(&pool, &confirmed(order)).await, deliver(&pool, &confirmed(order)).await];
    assert_eq!(consumer.process_once().await.unwrap(), 2, "both claimed and run at once");
    drive_until(&consumer, "the snoozed copy is done", async || {
        let mut done = true;
        for id in ids {
            done &= inbox_state(&pool, id).await.0 == "done";
        }
        done
    })
    .await;
    assert_eq!(sink.received().delivered.len(), 1);
    assert_eq!(sink.received().duplicates, 0, "the second copy never reached the receiver");
    assert_eq!(notifications(&pool).await.len(), 1);
    assert_eq!(sent(&pool).await.len(), 1);
}

#[tokio::test]
async fn a_template_that_fails_to_render_kills_the_message_and_sends_nothing() {
    let pool = migrated_db(&MIGRATOR).await;
    // Stored behind the API's back: the API refuses templates that fail on a sample event.
    sqlx::query("UPDATE templates SET body = 'Third item: {{ lines[2].name }}' WHERE event_type = 'order.confirmed'").execute(&pool).await.unwrap();
    let (sink, hook) = start_sink(TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let consumer = consumer(&pool, &args(&hook, &format!("http://{}", closed_port().await)));
    let id = deliver(&pool, &confirmed(Uuid::now_v7())).await;
    assert_eq!(consumer.process_once().await.unwrap(), 1);
    assert_eq!(inbox_state(&pool, id).await, ("dead".into(), 1), "a template error is permanent: no retries");
    let errors = errors(&pool, id).await;
    assert!(errors[0]["error"].as_str().unwrap().contains("the order.confirmed body template failed: undefined value"), "{errors:?}");
    assert!(sink.received().delivered.is_empty());
    assert!(notifications(&pool).await.is_empty());
    assert!(sent(&pool).await.is_empty());
}

#[tokio::test]
async fn an_outage_opens_the_breaker_the_worker_waits_it_out_and_delivers_everything_once_it_ends() {
    let pool = migrated_db(&MIGRATOR).await;
    let hook_addr = closed_port().await;
    // The breaker opens at the third failure, so every first attempt is made (and counted)
    // whichever order the three run in.
    let args = NotifierArgs {
        breaker_failures: 3,
        breaker_cooldown: LONG_COOLDOWN,
        ..args(&format!("http://{hook_addr}/notifications"), &format!("http://{}", closed_port().await))
    };
    let consumer = consumer(&pool, &args);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(deliver(&pool, &confirmed(Uuid::now_v7())).await);
    }

    // First attempts: refused, to be retried; the three failures open the breaker.
    assert_eq!(consumer.process_once().await.unwrap(), 3);
    for &id in &ids {
        assert_eq!(inbox_state(&pool, id).await, ("pending".into(), 1));
        assert!(errors(&pool, id).await[0]["error"].as_str().unwrap().contains("POST http://"), "the connect error is recorded");
    }
    // Their backoff (10 ms) ends long before the cooldown: the consumer waits the cooldown
    // out before it claims again, so the open breaker uses up no attempt and records no error.
    waits_out_the_open_breaker(&consumer, &pool, &ids).await;
    for &id in &ids {
        assert_eq!(errors(&pool, id).await.len(), 1);
    }

    // The receiver comes back on its address: after the cooldown one probe goes through,
    // closes the breaker, and the rest follow.
    let (sink, _) = start_sink(TcpListener::bind(hook_addr).await.unwrap()).await;
    drive_until(&consumer, "all three are delivered", async || sink.received().delivered.len() == 3).await;
    drive_until(&consumer, "all three are done", async || {
        let mut done = true;
        for &id in &ids {
            done &= inbox_state(&pool, id).await == ("done".into(), 2);
        }
        done
    })
    .await;
    assert_eq!(sink.received().duplicates, 0);
    let sent = notifications(&pool).await;
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|n| n.3 == "event" && n.4 == 2), "delivered on the second counted attempt, however long the outage: {sent:?}");
}

#[tokio::test]
async fn the_receiver_down_flag_fails_deliveries_like_a_refused_connection_until_it_is_cleared() {
    let pool = migrated_db(&MIGRATOR).await;
    let (sink, hook) = start_sink(TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let args = NotifierArgs { breaker_failures: 2, breaker_cooldown: LONG_COOLDOWN, ..args(&hook, &format!("http://{}", closed_port().await)) };
    let faults = conveyor_platform::faults::Faults::new(pool.clone(), &conveyor_notification::FLAGS);
    let consumer = Arc::new(Notifier::new(pool.clone(), &args).unwrap().with_faults(faults.clone())).subscribe(Consumer::new(pool.clone()), &args);
    // Set as an operator sets it; the worker's refresh, by hand here.
    let api = TestApi::new(SERVICE, pool.clone(), http::router().merge(conveyor_platform::http::faults_router(faults.clone())), pool.clone());
    let set = api.patch("/admin/faults", json!({"receiver_down": 1})).await;
    assert_eq!(set.json, json!({"receiver_down": 1.0}), "{}", set.text);
    assert!(api.patch("/admin/faults", json!({"receiver_down": 0.5})).await.problem(400).contains("receiver_down"));
    faults.refresh().await.unwrap();

    let ids = [deliver(&pool, &confirmed(Uuid::now_v7())).await, deliver(&pool, &confirmed(Uuid::now_v7())).await];
    assert_eq!(consumer.process_once().await.unwrap(), 2);
    for &id in &ids {
        assert_eq!(inbox_state(&pool, id).await, ("pending".into(), 1));
        let error = errors(&pool, id).await[0]["error"].as_str().unwrap().to_owned();
        assert!(error.contains(&format!("POST {hook} failed: connection refused (simulated")), "{error}");
    }
    assert!(sink.received().delivered.is_empty(), "no call reached the receiver");
    // Two failures opened the breaker: the retries wait for it, they are not attempted.
    waits_out_the_open_breaker(&consumer, &pool, &ids).await;

    // Cleared: after the cooldown the probe goes through and both are delivered, once.
    assert_eq!(api.send(axum::http::Method::DELETE, "/admin/faults", &[], None).await.json, json!({"receiver_down": 0.0}));
    faults.refresh().await.unwrap();
    drive_until(&consumer, "both are delivered", async || sink.received().delivered.len() == 2).await;
    assert_eq!(sink.received().duplicates, 0);
    assert_eq!(notifications(&pool).await.len(), 2);
}
