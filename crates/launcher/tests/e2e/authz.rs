//! Who may do what, against the shipped binaries: every route of every API × {anonymous,
//! customer A, customer B, operator}, with the status each must get; a route the APIs
//! document but the matrix does not list fails the test, so a new route cannot skip it.

use std::collections::BTreeSet;

use conveyor_launcher::Terminal;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{SAGA, start};

#[derive(Clone, Copy, Debug)]
enum Who {
    Anonymous,
    A,
    B,
    Operator,
}

const EVERYONE: [Who; 4] = [Who::Anonymous, Who::A, Who::B, Who::Operator];

/// One route and the status each caller gets: [anonymous, A, B, operator].
struct Case {
    service: &'static str,
    method: Method,
    /// The documented path (`{id}` and all), to match against `/openapi.json`.
    route: &'static str,
    /// The path called.
    path: String,
    /// A fresh body for each caller (so that one caller's success does not change the
    /// next one's answer), or none.
    body: Option<fn() -> Value>,
    expect: [u16; 4],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_kind_of_caller_as_documented_and_b_never_sees_or_charges_what_is_as() {
    let f = start("authz").await;
    let product = f.product(1000, 100).await;
    let (a, b) = (f.customer(1_000_000).await, f.customer(50_000).await);
    let order = f.shop.order_placed(a, &[(product, 1)]).await.unwrap();
    assert_eq!(f.shop.wait_terminal(order, SAGA).await.unwrap(), Terminal::Confirmed);
    conveyor_launcher::wait_for("A's notification", SAGA, || async { Ok(!f.shop.notifications(order).await?.is_empty()) }).await.unwrap();
    let b_balance = f.shop.customer_balance(b).await.unwrap();
    let template = f.shop.get("notification", "/templates/order.confirmed").await.unwrap().unwrap();
    let template_body = json!({"subject": template["subject"], "body": template["body"]});

    let issuer = f.shop.issuer().clone();
    let token = |who: Who| match who {
        Who::Anonymous => None,
        Who::A => Some(issuer.customer(a)),
        Who::B => Some(issuer.customer(b)),
        Who::Operator => Some(issuer.operator()),
    };
    let nobody = Uuid::now_v7();
    let case = |service, method, route, path: String, body, expect| Case { service, method, route, path, body, expect };
    // Bodies that succeed whenever the caller is allowed (and change nothing that matters).
    fn new_product() -> Value {
        json!({"name": format!("matrix {}", Uuid::now_v7()), "price": {"amount_minor": 100, "currency": "EUR"}, "initial_stock": 1})
    }
    fn rename() -> Value {
        json!({"name": format!("renamed {}", Uuid::now_v7())})
    }
    fn restock() -> Value {
        json!({"quantity": 1})
    }
    fn new_customer() -> Value {
        json!({"name": "Matrix", "currency": "EUR"})
    }
    fn top_up() -> Value {
        json!({"amount_minor": 1})
    }
    let mut cases = vec![
        case("catalog", Method::GET, "/products", "/products".into(), None, [200, 200, 200, 200]),
        case("catalog", Method::GET, "/products/{id}", format!("/products/{product}"), None, [200, 200, 200, 200]),
        case("catalog", Method::POST, "/products", "/products".into(), Some(new_product as fn() -> Value), [401, 403, 403, 201]),
        case("catalog", Method::PATCH, "/products/{id}", format!("/products/{product}"), Some(rename), [401, 403, 403, 200]),
        case("order", Method::GET, "/orders/{id}", format!("/orders/{order}"), None, [401, 200, 403, 200]),
        case("order", Method::GET, "/customers/{customer_id}/orders", format!("/customers/{a}/orders"), None, [401, 200, 403, 200]),
        case("order", Method::GET, "/products/{id}", format!("/products/{product}"), None, [200, 200, 200, 200]),
        case("stock", Method::GET, "/items", "/items".into(), None, [200, 200, 200, 200]),
        case("stock", Method::GET, "/items/{product_id}", format!("/items/{product}"), None, [200, 200, 200, 200]),
        case("stock", Method::POST, "/items/{product_id}/restock", format!("/items/{product}/restock"), Some(restock), [401, 403, 403, 200]),
        case("stock", Method::GET, "/reservations/{order_id}", format!("/reservations/{order}"), None, [401, 403, 403, 200]),
        case("payment", Method::POST, "/customers", "/customers".into(), Some(new_customer), [401, 403, 403, 201]),
        case("payment", Method::GET, "/customers/{id}", format!("/customers/{a}"), None, [401, 200, 403, 200]),
        case("payment", Method::POST, "/customers/{id}/top-up", format!("/customers/{a}/top-up"), Some(top_up), [401, 403, 403, 200]),
        case("payment", Method::GET, "/orders/{order_id}/payments", format!("/orders/{order}/payments"), None, [401, 200, 403, 200]),
        case("notification", Method::GET, "/orders/{order_id}/notifications", format!("/orders/{order}/notifications"), None, [401, 200, 403, 200]),
        case("notification", Method::GET, "/templates", "/templates".into(), None, [401, 403, 403, 200]),
        case("notification", Method::GET, "/templates/{event_type}", "/templates/order.confirmed".into(), None, [401, 403, 403, 200]),
        case("coordinator", Method::GET, "/sagas", "/sagas".into(), None, [401, 403, 403, 200]),
        // This shop runs the choreography: the order has no saga in the coordinator.
        case("coordinator", Method::GET, "/sagas/{order_id}", format!("/sagas/{order}"), None, [401, 403, 403, 404]),
    ];
    for svc in conveyor_contracts::service::ALL {
        cases.push(case(svc, Method::GET, "/admin/queue", "/admin/queue".into(), None, [401, 403, 403, 200]));
        cases.push(case(svc, Method::GET, "/admin/dead-letters", "/admin/dead-letters".into(), None, [401, 403, 403, 200]));
        cases.push(case(svc, Method::POST, "/admin/dead-letters/{id}/replay", format!("/admin/dead-letters/{nobody}/replay"), None, [401, 403, 403, 404]));
        cases.push(case(svc, Method::POST, "/admin/dead-letters/replay", "/admin/dead-letters/replay?topic=no.such.topic".into(), None, [401, 403, 403, 200]));
    }
    // Fault flags (docs/faults.md): operators only; each PATCH sets a flag to 0 (off).
    type Body = fn() -> Value;
    let fault_flags: [(&str, Body); 3] =
        [("payment", || json!({"decline_rate": 0})), ("stock", || json!({"slowdown_ms": 0})), ("notification", || json!({"receiver_down": 0}))];
    for (svc, off) in fault_flags {
        cases.push(case(svc, Method::GET, "/admin/faults", "/admin/faults".into(), None, [401, 403, 403, 200]));
        cases.push(case(svc, Method::PATCH, "/admin/faults", "/admin/faults".into(), Some(off), [401, 403, 403, 200]));
        cases.push(case(svc, Method::DELETE, "/admin/faults", "/admin/faults".into(), None, [401, 403, 403, 200]));
    }

    let http = reqwest::Client::new();
    let send = |service: &str, method: Method, path: &str, who: Who, body: Option<Value>, headers: Vec<(&'static str, String)>| {
        let mut req = http.request(method, f.shop.url(service, path));
        if let Some(t) = token(who) {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        async move { req.send().await.unwrap() }
    };
    let mut failures = Vec::new();
    for c in &cases {
        for (who, want) in EVERYONE.iter().zip(c.expect) {
            let resp = send(c.service, c.method.clone(), &c.path, *who, c.body.map(|b| b()), vec![]).await;
            let status = resp.status().as_u16();
            let challenge = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
            let problem = resp.headers().get("content-type").is_some_and(|v| v == "application/problem+json");
            let text = resp.text().await.unwrap();
            if status != want {
                failures.push(format!("{} {} {} as {who:?}: {status}, expected {want}: {text}", c.service, c.method, c.path));
            } else if status == 401 && !(problem && challenge.as_deref().is_some_and(|c| c.starts_with("Bearer"))) {
                failures.push(format!("{} {} {} as {who:?}: a 401 without problem+json and a Bearer challenge ({challenge:?})", c.service, c.method, c.path));
            } else if status == 403 && !problem {
                failures.push(format!("{} {} {} as {who:?}: a 403 that is not problem+json", c.service, c.method, c.path));
            }
        }
    }
    // Placing an order: only A, for A. The key is fresh per caller, so none replays another's.
    let place = |who: Who, for_whom: Uuid| {
        let body = json!({"customer_id": for_whom, "lines": [{"product_id": product, "quantity": 1}]});
        send("order", Method::POST, "/orders", who, Some(body), vec![("Idempotency-Key", Uuid::now_v7().to_string())])
    };
    for (who, want) in EVERYONE.iter().zip([401, 201, 403, 403]) {
        let status = place(*who, a).await.status().as_u16();
        if status != want {
            failures.push(format!("order POST /orders for A as {who:?}: {status}, expected {want}"));
        }
    }
    cases.push(case("order", Method::POST, "/orders", "/orders".into(), None, [401, 201, 403, 403]));
    // Templates: replaced (with the same text) by an operator only.
    for (who, want) in EVERYONE.iter().zip([401, 403, 403, 200]) {
        let status = send("notification", Method::PUT, "/templates/order.confirmed", *who, Some(template_body.clone()), vec![]).await.status().as_u16();
        if status != want {
            failures.push(format!("notification PUT /templates/order.confirmed as {who:?}: {status}, expected {want}"));
        }
    }
    cases.push(case("notification", Method::PUT, "/templates/{event_type}", String::new(), None, [401, 403, 403, 200]));
    assert!(failures.is_empty(), "{} of the matrix failed:\n{}", failures.len(), failures.join("\n"));

    // Every documented operation is in the matrix.
    let covered: BTreeSet<(String, String, String)> = cases.iter().map(|c| (c.service.to_owned(), c.method.as_str().to_lowercase(), c.route.to_owned())).collect();
    for svc in conveyor_contracts::service::ALL {
        let doc: Value = http.get(f.shop.url(svc, "/openapi.json")).send().await.unwrap().json().await.unwrap();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                assert!(covered.contains(&(svc.to_owned(), method.clone(), path.clone())), "{svc} documents {method} {path}, which the matrix does not cover");
                let secured = ops[method]["security"].is_array();
                let public = cases.iter().any(|c| c.service == svc && c.route == path && c.method.as_str().eq_ignore_ascii_case(method) && c.expect[0] == 200);
                assert_eq!(secured, !public, "{svc} {method} {path}: its OpenAPI `security` must say whether it needs a token");
            }
        }
        // Health, metrics and the API's description stay open (see docs/security.md).
        for path in ["/health/live", "/health/ready", "/metrics", "/openapi.json", "/docs"] {
            assert_eq!(http.get(f.shop.url(svc, path)).send().await.unwrap().status(), 200, "{svc} {path} anonymously");
        }
    }

    // B was never charged and has no order; a bad token says why it is refused.
    assert_eq!(f.shop.customer_balance(b).await.unwrap(), b_balance);
    let b_orders = f.shop.get("order", &format!("/customers/{b}/orders")).await.unwrap().unwrap();
    assert_eq!(b_orders["items"], json!([]), "B has no order");
    let resp = http.get(f.shop.url("order", &format!("/orders/{order}"))).bearer_auth("not.a.jwt").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    let expired = issuer.token(&a.to_string(), &[], std::time::Duration::ZERO);
    let resp = http.get(f.shop.url("order", &format!("/orders/{order}"))).bearer_auth(expired).send().await.unwrap();
    // Within the 30 s leeway an expired token still passes; older ones do not.
    assert_eq!(resp.status(), 200);
    let stale = issuer.sign(&json!({"sub": a.to_string(), "iss": issuer.issuer, "aud": issuer.audience, "exp": jsonwebtoken_now() - 120}));
    let resp = http.get(f.shop.url("order", &format!("/orders/{order}"))).bearer_auth(stale).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let detail: Value = resp.json().await.unwrap();
    assert!(detail["detail"].as_str().unwrap().contains("expired"), "{detail}");
    let log_dir = f.stack.opts.log_dir.clone();
    // Any token of this issuer starts with the same encoded header.
    let token_header = issuer.operator().split('.').next().unwrap().to_owned();
    let mut secrets = vec![token_header];
    for db in f.stack.roles.values() {
        for url in [Some(&db.migrator), Some(&db.runtime), db.relay.as_ref()].into_iter().flatten() {
            let password = url.split_once("://").and_then(|(_, rest)| rest.split_once('@')).and_then(|(cred, _)| cred.split_once(':')).map(|(_, p)| p.to_owned());
            secrets.extend(password);
        }
    }
    f.stop().await;

    // After all those refusals and a saga, no process logged a token or a password.
    assert!(secrets.len() > 10, "the tokens' header and the roles' passwords: {}", secrets.len());
    let mut read = 0;
    for entry in std::fs::read_dir(&log_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            read += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            for secret in &secrets {
                assert!(!text.contains(secret.as_str()), "{} contains a token or a password", path.display());
            }
        }
    }
    assert!(read >= 16, "every process's log (migrators, APIs, workers, the sink): read {read}");
}

fn jsonwebtoken_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}
