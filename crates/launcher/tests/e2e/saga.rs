//! The saga's three endings, idempotent ordering, and duplicate deliveries.

use conveyor_contracts::SagaMode;
use conveyor_launcher::{Terminal, wait_for};
use serde_json::json;

use crate::{SAGA, in_both_modes, start_in};

in_both_modes!(
    a_placed_order_is_confirmed_paid_once_reserved_and_notified_once_from_the_stored_template,
    an_order_beyond_the_stock_is_cancelled_and_moves_no_stock,
    a_customer_who_cannot_pay_gets_a_cancelled_order_and_the_reservation_is_released,
    the_same_idempotency_key_gives_one_order_and_the_same_answer,
    duplicate_and_replayed_deliveries_never_double_reserve_charge_or_notify,
);

async fn a_placed_order_is_confirmed_paid_once_reserved_and_notified_once_from_the_stored_template(mode: SagaMode) {
    let f = start_in("confirmed", mode).await;
    let (status, _) = f
        .shop
        .send(reqwest::Method::PUT, "notification", "/templates/order.confirmed", &[], &json!({
            "subject": "Order {{ order_id }} confirmed",
            "body": "E2E-TEMPLATE total={{ total }}"
        }))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let product = f.product(2599, 10).await;
    let customer = f.customer(100_000).await;

    let order = f.shop.order_placed(customer, &[(product, 2)]).await.unwrap();
    assert_eq!(f.shop.wait_terminal(order, SAGA).await.unwrap(), Terminal::Confirmed);

    let payments = f.shop.payments(order).await.unwrap();
    assert_eq!(payments.len(), 1, "{payments:?}");
    assert_eq!(payments[0]["status"], "captured");
    assert_eq!(f.shop.customer_balance(customer).await.unwrap(), 100_000 - 5198);
    assert_eq!(f.shop.stock(product).await.unwrap(), (8, 2));
    assert_eq!(f.shop.reservation(order).await.unwrap().unwrap()["state"], "reserved");
    let history: Vec<String> = f.shop.order(order).await.unwrap()["history"].as_array().unwrap().iter().map(|h| h["status"].as_str().unwrap().to_owned()).collect();
    assert_eq!(history, ["placed", "confirmed"]);
    assert_eq!(f.shop.order(order).await.unwrap()["saga_mode"], mode.as_str());

    wait_for("the notification", SAGA, || async { Ok(!f.shop.notifications(order).await?.is_empty()) }).await.unwrap();
    let (received, duplicates) = f.shop.received().await.unwrap();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(duplicates, 0);
    let text = received[0].to_string();
    assert!(text.contains("E2E-TEMPLATE total=51.98 EUR"), "rendered from the stored template: {text}");
    assert!(text.contains(&format!("Order {order} confirmed")), "{text}");
    assert_eq!(f.shop.notifications(order).await.unwrap().len(), 1);

    // The customer's timeline: every service's fact about the order, from the read model.
    let steps = || async {
        let view = f.shop.order(order).await?;
        anyhow::Ok(view["timeline"].as_array().map(|t| t.iter().map(|e| e["step"].as_str().unwrap_or_default().to_owned()).collect::<Vec<_>>()).unwrap_or_default())
    };
    wait_for("the whole timeline", SAGA, || async { Ok(steps().await?.len() == 5) }).await.unwrap();
    assert_eq!(steps().await.unwrap(), ["placed", "stock_reserved", "payment_captured", "confirmed", "notified"]);
    let view = f.shop.order(order).await.unwrap();
    assert_eq!(view["timeline"][2]["amount"], json!({"amount_minor": 5198, "currency": "EUR"}));
    assert_eq!(view["timeline"][1]["reserved"][0]["quantity"], 2);
    f.stop().await;
}

async fn an_order_beyond_the_stock_is_cancelled_and_moves_no_stock(mode: SagaMode) {
    let f = start_in("out-of-stock", mode).await;
    let product = f.product(1000, 3).await;
    let customer = f.customer(100_000).await;
    let order = f.shop.order_placed(customer, &[(product, 5)]).await.unwrap();
    assert_eq!(f.shop.wait_terminal(order, SAGA).await.unwrap(), Terminal::Cancelled("out_of_stock".into()));
    assert_eq!(f.shop.stock(product).await.unwrap(), (3, 0));
    assert!(f.shop.payments(order).await.unwrap().is_empty());
    assert_eq!(f.shop.customer_balance(customer).await.unwrap(), 100_000);
    wait_for("the cancellation notice", SAGA, || async { Ok(f.shop.notifications(order).await?.len() == 1) }).await.unwrap();
    f.stop().await;
}

async fn a_customer_who_cannot_pay_gets_a_cancelled_order_and_the_reservation_is_released(mode: SagaMode) {
    let f = start_in("declined", mode).await;
    let product = f.product(2599, 10).await;
    let customer = f.customer(100).await;
    let order = f.shop.order_placed(customer, &[(product, 1)]).await.unwrap();
    assert_eq!(f.shop.wait_terminal(order, SAGA).await.unwrap(), Terminal::Cancelled("payment_declined".into()));
    // The release is the stock service's reaction to payment.declined (or the coordinator's
    // command), as the cancellation is the order service's: they happen in parallel.
    wait_for("the reservation's release", SAGA, || async { Ok(f.shop.reservation(order).await?.is_some_and(|r| r["state"] == "released")) })
        .await
        .unwrap();
    assert_eq!(f.shop.stock(product).await.unwrap(), (10, 0));
    assert_eq!(f.shop.customer_balance(customer).await.unwrap(), 100);
    let payments = f.shop.payments(order).await.unwrap();
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0]["status"], "declined");
    let detail = f.shop.order(order).await.unwrap()["reason_detail"].to_string();
    assert!(detail.contains("insufficient"), "{detail}");
    f.stop().await;
}

async fn the_same_idempotency_key_gives_one_order_and_the_same_answer(mode: SagaMode) {
    let f = start_in("idempotency", mode).await;
    let product = f.product(500, 10).await;
    let customer = f.customer(100_000).await;
    let first = f.shop.place_order("key-1", customer, &[(product, 1)]).await.unwrap();
    let again = f.shop.place_order("key-1", customer, &[(product, 1)]).await.unwrap();
    assert_eq!(first.0, 201);
    assert_eq!(first, again, "a retried request gets the first answer");
    let other = f.shop.place_order("key-1", customer, &[(product, 2)]).await.unwrap();
    assert_eq!(other.0, 409, "{other:?}");
    assert!(other.1["detail"].as_str().unwrap().contains("Idempotency-Key") || other.1["detail"].as_str().unwrap().contains("key"));
    // The list is the read model: it shows the order once the projector has applied it.
    let listed = || async { anyhow::Ok(f.shop.get("order", &format!("/customers/{customer}/orders")).await?.unwrap()["items"].as_array().unwrap().len()) };
    wait_for("the order in its customer's list", SAGA, || async { Ok(listed().await? > 0) }).await.unwrap();
    f.shop.wait_terminal(first.1["id"].as_str().unwrap().parse().unwrap(), SAGA).await.unwrap();
    assert_eq!(listed().await.unwrap(), 1);
    f.stop().await;
}

async fn duplicate_and_replayed_deliveries_never_double_reserve_charge_or_notify(mode: SagaMode) {
    let f = start_in("duplicates", mode).await;
    // Handled messages leave the inbox (only their ids are kept, in inbox_done): keep a copy
    // of every delivery of this saga, to deliver them again below.
    let services: &[(&str, &str)] = match mode {
        SagaMode::Choreography => &[("stock", "order.placed"), ("payment", "stock.reserved"), ("order", "payment.captured"), ("notification", "order.confirmed")],
        SagaMode::Orchestration => &[
            ("coordinator", "saga.start"),
            ("stock", "stock.reserve"),
            ("coordinator", "stock.replied"),
            ("payment", "payment.capture"),
            ("coordinator", "payment.replied"),
            ("order", "order.confirm"),
            ("coordinator", "order.replied"),
            ("notification", "order.confirmed"),
        ],
    };
    let capturing: std::collections::BTreeSet<&str> = services.iter().map(|(svc, _)| *svc).collect();
    for svc in capturing {
        capture_inbox(&f.db(svc).await).await;
    }
    let capture_topic = if mode == SagaMode::Choreography { "stock.reserved" } else { "payment.capture" };
    let product = f.product(1000, 10).await;
    let customer = f.customer(100_000).await;
    let order = f.shop.order_placed(customer, &[(product, 3)]).await.unwrap();
    assert_eq!(f.shop.wait_terminal(order, SAGA).await.unwrap(), Terminal::Confirmed);
    wait_for("the notification", SAGA, || async { Ok(f.shop.notifications(order).await?.len() == 1) }).await.unwrap();

    let key = order.to_string();
    // A message declared dead after it was handled, then replayed through the admin API:
    // the consumer finds it recorded done and drops it.
    let payment_db = f.db("payment").await;
    let original: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO conveyor.inbox (message_id, topic, key, payload, headers, published_at, state)
         SELECT message_id, topic, key, payload, headers, published_at, 'dead' FROM e2e_captured WHERE topic = $2 AND key = $1 LIMIT 1
         RETURNING message_id",
    )
    .bind(&key)
    .bind(capture_topic)
    .fetch_one(&payment_db)
    .await
    .unwrap();
    let (status, body) = f.shop.post("payment", &format!("/admin/dead-letters/{original}/replay"), &[], &json!(null)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    wait_for("the replayed message to be settled", SAGA, || async { Ok(inbox_state(&payment_db, original).await? == "done") }).await.unwrap();

    // Then every message of this saga, delivered once more under a new id (what a publisher
    // that re-sent would do: the handlers' keys catch it), and once more under its own id
    // (what a repeated relay does: the inbox_done record catches it).
    let mut copies = Vec::new();
    for &(svc, topic) in services {
        let db = f.db(svc).await;
        let copy: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO conveyor.inbox (message_id, topic, key, payload, headers, published_at)
             SELECT $3, topic, key, payload, headers, now() FROM e2e_captured WHERE topic = $1 AND key = $2 LIMIT 1
             RETURNING message_id",
        )
        .bind(topic)
        .bind(&key)
        .bind(uuid::Uuid::now_v7())
        .fetch_one(&db)
        .await
        .unwrap_or_else(|e| panic!("copying {topic} in {svc}: {e}"));
        let repeated: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO conveyor.inbox (message_id, topic, key, payload, headers, published_at)
             SELECT message_id, topic, key, payload, headers, now() FROM e2e_captured WHERE topic = $1 AND key = $2 AND message_id <> $3 LIMIT 1
             RETURNING message_id",
        )
        .bind(topic)
        .bind(&key)
        .bind(copy)
        .fetch_one(&db)
        .await
        .unwrap_or_else(|e| panic!("repeating {topic} in {svc}: {e}"));
        sqlx::query("SELECT pg_notify('conveyor_inbox', '')").execute(&db).await.unwrap();
        copies.push((svc, db, [copy, repeated]));
    }
    for (svc, db, ids) in &copies {
        for id in ids {
            wait_for(&format!("{svc} to settle message {id}"), SAGA, || async { Ok(inbox_state(db, *id).await? == "done") }).await.unwrap();
        }
    }
    assert_eq!(f.shop.stock(product).await.unwrap(), (7, 3), "reserved once");
    assert_eq!(f.shop.payments(order).await.unwrap().len(), 1, "charged once");
    assert_eq!(f.shop.customer_balance(customer).await.unwrap(), 100_000 - 3000);
    assert_eq!(f.shop.notifications(order).await.unwrap().len(), 1, "notified once");
    let (received, duplicates) = f.shop.received().await.unwrap();
    assert_eq!((received.len(), duplicates), (1, 0));
    let history = f.shop.order(order).await.unwrap()["history"].as_array().unwrap().len();
    assert_eq!(history, 2, "placed, confirmed: nothing more");
    f.stop().await;
}

/// Copies every row inserted into the inbox of `db` into `e2e_captured` (a trigger), so a
/// test can deliver a message again after it was handled and left the inbox. The trigger
/// runs as its owner, the test's admin: the relay role that inserts into the inbox may do
/// nothing else in the database.
async fn capture_inbox(db: &sqlx::PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE e2e_captured (LIKE conveyor.inbox);
         CREATE FUNCTION e2e_capture() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS
             $$ BEGIN INSERT INTO e2e_captured SELECT NEW.*; RETURN NEW; END $$;
         CREATE TRIGGER e2e_capture AFTER INSERT ON conveyor.inbox FOR EACH ROW EXECUTE FUNCTION e2e_capture();",
    )
    .execute(db)
    .await
    .unwrap();
}

/// `pending`, `running` or `dead` while the message is in the inbox, `done` once it is
/// recorded in inbox_done (handled, or dropped as a copy of a handled message).
async fn inbox_state(db: &sqlx::PgPool, id: uuid::Uuid) -> sqlx::Result<String> {
    sqlx::query_scalar(
        "SELECT state FROM conveyor.inbox WHERE message_id = $1
         UNION ALL SELECT 'done' FROM conveyor.inbox_done WHERE message_id = $1 AND NOT EXISTS (SELECT 1 FROM conveyor.inbox WHERE message_id = $1)",
    )
    .bind(id)
    .fetch_optional(db)
    .await
    .map(|s| s.unwrap_or_default())
}
