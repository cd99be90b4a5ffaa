//! The event-sourced order and its read model against a real PostgreSQL: the stream and
//! its optimistic concurrency, facts recorded once however often they arrive, the timeline,
//! the projector's positions, rebuilds, the query API, and orders from before the store.

use chrono::Utc;
use conveyor_contracts::{
    CancelOrder, CancelReason, ConfirmOrder, Money, NotificationSent, OrderLine, OrderSummary, PaymentCaptured, PaymentDeclined, PaymentOutcome,
    PaymentReplied, SagaMode, StockOutcome, StockRejected, StockReplied, StockReserved,
};
use conveyor_order::projection::{self, ORDER_VIEWS, Projection};
use conveyor_order::stream::{self, AppendError, OrderEvent, StoredEvent};
use conveyor_order::views::OrderView;
use conveyor_platform::testing::{deliver, migrated_db};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Shop, id_of, money, shop, shop_in};

/// A placed order of 2 × 12.50 EUR in `shop`; returns (order id, customer id).
async fn placed(shop: &Shop) -> (Uuid, Uuid) {
    let mug = shop.mug().await;
    let customer = Uuid::now_v7();
    (id_of(&shop.placed(customer, &[(&mug, 2)]).await), customer)
}

fn steps(view: &Value) -> Vec<&str> {
    view["timeline"].as_array().unwrap().iter().map(|t| t["step"].as_str().unwrap()).collect()
}

async fn kinds(pool: &PgPool, id: Uuid) -> Vec<String> {
    sqlx::query_scalar("SELECT type FROM order_events WHERE order_id = $1 ORDER BY version").bind(id).fetch_all(pool).await.unwrap()
}

fn summary(id: Uuid, customer: Uuid, product_id: Uuid) -> OrderSummary {
    let eur = |m| Money { amount_minor: m, currency: "EUR".parse().unwrap() };
    OrderSummary { order_id: id, customer_id: customer, lines: vec![OrderLine { product_id, quantity: 2, unit_price: eur(1250) }], total: eur(2500), placed_at: Utc::now() }
}

fn notified(order_id: Uuid, event_type: &str) -> NotificationSent {
    NotificationSent { order_id, notification_id: Uuid::now_v7(), event_type: event_type.into(), subject: format!("Your order {order_id}"), delivered_at: Utc::now() }
}

#[tokio::test]
async fn the_choreographys_facts_make_the_timeline_each_once_however_often_they_arrive() {
    let shop = shop().await;
    let (id, customer) = placed(&shop).await;
    let product_id: Uuid = shop.view(id).await["lines"][0]["product_id"].as_str().unwrap().parse().unwrap();
    let reserved = StockReserved { order: summary(id, customer, product_id) };
    let captured = PaymentCaptured { order_id: id, payment_id: Uuid::now_v7(), amount: money(2500, "EUR") };
    // Payment's answer overtakes stock's: the timeline still shows the saga's order.
    deliver(&shop.pool, &captured).await;
    shop.drain().await;
    deliver(&shop.pool, &reserved).await;
    let sent = notified(id, "order.confirmed");
    deliver(&shop.pool, &sent).await;
    shop.drain().await;
    // Every fact again, as a replayed dead letter or a re-relayed message would bring it.
    for _ in 0..2 {
        deliver(&shop.pool, &reserved).await;
        deliver(&shop.pool, &captured).await;
        deliver(&shop.pool, &notified(id, "order.confirmed")).await;
    }
    assert_eq!(shop.drain().await, 6);
    assert_eq!(kinds(&shop.pool, id).await, ["placed", "payment_captured", "confirmed", "stock_reserved", "notified"]);

    let order = shop.view(id).await;
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["version"], 5);
    assert_eq!(steps(&order), ["placed", "stock_reserved", "payment_captured", "confirmed", "notified"]);
    let timeline = order["timeline"].as_array().unwrap();
    assert_eq!(timeline[1]["reserved"], serde_json::json!([{"product_id": product_id, "quantity": 2}]));
    assert_eq!(timeline[1]["detail"], "stock reserved: 2 unit(s) of 1 product(s)");
    assert_eq!(timeline[2]["amount"], serde_json::json!({"amount_minor": 2500, "currency": "EUR"}));
    assert_eq!(timeline[2]["payment_id"], captured.payment_id.to_string());
    assert_eq!(timeline[4]["notification_id"], sent.notification_id.to_string(), "the first notification recorded stands");
    assert_eq!(order["history"].as_array().unwrap().len(), 2);
    let published: i64 = sqlx::query_scalar("SELECT count(*) FROM conveyor.outbox WHERE topic = 'order.confirmed'").fetch_one(&shop.pool).await.unwrap();
    assert_eq!(published, 1, "confirmed once, published once");
}

#[tokio::test]
async fn both_cancellations_record_what_the_other_service_said() {
    let shop = shop().await;
    let (rejected, _) = placed(&shop).await;
    let (declined, _) = placed(&shop).await;
    deliver(&shop.pool, &StockRejected { order_id: rejected, reason: "product Mug: 2 wanted, 1 available".into() }).await;
    deliver(&shop.pool, &PaymentDeclined { order_id: declined, reason: "balance 10.00 EUR is below 25.00 EUR".into() }).await;
    shop.drain().await;
    let order = shop.view(rejected).await;
    assert_eq!(steps(&order), ["placed", "stock_rejected", "cancelled"]);
    assert_eq!(order["timeline"][1]["detail"], "stock rejected: product Mug: 2 wanted, 1 available");
    assert_eq!(order["timeline"][2]["detail"], "cancelled (out_of_stock): product Mug: 2 wanted, 1 available");
    let order = shop.view(declined).await;
    assert_eq!(steps(&order), ["placed", "payment_declined", "cancelled"]);
    assert_eq!(order["reason"], "payment_declined");
}

#[tokio::test]
async fn the_orchestrated_saga_records_the_replies_and_a_refund_after_a_timeout() {
    let shop = shop_in(SagaMode::Orchestration).await;
    let (id, _) = placed(&shop).await;
    deliver(&shop.pool, &StockReplied { order_id: id, outcome: StockOutcome::Reserved, reason: String::new() }).await;
    deliver(&shop.pool, &CancelOrder { order_id: id, reason: CancelReason::Timeout, detail: "payment did not answer within 30s".into() }).await;
    shop.drain().await;
    // The capture comes late; the coordinator refunds it and releases the stock.
    let payment_id = Uuid::now_v7();
    let amount = Some(money(2500, "EUR"));
    deliver(&shop.pool, &PaymentReplied { order_id: id, outcome: PaymentOutcome::Captured, payment_id: Some(payment_id), amount, reason: String::new() }).await;
    deliver(&shop.pool, &StockReplied { order_id: id, outcome: StockOutcome::Released, reason: String::new() }).await;
    deliver(&shop.pool, &PaymentReplied { order_id: id, outcome: PaymentOutcome::Refunded, payment_id: Some(payment_id), amount, reason: String::new() }).await;
    // A confirm that contradicts the cancellation changes nothing.
    deliver(&shop.pool, &ConfirmOrder { order_id: id, payment_id, amount: money(2500, "EUR") }).await;
    shop.drain().await;
    let order = shop.view(id).await;
    assert_eq!(order["status"], "cancelled");
    assert_eq!(steps(&order), ["placed", "stock_reserved", "payment_captured", "cancelled", "stock_released", "payment_refunded"]);
    assert_eq!(order["timeline"][1]["reserved"], serde_json::json!([{"product_id": order["lines"][0]["product_id"], "quantity": 2}]));
    assert_eq!(order["timeline"][5]["detail"], "payment refunded: 25.00 EUR");
}

#[tokio::test]
async fn concurrent_appends_at_one_version_conflict_and_nothing_is_lost() {
    let shop = shop().await;
    let (id, _) = placed(&shop).await;
    let version = stream::order(&mut shop.pool.acquire().await.unwrap(), id).await.unwrap().unwrap().version;
    assert_eq!(version, 1);
    let mut first = shop.pool.begin().await.unwrap();
    let mut second = shop.pool.begin().await.unwrap();
    stream::append(&mut first, id, version, &[OrderEvent::StockReleased]).await.unwrap();
    // The second waits for the first at the version's key, then conflicts once it commits.
    let late = tokio::spawn(async move {
        let r = stream::append(&mut second, id, version, &[OrderEvent::Confirmed]).await;
        (r, second)
    });
    first.commit().await.unwrap();
    let (result, second) = late.await.unwrap();
    assert!(matches!(&result, Err(AppendError::Conflict { order_ids }) if order_ids == &[id]), "{result:?}");
    drop(second);
    // The same fact twice at successive versions is refused by the store itself.
    let mut tx = shop.pool.begin().await.unwrap();
    assert!(matches!(stream::append(&mut tx, id, 2, &[OrderEvent::StockReleased]).await, Err(AppendError::Conflict { .. })));
    drop(tx);
    assert_eq!(kinds(&shop.pool, id).await, ["placed", "stock_released"]);
}

#[tokio::test]
async fn an_append_that_commits_late_is_not_skipped_by_the_projector() {
    let shop = shop().await;
    let (a, _) = placed(&shop).await;
    let (b, _) = placed(&shop).await;
    shop.project().await;
    // A appends first and stays open; B appends later and commits first.
    let mut slow = shop.pool.begin().await.unwrap();
    stream::append(&mut slow, a, 1, &[OrderEvent::StockReleased]).await.unwrap();
    let mut fast = shop.pool.begin().await.unwrap();
    stream::append(&mut fast, b, 1, &[OrderEvent::StockReleased]).await.unwrap();
    fast.commit().await.unwrap();
    assert_eq!(projection::project_once(&shop.pool, &ORDER_VIEWS, 100).await.unwrap(), Some(0), "B waits for the older open transaction");
    let (pending, _) = projection::lag(&shop.pool, &ORDER_VIEWS).await.unwrap();
    assert_eq!(pending, 1, "B counts as lag");
    slow.commit().await.unwrap();
    assert_eq!(shop.project().await, 2);
    assert_eq!(shop.view(a).await["version"], 2);
    assert_eq!(shop.view(b).await["version"], 2);
    assert_eq!(projection::lag(&shop.pool, &ORDER_VIEWS).await.unwrap().0, 0);
}

#[tokio::test]
async fn an_order_just_placed_reads_from_its_events_until_projected() {
    let shop = shop().await;
    let mug = shop.mug().await;
    let customer = Uuid::now_v7();
    let placed = shop.placed(customer, &[(&mug, 2)]).await;
    let id = id_of(&placed);
    let projected: i64 = sqlx::query_scalar("SELECT count(*) FROM order_views WHERE id = $1").bind(id).fetch_one(&shop.pool).await.unwrap();
    assert_eq!(projected, 0, "the projector has not run");
    assert_eq!(shop.view(id).await, placed, "GET answers from the events what POST answered");
    shop.project().await;
    assert_eq!(shop.view(id).await, placed, "and the projection says the same");
    shop.api.get(&format!("/orders/{}", Uuid::now_v7())).await.problem(404);
}

/// A mixed run: confirmed and notified, cancelled out of stock, reserved then declined, and
/// still placed.
async fn mixed_run(shop: &Shop) -> Vec<Uuid> {
    let mug = shop.mug().await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let customer = Uuid::now_v7();
        let id = id_of(&shop.placed(customer, &[(&mug, 2)]).await);
        match i % 4 {
            0 => {
                deliver(&shop.pool, &PaymentCaptured { order_id: id, payment_id: Uuid::now_v7(), amount: money(2500, "EUR") }).await;
                deliver(&shop.pool, &notified(id, "order.confirmed")).await;
            }
            1 => {
                deliver(&shop.pool, &StockRejected { order_id: id, reason: "none left".into() }).await;
            }
            2 => {
                let product_id = Uuid::now_v7();
                deliver(&shop.pool, &StockReserved { order: summary(id, customer, product_id) }).await;
                deliver(&shop.pool, &PaymentDeclined { order_id: id, reason: "no funds".into() }).await;
            }
            _ => {}
        }
        ids.push(id);
    }
    shop.drain().await;
    ids
}

async fn all_views(pool: &PgPool) -> Vec<(Uuid, Uuid, String, i32, Value)> {
    sqlx::query_as::<_, (Uuid, Uuid, String, i32, sqlx::types::Json<Value>)>("SELECT id, customer_id, status, version, view FROM order_views ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(a, b, c, d, e)| (a, b, c, d, e.0))
        .collect()
}

#[tokio::test]
async fn a_rebuild_equals_the_live_projection_and_the_shop_keeps_running_meanwhile() {
    let shop = shop().await;
    let ids = mixed_run(&shop).await;
    let live = all_views(&shop.pool).await;
    assert_eq!(live.len(), ids.len());
    // The API has prepared its statements on the live table; they must follow the swap.
    shop.view(ids[0]).await;
    // A runtime role's grants and the table's owner carry over to the fresh table.
    let (owner, reader) = (format!("owner_{}", Uuid::now_v7().simple()), format!("reader_{}", Uuid::now_v7().simple()));
    for sql in [
        format!("CREATE ROLE {owner} NOLOGIN"),
        format!("CREATE ROLE {reader} NOLOGIN"),
        format!("ALTER TABLE order_views OWNER TO {owner}"),
        format!("GRANT SELECT, UPDATE ON order_views TO {reader}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON projections TO {owner}"),
        format!("GRANT SELECT ON order_events TO {owner}"),
        format!("GRANT USAGE, CREATE ON SCHEMA public TO {owner}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&shop.pool).await.unwrap();
    }
    let rebuilt = projection::rebuild(&shop.pool, &ORDER_VIEWS).await.unwrap();
    let (now_owner, can_read, can_update, can_delete): (String, bool, bool, bool) = sqlx::query_as(
        "SELECT tableowner::text, has_table_privilege($1, 'order_views', 'SELECT'), has_table_privilege($1, 'order_views', 'UPDATE'),
                has_table_privilege($1, 'order_views', 'DELETE') FROM pg_tables WHERE tablename = 'order_views'",
    )
    .bind(&reader)
    .fetch_one(&shop.pool)
    .await
    .unwrap();
    assert_eq!((now_owner, can_read, can_update, can_delete), (owner.clone(), true, true, false));
    assert_eq!((rebuilt.views, rebuilt.events >= ids.len()), (ids.len() as i64, true), "{rebuilt:?}");
    assert_eq!(all_views(&shop.pool).await, live);
    assert_eq!(shop.view(ids[0]).await["status"], "confirmed", "prepared statements read the new table");
    // Orders go on being placed and settled, and the projector picks up from the rebuild's position.
    let more = mixed_run(&shop).await;
    let after = all_views(&shop.pool).await;
    assert_eq!(after.len(), ids.len() + more.len());
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'order_views%'").fetch_one(&shop.pool).await.unwrap();
    assert_eq!(tables, 1, "nothing left behind");
    for sql in [format!("DROP OWNED BY {owner}, {reader}"), format!("DROP ROLE {owner}"), format!("DROP ROLE {reader}")] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&shop.pool).await.unwrap();
    }
}

/// A projection with a bug: it forgets the timeline and calls every order placed.
fn buggy(stream: &[StoredEvent]) -> Option<OrderView> {
    let mut view = OrderView::from_stream(stream)?;
    view.timeline.clear();
    view.status = conveyor_order::domain::OrderStatus::Placed;
    Some(view)
}

#[tokio::test]
async fn a_projection_bug_fixed_in_code_is_repaired_by_a_rebuild() {
    let shop = shop().await;
    let ids = mixed_run(&shop).await; // projected correctly by drain()
    let correct = all_views(&shop.pool).await;
    // The buggy code projects the same events again (its position reset, as a deploy of it
    // from scratch would): every view is now wrong.
    sqlx::query("UPDATE projections SET tx = '0', seq = 0 WHERE name = 'order_views'").execute(&shop.pool).await.unwrap();
    let broken = Projection { view: buggy, ..ORDER_VIEWS };
    projection::catch_up(&shop.pool, &broken).await.unwrap();
    let wrong = all_views(&shop.pool).await;
    assert_ne!(wrong, correct);
    assert!(wrong.iter().all(|v| v.2 == "placed" && v.4["timeline"].as_array().unwrap().is_empty()));
    let status = shop.api.get(&format!("/orders/{}", ids[0])).await.json["status"].clone();
    assert_eq!(status, "placed", "the API serves what the projection holds");
    // The fixed code rebuilds.
    projection::rebuild(&shop.pool, &ORDER_VIEWS).await.unwrap();
    assert_eq!(all_views(&shop.pool).await, correct);
}

#[tokio::test]
async fn the_list_filters_by_status_pages_and_refuses_bad_queries() {
    let shop = shop().await;
    let mug = shop.mug().await;
    let customer = Uuid::now_v7();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(id_of(&shop.placed(customer, &[(&mug, 1)]).await));
    }
    for id in &ids[..3] {
        deliver(&shop.pool, &PaymentCaptured { order_id: *id, payment_id: Uuid::now_v7(), amount: money(1250, "EUR") }).await;
    }
    shop.drain().await;
    let api = shop.api.as_customer(customer);
    let confirmed = api.get(&format!("/customers/{customer}/orders?status=confirmed&limit=2")).await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.text);
    let first: Vec<&str> = confirmed.json["items"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap()).collect();
    assert_eq!(first, [ids[2].to_string(), ids[1].to_string()]);
    let next = confirmed.json["next"].as_str().unwrap();
    let rest = api.get(&format!("/customers/{customer}/orders?status=confirmed&limit=2&after={next}")).await;
    assert_eq!(rest.json["items"].as_array().unwrap().len(), 1);
    assert!(rest.json["next"].is_null());
    let placed = api.get(&format!("/customers/{customer}/orders?status=placed")).await;
    assert_eq!(placed.json["items"].as_array().unwrap().len(), 2);
    assert!(placed.json["items"].as_array().unwrap().iter().all(|o| o["timeline"].as_array().unwrap().len() == 1));

    for (query, says) in [
        ("status=shipped", "status must be one of placed, confirmed, cancelled"),
        ("status=", "status must be one of"),
        ("limit=100000", "limit must be between 1 and 100"),
        ("limit=0", "limit must be between 1 and 100"),
        ("limit=many", "limit"),
        ("after=not-a-cursor", "after"),
        ("sort=oldest", "sort"),
    ] {
        let resp = api.get(&format!("/customers/{customer}/orders?{query}")).await;
        let detail = resp.problem(400);
        assert!(detail.contains(says), "{query}: {detail}");
    }
    let other = Uuid::now_v7();
    assert_eq!(api.get(&format!("/customers/{other}/orders")).await.status, 403, "another customer's orders");
}

#[tokio::test]
async fn orders_from_before_the_event_store_read_as_they_did() {
    // A database on the previous schema (migrations 1 to 3), filled as that code did.
    let old = sqlx::migrate::Migrator::with_migrations(conveyor_order::MIGRATOR.iter().filter(|m| m.version <= 3).cloned().collect());
    let pool = migrated_db(&old).await;
    let (customer, confirmed, cancelled, open) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let product_id = Uuid::now_v7();
    for (id, status, reason, mode) in [
        (confirmed, "confirmed", None, "choreography"),
        (cancelled, "cancelled", Some("out_of_stock"), "orchestration"),
        (open, "placed", None, "choreography"),
    ] {
        sqlx::query(
            "INSERT INTO orders (id, customer_id, status, reason, reason_detail, total_minor, currency, saga_mode, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 7500, 'EUR', $6, '2026-01-02T03:04:05Z', '2026-01-02T03:04:09Z')",
        )
        .bind(id)
        .bind(customer)
        .bind(status)
        .bind(reason)
        .bind(reason.map(|_| "product Mug: 3 wanted, 1 available"))
        .bind(mode)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO order_lines (order_id, line_no, product_id, product_name, quantity, unit_price_minor) VALUES
             ($1, 1, $2, 'Mug', 2, 2500), ($1, 2, gen_random_uuid(), 'Spoon', 1, 2500)",
        )
        .bind(id)
        .bind(product_id)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO order_status_history (order_id, status, at) VALUES ($1, 'placed', '2026-01-02T03:04:05Z')").bind(id).execute(&pool).await.unwrap();
        if status != "placed" {
            sqlx::query("INSERT INTO order_status_history (order_id, status, reason, at) VALUES ($1, $2, $3, '2026-01-02T03:04:09Z')")
                .bind(id)
                .bind(status)
                .bind(reason)
                .execute(&pool)
                .await
                .unwrap();
        }
        sqlx::query("INSERT INTO idempotency_keys (key, request, order_id, response_status, response_body) VALUES ($1, '{}', $2, 201, '{}')")
            .bind(format!("key-{id}"))
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
    }
    let before: Vec<(Uuid, String, Option<String>, i64)> =
        sqlx::query_as("SELECT id, status, reason, total_minor FROM orders ORDER BY id").fetch_all(&pool).await.unwrap();

    conveyor_order::MIGRATOR.run(&pool).await.unwrap();
    projection::catch_up(&pool, &ORDER_VIEWS).await.unwrap();
    // The old tables' columns, now views of the streams, say what they said.
    let after: Vec<(Uuid, String, Option<String>, i64)> =
        sqlx::query_as("SELECT id, status, reason, total_minor FROM orders ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(after, before);
    let lines: i64 = sqlx::query_scalar("SELECT count(*) FROM order_lines WHERE product_name IN ('Mug', 'Spoon')").fetch_one(&pool).await.unwrap();
    assert_eq!(lines, 6);

    let api = crate::api(&pool, SagaMode::Choreography).as_customer(customer);
    let order = api.get(&format!("/orders/{cancelled}")).await;
    assert_eq!(order.status, 200, "{}", order.text);
    let o = &order.json;
    assert_eq!((o["status"].as_str(), o["reason"].as_str(), o["saga_mode"].as_str()), (Some("cancelled"), Some("out_of_stock"), Some("orchestration")));
    assert_eq!(o["reason_detail"], "product Mug: 3 wanted, 1 available");
    assert_eq!(o["total"], serde_json::json!({"amount_minor": 7500, "currency": "EUR"}));
    assert_eq!(o["lines"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect::<Vec<_>>(), ["Mug", "Spoon"]);
    assert_eq!(o["created_at"], "2026-01-02T03:04:05Z");
    assert_eq!(o["updated_at"], "2026-01-02T03:04:09Z");
    assert_eq!(steps(o), ["placed", "cancelled"]);
    let list = api.get(&format!("/customers/{customer}/orders")).await;
    assert_eq!(list.json["items"].as_array().unwrap().len(), 3);

    // An old order still placed settles through the new code.
    let consumer = conveyor_order::handlers::subscribe(conveyor_queue::Consumer::new(pool.clone()));
    deliver(&pool, &PaymentCaptured { order_id: open, payment_id: Uuid::now_v7(), amount: money(7500, "EUR") }).await;
    conveyor_platform::testing::drain(&consumer).await;
    projection::catch_up(&pool, &ORDER_VIEWS).await.unwrap();
    assert_eq!(api.get(&format!("/orders/{open}")).await.json["status"], "confirmed");
}
