//! Hostile templates: refused when stored (422, with what limit was hit, nothing written),
//! and, when one is stored behind the API's back, failing cleanly and quickly at send time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use conveyor_contracts::limits::MAX_LINES;
use conveyor_contracts::{Money, OrderConfirmed, OrderLine, OrderSummary};
use conveyor_notification::{MIGRATOR, Notifier, NotifierArgs, SERVICE, http};
use conveyor_platform::testing::{TestApi, deliver, inbox_state, migrated_db};
use conveyor_queue::Consumer;
use conveyor_webhook_sink::Sink;
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use uuid::Uuid;

/// Deeper than minijinja's recursion limit (32) but well within the parser's.
const MAX_DEPTH_PLUS: usize = 40;

async fn stored(pool: &PgPool) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT event_type, subject, body FROM templates ORDER BY event_type").fetch_all(pool).await.unwrap()
}

#[tokio::test]
async fn hostile_templates_are_refused_with_the_limit_they_hit_and_nothing_is_stored() {
    let pool = migrated_db(&MIGRATOR).await;
    let api = TestApi::new(SERVICE, pool.clone(), http::router(), pool.clone());
    let seeded = stored(&pool).await;
    let before = api.get("/templates/order.cancelled").await.json;

    let nested = |depth: usize| format!("{}x{}", "{% for l in lines %}".repeat(depth), "{% endfor %}".repeat(depth));
    let body_cases: Vec<(String, &str)> = vec![
        // Introspection: no functions, no globals, nothing behind the variables.
        ("{{ debug() }}".into(), "body is not allowed: line 1: calling `debug()` is not available in notification templates"),
        ("{{ namespace() }}".into(), "calling `namespace()` is not available"),
        ("{{ dict(a=1) }}".into(), "calling `dict()` is not available"),
        ("{{ self }}".into(), "undefined value: `self` is undefined"),
        ("{{ range }}".into(), "undefined value: `range` is undefined"),
        ("{{ lines.__class__ }}".into(), "undefined value: `lines.__class__` is undefined"),
        ("{{ lines|pprint }}".into(), "unknown filter `pprint`: notification templates have upper, lower"),
        ("{{ lines|tojson }}".into(), "unknown filter `tojson`"),
        ("{% if lines is mapping %}{% endif %}".into(), "unknown test `mapping`"),
        ("{% include \"other\" %}".into(), "line 1: `{% include %}` is not available"),
        // Loops without end or over huge ranges: only the data may be looped over.
        ("{% for i in range(1000000000) %}x{% endfor %}".into(), "`{% for %}` may only loop over a variable"),
        ("{% for l in lines recursive %}{{ loop(lines) }}{% endfor %}".into(), "recursive loops are not available"),
        // Nested loops: fine for one line, too much work for the most lines an order may have.
        (nested(3).replace('x', "{% if l.quantity < 0 %}-{% endif %}"), "for a sample 50-line order.cancelled event (out_of_stock): it ran out of fuel: it needs more than 50000 steps of work"),
        (nested(MAX_DEPTH_PLUS), "recursion limit exceeded"),
        (format!("{}{}", "{% if lines %}".repeat(200), "{% endif %}".repeat(200)), "syntax error: template exceeds maximum recursion limits"),
        // Huge output, at once or by repetition.
        ("{{ \"x\" * 100000000 }}".into(), "the `*` operator is not available"),
        ("{% for a in lines %}{% for b in lines %}{{ detail }}{% endfor %}{% endfor %}".into(), "for a sample 50-line order.cancelled event (out_of_stock): its output is longer than 100000 characters, the limit"),
        ("{% set s = detail ~ detail %}{% set s = s ~ s %}{{ s }}".into(), "`{% set %}` is not available"),
        ("{{ detail ~ detail }}".into(), "the `~` operator is not available"),
        (format!("{{{{ \"dddddddddd\"{} }}}}", "|replace(\"d\", \"dddddddddd\")".repeat(4)), "invalid operation: replace would make 100000 characters, more than the 10000 a value may have"),
        (format!("{{{{ \"d\"{} }}}}", "|replace(\"d\", \"dd\")".repeat(20)), "replace would make 16384 characters, more than the 10000 a value may have"),
        // Recursion through macros (and any other way to name a computed value).
        ("{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}".into(), "line 1: `{% macro %}` is not available"),
        ("{% with s = detail %}{{ s }}{% endwith %}".into(), "`{% with %}` is not available"),
    ];
    for (body, needle) in &body_cases {
        let resp = api.put("/templates/order.cancelled", json!({"subject": "Cancelled", "body": body})).await;
        let detail = resp.problem(422);
        assert!(needle.split('|').any(|n| detail.contains(n)), "{body:.200}\n→ {detail}");
    }
    // The subject has its own output limit.
    let resp = api.put("/templates/order.cancelled", json!({"subject": "{% for l in lines %}{{ l.name }}{% endfor %}", "body": "Hi"})).await;
    let detail = resp.problem(422);
    assert!(detail.starts_with("subject does not render for a sample 50-line order.cancelled event (out_of_stock): its output is longer than 1000 characters"), "{detail}");

    assert_eq!(api.get("/templates/order.cancelled").await.json, before, "the template is unchanged");
    assert_eq!(stored(&pool).await, seeded, "nothing was written");
}

#[tokio::test]
async fn a_rich_template_within_the_sandbox_is_stored() {
    let pool = migrated_db(&MIGRATOR).await;
    let api = TestApi::new(SERVICE, pool.clone(), http::router(), pool.clone());
    let body = "<p>Order {{ order_id }} ({{ status|title }}){% if reason is none %}{% else %}: {{ {\"out_of_stock\": \"an item ran out\", \"payment_declined\": \"the payment was declined\", \"timeout\": \"it took too long\"}[reason] }}, {{ detail[:200]|escape }}{% endif %}</p>\n\
        <table>{% for l in lines %}<tr class=\"{% if loop.index is odd %}odd{% else %}even{% endif %}\"><td>{{ loop.index }}</td>\
        <td>{{ l.name|default(l.product_id, true)|escape }}</td><td>{{ l.quantity }}</td><td>{{ l.unit_price|replace(\" \", \"&nbsp;\") }}</td></tr>{% endfor %}</table>\n\
        <p>{{ lines|length }} line{% if lines|length != 1 %}s{% endif %}, total {{ total }}{% if data_source == \"event\" %} (names unavailable){% endif %}</p>";
    for event_type in ["order.confirmed", "order.cancelled"] {
        let resp = api.put(&format!("/templates/{event_type}"), json!({"subject": "{{ status|capitalize }}: order {{ order_id }}", "body": body})).await;
        assert_eq!(resp.status, 200, "{event_type}: {}", resp.text);
    }
}

/// The worker's settings through its flags, so that new ones keep their defaults here.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    args: NotifierArgs,
}

fn largest_order() -> OrderConfirmed {
    let eur = |amount_minor| Money { amount_minor, currency: "EUR".parse().unwrap() };
    let line = OrderLine { product_id: Uuid::from_u128(1), quantity: 1, unit_price: eur(100) };
    let order = OrderSummary { order_id: Uuid::now_v7(), customer_id: Uuid::from_u128(42), lines: vec![line; MAX_LINES], total: eur(100 * MAX_LINES as i64), placed_at: Utc::now() };
    OrderConfirmed { order, confirmed_at: Utc::now() }
}

#[tokio::test]
async fn a_hostile_template_stored_behind_the_apis_back_fails_at_send_time_quickly_and_sends_nothing() {
    let pool = migrated_db(&MIGRATOR).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/notifications", listener.local_addr().unwrap());
    let sink = Arc::new(Sink::in_memory(0));
    tokio::spawn(conveyor_webhook_sink::serve(listener, sink.clone(), Default::default()));
    // Nothing listens on the order API's port: names come from the event (the fallback).
    let order_api = format!("http://{}", TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap());
    let flags = Flags::parse_from(["notification-worker", "--webhook-url", &hook, "--order-api-url", &order_api, "--lookup-timeout", "300ms", "--webhook-timeout", "1s"]);
    let consumer = Arc::new(Notifier::new(pool.clone(), &flags.args).unwrap()).subscribe(Consumer::new(pool.clone()), &flags.args);

    let cases = [
        // Too much work for fifty lines.
        ("{% for a in lines %}{% for b in lines %}{% for c in lines %}{% if c.quantity < 0 %}-{% endif %}{% endfor %}{% endfor %}{% endfor %}", "the order.confirmed body template failed: it ran out of fuel"),
        // Too much output: 50 × 50 × 50 × 36 characters, stopped at the first 100,000.
        ("{% for a in lines %}{% for b in lines %}{% for c in lines %}{{ c.product_id }}{% endfor %}{% endfor %}{% endfor %}", "the order.confirmed body template failed: its output is longer than 100000 characters"),
        // Outside the sandbox (stored before it existed).
        ("{{ debug() }}", "the order.confirmed body template failed: line 1: calling `debug()` is not available"),
    ];
    for (body, error) in cases {
        sqlx::query("UPDATE templates SET body = $1 WHERE event_type = 'order.confirmed'").bind(body).execute(&pool).await.unwrap();
        let id = deliver(&pool, &largest_order()).await;
        let started = Instant::now();
        assert_eq!(consumer.process_once().await.unwrap(), 1);
        assert!(started.elapsed() < Duration::from_secs(5), "{body}: took {:?}", started.elapsed());
        assert_eq!(inbox_state(&pool, id).await, ("dead".into(), 1), "{body}: a template error is permanent");
        let errors: sqlx::types::Json<Vec<serde_json::Value>> = sqlx::query_scalar("SELECT errors FROM conveyor.inbox WHERE message_id = $1").bind(id).fetch_one(&pool).await.unwrap();
        let recorded = errors.0[0]["error"].as_str().unwrap();
        assert!(recorded.contains(error), "{body}: {recorded}");
    }
    assert!(sink.received().delivered.is_empty(), "nothing was sent");
}
