//! The notification API through its real router, against a real database per test.

use conveyor_notification::{MIGRATOR, SERVICE, http};
use conveyor_platform::testing::{TestApi, migrated_db};
use serde_json::json;
use sqlx::PgPool;

async fn api() -> (TestApi, PgPool) {
    let pool = migrated_db(&MIGRATOR).await;
    (TestApi::new(SERVICE, pool.clone(), http::router(), pool.clone()), pool)
}

async fn stored(pool: &PgPool) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT event_type, subject, body FROM templates ORDER BY event_type").fetch_all(pool).await.unwrap()
}

#[tokio::test]
async fn templates_are_seeded_readable_and_replaceable() {
    let (api, _pool) = api().await;
    let all = api.get("/templates").await;
    assert_eq!(all.status, 200, "{}", all.text);
    let types: Vec<&str> = all.json.as_array().unwrap().iter().map(|t| t["event_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["order.cancelled", "order.confirmed"]);

    let confirmed = api.get("/templates/order.confirmed").await;
    assert_eq!(confirmed.status, 200);
    assert!(confirmed.json["subject"].as_str().unwrap().contains("{{ order_id }}"));
    let before = confirmed.json["updated_at"].as_str().unwrap().to_owned();

    let put = api.put("/templates/order.confirmed", json!({"subject": "Order {{ order_id }}: {{ status }}", "body": "Total {{ total }}\n{% for l in lines %}{{ l.name or l.product_id }}\n{% endfor %}"})).await;
    assert_eq!(put.status, 200, "{}", put.text);
    assert_eq!(put.json["subject"], "Order {{ order_id }}: {{ status }}");
    assert_ne!(put.json["updated_at"].as_str().unwrap(), before);
    let again = api.get("/templates/order.confirmed").await;
    assert_eq!(again.json["body"], put.json["body"]);
    // The other template is untouched, and a cancellation template may use its own variables.
    let cancel = api.put("/templates/order.cancelled", json!({"subject": "Cancelled", "body": "{{ reason }}: {{ detail }}"})).await;
    assert_eq!(cancel.status, 200, "{}", cancel.text);
}

#[tokio::test]
async fn bad_templates_get_a_problem_and_change_nothing() {
    let (api, pool) = api().await;
    let seeded = stored(&pool).await;
    let ok_body = "Hello {{ customer_id }}";
    let cases: Vec<(serde_json::Value, u16, &str)> = vec![
        (json!({"subject": "Hi {{ order_id", "body": ok_body}), 422, "subject is not a valid template: syntax error"),
        (json!({"subject": "Hi", "body": "{% for l in lines %}"}), 422, "body is not a valid template: syntax error"),
        (json!({"subject": "Hi", "body": "{{ total | no_such_filter }}"}), 422, "unknown filter"),
        (json!({"subject": "Hi {{ customer_name }}", "body": ok_body}), 422, "subject does not render"),
        (json!({"subject": "Hi", "body": "{{ lines[0].sku }}"}), 422, "body does not render"),
        (json!({"subject": "x".repeat(201), "body": ok_body}), 422, "subject must have 1 to 200 characters"),
        (json!({"subject": "   ", "body": ok_body}), 422, "subject must have 1 to 200"),
        (json!({"subject": "Hi", "body": "x".repeat(10_001)}), 422, "body must have 1 to 10000 characters"),
        (json!({"subject": "Hi", "body": ""}), 422, "body must have 1 to 10000"),
        (json!({"subject": "Two\nlines", "body": ok_body}), 422, "subject must not contain line breaks"),
        (json!({"subject": "Hi", "body": "nul \u{0} byte"}), 400, "body: the string contains the control character U+0000 (NUL)"),
        (json!({"subject": "Hi"}), 422, "missing field `body`"),
        (json!({"subject": 5, "body": ok_body}), 422, "invalid type"),
        (json!({"subject": "Hi", "body": ok_body, "from": "me"}), 422, "unknown field"),
    ];
    for (body, status, needle) in cases {
        let resp = api.put("/templates/order.confirmed", body.clone()).await;
        let detail = resp.problem(status);
        assert!(detail.contains(needle), "{body} → {detail}");
    }
    assert!(api.send(axum::http::Method::PUT, "/templates/order.confirmed", &[], Some("{\"subject\": ")).await.problem(400).contains("not valid JSON"));
    api.send(axum::http::Method::PUT, "/templates/order.confirmed", &[("content-type", "text/plain")], Some("{}")).await.problem(415);
    let huge = json!({"subject": "Hi", "body": "x".repeat(100_000)});
    api.put("/templates/order.confirmed", huge).await.problem(413);

    let unknown = api.put("/templates/order.placed", json!({"subject": "Hi", "body": ok_body})).await;
    assert!(unknown.problem(404).contains("order.confirmed and order.cancelled"));
    api.get("/templates/order.placed").await.problem(404);
    api.get("/templates/nonsense").await.problem(404);
    api.send(axum::http::Method::DELETE, "/templates/order.confirmed", &[], None).await.problem(405);
    assert_eq!(stored(&pool).await, seeded, "nothing was written");
}

/// Issue 14: a control character in a path, query or JSON string is a 400 with a detail,
/// never a 500 — except the line breaks and tabs a body may hold; a nested object where text
/// is expected, or a nested unknown field, is a 422 naming it; nothing is written.
#[tokio::test]
async fn control_characters_and_loose_nested_objects_get_a_problem_and_write_nothing() {
    let (api, pool) = api().await;
    let seeded = stored(&pool).await;
    let put = |body: serde_json::Value| api.put("/templates/order.confirmed", body);
    for (body, needle) in [
        (json!({"subject": "Hi\u{1b}[31m", "body": "x"}), "subject: the string contains the control character U+001B (ESC)"),
        (json!({"subject": "Hi", "body": "tab\tand\u{b}vertical tab"}), "body: the string contains the control character U+000B (VT)"),
        (json!({"subject": "Hi", "body": "x", "\u{0}": 1}), "U+0000 (NUL)"),
    ] {
        assert!(put(body.clone()).await.problem(400).contains(needle), "{body}");
    }
    for (body, needle) in [
        (json!({"subject": {"text": "Hi"}, "body": "x"}), "subject: invalid type: map"),
        (json!({"subject": ["Hi"], "body": "x"}), "subject: invalid type: sequence"),
        (json!({"subject": "Hi", "body": "x", "meta": {"a": 1}}), "unknown field `meta`"),
    ] {
        assert!(put(body.clone()).await.problem(422).contains(needle), "{body}");
    }
    assert!(api.get("/templates/order.confirmed%00").await.problem(400).contains("path parameter `event_type` contains the control character U+0000 (NUL)"));
    assert!(api.put("/templates/%0A", json!({"subject": "Hi", "body": "x"})).await.problem(400).contains("U+000A (LF)"));
    assert!(api.get("/admin/dead-letters?topic=order.confirmed%00").await.problem(400).contains("query parameter `topic`"));
    assert_eq!(stored(&pool).await, seeded, "nothing was written");

    // Line breaks and tabs in a body are text, not control: stored as sent.
    let body = "Total {{ total }}\r\n\tThank you\n";
    let ok = put(json!({"subject": "Order {{ order_id }}", "body": body})).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert!(stored(&pool).await.iter().any(|(t, _, b)| t == "order.confirmed" && b == body));
}

#[tokio::test]
async fn notifications_are_listed_per_order() {
    let (api, pool) = api().await;
    let order = uuid::Uuid::now_v7();
    let empty = api.get(&format!("/orders/{order}/notifications")).await;
    assert_eq!(empty.status, 200, "{}", empty.text);
    assert_eq!(empty.json, json!([]));
    sqlx::query(
        "INSERT INTO notifications (id, order_id, event_type, customer_id, subject, body, data_source, attempts, delivered_at)
         VALUES ($1, $2, 'order.confirmed', $3, 'S', 'B', 'event', 2, now())",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(order)
    .bind(uuid::Uuid::now_v7())
    .execute(&pool)
    .await
    .unwrap();
    let one = api.get(&format!("/orders/{order}/notifications")).await;
    assert_eq!(one.json.as_array().unwrap().len(), 1);
    assert_eq!(one.json[0]["event_type"], "order.confirmed");
    assert_eq!(one.json[0]["data_source"], "event");
    assert_eq!(one.json[0]["attempts"], 2);
    assert!(api.get("/orders/not-a-uuid/notifications").await.problem(400).contains("UUID"));
}

#[tokio::test]
async fn the_api_is_documented() {
    let (api, _pool) = api().await;
    let doc = api.get("/openapi.json").await;
    assert_eq!(doc.json["info"]["title"], "Conveyor notification API");
    assert!(doc.json["info"]["description"].as_str().is_some_and(|d| d.starts_with("Notifications")), "{}", doc.json["info"]);
    for path in ["/orders/{order_id}/notifications", "/templates", "/templates/{event_type}", "/admin/queue"] {
        assert!(doc.json["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    assert_eq!(api.get("/health/ready").await.status, 200);
}
