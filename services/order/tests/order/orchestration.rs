//! The orchestrated saga on the order's side: placing records the mode and starts the
//! coordinator's saga; the coordinator's `order.confirm` / `order.cancel` settle the order
//! as the choreography's events do and are answered with `order.replied`, again on every
//! repeat.

use conveyor_contracts::{CancelOrder, CancelReason, ConfirmOrder, SagaMode};
use conveyor_platform::testing::{deliver, inbox_state, outbox};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{Shop, api, id_of, money, order, product, shop_in};

/// An orchestration shop with one placed order of 2 × 12.50 EUR; returns its id.
async fn orchestrated_order(shop: &Shop) -> Uuid {
    let mug = shop.mug().await;
    id_of(&shop.placed(Uuid::now_v7(), &[(&mug, 2)]).await)
}

fn topics(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(t, _)| t.as_str()).collect()
}

fn confirm(id: Uuid) -> ConfirmOrder {
    ConfirmOrder { order_id: id, payment_id: Uuid::now_v7(), amount: money(2500, "EUR") }
}

#[tokio::test]
async fn placing_in_orchestration_mode_records_it_and_starts_the_coordinators_saga() {
    let shop = shop_in(SagaMode::Orchestration).await;
    let lamp = product("Desk lamp", money(2599, "EUR"), 1);
    shop.sync(&[&lamp]).await;
    let customer = Uuid::now_v7();
    let body = order(customer, &[(&lamp, 2)]);
    let placed = shop.place("orchestrated", &body).await;
    assert_eq!(placed.status, 201, "{}", placed.text);
    assert_eq!(placed.json["saga_mode"], "orchestration");
    let id = placed.json["id"].as_str().unwrap().to_owned();
    let stored: String = sqlx::query_scalar("SELECT saga_mode FROM orders WHERE id = $1::uuid").bind(&id).fetch_one(&shop.pool).await.unwrap();
    assert_eq!(stored, "orchestration");
    assert_eq!(shop.api.get(&format!("/orders/{id}")).await.json, placed.json, "what was answered is what was stored");
    shop.project().await;
    let list = shop.api.get(&format!("/customers/{customer}/orders")).await;
    assert_eq!(list.json["items"][0]["saga_mode"], "orchestration");

    let events = outbox(&shop.pool).await;
    assert_eq!(topics(&events), ["saga.start"], "the coordinator starts the saga; no order.placed");
    let summary = &events[0].1["order"];
    assert_eq!(summary["order_id"], id.as_str());
    assert_eq!(summary["total"], json!({"amount_minor": 5198, "currency": "EUR"}));
    assert_eq!(summary["placed_at"], placed.json["created_at"]);

    // The shop switched back to the choreography: the order keeps its mode, and a retried
    // request gets the first answer and starts nothing.
    let choreography = Shop { api: api(&shop.pool, SagaMode::Choreography), ..shop };
    let again = choreography.place("orchestrated", &body).await;
    assert_eq!((again.status.as_u16(), &again.json), (201, &placed.json));
    assert_eq!(choreography.view(id.parse().unwrap()).await["saga_mode"], "orchestration");
    let other = choreography.placed(customer, &[(&lamp, 1)]).await;
    assert_eq!(other["saga_mode"], "choreography");
    assert_eq!(topics(&outbox(&choreography.pool).await), ["saga.start", "order.placed"]);
}

#[tokio::test]
async fn order_confirm_settles_once_and_every_repeat_is_answered_with_the_status() {
    let shop = shop_in(SagaMode::Orchestration).await;
    let id = orchestrated_order(&shop).await;
    deliver(&shop.pool, &confirm(id)).await;
    assert_eq!(shop.drain().await, 1);

    let order = shop.view(id).await;
    assert_eq!((order["status"].as_str(), order["saga_mode"].as_str()), (Some("confirmed"), Some("orchestration")));
    assert_eq!(order["history"].as_array().unwrap().len(), 2);
    let events = outbox(&shop.pool).await;
    assert_eq!(topics(&events), ["saga.start", "order.confirmed", "order.replied"]);
    assert_eq!(events[1].1["order"], events[0].1["order"], "notification gets the order as placed");
    assert_eq!(events[2].1, json!({"order_id": id, "status": "confirmed"}));

    // The coordinator asks again (a new message id), then contradicts itself: nothing
    // changes, nothing is notified again, and each is answered with the status that stands.
    let repeat = deliver(&shop.pool, &confirm(id)).await;
    let late = deliver(&shop.pool, &CancelOrder { order_id: id, reason: CancelReason::Timeout, detail: "too late".into() }).await;
    assert_eq!(shop.drain().await, 2);
    for msg in [repeat, late] {
        assert_eq!(inbox_state(&shop.pool, msg).await.0, "done", "a no-op, not a failure");
    }
    assert_eq!(shop.view(id).await, order);
    let events = outbox(&shop.pool).await;
    assert_eq!(topics(&events), ["saga.start", "order.confirmed", "order.replied", "order.replied", "order.replied"]);
    assert!(events[3..].iter().all(|(_, e)| *e == json!({"order_id": id, "status": "confirmed"})), "{events:?}");
}

#[tokio::test]
async fn order_cancel_for_a_timeout_is_stored_published_and_answered() {
    let shop = shop_in(SagaMode::Orchestration).await;
    let id = orchestrated_order(&shop).await;
    let cancel = CancelOrder { order_id: id, reason: CancelReason::Timeout, detail: "payment did not answer within 30s".into() };
    deliver(&shop.pool, &cancel).await;
    assert_eq!(shop.drain().await, 1);

    let order = shop.view(id).await;
    assert_eq!((order["status"].as_str(), order["reason"].as_str()), (Some("cancelled"), Some("timeout")));
    assert_eq!(order["reason_detail"], "payment did not answer within 30s");
    assert_eq!(order["history"][1], json!({"status": "cancelled", "reason": "timeout", "at": order["updated_at"]}));
    let events = outbox(&shop.pool).await;
    assert_eq!(topics(&events), ["saga.start", "order.cancelled", "order.replied"]);
    let cancelled = &events[1].1;
    assert_eq!((cancelled["reason"].as_str(), cancelled["detail"].as_str()), (Some("timeout"), Some("payment did not answer within 30s")));
    assert_eq!(cancelled["cancelled_at"], order["updated_at"]);
    assert_eq!(events[2].1, json!({"order_id": id, "status": "cancelled"}));

    // Repeated, and a confirmation after the deadline: answered "cancelled", nothing else.
    deliver(&shop.pool, &cancel).await;
    deliver(&shop.pool, &confirm(id)).await;
    assert_eq!(shop.drain().await, 2);
    assert_eq!(shop.view(id).await, order);
    let events = outbox(&shop.pool).await;
    assert_eq!(topics(&events), ["saga.start", "order.cancelled", "order.replied", "order.replied", "order.replied"]);
    assert!(events[3..].iter().all(|(_, e)| *e == json!({"order_id": id, "status": "cancelled"})), "{events:?}");
}

#[tokio::test]
async fn every_cancel_reason_the_coordinator_sends_is_kept() {
    let shop = shop_in(SagaMode::Orchestration).await;
    for reason in CancelReason::ALL {
        let id = orchestrated_order(&shop).await;
        deliver(&shop.pool, &CancelOrder { order_id: id, reason, detail: format!("because {reason:?}") }).await;
        assert_eq!(shop.drain().await, 1);
        let order = shop.view(id).await;
        assert_eq!((order["status"].as_str(), order["reason"].as_str()), (Some("cancelled"), Some(reason.as_str())));
    }
}

#[tokio::test]
async fn a_command_about_an_unknown_order_is_dead_at_once_and_unanswered() {
    let shop = shop_in(SagaMode::Orchestration).await;
    let msg = deliver(&shop.pool, &confirm(Uuid::now_v7())).await;
    shop.drain().await;
    assert_eq!(inbox_state(&shop.pool, msg).await, ("dead".to_owned(), 1));
    assert!(outbox(&shop.pool).await.is_empty());
}
