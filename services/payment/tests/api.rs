//! The payment API through its real router, against a real database per test.

mod common;

use common::*;
use conveyor_contracts::limits;
use conveyor_platform::testing::outbox;
use serde_json::json;
use sqlx::PgPool;

/// Rows in (customers, ledger, payments).
async fn counts(pool: &PgPool) -> (i64, i64, i64) {
    sqlx::query_as("SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM ledger), (SELECT count(*) FROM payments)").fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn customers_are_created_read_and_topped_up() {
    let (api, pool) = setup().await;
    let id = "0190f0e2-7c3f-7d4e-8f00-00000000abcd";
    let created = api.post("/customers", json!({"id": id, "name": "  Ada Lovelace ", "currency": "GBP", "balance_minor": 2500})).await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.headers["location"], format!("/customers/{id}").as_str());
    assert_eq!((&created.json["id"], &created.json["name"], &created.json["currency"]), (&json!(id), &json!("Ada Lovelace"), &json!("GBP")));
    assert_eq!(created.json["balance_minor"], 2500);

    let got = api.get(&format!("/customers/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json["balance_minor"], 2500);
    let topped = api.post(&format!("/customers/{id}/top-up"), json!({"amount_minor": 1500})).await;
    assert_eq!(topped.status, 200, "{}", topped.text);
    assert_eq!(topped.json["balance_minor"], 4000);

    let fresh = api.post("/customers", json!({"name": "Bob", "currency": "JPY"})).await;
    assert_eq!(fresh.status, 201, "{}", fresh.text);
    assert_eq!(fresh.json["balance_minor"], 0, "the default opening balance");
    assert_ne!(fresh.json["id"], json!(id));

    let kinds: Vec<(String, i64)> = sqlx::query_as("SELECT kind, amount_minor FROM ledger ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(kinds, [("open".to_owned(), 2500), ("top_up".to_owned(), 1500), ("open".to_owned(), 0)]);
    assert_ledger_explains_balances(&pool).await;
    let none = api.get("/orders/0190f0e2-7c3f-7d4e-8f00-000000000001/payments").await;
    assert_eq!((none.status.as_u16(), none.json.clone()), (200, json!([])));
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_writes_nothing() {
    let (api, pool) = setup().await;
    let ada = customer(&api, "EUR", 100).await;
    let rich = customer(&api, "EUR", limits::MAX_BALANCE_MINOR - 1).await;
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"name": "x", "currency": "XXX"}), "unknown currency"),
        (json!({"name": "x", "currency": "eur"}), "unknown currency"),
        (json!({"name": "x", "currency": 978}), "invalid type"),
        (json!({"name": "x", "currency": "EUR", "balance_minor": -1}), "between 0 and"),
        (json!({"name": "x", "currency": "EUR", "balance_minor": limits::MAX_BALANCE_MINOR + 1}), "between 0 and"),
        (json!({"name": "x", "currency": "EUR", "balance_minor": 1.5}), "invalid type"),
        (json!({"name": "x", "currency": "EUR", "balance_minor": "100"}), "invalid type"),
        (json!({"name": " ", "currency": "EUR"}), "name must have"),
        (json!({"name": "x".repeat(201), "currency": "EUR"}), "name must have"),
        // A line break reaches the name's own rule (one line); other control characters
        // are a 400 before it (below).
        (json!({"name": "a\nb", "currency": "EUR"}), "control characters"),
        (json!({"currency": "EUR"}), "missing field `name`"),
        (json!({"name": "x"}), "missing field `currency`"),
        (json!({"id": "not-a-uuid", "name": "x", "currency": "EUR"}), "UUID"),
        (json!({"name": "x", "currency": "EUR", "vip": true}), "unknown field"),
        (json!(["x", "EUR"]), "must be an object"),
    ];
    for (body, needle) in cases {
        let detail = api.post("/customers", body.clone()).await.problem(422).to_owned();
        assert!(detail.contains(needle), "{body} → {detail}");
    }
    let taken = api.post("/customers", json!({"id": ada, "name": "Impostor", "currency": "USD", "balance_minor": 5})).await;
    assert!(taken.problem(409).contains("exists"));
    assert!(api.post_raw("/customers", "{\"name\": ").await.problem(400).contains("not valid JSON"));
    api.send(axum::http::Method::POST, "/customers", &[("content-type", "text/plain")], Some("{}")).await.problem(415);
    let huge = format!(r#"{{"name":"{}","currency":"EUR"}}"#, "x".repeat(100_000));
    api.post_raw("/customers", &huge).await.problem(413);

    let top_up = format!("/customers/{ada}/top-up");
    let top_ups: Vec<(serde_json::Value, &str)> = vec![
        (json!({"amount_minor": 0}), "between 1 and"),
        (json!({"amount_minor": -50}), "not -50"),
        (json!({"amount_minor": i64::MAX}), "between 1 and"),
        (json!({"amount_minor": "5"}), "invalid type"),
        (json!({}), "missing field `amount_minor`"),
        (json!([5]), "must be an object"),
    ];
    for (body, needle) in top_ups {
        let detail = api.post(&top_up, body.clone()).await.problem(422).to_owned();
        assert!(detail.contains(needle), "{body} → {detail}");
    }
    api.post_raw(&top_up, r#"{"amount_minor": 99999999999999999999}"#).await.problem(422);
    assert!(api.post(&format!("/customers/{rich}/top-up"), json!({"amount_minor": 2})).await.problem(422).contains("past the limit"));
    let unknown = "0190f0e2-7c3f-7d4e-8f00-000000000000";
    assert!(api.post(&format!("/customers/{unknown}/top-up"), json!({"amount_minor": 1})).await.problem(404).contains("no customer"));
    assert!(api.post("/customers/nope/top-up", json!({"amount_minor": 1})).await.problem(400).contains("UUID"));
    assert!(api.get("/customers/nope").await.problem(400).contains("UUID"));
    api.get(&format!("/customers/{unknown}")).await.problem(404);
    assert!(api.get("/orders/nope/payments").await.problem(400).contains("UUID"));
    api.send(axum::http::Method::DELETE, &format!("/customers/{ada}"), &[], None).await.problem(405);

    assert_eq!(counts(&pool).await, (2, 2, 0));
    let ada_now = api.get(&format!("/customers/{ada}")).await;
    assert_eq!((&ada_now.json["name"], &ada_now.json["balance_minor"], &ada_now.json["currency"]), (&json!("Ada"), &json!(100), &json!("EUR")));
    assert_eq!(balance(&pool, rich).await, limits::MAX_BALANCE_MINOR - 1);
    assert!(outbox(&pool).await.is_empty());
}

/// Issue 14: a control character in a path, query or JSON string is a 400 with a detail,
/// never a 500; an object nested where a value is expected, or a nested unknown field, is a
/// 422 naming it; nothing is written.
#[tokio::test]
async fn control_characters_and_loose_nested_objects_get_a_problem_and_write_nothing() {
    let (api, pool) = setup().await;
    let ada = customer(&api, "EUR", 100).await;
    let before = counts(&pool).await;
    for (body, needle) in [
        (json!({"name": "a\u{7}b", "currency": "EUR"}), "name: the string contains the control character U+0007 (BEL)"),
        (json!({"name": "\u{0}", "currency": "EUR"}), "U+0000 (NUL)"),
        (json!({"name": "x", "currency": "EUR\u{0}"}), "currency: the string contains the control character U+0000 (NUL)"),
        (json!({"name": "x\u{85}", "currency": "EUR"}), "U+0085"),
    ] {
        assert!(api.post("/customers", body.clone()).await.problem(400).contains(needle), "{body}");
    }
    for (body, needle) in [
        (json!({"name": "x", "currency": {"code": "EUR"}}), "currency: invalid type: map"),
        (json!({"name": "x", "currency": "EUR", "address": {"city": "x"}}), "unknown field `address`"),
    ] {
        assert!(api.post("/customers", body.clone()).await.problem(422).contains(needle), "{body}");
    }
    assert!(api.post(&format!("/customers/{ada}/top-up"), json!({"amount_minor": 5, "memo\u{1}": "x"})).await.problem(400).contains("U+0001 (SOH)"));
    assert!(
        api.post("/customers/%00/top-up", json!({"amount_minor": 5}))
            .await
            .problem(400)
            .contains("path parameter `id` contains the control character U+0000 (NUL)")
    );
    assert!(api.get("/orders/%0D%0A/payments").await.problem(400).contains("U+000D (CR)"));
    assert!(api.get("/admin/dead-letters?topic=%00").await.problem(400).contains("query parameter `topic`"));
    assert_eq!(counts(&pool).await, before);
    assert_eq!(balance(&pool, ada).await, 100);
    assert!(outbox(&pool).await.is_empty());
}

#[tokio::test]
async fn the_api_is_documented() {
    let (api, _pool) = setup().await;
    let doc = api.get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json["info"]["title"], "Conveyor payment API");
    assert!(doc.json["info"]["description"].as_str().is_some_and(|d| d.starts_with("Payments")), "{}", doc.json["info"]);
    for path in ["/customers", "/customers/{id}", "/customers/{id}/top-up", "/orders/{order_id}/payments", "/admin/queue", "/admin/faults"] {
        assert!(doc.json["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    assert_eq!(api.get("/health/ready").await.status, 200);
    // The fault flags' routes document this service's flags, with their ranges.
    let faults = &doc.json["paths"]["/admin/faults"];
    let body = &faults["patch"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body["properties"]["decline_rate"]["maximum"], 1.0, "{faults}");
    assert_eq!(body["properties"]["latency_ms"]["type"], "integer");
    assert_eq!(body["additionalProperties"], false);
    let answer = &faults["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(answer["required"], serde_json::json!(["decline_rate", "error_rate", "latency_ms"]));
    assert_eq!(faults["patch"]["security"], serde_json::json!([{"bearer": []}]));
}

#[tokio::test]
async fn operators_read_set_and_clear_the_fault_flags() {
    let (api, pool) = setup().await;
    let off = json!({"decline_rate": 0.0, "error_rate": 0.0, "latency_ms": 0.0});
    let read = api.get("/admin/faults").await;
    assert_eq!((read.status.as_u16(), &read.json), (200, &off), "{}", read.text);

    let set = api.patch("/admin/faults", json!({"decline_rate": 0.3, "latency_ms": 250})).await;
    assert_eq!(set.status, 200, "{}", set.text);
    assert_eq!(set.json, json!({"decline_rate": 0.3, "error_rate": 0.0, "latency_ms": 250.0}));
    // Stored in the database, where every worker reads it.
    let worker_view = conveyor_platform::faults::read(&pool, &conveyor_payment::FLAGS).await.unwrap();
    assert_eq!((worker_view["decline_rate"], worker_view["latency_ms"]), (0.3, 250.0));
    // A second PATCH changes only what it names.
    let set = api.patch("/admin/faults", json!({"error_rate": 1})).await;
    assert_eq!(set.json, json!({"decline_rate": 0.3, "error_rate": 1.0, "latency_ms": 250.0}));
    assert_eq!(api.get("/admin/faults").await.json, set.json);

    // Refusals name the flag and change nothing.
    for (body, names) in [
        (json!({"decline_rate": 1.5}), "decline_rate"),
        (json!({"speed": 1}), "speed"),
        (json!({"error_rate": "0.5"}), "error_rate"),
        (json!({"latency_ms": 60_001}), "latency_ms"),
        (json!({"latency_ms": 0.5}), "latency_ms"),
        (json!({"decline_rate": 0.1, "latency_ms": -1}), "latency_ms"),
    ] {
        let refused = api.patch("/admin/faults", body.clone()).await;
        let detail = refused.problem(400);
        assert!(detail.contains(names), "{body}: {detail}");
    }
    assert_eq!(api.get("/admin/faults").await.json, set.json);
    assert_eq!(api.patch("/admin/faults", json!({})).await.status, 400);

    let cleared = api.send(axum::http::Method::DELETE, "/admin/faults", &[], None).await;
    assert_eq!((cleared.status.as_u16(), &cleared.json), (200, &off), "{}", cleared.text);
    assert_eq!(api.get("/admin/faults").await.json, off);
}

#[tokio::test]
async fn only_operators_touch_the_fault_flags() {
    let (api, _pool) = setup().await;
    let ada = customer(&api, "EUR", 100).await;
    for caller in [api.anonymous(), api.as_customer(ada)] {
        let status = if caller.token.is_none() { 401 } else { 403 };
        caller.get("/admin/faults").await.problem(status);
        caller.patch("/admin/faults", json!({"decline_rate": 1})).await.problem(status);
        caller.send(axum::http::Method::DELETE, "/admin/faults", &[], None).await.problem(status);
    }
    assert_eq!(api.get("/admin/faults").await.json["decline_rate"], 0.0);
}
