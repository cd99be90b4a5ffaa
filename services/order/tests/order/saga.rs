//! The worker's handlers through the real consumer: product sync, confirm, both cancel
//! paths, and repeated events that must change and publish nothing.

use conveyor_contracts::{PaymentCaptured, PaymentDeclined, ProductCreated, ProductUpdated, StockRejected};
use conveyor_platform::testing::{deliver, deliver_with_id, inbox_state, outbox};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{Shop, id_of, money, product, shop};

/// A shop with one placed order of 2 × 12.50 EUR; returns the order's view.
async fn placed_order(shop: &Shop) -> Value {
    let mug = shop.mug().await;
    shop.placed(Uuid::now_v7(), &[(&mug, 2)]).await
}

fn statuses(order: &Value) -> Vec<&str> {
    order["history"].as_array().unwrap().iter().map(|h| h["status"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn the_product_copy_keeps_the_newest_version_whatever_the_order_of_arrival() {
    let shop = shop().await;
    let v1 = product("Lamp", money(1000, "EUR"), 1);
    let v3 = conveyor_contracts::Product { name: "Lamp deluxe".into(), price: money(1500, "EUR"), version: 3, ..v1.clone() };
    let v2 = conveyor_contracts::Product { name: "Lamp II".into(), price: money(1200, "EUR"), version: 2, ..v1.clone() };
    deliver(&shop.pool, &ProductCreated { product: v1.clone() }).await;
    deliver(&shop.pool, &ProductUpdated { product: v3.clone() }).await;
    assert_eq!(shop.drain().await, 2);
    // Late and repeated versions, each a new message as a republished event would be.
    let late = [
        deliver(&shop.pool, &ProductUpdated { product: v3.clone() }).await,
        deliver(&shop.pool, &ProductUpdated { product: v2 }).await,
        deliver(&shop.pool, &ProductCreated { product: v1.clone() }).await,
    ];
    assert_eq!(shop.drain().await, 3);
    for msg in late {
        assert_eq!(inbox_state(&shop.pool, msg).await.0, "done", "an old version is ignored, not an error");
    }
    let copy = shop.api.get(&format!("/products/{}", v1.id)).await.json;
    assert_eq!((copy["name"].as_str(), copy["version"].as_i64()), (Some("Lamp deluxe"), Some(3)));
    assert_eq!(copy["price"], json!({"amount_minor": 1500, "currency": "EUR"}));

    let broken = conveyor_contracts::Product { price: money(-1, "EUR"), ..product("Broken", money(0, "EUR"), 1) };
    let msg = deliver(&shop.pool, &ProductCreated { product: broken.clone() }).await;
    shop.drain().await;
    assert_eq!(inbox_state(&shop.pool, msg).await, ("dead".to_owned(), 1), "a contract breach cannot be retried away");
    shop.api.get(&format!("/products/{}", broken.id)).await.problem(404);
    assert!(outbox(&shop.pool).await.is_empty(), "syncing publishes nothing");
}

#[tokio::test]
async fn payment_captured_confirms_once() {
    let shop = shop().await;
    let placed = placed_order(&shop).await;
    let id = id_of(&placed);
    let captured = PaymentCaptured { order_id: id, payment_id: Uuid::now_v7(), amount: money(2500, "EUR") };
    deliver(&shop.pool, &captured).await;
    assert_eq!(shop.drain().await, 1);

    let order = shop.view(id).await;
    assert_eq!(order["status"], "confirmed");
    assert!(order["reason"].is_null());
    assert_eq!(statuses(&order), ["placed", "confirmed"]);
    let events = outbox(&shop.pool).await;
    assert_eq!(events.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), ["order.placed", "order.confirmed"]);
    let confirmed = &events[1].1;
    assert_eq!(confirmed["order"], events[0].1["order"], "the confirmation carries the order as placed");
    assert_eq!(confirmed["confirmed_at"], order["updated_at"]);

    // A repeat (new message id) and a contradicting late decline: both no-ops.
    let repeat = deliver(&shop.pool, &captured).await;
    let late = deliver(&shop.pool, &PaymentDeclined { order_id: id, reason: "too late".into() }).await;
    assert_eq!(shop.drain().await, 2);
    for msg in [repeat, late] {
        assert_eq!(inbox_state(&shop.pool, msg).await.0, "done");
    }
    assert_eq!(shop.view(id).await, order);
    assert_eq!(outbox(&shop.pool).await.len(), 2);
}

#[tokio::test]
async fn stock_rejected_cancels_as_out_of_stock_once() {
    let shop = shop().await;
    let id = id_of(&placed_order(&shop).await);
    let rejected = StockRejected { order_id: id, reason: "product Mug: 2 wanted, 1 available".into() };
    let msg = Uuid::now_v7();
    deliver_with_id(&shop.pool, msg, &rejected).await;
    deliver_with_id(&shop.pool, msg, &rejected).await; // a repeated relay: the inbox drops it
    assert_eq!(shop.drain().await, 1);

    let order = shop.view(id).await;
    assert_eq!((order["status"].as_str(), order["reason"].as_str()), (Some("cancelled"), Some("out_of_stock")));
    assert_eq!(order["reason_detail"], "product Mug: 2 wanted, 1 available");
    assert_eq!(statuses(&order), ["placed", "cancelled"]);
    assert_eq!(order["history"][1]["reason"], "out_of_stock");
    let events = outbox(&shop.pool).await;
    assert_eq!(events.len(), 2);
    let (topic, cancelled) = &events[1];
    assert_eq!(topic, "order.cancelled");
    assert_eq!(cancelled["reason"], "out_of_stock");
    assert_eq!(cancelled["detail"], "product Mug: 2 wanted, 1 available");
    assert_eq!(cancelled["order"]["total"], json!({"amount_minor": 2500, "currency": "EUR"}));
    assert_eq!(cancelled["cancelled_at"], order["updated_at"]);

    // Replayed with a new message id, and a payment that arrives anyway: nothing changes.
    let repeat = deliver(&shop.pool, &rejected).await;
    let late = deliver(&shop.pool, &PaymentCaptured { order_id: id, payment_id: Uuid::now_v7(), amount: money(2500, "EUR") }).await;
    assert_eq!(shop.drain().await, 2);
    for msg in [repeat, late] {
        assert_eq!(inbox_state(&shop.pool, msg).await.0, "done", "a no-op, not a failure");
    }
    assert_eq!(shop.view(id).await, order);
    assert_eq!(outbox(&shop.pool).await.len(), 2);
}

#[tokio::test]
async fn payment_declined_cancels_as_payment_declined_once() {
    let shop = shop().await;
    let id = id_of(&placed_order(&shop).await);
    let declined = PaymentDeclined { order_id: id, reason: "balance 10.00 EUR is below 25.00 EUR".into() };
    deliver(&shop.pool, &declined).await;
    assert_eq!(shop.drain().await, 1);
    let order = shop.view(id).await;
    assert_eq!((order["status"].as_str(), order["reason"].as_str()), (Some("cancelled"), Some("payment_declined")));
    assert_eq!(order["reason_detail"], "balance 10.00 EUR is below 25.00 EUR");
    let events = outbox(&shop.pool).await;
    assert_eq!(events[1].0, "order.cancelled");
    assert_eq!(events[1].1["reason"], "payment_declined");

    let repeat = deliver(&shop.pool, &declined).await;
    assert_eq!(shop.drain().await, 1);
    assert_eq!(inbox_state(&shop.pool, repeat).await.0, "done", "a no-op, not a failure");
    assert_eq!(shop.view(id).await, order);
    assert_eq!(outbox(&shop.pool).await.len(), 2);
}

#[tokio::test]
async fn an_event_about_an_unknown_order_is_dead_at_once() {
    let shop = shop().await;
    let msg = deliver(&shop.pool, &PaymentCaptured { order_id: Uuid::now_v7(), payment_id: Uuid::now_v7(), amount: money(1, "EUR") }).await;
    shop.drain().await;
    assert_eq!(inbox_state(&shop.pool, msg).await, ("dead".to_owned(), 1));
    assert!(outbox(&shop.pool).await.is_empty());
}

/// The worker handles a topic's messages a claimed batch at a time: several orders settled
/// by one call, a repeat of one of them in the same batch a no-op, and an unknown order
/// dead alone while the rest of its batch completes.
#[tokio::test]
async fn a_batch_settles_each_of_its_orders_once_and_an_unknown_one_dies_alone() {
    let shop = shop().await;
    let mug = shop.mug().await;
    let (a, b, c) = (
        id_of(&shop.placed(Uuid::now_v7(), &[(&mug, 1)]).await),
        id_of(&shop.placed(Uuid::now_v7(), &[(&mug, 2)]).await),
        id_of(&shop.placed(Uuid::now_v7(), &[(&mug, 3)]).await),
    );
    let captured = |order_id, amount_minor| PaymentCaptured { order_id, payment_id: Uuid::now_v7(), amount: money(amount_minor, "EUR") };
    let unknown = Uuid::now_v7();
    let msgs = [
        deliver(&shop.pool, &captured(a, 1250)).await,
        deliver(&shop.pool, &captured(b, 2500)).await,
        deliver(&shop.pool, &captured(unknown, 100)).await,
        deliver(&shop.pool, &captured(b, 2500)).await,
        deliver(&shop.pool, &PaymentDeclined { order_id: c, reason: "card expired".into() }).await,
        deliver(&shop.pool, &captured(c, 3750)).await,
    ];
    assert_eq!(shop.drain().await, 6);
    assert_eq!(inbox_state(&shop.pool, msgs[2]).await, ("dead".to_owned(), 1), "an unknown order cannot become known");
    for msg in msgs.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, m)| m) {
        assert_eq!(inbox_state(&shop.pool, *msg).await, ("done".to_owned(), 1), "handled at its first attempt");
    }
    for (id, status, version) in [(a, "confirmed", 3), (b, "confirmed", 3), (c, "cancelled", 3)] {
        let order = shop.view(id).await;
        assert_eq!((order["status"].as_str(), order["version"].as_i64()), (Some(status), Some(version)), "{order}");
    }
    let published: Vec<(String, Uuid)> =
        outbox(&shop.pool).await.into_iter().skip(3).map(|(t, p)| (t, p["order"]["order_id"].as_str().unwrap().parse().unwrap())).collect();
    let published: Vec<(&str, Uuid)> = published.iter().map(|(t, id)| (t.as_str(), *id)).collect();
    assert_eq!(published, [("order.confirmed", a), ("order.confirmed", b), ("order.cancelled", c)], "each order settled once, in publish order");
}
