//! Everything a client can get wrong: a 4xx problem with a useful detail, and nothing
//! written (no order, no key, no event).

use axum::http::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{money, order, product, shop};

#[tokio::test]
async fn bad_orders_get_a_problem_and_write_nothing() {
    let shop = shop().await;
    let (lamp, dollar) = (product("Desk lamp", money(2599, "EUR"), 1), product("Mug", money(900, "USD"), 1));
    let pricey = product("Yacht", money(1, "EUR"), 1);
    shop.sync(&[&lamp, &dollar, &pricey]).await;
    // Beyond what the catalog allows, so only a corrupted copy could hold it: the total
    // must still refuse to overflow rather than fail with a 500.
    sqlx::query("UPDATE products SET price_minor = 4611686018427387904 WHERE id = $1").bind(pricey.id).execute(&shop.pool).await.unwrap();
    let customer = Uuid::now_v7();
    let unknown = Uuid::now_v7();
    let line = |id: Uuid, q: Value| json!({"product_id": id, "quantity": q});
    let with_lines = |lines: Vec<Value>| json!({"customer_id": customer, "lines": lines});

    let cases: Vec<(Value, u16, String)> = vec![
        (with_lines(vec![]), 422, "1 to 50 lines, not 0".into()),
        (with_lines((0..51).map(|_| line(Uuid::now_v7(), json!(1))).collect()), 422, "not 51".into()),
        (with_lines(vec![line(lamp.id, json!(0))]), 422, "quantity must be between 1 and 10000, not 0".into()),
        (with_lines(vec![line(lamp.id, json!(-3))]), 422, "not -3".into()),
        (with_lines(vec![line(lamp.id, json!(10_001))]), 422, "not 10001".into()),
        (with_lines(vec![line(lamp.id, json!(1_000_000_000_000_i64))]), 422, "not 1000000000000".into()),
        (with_lines(vec![line(lamp.id, json!(1.5))]), 422, "invalid type".into()),
        (with_lines(vec![line(lamp.id, json!("2"))]), 422, "invalid type".into()),
        (with_lines(vec![line(lamp.id, json!(1)), line(lamp.id, json!(2))]), 422, format!("product {} appears in more than one line", lamp.id)),
        (with_lines(vec![line(lamp.id, json!(1)), line(unknown, json!(1))]), 422, format!("lines[1]: product {unknown} is not known")),
        (with_lines(vec![line(lamp.id, json!(1)), line(dollar.id, json!(1))]), 422, "one currency".into()),
        (with_lines(vec![line(pricey.id, json!(2))]), 422, "overflows".into()),
        (json!({"customer_id": "not-a-uuid", "lines": [line(lamp.id, json!(1))]}), 422, "UUID".into()),
        (json!({"customer_id": customer, "lines": [{"product_id": "42", "quantity": 1}]}), 422, "UUID".into()),
        (json!({"customer_id": customer}), 422, "missing field `lines`".into()),
        (json!({"customer_id": customer, "lines": "all of them"}), 422, "invalid type".into()),
        (json!({"customer_id": customer, "lines": [line(lamp.id, json!(1))], "coupon": "FREE"}), 422, "unknown field".into()),
        (json!({"customer_id": customer, "lines": [{"product_id": lamp.id, "quantity": 1, "price": 1}]}), 422, "unknown field".into()),
        (json!([1, 2]), 422, "must be an object".into()),
    ];
    for (body, status, needle) in cases {
        let resp = shop.place(&Uuid::now_v7().to_string(), &body).await;
        let detail = resp.problem(status);
        assert!(detail.contains(&needle), "{body} → {detail}");
    }
    assert!(shop.place_raw("k", "{\"customer_id\": ").await.problem(400).contains("not valid JSON"));
    let body = order(customer, &[(&lamp, 1)]).to_string();
    let huge = format!(r#"{{"customer_id":"{customer}","lines":[],"pad":"{}"}}"#, "x".repeat(70 * 1024));
    shop.place_raw("k", &huge).await.problem(413);
    shop.api.send(Method::POST, "/orders", &[("idempotency-key", "k"), ("content-type", "text/plain")], Some(&body)).await.problem(415);

    // The key: required, once, 1 to 255 visible ASCII characters; checked before the body.
    let missing = shop.api.send(Method::POST, "/orders", &[], Some(&body)).await;
    assert!(missing.problem(400).contains("Idempotency-Key header is required"));
    assert!(shop.api.send(Method::POST, "/orders", &[], Some("{")).await.problem(400).contains("Idempotency-Key"));
    let long = "k".repeat(256);
    for bad in ["", "two words", long.as_str()] {
        assert!(shop.place_raw(bad, &body).await.problem(400).contains("visible ASCII"), "{bad:?}");
    }
    let twice = shop.api.send(Method::POST, "/orders", &[("idempotency-key", "a"), ("idempotency-key", "b")], Some(&body)).await;
    assert!(twice.problem(400).contains("once"));

    for table in ["orders", "order_lines", "idempotency_keys", "outbox"] {
        assert_eq!(shop.count(table).await, 0, "{table}");
    }
}

#[tokio::test]
async fn bad_reads_get_a_problem() {
    let shop = shop().await;
    let nobody = Uuid::now_v7();
    assert!(shop.api.get("/orders/not-a-uuid").await.problem(400).contains("UUID"));
    assert!(shop.api.get(&format!("/orders/{nobody}")).await.problem(404).contains("no order"));
    assert!(shop.api.get(&format!("/products/{nobody}")).await.problem(404).contains("synchronized"));
    shop.api.get("/products/123").await.problem(400);
    shop.api.get("/customers/someone/orders").await.problem(400);
    shop.api.get(&format!("/customers/{nobody}/orders?limit=0")).await.problem(400);
    shop.api.get(&format!("/customers/{nobody}/orders?limit=101")).await.problem(400);
    shop.api.get(&format!("/customers/{nobody}/orders?after=yesterday")).await.problem(400);
    shop.api.send(Method::DELETE, &format!("/orders/{nobody}"), &[], None).await.problem(405);
    shop.api.get("/orders").await.problem(405);
}

/// Issue 14: a control character in a JSON string, a path, a query or the Idempotency-Key is
/// a 400 with a detail, never a 500; a line given as an array, or with a field it does not
/// declare, is a 422 naming it; nothing is written (no order, no key, no event). A NUL in a
/// header never reaches the router (hyper refuses it: see the e2e test `bad_input`).
#[tokio::test]
async fn control_characters_and_loose_nested_objects_get_a_problem_and_write_nothing() {
    let shop = shop().await;
    let lamp = product("Desk lamp", money(2599, "EUR"), 1);
    shop.sync(&[&lamp]).await;
    let customer = Uuid::now_v7();
    let id = lamp.id;
    let bodies: Vec<(String, u16, String)> = vec![
        (format!(r#"{{"customer_id":"{customer}\u0000","lines":[{{"product_id":"{id}","quantity":1}}]}}"#), 400, "customer_id: the string contains the control character U+0000 (NUL)".into()),
        (format!(r#"{{"customer_id":"{customer}","lines":[{{"product_id":"{id}\u001b","quantity":1}}]}}"#), 400, "lines[0].product_id: the string contains the control character U+001B (ESC)".into()),
        (format!(r#"{{"customer_id":"{customer}","lines":[{{"product_id":"{id}","quantity":1,"note\b":1}}]}}"#), 400, "U+0008 (BS)".into()),
        (format!(r#"{{"customer_id":"{customer}","lines":[["{id}",1]]}}"#), 422, "lines[0]: invalid type: sequence, expected a JSON object".into()),
        (format!(r#"{{"customer_id":"{customer}","lines":[{{"product_id":"{id}","quantity":1,"price":{{"amount_minor":1}}}}]}}"#), 422, "lines[0].price: unknown field `price`".into()),
        (format!(r#"{{"customer_id":"{customer}","lines":[{{"product_id":"{id}","quantity":{{"n":1}}}}]}}"#), 422, "lines[0].quantity: invalid type: map".into()),
    ];
    for (body, status, needle) in &bodies {
        let detail = shop.place_raw(&Uuid::now_v7().to_string(), body).await.problem(*status).to_owned();
        assert!(detail.contains(needle.as_str()), "{body} → {detail}");
    }
    // The key: what reaches the router (a tab, bytes beyond ASCII) is refused by its rule.
    let body = order(customer, &[(&lamp, 1)]).to_string();
    for bad in ["a\tb", "\u{e9}t\u{e9}"] {
        let resp = shop.api.as_customer(customer).send(Method::POST, "/orders", &[("idempotency-key", bad)], Some(&body)).await;
        assert!(resp.problem(400).contains("visible ASCII"), "{bad:?}");
    }
    // Path and query values, decoded as the handler would see them.
    assert!(shop.api.get("/orders/%00").await.problem(400).contains("path parameter `id` contains the control character U+0000 (NUL)"));
    assert!(shop.api.get("/products/%1b").await.problem(400).contains("U+001B (ESC)"));
    assert!(shop.api.get(&format!("/customers/{customer}/orders?after=%00")).await.problem(400).contains("query parameter `after`"));
    assert!(shop.api.get("/admin/dead-letters?topic=order.placed%00").await.problem(400).contains("query parameter `topic` contains the control character U+0000 (NUL)"));

    for table in ["orders", "order_lines", "idempotency_keys", "outbox"] {
        assert_eq!(shop.count(table).await, 0, "{table}");
    }
}
