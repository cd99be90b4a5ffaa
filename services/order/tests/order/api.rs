//! Placing, reading and listing orders; idempotency, including two concurrent requests.

use std::sync::Arc;
use std::time::Duration;

use conveyor_contracts::Product;
use conveyor_platform::testing::outbox;
use serde_json::json;
use sqlx::Connection;
use uuid::Uuid;

use crate::{money, order, product, shop};

#[tokio::test]
async fn placing_an_order_prices_it_from_the_copy_and_publishes_order_placed() {
    let shop = shop().await;
    let (lamp, bulb) = (product("Desk lamp", money(2599, "EUR"), 1), product("Bulb", money(250, "EUR"), 4));
    shop.sync(&[&lamp, &bulb]).await;
    let customer = Uuid::now_v7();

    let resp = shop.place("first-try", &order(customer, &[(&lamp, 2), (&bulb, 3)])).await;
    assert_eq!(resp.status, 201, "{}", resp.text);
    let id = resp.json["id"].as_str().unwrap().to_owned();
    assert_eq!(resp.headers["location"], format!("/orders/{id}").as_str());
    assert_eq!(resp.json["status"], "placed");
    assert_eq!(resp.json["saga_mode"], "choreography", "order-api's default");
    assert_eq!(resp.json["customer_id"], customer.to_string());
    assert_eq!(resp.json["total"], json!({"amount_minor": 2 * 2599 + 3 * 250, "currency": "EUR"}));
    assert_eq!(resp.json["lines"][0], json!({"product_id": lamp.id, "name": "Desk lamp", "quantity": 2, "unit_price": {"amount_minor": 2599, "currency": "EUR"}}));
    assert!(resp.json["reason"].is_null() && resp.json["reason_detail"].is_null());
    assert_eq!(resp.json["history"].as_array().unwrap().len(), 1);
    assert_eq!(resp.json["history"][0]["status"], "placed");

    let got = shop.api.get(&format!("/orders/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json, resp.json, "what was answered is what was stored");

    let events = outbox(&shop.pool).await;
    assert_eq!(events.len(), 1);
    let (topic, payload) = &events[0];
    assert_eq!(topic, "order.placed");
    let summary = &payload["order"];
    assert_eq!(summary["order_id"], id.as_str());
    assert_eq!(summary["customer_id"], customer.to_string());
    assert_eq!(summary["total"], json!({"amount_minor": 5948, "currency": "EUR"}));
    assert_eq!(
        summary["lines"],
        json!([
            {"product_id": lamp.id, "quantity": 2, "unit_price": {"amount_minor": 2599, "currency": "EUR"}},
            {"product_id": bulb.id, "quantity": 3, "unit_price": {"amount_minor": 250, "currency": "EUR"}},
        ])
    );
    assert_eq!(summary["placed_at"], resp.json["created_at"]);
}

#[tokio::test]
async fn the_same_key_replays_the_first_response_and_another_request_with_it_conflicts() {
    let shop = shop().await;
    let lamp = product("Desk lamp", money(2599, "EUR"), 1);
    shop.sync(&[&lamp]).await;
    let customer = Uuid::now_v7();

    let first = shop.place("k-1", &order(customer, &[(&lamp, 1)])).await;
    assert_eq!(first.status, 201, "{}", first.text);
    // The same request, written differently: keys reordered, spaces, an upper-case UUID.
    let same = format!(r#"{{ "lines": [ {{"quantity": 1, "product_id": "{}"}} ], "customer_id": "{}" }}"#, lamp.id.to_string().to_uppercase(), customer);
    let again = shop.place_raw("k-1", &same).await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert_eq!(again.json, first.json);
    assert_eq!(again.headers["location"], first.headers["location"]);

    let other = shop.place("k-1", &order(customer, &[(&lamp, 2)])).await;
    let detail = other.problem(409);
    assert!(detail.contains("different request") && !detail.contains(first.json["id"].as_str().unwrap()), "{detail}");
    assert_eq!((shop.count("orders").await, shop.count("outbox").await), (1, 1));

    assert_eq!(shop.place("k-2", &order(customer, &[(&lamp, 2)])).await.status, 201, "a new key is a new order");
    assert_eq!((shop.count("orders").await, shop.count("outbox").await), (2, 2));
}

#[tokio::test]
async fn a_used_key_answers_as_it_did_even_when_the_product_copy_cannot_price_its_request_any_more() {
    let shop = shop().await;
    let (lamp, desk) = (product("Desk lamp", money(2599, "EUR"), 1), product("Desk", money(19900, "EUR"), 1));
    shop.sync(&[&lamp, &desk]).await;
    let customer = Uuid::now_v7();
    let body = order(customer, &[(&lamp, 1), (&desk, 1)]);
    let first = shop.place("k-1", &body).await;
    assert_eq!(first.status, 201, "{}", first.text);
    // The catalog moved the desk to another currency: the order could not be priced now.
    shop.sync(&[&Product { price: money(19900, "USD"), version: 2, ..desk.clone() }]).await;
    assert!(shop.place("k-2", &body).await.problem(422).contains("currenc"), "a new key is priced afresh");
    let again = shop.place("k-1", &body).await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert_eq!(again.json, first.json, "the retry gets the first answer");
    assert!(shop.place("k-1", &order(customer, &[(&desk, 1), (&lamp, 2)])).await.problem(409).contains("different request"));
    assert_eq!((shop.count("orders").await, shop.count("outbox").await), (1, 1));
}

#[tokio::test]
async fn an_order_is_priced_again_when_a_product_changed_since_the_api_read_it() {
    let shop = shop().await;
    let (lamp, bulb) = (product("Desk lamp", money(2599, "EUR"), 1), product("Bulb", money(250, "EUR"), 1));
    shop.sync(&[&lamp, &bulb]).await;
    let customer = Uuid::now_v7();
    let body = order(customer, &[(&lamp, 1), (&bulb, 2)]);
    // The first order reads both products; the API keeps them.
    let first = shop.place("k-1", &body).await;
    assert_eq!(first.json["total"]["amount_minor"], 2599 + 2 * 250, "{}", first.text);
    // The lamp's price changes in the copy (a newer version from the catalog).
    shop.sync(&[&Product { price: money(2999, "EUR"), version: 2, ..lamp.clone() }]).await;
    let second = shop.place("k-2", &body).await;
    assert_eq!(second.status, 201, "{}", second.text);
    assert_eq!(second.json["total"]["amount_minor"], 2999 + 2 * 250, "priced at the new version, not the kept one");
    assert_eq!(second.json["lines"][0]["unit_price"]["amount_minor"], 2999);
    let summaries: Vec<i64> = outbox(&shop.pool).await.iter().map(|(_, p)| p["order"]["total"]["amount_minor"].as_i64().unwrap()).collect();
    assert_eq!(summaries, [2599 + 500, 2999 + 500], "one order each, each published at its price");
    // Gone from the copy: the kept row does not place an order for it.
    sqlx::query("DELETE FROM products WHERE id = $1").bind(bulb.id).execute(&shop.pool).await.unwrap();
    assert!(shop.place("k-3", &body).await.problem(422).contains("not known"));
    assert_eq!((shop.count("orders").await, shop.count("outbox").await, shop.count("idempotency_keys").await), (2, 2, 2));
}

#[tokio::test]
async fn an_order_the_kept_products_cannot_price_is_priced_from_the_copy_as_it_is_now() {
    let shop = shop().await;
    let (lamp, desk) = (product("Desk lamp", money(2599, "EUR"), 1), product("Desk", money(19900, "USD"), 1));
    shop.sync(&[&lamp, &desk]).await;
    let customer = Uuid::now_v7();
    // The API keeps both: the lamp in EUR, the desk in USD.
    assert_eq!(shop.place("k-1", &order(customer, &[(&lamp, 1)])).await.status, 201);
    assert_eq!(shop.place("k-2", &order(customer, &[(&desk, 1)])).await.status, 201);
    // The catalog moves the desk to EUR: together they are priceable now, apart they were not.
    shop.sync(&[&Product { price: money(19900, "EUR"), version: 2, ..desk.clone() }]).await;
    let both = shop.place("k-3", &order(customer, &[(&lamp, 1), (&desk, 1)])).await;
    assert_eq!(both.status, 201, "not refused for the currencies the API kept: {}", both.text);
    assert_eq!(both.json["total"], json!({"amount_minor": 2599 + 19900, "currency": "EUR"}));
}

#[tokio::test]
async fn a_rejected_request_does_not_use_up_its_key() {
    let shop = shop().await;
    let lamp = product("Desk lamp", money(2599, "EUR"), 1);
    let customer = Uuid::now_v7();
    let body = order(customer, &[(&lamp, 1)]);
    assert!(shop.place("early", &body).await.problem(422).contains("synchronized"));
    assert_eq!(shop.count("idempotency_keys").await, 0);
    shop.sync(&[&lamp]).await;
    assert_eq!(shop.place("early", &body).await.status, 201, "the retry after the copy caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_requests_with_one_key_make_one_order() {
    let shop = Arc::new(shop().await);
    let lamp = product("Desk lamp", money(2599, "EUR"), 1);
    shop.sync(&[&lamp]).await;
    let body = order(Uuid::now_v7(), &[(&lamp, 1)]);

    // Hold both requests inside their transactions at once: the orders table is locked,
    // so the first waits to insert its order while the second waits on the first's key.
    let mut blocker = shop.pool.acquire().await.unwrap();
    let mut lock = blocker.begin().await.unwrap();
    sqlx::query("LOCK TABLE orders IN EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let requests: Vec<_> = (0..2)
        .map(|_| {
            let (shop, body) = (shop.clone(), body.clone());
            tokio::spawn(async move { shop.place("together", &body).await })
        })
        .collect();
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>(waiting).fetch_one(&shop.pool).await.unwrap() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "both requests should be waiting on a lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lock.commit().await.unwrap();

    let mut answers = Vec::new();
    for r in requests {
        answers.push(r.await.unwrap());
    }
    for a in &answers {
        assert_eq!(a.status, 201, "{}", a.text);
    }
    assert_eq!(answers[0].json, answers[1].json);
    assert_eq!((shop.count("orders").await, shop.count("outbox").await), (1, 1));
}

#[tokio::test]
async fn a_customers_orders_come_newest_first_a_page_at_a_time() {
    let shop = shop().await;
    let lamp = product("Desk lamp", money(100, "USD"), 1);
    shop.sync(&[&lamp]).await;
    let (customer, someone_else) = (Uuid::now_v7(), Uuid::now_v7());
    let mut ids = Vec::new();
    for q in 1..=5 {
        ids.push(shop.placed(customer, &[(&lamp, q)]).await["id"].clone());
    }
    shop.placed(someone_else, &[(&lamp, 9)]).await;
    // The list is the read model: it has what the projector applied.
    assert!(shop.api.get(&format!("/customers/{customer}/orders")).await.json["items"].as_array().unwrap().is_empty());
    shop.project().await;
    ids.reverse();

    let mut seen = Vec::new();
    let mut uri = format!("/customers/{customer}/orders?limit=2");
    loop {
        let page = shop.api.get(&uri).await;
        assert_eq!(page.status, 200, "{}", page.text);
        let items = page.json["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|o| o["id"].clone()));
        assert!(items.iter().all(|o| o["lines"].as_array().unwrap().len() == 1 && o["history"].as_array().unwrap().len() == 1));
        assert!(items.iter().all(|o| o["saga_mode"] == "choreography"));
        match page.json["next"].as_str() {
            Some(next) => uri = format!("/customers/{customer}/orders?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let empty = shop.api.get(&format!("/customers/{}/orders", Uuid::now_v7())).await;
    assert_eq!(empty.json, json!({"items": [], "next": null}));
}

#[tokio::test]
async fn the_api_is_documented_and_shows_the_product_copy() {
    let shop = shop().await;
    let doc = shop.api.get("/openapi.json").await;
    assert_eq!(doc.json["info"]["title"], "Conveyor order API");
    assert!(doc.json["info"]["description"].as_str().is_some_and(|d| d.starts_with("Orders")), "{}", doc.json["info"]);
    for path in ["/orders", "/orders/{id}", "/customers/{customer_id}/orders", "/products/{id}"] {
        assert!(doc.json["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    let params = doc.json["paths"]["/orders"]["post"]["parameters"].to_string();
    assert!(params.contains("Idempotency-Key"), "{params}");
    let schemas = &doc.json["components"]["schemas"];
    assert!(schemas["OrderView"]["required"].as_array().unwrap().contains(&json!("saga_mode")), "{}", schemas["OrderView"]);
    assert_eq!(schemas["SagaMode"]["enum"], json!(["choreography", "orchestration"]), "{}", schemas["SagaMode"]);
    assert_eq!(shop.api.get("/health/ready").await.status, 200);

    let lamp = product("Desk lamp", money(2599, "EUR"), 3);
    shop.sync(&[&lamp]).await;
    let copy = shop.api.get(&format!("/products/{}", lamp.id)).await;
    assert_eq!(copy.status, 200);
    assert_eq!(copy.json["name"], "Desk lamp");
    assert_eq!(copy.json["version"], 3);
    assert_eq!(copy.json["price"], json!({"amount_minor": 2599, "currency": "EUR"}));
}
