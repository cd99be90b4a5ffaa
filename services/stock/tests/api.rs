//! The stock API through its real router, against a real database per test.

mod common;

use common::*;
use conveyor_contracts::limits;
use conveyor_platform::testing::{TestApi, deliver, drain, migrated_db, outbox};
use conveyor_stock::{MIGRATOR, SERVICE, http};
use serde_json::json;
use sqlx::PgPool;

async fn api() -> (TestApi, PgPool) {
    let pool = migrated_db(&MIGRATOR).await;
    let faults = conveyor_platform::faults::Faults::new(pool.clone(), &conveyor_stock::FLAGS);
    (TestApi::new(SERVICE, pool.clone(), http::router().merge(conveyor_platform::http::faults_router(faults)), pool.clone()), pool)
}

#[tokio::test]
async fn items_are_read_listed_and_restocked() {
    let (api, pool) = api().await;
    let id = stocked(&pool, 7).await;
    let got = api.get(&format!("/items/{id}")).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(
        (got.json["product_id"].as_str(), &got.json["available"], &got.json["reserved"]),
        (Some(id.to_string().as_str()), &json!(7), &json!(0))
    );

    let restocked = api.post(&format!("/items/{id}/restock"), json!({"quantity": 5})).await;
    assert_eq!(restocked.status, 200, "{}", restocked.text);
    assert_eq!((&restocked.json["available"], &restocked.json["reserved"]), (&json!(12), &json!(0)));
    let kinds: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind, quantity FROM movements WHERE product_id = $1 ORDER BY id").bind(id).fetch_all(&pool).await.unwrap();
    assert_eq!(kinds, [("initial".to_owned(), 7), ("restock".to_owned(), 5)]);
    assert_ledger_explains_levels(&pool).await;

    for _ in 0..4 {
        stocked(&pool, 1).await;
    }
    let first = api.get("/items?limit=3").await;
    assert_eq!(first.json["items"].as_array().unwrap().len(), 3, "{}", first.text);
    let next = first.json["next"].as_str().unwrap();
    let second = api.get(&format!("/items?limit=3&after={next}")).await;
    assert_eq!(second.json["items"].as_array().unwrap().len(), 2);
    assert!(second.json["next"].is_null());
    assert_eq!(first.json["items"][0]["product_id"], id.to_string(), "product id order");
}

#[tokio::test]
async fn a_reservation_shows_its_state_lines_and_reason() {
    let (api, pool) = api().await;
    let a = stocked(&pool, 2).await;
    let (fits, too_big) = (order(&[(a, 2)]), order(&[(a, 1)]));
    deliver(&pool, &fits).await;
    deliver(&pool, &too_big).await;
    drain(&consumer(&pool)).await;

    let got = api.get(&format!("/reservations/{}", fits.order.order_id)).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json["state"], "reserved");
    assert_eq!(got.json["lines"], json!([{"product_id": a, "quantity": 2}]));
    assert!(got.json["reason"].is_null());
    let got = api.get(&format!("/reservations/{}", too_big.order.order_id)).await;
    assert_eq!(got.json["state"], "rejected");
    assert_eq!(got.json["reason"], format!("product {a}: 1 requested, 0 available"));
    assert_eq!(api.get(&format!("/items/{a}")).await.json["reserved"], 2);

    // Released by the coordinator before stock saw the order: released, with no lines.
    let early = conveyor_contracts::ReleaseStock { order_id: uuid::Uuid::now_v7() };
    deliver(&pool, &early).await;
    drain(&consumer(&pool)).await;
    let got = api.get(&format!("/reservations/{}", early.order_id)).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!((&got.json["state"], &got.json["lines"], &got.json["reason"]), (&json!("released"), &json!([]), &json!(null)));
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_writes_nothing() {
    let (api, pool) = api().await;
    let id = stocked(&pool, 10).await;
    let full = stocked(&pool, limits::MAX_STOCK - 1).await;
    let restock = format!("/items/{id}/restock");
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"quantity": 0}), "between 1 and"),
        (json!({"quantity": -3}), "not -3"),
        (json!({"quantity": limits::MAX_STOCK + 1}), "between 1 and"),
        (json!({"quantity": i64::MAX}), "between 1 and"),
        (json!({"quantity": "5"}), "invalid type"),
        (json!({"quantity": 1.5}), "invalid type"),
        (json!({"quantity": null}), "invalid type"),
        (json!({}), "missing field `quantity`"),
        (json!({"quantity": 1, "colour": "red"}), "unknown field"),
        (json!([1]), "must be an object"),
    ];
    for (body, needle) in cases {
        let detail = api.post(&restock, body.clone()).await.problem(422).to_owned();
        assert!(detail.contains(needle), "{body} → {detail}");
    }
    let over = api.post(&format!("/items/{full}/restock"), json!({"quantity": 2})).await;
    assert!(over.problem(422).contains("past the limit"), "{}", over.text);
    api.post_raw(&restock, r#"{"quantity": 99999999999999999999}"#).await.problem(422);
    assert!(api.post_raw(&restock, "{not json").await.problem(400).contains("not valid JSON"));
    api.send(axum::http::Method::POST, &restock, &[("content-type", "text/plain")], Some(r#"{"quantity":1}"#)).await.problem(415);
    let huge = format!(r#"{{"quantity": 1, "pad": "{}"}}"#, "x".repeat(100_000));
    api.post_raw(&restock, &huge).await.problem(413);
    let unknown = "0190f0e2-7c3f-7d4e-8f00-000000000000";
    assert!(api.post(&format!("/items/{unknown}/restock"), json!({"quantity": 1})).await.problem(404).contains("no stock item"));
    assert!(api.post("/items/not-a-uuid/restock", json!({"quantity": 1})).await.problem(400).contains("UUID"));
    assert!(api.get("/items/not-a-uuid").await.problem(400).contains("UUID"));
    api.get(&format!("/items/{unknown}")).await.problem(404);
    assert!(api.get("/reservations/12345").await.problem(400).contains("UUID"));
    assert!(api.get(&format!("/reservations/{unknown}")).await.problem(404).contains("no reservation"));
    api.get("/items?limit=0").await.problem(400);
    api.get("/items?limit=101").await.problem(400);
    api.get("/items?after=nope").await.problem(400);
    api.send(axum::http::Method::PUT, &restock, &[], Some(r#"{"quantity":1}"#)).await.problem(405);

    assert_eq!(levels(&pool, id).await, (10, 0));
    assert_eq!(levels(&pool, full).await, (limits::MAX_STOCK - 1, 0));
    let restocks: i64 = sqlx::query_scalar("SELECT count(*) FROM movements WHERE kind <> 'initial'").fetch_one(&pool).await.unwrap();
    assert_eq!(restocks, 0);
    assert!(outbox(&pool).await.is_empty());
}

/// Issue 14: a control character in a path, query or JSON string (a key too) is a 400 with
/// a detail, never a 500; a nested unknown field is a 422 naming it; nothing is written.
#[tokio::test]
async fn control_characters_and_loose_nested_objects_get_a_problem_and_write_nothing() {
    let (api, pool) = api().await;
    let id = stocked(&pool, 10).await;
    let restock = format!("/items/{id}/restock");
    assert!(api.post_raw(&restock, r#"{"quan\u0000tity": 5}"#).await.problem(400).contains("U+0000 (NUL)"));
    assert!(api.post_raw(&restock, r#"{"quantity": 5, "note\u001b": 1}"#).await.problem(400).contains("U+001B (ESC)"));
    let nested = api.post(&restock, json!({"quantity": 5, "by": {"who": "ops", "extra": [1]}})).await;
    assert!(nested.problem(422).contains("unknown field"), "{}", nested.text);
    assert!(api.post(&restock, json!({"quantity": [5]})).await.problem(422).contains("quantity: invalid type: sequence"));
    assert!(api.post(&restock.replace(&id.to_string(), "%00"), json!({"quantity": 5})).await.problem(400).contains("path parameter `product_id`"));
    assert!(api.get("/items/%1F").await.problem(400).contains("U+001F (US)"));
    assert!(api.get("/reservations/a%7Fb").await.problem(400).contains("U+007F (DEL)"));
    assert!(api.get("/items?after=%00").await.problem(400).contains("query parameter `after`"));
    assert!(api.get("/admin/dead-letters?topic=order.placed%00").await.problem(400).contains("query parameter `topic` contains the control character U+0000 (NUL)"));
    assert_eq!(levels(&pool, id).await, (10, 0));
    let restocks: i64 = sqlx::query_scalar("SELECT count(*) FROM movements WHERE kind <> 'initial'").fetch_one(&pool).await.unwrap();
    assert_eq!(restocks, 0);
    assert!(outbox(&pool).await.is_empty());
}

#[tokio::test]
async fn the_api_is_documented() {
    let (api, _pool) = api().await;
    let doc = api.get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json["info"]["title"], "Conveyor stock API");
    assert!(doc.json["info"]["description"].as_str().is_some_and(|d| d.starts_with("Stock")), "{}", doc.json["info"]);
    for path in ["/items", "/items/{product_id}", "/items/{product_id}/restock", "/reservations/{order_id}", "/admin/queue", "/admin/faults"] {
        assert!(doc.json["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    assert_eq!(api.get("/health/ready").await.status, 200);
}

#[tokio::test]
async fn an_operator_slows_the_worker_down_and_lets_it_go() {
    let (api, pool) = api().await;
    let item = stocked(&pool, 100).await;
    assert_eq!(api.get("/admin/faults").await.json, json!({"slowdown_ms": 0.0}));
    let refused = api.patch("/admin/faults", json!({"slowdown_ms": 60_001})).await;
    assert!(refused.problem(400).contains("slowdown_ms"));
    assert!(api.patch("/admin/faults", json!({"decline_rate": 1})).await.problem(400).contains("this service has: slowdown_ms"));
    api.anonymous().get("/admin/faults").await.problem(401);

    let set = api.patch("/admin/faults", json!({"slowdown_ms": 300})).await;
    assert_eq!(set.json, json!({"slowdown_ms": 300.0}), "{}", set.text);
    // The worker reads the flag (its refresh, by hand here) and waits before each claim.
    let flags = conveyor_platform::faults::Faults::new(pool.clone(), &conveyor_stock::FLAGS);
    flags.refresh().await.unwrap();
    let slowed = conveyor_stock::faults::slowed(consumer(&pool), flags.clone());
    deliver(&pool, &order(&[(item, 1)])).await;
    let started = std::time::Instant::now();
    assert_eq!(slowed.process_once().await.unwrap(), 1);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300), "claimed after {:?}", started.elapsed());

    assert_eq!(api.send(axum::http::Method::DELETE, "/admin/faults", &[], None).await.json, json!({"slowdown_ms": 0.0}));
    flags.refresh().await.unwrap();
    deliver(&pool, &order(&[(item, 1)])).await;
    let started = std::time::Instant::now();
    assert_eq!(slowed.process_once().await.unwrap(), 1);
    assert!(started.elapsed() < std::time::Duration::from_millis(300), "claimed after {:?} with the flag off", started.elapsed());
    assert_eq!(outbox(&pool).await.iter().filter(|(t, _)| t == "stock.reserved").count(), 2);
}
