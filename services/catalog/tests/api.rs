//! The catalog API through its real router, against a real database per test.

use conveyor_catalog::{MIGRATOR, SERVICE, http};
use conveyor_platform::testing::{TestApi, migrated_db, outbox};
use serde_json::json;
use sqlx::PgPool;

async fn api() -> (TestApi, PgPool) {
    let pool = migrated_db(&MIGRATOR).await;
    (TestApi::new(SERVICE, pool.clone(), http::router(), pool.clone()), pool)
}

fn lamp() -> serde_json::Value {
    json!({"name": "Desk lamp", "price": {"amount_minor": 2599, "currency": "EUR"}, "initial_stock": 7})
}

#[tokio::test]
async fn create_get_update_and_list_publish_each_change() {
    let (api, pool) = api().await;
    let created = api.post("/products", lamp()).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_owned();
    assert_eq!(created.headers["location"], format!("/products/{id}").as_str());
    assert_eq!(created.json["price"], json!({"amount_minor": 2599, "currency": "EUR"}));

    let got = api.get(&format!("/products/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json["initial_stock"], 7);

    let updated = api.patch(&format!("/products/{id}"), json!({"price": {"amount_minor": 1999, "currency": "EUR"}})).await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    assert_eq!(updated.json["version"], 2);
    assert_eq!(updated.json["name"], "Desk lamp");

    let events = outbox(&pool).await;
    assert_eq!(events.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), ["product.created", "product.updated"]);
    assert_eq!(events[1].1["product"]["price"]["amount_minor"], 1999);
    assert_eq!(events[1].1["product"]["version"], 2);

    for i in 0..4 {
        assert_eq!(api.post("/products", json!({"name": format!("p{i}"), "price": {"amount_minor": 1, "currency": "USD"}})).await.status, 201);
    }
    let first = api.get("/products?limit=3").await;
    assert_eq!(first.json["items"].as_array().unwrap().len(), 3);
    let next = first.json["next"].as_str().unwrap();
    let second = api.get(&format!("/products?limit=3&after={next}")).await;
    assert_eq!(second.json["items"].as_array().unwrap().len(), 2);
    assert!(second.json["next"].is_null());
    assert_eq!(second.json["items"][1]["initial_stock"], 100, "the default initial stock");
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_writes_nothing() {
    let (api, pool) = api().await;
    let cases: Vec<(serde_json::Value, u16, &str)> = vec![
        (json!({"name": "", "price": {"amount_minor": 1, "currency": "EUR"}}), 422, "name"),
        (json!({"name": "x".repeat(201), "price": {"amount_minor": 1, "currency": "EUR"}}), 422, "name"),
        (json!({"name": "x", "price": {"amount_minor": -5, "currency": "EUR"}}), 422, "amount_minor"),
        (json!({"name": "x", "price": {"amount_minor": 10_000_000_000_000_i64, "currency": "EUR"}}), 422, "amount_minor"),
        (json!({"name": "x", "price": {"amount_minor": 1, "currency": "XXX"}}), 422, "unknown currency"),
        (json!({"name": "x", "price": {"amount_minor": "12", "currency": "EUR"}}), 422, "invalid type"),
        (json!({"name": "x", "price": {"amount_minor": 1.5, "currency": "EUR"}}), 422, "invalid type"),
        (json!({"name": "x"}), 422, "missing field `price`"),
        (json!({"name": "x", "price": {"amount_minor": 1, "currency": "EUR"}, "initial_stock": -1}), 422, "initial_stock"),
        (json!({"name": "x", "price": {"amount_minor": 1, "currency": "EUR"}, "colour": "red"}), 422, "unknown field"),
    ];
    for (body, status, needle) in cases {
        let resp = api.post("/products", body.clone()).await;
        let detail = resp.problem(status);
        assert!(detail.contains(needle), "{body} → {detail}");
    }
    let overflow = api.post_raw("/products", r#"{"name":"x","price":{"amount_minor":99999999999999999999,"currency":"EUR"}}"#).await;
    overflow.problem(422);
    assert!(api.post_raw("/products", "{not json").await.problem(400).contains("not valid JSON"));
    let no_type = api.send(axum::http::Method::POST, "/products", &[("content-type", "text/plain")], Some("{}")).await;
    no_type.problem(415);
    let huge = format!(r#"{{"name":"{}","price":{{"amount_minor":1,"currency":"EUR"}}}}"#, "x".repeat(100_000));
    api.post_raw("/products", &huge).await.problem(413);
    assert!(api.get("/products/not-a-uuid").await.problem(400).contains("UUID"));
    assert!(api.get("/products/0190f0e2-7c3f-7d4e-8f00-000000000000").await.problem(404).contains("no product"));
    api.patch("/products/0190f0e2-7c3f-7d4e-8f00-000000000000", json!({"name": "y"})).await.problem(404);
    api.get("/products?limit=0").await.problem(400);
    api.get("/products?limit=abc").await.problem(400);
    api.get("/nowhere").await.problem(404);
    api.send(axum::http::Method::DELETE, "/products", &[], None).await.problem(405);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM products").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 0);
    assert!(outbox(&pool).await.is_empty());
}

/// Issue 14: a control character in a path, query or JSON string is a 400 with a detail
/// (never the 500 of Postgres refusing NUL); a nested object given as an array or with a
/// field it does not declare is a 422 naming the field, though `Money` takes unknown fields
/// in events; nothing is written either way.
#[tokio::test]
async fn control_characters_and_loose_nested_objects_get_a_problem_and_write_nothing() {
    let (api, pool) = api().await;
    let eur = json!({"amount_minor": 1, "currency": "EUR"});
    let control: Vec<(serde_json::Value, &str)> = vec![
        (json!({"name": "a\u{0}b", "price": eur}), "name: the string contains the control character U+0000 (NUL)"),
        (json!({"name": "x", "price": {"amount_minor": 1, "currency": "EU\u{1b}"}}), "price.currency: the string contains the control character U+001B (ESC)"),
        (json!({"name": "x\u{7f}", "price": eur}), "U+007F (DEL)"),
        (json!({"name": "x", "price": eur, "k\u{7}": 1}), "U+0007 (BEL)"),
    ];
    for (body, needle) in &control {
        assert!(api.post("/products", body.clone()).await.problem(400).contains(needle), "{body}");
    }
    let loose: Vec<(serde_json::Value, &str)> = vec![
        (json!({"name": "x", "price": [100, "EUR"]}), "price: invalid type: sequence, expected a JSON object"),
        (json!({"name": "x", "price": {"amount_minor": 1, "currency": "EUR", "extra": 1}}), "price.extra: unknown field"),
        (json!({"name": "x", "price": {"amount_minor": 1, "currency": "EUR", "extra": {"deep": [1]}}}), "price.extra: unknown field"),
    ];
    for (body, needle) in &loose {
        assert!(api.post("/products", body.clone()).await.problem(422).contains(needle), "{body}");
    }
    // The same rules on an update, of a product that exists.
    let id = api.post("/products", lamp()).await.json["id"].as_str().unwrap().to_owned();
    let path = format!("/products/{id}");
    let patch = |body: serde_json::Value| api.patch(&path, body);
    assert!(patch(json!({"name": "\u{0}"})).await.problem(400).contains("name"));
    assert!(patch(json!({"price": [5, "EUR"]})).await.problem(422).contains("price: invalid type: sequence"));
    assert!(patch(json!({"price": {"amount_minor": 5, "currency": "EUR", "extra": true}})).await.problem(422).contains("price.extra"));
    // A line break passes the extractor; the name's own rule (one line) refuses it.
    assert!(patch(json!({"name": "two\nlines"})).await.problem(422).contains("control characters"));
    // Path and query values, decoded as the handler would see them.
    assert!(api.get("/products/%00").await.problem(400).contains("path parameter `id` contains the control character U+0000 (NUL)"));
    assert!(api.get("/products?after=%1b").await.problem(400).contains("query parameter `after` contains the control character U+001B (ESC)"));
    assert!(api.get("/products?limit=1%0A").await.problem(400).contains("U+000A (LF)"));
    for uri in ["/admin/dead-letters?topic=product%00created", "/admin/dead-letters?topic=%01"] {
        assert!(api.get(uri).await.problem(400).contains("query parameter `topic` contains the control character"), "{uri}");
    }
    let replay = api.send(axum::http::Method::POST, "/admin/dead-letters/replay?topic=a%00", &[], None).await;
    assert!(replay.problem(400).contains("`topic`"));
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM products").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 1, "only the lamp");
    let stored: String = sqlx::query_scalar("SELECT name FROM products").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, "Desk lamp");
    assert_eq!(outbox(&pool).await.len(), 1, "only the lamp's product.created");

    // What the document says: every error a problem, request objects closed at any depth.
    let doc = api.get("/openapi.json").await.json;
    let create = &doc["paths"]["/products"]["post"]["responses"];
    for status in ["400", "401", "403", "413", "415", "422"] {
        assert!(create[status]["content"]["application/problem+json"].is_object(), "POST /products {status}: {create}");
    }
    assert_eq!(doc["components"]["schemas"]["Money"]["additionalProperties"], false);
    assert_eq!(doc["paths"]["/products"]["get"]["parameters"][0]["schema"]["maximum"], 100, "{}", doc["paths"]["/products"]["get"]);
}

#[tokio::test]
async fn the_api_is_documented_and_has_health_and_admin_routes() {
    let (api, _pool) = api().await;
    let doc = api.get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json["info"]["title"], "Conveyor catalog API");
    assert!(doc.json["info"]["description"].as_str().is_some_and(|d| d.starts_with("The catalog")), "{}", doc.json["info"]);
    for path in ["/products", "/products/{id}", "/admin/queue", "/admin/dead-letters", "/admin/dead-letters/{id}/replay"] {
        assert!(doc.json["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    assert_eq!(api.get("/docs").await.status, 200);
    assert_eq!(api.get("/health/live").await.status, 200);
    assert_eq!(api.get("/health/ready").await.status, 200);
    assert_eq!(api.get("/metrics").await.status, 200);
    let queue = api.get("/admin/queue").await;
    assert_eq!(queue.status, 200, "{}", queue.text);
    api.send(axum::http::Method::POST, "/admin/dead-letters/0190f0e2-7c3f-7d4e-8f00-000000000000/replay", &[], None).await.problem(404);
}
