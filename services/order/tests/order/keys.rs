//! Idempotency keys expire after the retention window, and only then.

use std::time::Duration;

use conveyor_order::keys;
use serde_json::json;
use uuid::Uuid;

use crate::{money, product, shop};

#[tokio::test]
async fn keys_older_than_the_retention_are_pruned_and_newer_ones_kept() {
    let shop = shop().await;
    let lamp = product("Lamp", money(100, "EUR"), 1);
    shop.sync(&[&lamp]).await;
    let customer = Uuid::now_v7();
    let body = json!({"customer_id": customer, "lines": [{"product_id": lamp.id, "quantity": 1}]});
    assert_eq!(shop.place("old", &body).await.status, 201);
    assert_eq!(shop.place("new", &body).await.status, 201);
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '2 days' WHERE key = 'old'").execute(&shop.pool).await.unwrap();
    assert_eq!(keys::prune_once(&shop.pool, Duration::from_secs(86_400), 100).await.unwrap(), 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys").fetch_all(&shop.pool).await.unwrap();
    assert_eq!(left, ["new"]);
    // The order itself stays; only the memory of the key goes.
    assert_eq!(shop.count("orders").await, 2);
}
