//! What a client can get wrong, against the running processes: every answer a 4xx
//! `application/problem+json` with a detail, never a 5xx, and nothing written.

use std::time::Duration;

use conveyor_launcher::default_bin_dir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use serde_json::Value;

use crate::start;

const NIL: &str = "0190f0e2-7c3f-7d4e-8f00-000000000000";

struct Case {
    svc: &'static str,
    method: &'static str,
    path: String,
    body: Option<String>,
    status: u16,
}

fn case(svc: &'static str, method: &'static str, path: &str, body: Option<&str>, status: u16) -> Case {
    Case { svc, method, path: path.to_owned(), body: body.map(str::to_owned), status }
}

#[tokio::test]
async fn every_api_answers_bad_input_with_a_problem_and_writes_nothing() {
    let f = start("bad-input").await;
    let huge = format!("{{\"name\":\"{}\"}}", "x".repeat(200_000));
    let order_body = |lines: &str| format!("{{\"customer_id\":\"{NIL}\",\"lines\":{lines}}}");
    let many_lines = format!("[{}]", vec![format!("{{\"product_id\":\"{NIL}\",\"quantity\":1}}"); 51].join(","));
    let line = format!("{{\"product_id\":\"{NIL}\",\"quantity\":1}}");
    let mut cases = vec![
        // Issue 14: control characters anywhere → 400, loose nested objects → 422.
        case("catalog", "POST", "/products", Some(r#"{"name":"a\u0000b","price":{"amount_minor":1,"currency":"EUR"}}"#), 400),
        case("catalog", "POST", "/products", Some(r#"{"name":"x","price":{"amount_minor":1,"currency":"EUR\u001b"}}"#), 400),
        case("catalog", "POST", "/products", Some(r#"{"name":"x","price":[100,"EUR"]}"#), 422),
        case("catalog", "POST", "/products", Some(r#"{"name":"x","price":{"amount_minor":1,"currency":"EUR","extra":1}}"#), 422),
        case("catalog", "PATCH", &format!("/products/{NIL}"), Some(r#"{"price":{"amount_minor":1,"currency":"EUR","extra":1}}"#), 422),
        case("catalog", "GET", "/products/%00", None, 400),
        case("catalog", "GET", "/products?after=%1B", None, 400),
        case("order", "POST", "/orders", Some(&order_body(&format!("[{{\"product_id\":\"{NIL}\\u0000\",\"quantity\":1}}]"))), 400),
        case("order", "POST", "/orders", Some(&order_body(&format!("[[\"{NIL}\",1]]"))), 422),
        case("order", "POST", "/orders", Some(&order_body(&format!("[{}]", line.replace('}', ",\"price\":{\"amount_minor\":1}}")))), 422),
        case("order", "GET", "/orders/%00", None, 400),
        case("stock", "POST", &format!("/items/{NIL}/restock"), Some(r#"{"quantity":5,"note\u0007":1}"#), 400),
        case("stock", "POST", "/items/%0A/restock", Some(r#"{"quantity":5}"#), 400),
        case("payment", "POST", "/customers", Some(r#"{"name":"\u0000","currency":"EUR"}"#), 400),
        case("payment", "POST", "/customers", Some(r#"{"name":"x","currency":{"code":"EUR"}}"#), 422),
        case("notification", "PUT", "/templates/order.confirmed", Some(r#"{"subject":"Hi\u0000","body":"x"}"#), 400),
        case("notification", "GET", "/templates/order.confirmed%00", None, 400),
        case("catalog", "POST", "/products", Some("{not json"), 400),
        case("catalog", "POST", "/products", Some(r#"{"name":"x","price":{"amount_minor":-1,"currency":"EUR"}}"#), 422),
        case("catalog", "POST", "/products", Some(r#"{"name":"x","price":{"amount_minor":1e30,"currency":"EUR"}}"#), 422),
        case("catalog", "POST", "/products", Some(r#"{"name":"x","price":{"amount_minor":1,"currency":"ZZZ"}}"#), 422),
        case("catalog", "GET", "/products/not-a-uuid", None, 400),
        case("catalog", "GET", &format!("/products/{NIL}"), None, 404),
        case("order", "POST", "/orders", Some(&order_body("[]")), 422),
        case("order", "POST", "/orders", Some(&order_body(&many_lines)), 422),
        case("order", "POST", "/orders", Some(&order_body(&format!("[{{\"product_id\":\"{NIL}\",\"quantity\":0}}]"))), 422),
        case("order", "POST", "/orders", Some(&order_body(&format!("[{{\"product_id\":\"{NIL}\",\"quantity\":-3}}]"))), 422),
        case("order", "POST", "/orders", Some(&order_body(&format!("[{{\"product_id\":\"{NIL}\",\"quantity\":1000000000}}]"))), 422),
        case("order", "POST", "/orders", Some(&order_body(&format!("[{{\"product_id\":\"{NIL}\",\"quantity\":1}}]"))), 422),
        case("order", "POST", "/orders", Some(&order_body(&format!("[{{\"product_id\":\"{NIL}\",\"quantity\":\"two\"}}]"))), 422),
        case("order", "POST", "/orders", Some(r#"{"customer_id":"nope","lines":[]}"#), 422),
        case("order", "POST", "/orders", Some("[1,2"), 400),
        case("order", "GET", &format!("/orders/{NIL}"), None, 404),
        case("order", "GET", "/orders/123", None, 400),
        case("stock", "GET", &format!("/items/{NIL}"), None, 404),
        case("stock", "POST", &format!("/items/{NIL}/restock"), Some(r#"{"quantity":5}"#), 404),
        case("stock", "POST", &format!("/items/{NIL}/restock"), Some(r#"{"quantity":-5}"#), 422),
        case("stock", "POST", "/items/x/restock", Some(r#"{"quantity":5}"#), 400),
        case("payment", "POST", "/customers", Some(r#"{"name":"x","currency":"EUR","balance_minor":-1}"#), 422),
        case("payment", "POST", "/customers", Some(r#"{"name":"x","currency":"QQQ"}"#), 422),
        case("payment", "POST", &format!("/customers/{NIL}/top-up"), Some(r#"{"amount_minor":100}"#), 404),
        case("payment", "GET", &format!("/customers/{NIL}"), None, 404),
        case("notification", "PUT", "/templates/order.confirmed", Some(r#"{"subject":"{{ oops","body":"x"}"#), 422),
        case("notification", "PUT", "/templates/order.exploded", Some(r#"{"subject":"x","body":"x"}"#), 404),
        case("coordinator", "GET", &format!("/sagas/{NIL}"), None, 404),
        case("coordinator", "GET", "/sagas/x", None, 400),
        case("coordinator", "GET", "/sagas?state=lost", None, 400),
        case("coordinator", "GET", "/sagas?older_than=forever", None, 400),
        case("coordinator", "GET", "/sagas?limit=1000", None, 400),
        case("coordinator", "GET", "/sagas?sort=state", None, 400),
    ];
    for svc in conveyor_contracts::service::ALL {
        let write = match svc {
            "catalog" => Some(("POST", "/products")),
            "order" => Some(("POST", "/orders")),
            "stock" => Some(("POST", "/items/00000000-0000-0000-0000-000000000000/restock")),
            "payment" => Some(("POST", "/customers")),
            "notification" => Some(("PUT", "/templates/order.confirmed")),
            _ => None, // the coordinator's API only reads
        };
        if let Some((method, path)) = write {
            cases.push(case(svc, method, path, Some(&huge), 413));
        }
        cases.push(case(svc, "GET", "/no/such/route", None, 404));
        // Postgres refuses NUL in text: this was a 500 on every service.
        cases.push(case(svc, "GET", "/admin/dead-letters?topic=order.placed%00", None, 400));
        cases.push(case(svc, "POST", "/admin/dead-letters/replay?topic=%01", None, 400));
    }
    // A server that refuses an oversized body answers early and closes the connection:
    // no connection is reused after one.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let issuer = f.shop.issuer().clone();
    let mut failures = Vec::new();
    for c in &cases {
        let url = format!("{}{}", f.stack.api[c.svc], c.path);
        // Allowed callers, so that what is refused is the input: orders are placed by the
        // customer they name (NIL), everything else by an operator.
        let token = if c.svc == "order" && c.method == "POST" && c.path == "/orders" { issuer.customer(NIL.parse().unwrap()) } else { issuer.operator() };
        let mut req = http.request(c.method.parse().unwrap(), &url).timeout(Duration::from_secs(10)).header("Idempotency-Key", uuid::Uuid::now_v7().to_string()).bearer_auth(token);
        if let Some(b) = &c.body {
            req = req.header("content-type", "application/json").body(b.clone());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ctype = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let detail = body["detail"].as_str().unwrap_or("");
        if status != c.status || ctype != "application/problem+json" || detail.is_empty() {
            failures.push(format!("{} {} {} → {status} {ctype} {body}", c.svc, c.method, c.path));
        }
    }
    // A header value with a control character other than tab never reaches a route: hyper
    // refuses the request itself. It is still a problem with a detail, on every server.
    let body = order_body(&format!("[{line}]"));
    let customer = issuer.customer(NIL.parse().unwrap());
    for (base, key) in [(&f.stack.api["order"], "a\0b"), (&f.stack.api["order"], "a\x1bb"), (&f.stack.api["order"], "\x7f"), (&f.stack.worker["order"], "a\0b")] {
        let request = format!(
            "POST /orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {customer}\r\nContent-Type: application/json\r\nIdempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, head, text) = raw(base, request.as_bytes()).await;
        let problem: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let detail = problem["detail"].as_str().unwrap_or("");
        if status != 400 || !head.to_ascii_lowercase().contains("content-type: application/problem+json") || !detail.contains("control character") {
            failures.push(format!("{base} Idempotency-Key {key:?} → {status} {head:?} {text}"));
        }
    }
    assert!(failures.is_empty(), "expected problems:\n{}", failures.join("\n"));
    for (svc, table) in [("catalog", "products"), ("order", "orders"), ("payment", "customers")] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}"))).fetch_one(&f.db(svc).await).await.unwrap();
        assert_eq!(n, 0, "{svc}.{table} was written");
        let out: i64 = sqlx::query_scalar("SELECT count(*) FROM conveyor.outbox").fetch_one(&f.db(svc).await).await.unwrap();
        assert_eq!(out, 0, "{svc} published");
    }
    f.stop().await;
}

/// `request` sent as it is over a socket to `base` (`http://host:port`); the status, head and
/// body of the answer, read until the server closes the connection.
async fn raw(base: &str, request: &[u8]) -> (u16, String, String) {
    let mut socket = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer)).await.expect("the server closes the connection").unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn apis_and_workers_refuse_an_unmigrated_database_and_every_binary_has_help() {
    let bin = default_bin_dir();
    let db = conveyor_devpg::test_db().await;
    for name in ["catalog-api", "order-worker"] {
        let out = tokio::process::Command::new(bin.join(name))
            .env("DATABASE_URL", &db.url)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("AUTH_JWKS", "/nonexistent/jwks.json")
            .env("AUTH_ISSUER", "test")
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not migrated") && err.contains("-migrator"), "{name}: {err}");
    }
    // An API never runs without knowing whose tokens to trust.
    let out = tokio::process::Command::new(bin.join("catalog-api")).env("DATABASE_URL", &db.url).env_remove("AUTH_JWKS").env_remove("AUTH_ISSUER").output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--auth-jwks") && err.contains("--auth-issuer"), "catalog-api without auth settings: {err}");
    let tools = ["saga-driver", "peers", "soak", "conveyor-loadtest"].map(String::from);
    for name in conveyor_launcher::process_names().into_iter().chain(conveyor_contracts::service::ALL.iter().map(|s| format!("{s}-migrator"))).chain(tools) {
        let out = tokio::process::Command::new(bin.join(&name)).arg("--help").output().await.unwrap();
        assert!(out.status.success(), "{name} --help failed");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{name} --help");
    }
}
