//! The order service against a real PostgreSQL, one fresh database per test: the API
//! through its real router, the handlers through the real consumer. One binary, so it
//! links once.

mod api;
mod bad_input;
mod cqrs;
mod keys;
mod orchestration;
mod saga;

use chrono::Utc;
use conveyor_contracts::{Money, Product, ProductCreated, SagaMode};
use conveyor_order::{MIGRATOR, SERVICE, handlers, http, projection};
use conveyor_platform::testing::{TestApi, TestResponse, deliver, migrated_db};
use conveyor_queue::Consumer;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

pub struct Shop {
    pub api: TestApi,
    pub pool: PgPool,
    pub consumer: Consumer,
}

/// A shop whose API runs the choreography (order-api's default).
pub async fn shop() -> Shop {
    shop_in(SagaMode::Choreography).await
}

/// A shop whose API places orders in `saga_mode` (order-api `--saga-mode`).
pub async fn shop_in(saga_mode: SagaMode) -> Shop {
    let pool = migrated_db(&MIGRATOR).await;
    Shop { api: api(&pool, saga_mode), consumer: handlers::subscribe(Consumer::new(pool.clone())), pool }
}

/// The order API over `pool`, placing orders in `saga_mode`.
pub fn api(pool: &PgPool, saga_mode: SagaMode) -> TestApi {
    TestApi::new(SERVICE, pool.clone(), http::router(), http::ApiState::new(pool.clone(), saga_mode))
}

pub fn money(amount_minor: i64, currency: &str) -> Money {
    Money { amount_minor, currency: currency.parse().unwrap() }
}

pub fn product(name: &str, price: Money, version: i64) -> Product {
    Product { id: Uuid::now_v7(), name: name.into(), price, initial_stock: 100, version, updated_at: Utc::now() }
}

impl Shop {
    /// Handles everything in the inbox that is due, then lets the projector catch up (as
    /// the worker's does within moments).
    pub async fn drain(&self) -> usize {
        let handled = conveyor_platform::testing::drain(&self.consumer).await;
        self.project().await;
        handled
    }

    /// Applies every committed event to the order views.
    pub async fn project(&self) -> usize {
        projection::catch_up(&self.pool, &projection::ORDER_VIEWS).await.unwrap()
    }

    /// Products known to the order service, through product.created as in production.
    pub async fn sync(&self, products: &[&Product]) {
        for p in products {
            deliver(&self.pool, &ProductCreated { product: (*p).clone() }).await;
        }
        assert_eq!(self.drain().await, products.len());
    }

    pub async fn place(&self, key: &str, body: &Value) -> TestResponse {
        self.place_raw(key, &body.to_string()).await
    }

    /// `POST /orders` as the customer the body names (as an operator when it names none:
    /// such a body is refused before whose it is matters).
    pub async fn place_raw(&self, key: &str, body: &str) -> TestResponse {
        let customer = serde_json::from_str::<Value>(body).ok().and_then(|v| v["customer_id"].as_str()?.parse::<Uuid>().ok());
        let api = customer.map(|c| self.api.as_customer(c)).unwrap_or_else(|| self.api.clone());
        api.send(axum::http::Method::POST, "/orders", &[("idempotency-key", key)], Some(body)).await
    }

    /// Places an order that must succeed; returns its view.
    pub async fn placed(&self, customer: Uuid, lines: &[(&Product, i64)]) -> Value {
        let resp = self.place(&Uuid::now_v7().to_string(), &order(customer, lines)).await;
        assert_eq!(resp.status, 201, "{}", resp.text);
        resp.json
    }

    /// A Mug at 12.50 EUR, known to the order service.
    pub async fn mug(&self) -> Product {
        let mug = product("Mug", money(1250, "EUR"), 1);
        self.sync(&[&mug]).await;
        mug
    }

    /// `GET /orders/{id}`, which must answer 200.
    pub async fn view(&self, id: Uuid) -> Value {
        let resp = self.api.get(&format!("/orders/{id}")).await;
        assert_eq!(resp.status, 200, "{}", resp.text);
        resp.json
    }

    pub async fn count(&self, table: &str) -> i64 {
        let sql = match table {
            "orders" => "SELECT count(*) FROM orders",
            "order_lines" => "SELECT count(*) FROM order_lines",
            "idempotency_keys" => "SELECT count(*) FROM idempotency_keys",
            "outbox" => "SELECT count(*) FROM conveyor.outbox",
            other => panic!("no count for {other}"),
        };
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }
}

/// The id of an order's view.
pub fn id_of(order: &Value) -> Uuid {
    order["id"].as_str().unwrap().parse().unwrap()
}

pub fn order(customer: Uuid, lines: &[(&Product, i64)]) -> Value {
    json!({
        "customer_id": customer,
        "lines": lines.iter().map(|(p, q)| json!({"product_id": p.id, "quantity": q})).collect::<Vec<_>>(),
    })
}
