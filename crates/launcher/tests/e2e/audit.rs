//! The audit against a real shop: after a mixed run it passes; then one violation per rule
//! is planted in the databases or the receiver, each is reported under its own rule while
//! every other rule still passes, and undone. `cargo xtask audit` is run as a process too.

use std::path::Path;

use conveyor_launcher::audit::{self, Options, Report, Targets};
use conveyor_launcher::StackInfo;
use serde_json::json;
use uuid::Uuid;

use crate::start;

/// Audits and checks that `rule` alone failed, with an example containing `needle`.
async fn only(targets: &Targets, options: &Options, rule: &str, needle: &str) -> Report {
    let report = audit::run_with(targets, options).await.unwrap();
    assert_eq!(report.failed(), [rule], "{}", report.to_text());
    let examples = &report.rule(rule).unwrap().examples;
    assert!(examples.iter().any(|e| e.contains(needle)), "{needle:?} is in none of {examples:#?}");
    report
}

pub(crate) async fn passes(targets: &Targets, options: &Options) -> Report {
    let report = audit::run_with(targets, options).await.unwrap();
    assert!(report.passed(), "{}", report.to_text());
    report
}

async fn exec(db: &sqlx::PgPool, sql: &str) {
    // Test-made statements with ids this test generated.
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(db).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test]
async fn the_audit_passes_a_settled_shop_and_reports_each_planted_violation_under_its_rule() {
    let mut f = start("audit").await;
    let settled = f.three_endings().await;
    let (product, rich, poor) = (settled.product, settled.rich, settled.poor);
    let [confirmed, out_of_stock, declined] = settled.orders;

    let info = StackInfo::read(&f.stack.info_path()).unwrap();
    assert_eq!(info, f.stack.info(), "stack.json describes the running stack");
    let mut targets = Targets::from_info(&info);
    targets.accepted = vec![confirmed, out_of_stock, declined];
    let options = Options::default();
    let report = passes(&targets, &options).await;
    assert_eq!(report.rule("orders_terminal").unwrap().checked, 3);
    assert_eq!(report.rule("accepted_orders_exist").unwrap().checked, 3);
    assert_eq!(report.rule("read_model").unwrap().checked, 3);
    assert_eq!(report.rule("notifications").unwrap().checked, 3);
    assert_eq!(report.rule("balances").unwrap().checked, 2);
    assert_eq!(report.rule("outboxes_empty").unwrap().checked, conveyor_contracts::service::ALL.len() as u64, "every service's database");

    let cli_json = f.stack.opts.log_dir.join("audit.json");
    let (code, out, _) = xtask_audit(&["--stack", &f.stack.info_path().display().to_string()], &cli_json).await;
    assert_eq!(code, 0, "{out}");
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cli_json).unwrap()).unwrap();
    assert_eq!(written["passed"], true);
    assert!(cli_json.with_extension("md").is_file());

    let (orders, stock, payment, notification, catalog) = (f.db("order").await, f.db("stock").await, f.db("payment").await, f.db("notification").await, f.db("catalog").await);

    // The order's confirmation disguised as another event: its stream no longer ends it.
    let disguise = |from: &str, to: &str| format!("UPDATE order_events SET type = '{to}', data = '{{\"type\": \"{to}\"}}' WHERE order_id = '{confirmed}' AND type = '{from}'");
    // Its view, written before, still says confirmed: the read model disagrees with the stream too.
    exec(&orders, &disguise("confirmed", "stock_released")).await;
    let report = audit::run_with(&targets, &options).await.unwrap();
    assert_eq!(report.failed(), ["orders_terminal", "read_model"], "{}", report.to_text());
    assert!(report.rule("orders_terminal").unwrap().examples[0].contains(&format!("order {confirmed} is still placed")));
    assert!(report.rule("read_model").unwrap().examples[0].contains(&format!("order {confirmed}: its view says Confirmed")));
    exec(&orders, &disguise("stock_released", "confirmed")).await;

    let ghost = Uuid::now_v7();
    targets.accepted.push(ghost);
    only(&targets, &options, "accepted_orders_exist", &format!("order {ghost} was accepted")).await;
    targets.accepted.pop();

    exec(&stock, &format!("UPDATE items SET available = available + 1 WHERE product_id = '{product}'")).await;
    only(&targets, &options, "stock_levels", &format!("product {product}: available 4 and reserved 2, but its movements give 3 and 2")).await;
    exec(&stock, &format!("UPDATE items SET available = available - 1 WHERE product_id = '{product}'")).await;

    exec(&stock, &format!("UPDATE reservations SET state = 'released' WHERE order_id = '{confirmed}'")).await;
    only(&targets, &options, "stock_reservations", &format!("order {confirmed} is confirmed but its reservation is released")).await;
    exec(&stock, &format!("UPDATE reservations SET state = 'reserved' WHERE order_id = '{confirmed}'")).await;

    // A second capture of the confirmed order, the balance debited with it (so only the
    // capture rule can see it): the unique index that forbids it is dropped for the while.
    exec(
        &payment,
        &format!(
            "DROP INDEX ledger_capture_once_idx;
         INSERT INTO ledger (customer_id, kind, amount_minor, order_id) VALUES ('{rich}', 'capture', -2000, '{confirmed}');
         UPDATE customers SET balance_minor = balance_minor - 2000 WHERE id = '{rich}';"
        ),
    )
    .await;
    only(&targets, &options, "captures", &format!("order {confirmed} was captured more than once: 1 captured payments, 2 ledger captures totalling 4000")).await;
    exec(
        &payment,
        &format!(
            "DELETE FROM ledger WHERE id = (SELECT max(id) FROM ledger WHERE order_id = '{confirmed}');
         UPDATE customers SET balance_minor = balance_minor + 2000 WHERE id = '{rich}';
         CREATE UNIQUE INDEX ledger_capture_once_idx ON ledger (order_id) WHERE kind = 'capture';"
        ),
    )
    .await;

    // A capture kept for an order cancelled out of stock.
    exec(
        &payment,
        &format!(
            "INSERT INTO payments (id, order_id, customer_id, amount_minor, currency, status) VALUES ('{}', '{out_of_stock}', '{rich}', 50000, 'EUR', 'captured');
         INSERT INTO ledger (customer_id, kind, amount_minor, order_id) VALUES ('{rich}', 'capture', -50000, '{out_of_stock}');
         UPDATE customers SET balance_minor = balance_minor - 50000 WHERE id = '{rich}';",
            Uuid::now_v7()
        ),
    )
    .await;
    only(&targets, &options, "captures", &format!("order {out_of_stock} is cancelled (out_of_stock) but 50000 EUR of its capture is kept")).await;
    exec(
        &payment,
        &format!(
            "DELETE FROM payments WHERE order_id = '{out_of_stock}';
         DELETE FROM ledger WHERE order_id = '{out_of_stock}';
         UPDATE customers SET balance_minor = balance_minor + 50000 WHERE id = '{rich}';"
        ),
    )
    .await;

    exec(&payment, &format!("UPDATE customers SET balance_minor = balance_minor + 1 WHERE id = '{poor}'")).await;
    only(&targets, &options, "balances", &format!("customer {poor}: balance 501 but the ledger gives 500")).await;
    let (code, out, _) = xtask_audit(&["--stack", &f.stack.info_path().display().to_string()], &cli_json).await;
    assert_eq!(code, 1, "a violation exits 1: {out}");
    assert!(out.contains("✗ balances"), "{out}");
    exec(&payment, &format!("UPDATE customers SET balance_minor = balance_minor - 1 WHERE id = '{poor}'")).await;

    exec(&notification, &format!("CREATE TABLE audit_saved AS SELECT * FROM notifications WHERE order_id = '{declined}'; DELETE FROM notifications WHERE order_id = '{declined}'"))
        .await;
    only(&targets, &options, "notifications", &format!("order {declined} (order.cancelled): 0 order.cancelled notification records")).await;
    exec(&notification, "INSERT INTO notifications SELECT * FROM audit_saved; DROP TABLE audit_saved").await;

    // The queue tables of a service whose worker is stopped, so nothing moves what is planted.
    f.stack.stop_process("catalog-worker").await.unwrap();
    let planted = Uuid::now_v7();
    exec(&catalog, &format!("INSERT INTO conveyor.outbox (message_id, topic, payload, created_at) VALUES ('{planted}', 'audit.planted', '{{}}', now() - interval '2 minutes')")).await;
    only(&targets, &options, "outboxes_empty", &format!("catalog outbox: audit.planted message {planted}")).await;
    exec(&catalog, &format!("DELETE FROM conveyor.outbox WHERE message_id = '{planted}'")).await;

    exec(
        &catalog,
        &format!(
            "INSERT INTO conveyor.inbox (message_id, topic, payload, published_at, visible_at) VALUES ('{planted}', 'audit.planted', '{{}}', now(), now() - interval '5 minutes')"
        ),
    )
    .await;
    only(&targets, &options, "inboxes_drained", &format!("catalog inbox: audit.planted message {planted} pending, due ")).await;
    let patient = Options { grace: std::time::Duration::from_secs(600), ..Options::default() };
    let report = passes(&targets, &patient).await;
    assert!(report.rule("inboxes_drained").unwrap().notes.iter().any(|n| n.contains("catalog inbox: 1 messages wait")), "{}", report.to_text());
    exec(&catalog, &format!("DELETE FROM conveyor.inbox WHERE message_id = '{planted}'")).await;

    exec(
        &catalog,
        &format!(
            "INSERT INTO conveyor.inbox (message_id, topic, payload, published_at, state, attempts, errors)
         VALUES ('{planted}', 'audit.planted', '{{}}', now(), 'dead', 3, '[{{\"attempt\": 3, \"at\": \"2026-01-01T00:00:00Z\", \"error\": \"planted by the audit test\"}}]')"
        ),
    )
    .await;
    let listed = format!("catalog inbox: audit.planted message {planted} dead after 3 attempts: planted by the audit test");
    only(&targets, &options, "dead_letters", &listed).await;
    let report = passes(&targets, &Options { allow_dead: true, ..Options::default() }).await;
    assert!(report.rule("dead_letters").unwrap().notes.contains(&listed), "{}", report.to_text());
    exec(&catalog, &format!("DELETE FROM conveyor.inbox WHERE message_id = '{planted}'")).await;
    f.stack.start_process("catalog-worker").await.unwrap();

    // The receiver keeps what it got: these go last. A repeat of a delivered key is
    // deduplicated (a note); a second notification under another key is a violation.
    let post = |key: String| {
        let url = format!("{}/notifications", f.stack.sink);
        async move {
            let body = json!({"order_id": confirmed, "event_type": "order.confirmed", "subject": "again", "body": "again"});
            reqwest::Client::new().post(url).header("Idempotency-Key", key).json(&body).send().await.unwrap().error_for_status().unwrap();
        }
    };
    post(format!("{confirmed}:order.confirmed")).await;
    let report = passes(&targets, &options).await;
    assert!(report.rule("notifications").unwrap().notes.iter().any(|n| n.contains("posts repeated an Idempotency-Key")), "{}", report.to_text());
    post("audit-planted".into()).await;
    only(&targets, &options, "notifications", &format!("order {confirmed} (order.confirmed): the receiver got 2 distinct notifications")).await;

    // A database that cannot be reached: the audit cannot run (exit 2), and says which.
    let (code, _, err) = xtask_audit(&["--database-url", "order=postgres://audit@127.0.0.1:1/orders"], &cli_json).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot connect to the order database at 127.0.0.1:1/orders"), "{err}");
    f.stop().await;
}

/// Runs `xtask audit` (the binary `cargo build --workspace --bins` made) with `args`; its
/// exit code, stdout and stderr.
async fn xtask_audit(args: &[&str], json: &Path) -> (i32, String, String) {
    let xtask = conveyor_launcher::default_bin_dir().join("xtask");
    let out = tokio::process::Command::new(&xtask).arg("audit").args(args).arg("--json").arg(json).output().await.unwrap_or_else(|e| panic!("running {}: {e}", xtask.display()));
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}
