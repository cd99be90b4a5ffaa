//! A small client of the shop's APIs: what the demo, the end-to-end tests and a curious
//! person do over HTTP.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use conveyor_platform::auth::DevIssuer;
use reqwest::header::AUTHORIZATION;
use serde_json::{Value, json};
use uuid::Uuid;

/// Calls as an operator, except that orders are placed by their customer (each with a token
/// of their own, signed by the stack's issuer).
#[derive(Clone)]
pub struct Shop {
    http: reqwest::Client,
    api: BTreeMap<String, String>,
    pub sink: String,
    issuer: DevIssuer,
    operator: String,
    /// Each customer's `Authorization` value, signed once.
    customers: Arc<Mutex<HashMap<Uuid, String>>>,
}

/// How an order ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Terminal {
    Confirmed,
    /// With its reason (`out_of_stock`, `payment_declined`).
    Cancelled(String),
}

impl Shop {
    pub fn new(http: reqwest::Client, api: BTreeMap<String, String>, sink: String, issuer: DevIssuer) -> Self {
        let operator = format!("Bearer {}", issuer.operator());
        Shop { http, api, sink, issuer, operator, customers: Arc::default() }
    }

    /// `Bearer <token>` of `customer`.
    pub fn customer_auth(&self, customer: Uuid) -> String {
        let mut cache = self.customers.lock().unwrap_or_else(|e| e.into_inner());
        cache.entry(customer).or_insert_with(|| format!("Bearer {}", self.issuer.customer(customer))).clone()
    }

    /// The issuer whose tokens the stack's APIs trust.
    pub fn issuer(&self) -> &DevIssuer {
        &self.issuer
    }

    pub fn url(&self, service: &str, path: &str) -> String {
        format!("{}{path}", self.api[service])
    }

    /// GET a JSON document; `None` on 404.
    pub async fn get(&self, service: &str, path: &str) -> Result<Option<Value>> {
        let url = self.url(service, path);
        let resp = self.http.get(&url).header(AUTHORIZATION, &self.operator).timeout(Duration::from_secs(10)).send().await.with_context(|| format!("GET {url}"))?;
        if resp.status() == 404 {
            return Ok(None);
        }
        if !resp.status().is_success() {
            bail!("GET {url}: {} {}", resp.status(), resp.text().await.unwrap_or_default());
        }
        Ok(Some(resp.json().await.with_context(|| format!("GET {url}: not JSON"))?))
    }

    /// POST a JSON body with extra headers; returns the status and the JSON answer.
    pub async fn post(&self, service: &str, path: &str, headers: &[(&str, &str)], body: &Value) -> Result<(u16, Value)> {
        self.send(reqwest::Method::POST, service, path, headers, body).await
    }

    /// Any method with a JSON body and extra headers; the status and the JSON answer (or
    /// the text, as a JSON string, when the answer is not JSON). As an operator unless
    /// `headers` has an `Authorization` of its own.
    pub async fn send(&self, method: reqwest::Method, service: &str, path: &str, headers: &[(&str, &str)], body: &Value) -> Result<(u16, Value)> {
        let url = self.url(service, path);
        let mut req = self.http.request(method.clone(), &url).timeout(Duration::from_secs(10)).json(body);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")) {
            req = req.header(AUTHORIZATION, &self.operator);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    async fn post_ok(&self, service: &str, path: &str, body: &Value) -> Result<Value> {
        let (status, answer) = self.post(service, path, &[], body).await?;
        if !(200..300).contains(&status) {
            bail!("POST {}: {status} {answer}", self.url(service, path));
        }
        Ok(answer)
    }

    pub async fn create_product(&self, name: &str, price_minor: i64, currency: &str, initial_stock: i64) -> Result<Uuid> {
        let body = json!({"name": name, "price": {"amount_minor": price_minor, "currency": currency}, "initial_stock": initial_stock});
        id_of(&self.post_ok("catalog", "/products", &body).await?)
    }

    pub async fn create_customer(&self, id: Uuid, name: &str, currency: &str, balance_minor: i64) -> Result<Uuid> {
        let body = json!({"id": id, "name": name, "currency": currency, "balance_minor": balance_minor});
        id_of(&self.post_ok("payment", "/customers", &body).await?)
    }

    /// `POST /orders` with an idempotency key, as the customer; the status and answer as
    /// they came.
    pub async fn place_order(&self, key: &str, customer: Uuid, lines: &[(Uuid, i64)]) -> Result<(u16, Value)> {
        let lines: Vec<Value> = lines.iter().map(|(p, q)| json!({"product_id": p, "quantity": q})).collect();
        let auth = self.customer_auth(customer);
        self.post("order", "/orders", &[("Idempotency-Key", key), ("Authorization", &auth)], &json!({"customer_id": customer, "lines": lines})).await
    }

    /// Places an order that must be accepted; its id.
    pub async fn order_placed(&self, customer: Uuid, lines: &[(Uuid, i64)]) -> Result<Uuid> {
        let (status, answer) = self.place_order(&Uuid::now_v7().to_string(), customer, lines).await?;
        if status != 201 {
            bail!("order not accepted: {status} {answer}");
        }
        id_of(&answer)
    }

    pub async fn order(&self, id: Uuid) -> Result<Value> {
        self.get("order", &format!("/orders/{id}")).await?.with_context(|| format!("order {id} not found"))
    }

    /// Waits until the order is confirmed or cancelled.
    pub async fn wait_terminal(&self, id: Uuid, limit: Duration) -> Result<Terminal> {
        let deadline = Instant::now() + limit;
        loop {
            let order = self.order(id).await?;
            match order["status"].as_str() {
                Some("confirmed") => return Ok(Terminal::Confirmed),
                Some("cancelled") => return Ok(Terminal::Cancelled(order["reason"].as_str().unwrap_or("").to_owned())),
                _ if Instant::now() > deadline => bail!("order {id} still {} after {limit:?}: {order}", order["status"]),
                _ => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// Waits until a product has reached the services that keep a copy (order, stock).
    pub async fn wait_synced(&self, product: Uuid, limit: Duration) -> Result<()> {
        wait_for(&format!("product {product} to reach order and stock"), limit, || async {
            Ok(self.get("order", &format!("/products/{product}")).await?.is_some() && self.get("stock", &format!("/items/{product}")).await?.is_some())
        })
        .await
    }

    /// The stock item of a product: (available, reserved).
    pub async fn stock(&self, product: Uuid) -> Result<(i64, i64)> {
        let item = self.get("stock", &format!("/items/{product}")).await?.with_context(|| format!("no stock item {product}"))?;
        Ok((item["available"].as_i64().context("available")?, item["reserved"].as_i64().context("reserved")?))
    }

    pub async fn reservation(&self, order: Uuid) -> Result<Option<Value>> {
        self.get("stock", &format!("/reservations/{order}")).await
    }

    pub async fn customer_balance(&self, customer: Uuid) -> Result<i64> {
        let c = self.get("payment", &format!("/customers/{customer}")).await?.with_context(|| format!("no customer {customer}"))?;
        c["balance_minor"].as_i64().context("balance_minor")
    }

    pub async fn payments(&self, order: Uuid) -> Result<Vec<Value>> {
        Ok(items(self.get("payment", &format!("/orders/{order}/payments")).await?.unwrap_or(Value::Null)))
    }

    pub async fn notifications(&self, order: Uuid) -> Result<Vec<Value>> {
        Ok(items(self.get("notification", &format!("/orders/{order}/notifications")).await?.unwrap_or(Value::Null)))
    }

    /// The fault flags of `service` (payment, stock, notification) and their values.
    pub async fn faults(&self, service: &str) -> Result<Value> {
        self.faults_call(reqwest::Method::GET, service, &Value::Null).await
    }

    /// Sets some fault flags of `service` (`{"decline_rate": 1}`, see docs/faults.md); every
    /// flag of the service after the change.
    pub async fn set_faults(&self, service: &str, flags: &Value) -> Result<Value> {
        self.faults_call(reqwest::Method::PATCH, service, flags).await
    }

    /// Every fault flag of `service` back to 0.
    pub async fn clear_faults(&self, service: &str) -> Result<()> {
        self.faults_call(reqwest::Method::DELETE, service, &Value::Null).await.map(drop)
    }

    async fn faults_call(&self, method: reqwest::Method, service: &str, body: &Value) -> Result<Value> {
        anyhow::ensure!(self.api.contains_key(service), "no {service} API in this shop");
        let (status, answer) = self.send(method.clone(), service, "/admin/faults", &[], body).await?;
        if status != 200 {
            let detail = answer["detail"].as_str().map(str::to_owned).unwrap_or_else(|| answer.to_string());
            bail!("{method} {}: {status} {detail}", self.url(service, "/admin/faults"));
        }
        Ok(answer)
    }

    /// What the webhook receiver got: every distinct delivery, and how many repeats.
    pub async fn received(&self) -> Result<(Vec<Value>, u64)> {
        let url = format!("{}/notifications", self.sink);
        let v: Value = self.http.get(&url).timeout(Duration::from_secs(10)).send().await?.error_for_status()?.json().await?;
        Ok((items(v["delivered"].clone()), v["duplicates"].as_u64().unwrap_or(0)))
    }
}

/// A list answer, whether a bare array or a page's `items`.
fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove("items") {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn id_of(v: &Value) -> Result<Uuid> {
    v["id"].as_str().and_then(|s| s.parse().ok()).with_context(|| format!("no id in {v}"))
}

/// Polls `check` until it is true; fails after `limit` saying what it waited for.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
