//! Fault flags switched while the shop runs (docs/faults.md), through the shipped binaries:
//! the operator endpoint, every worker following within a second, the gauge on /metrics.

use std::time::Duration;

use conveyor_launcher::{Terminal, wait_for};
use serde_json::json;

use crate::{Fixture, SAGA, start};

/// Every flag, by service.
const FLAGS: [(&str, &str); 5] =
    [("payment", "decline_rate"), ("payment", "error_rate"), ("payment", "latency_ms"), ("stock", "slowdown_ms"), ("notification", "receiver_down")];

/// The value of `conveyor_fault_flag{flag}` on a /metrics page.
async fn gauge(url: &str, flag: &str) -> anyhow::Result<Option<f64>> {
    let text = reqwest::get(url).await?.error_for_status()?.text().await?;
    let label = format!("flag=\"{flag}\"");
    Ok(text.lines().find(|l| l.starts_with("conveyor_fault_flag{") && l.contains(&label)).and_then(|l| l.rsplit(' ').next()?.parse().ok()))
}

/// Waits until both the API and the worker of `svc` export `flag` at `value` (the worker has
/// read the change from the database).
async fn until_exported(f: &Fixture, svc: &str, flag: &str, value: f64) {
    let urls = [f.shop.url(svc, "/metrics"), format!("{}/metrics", f.stack.worker[svc])];
    wait_for(&format!("{svc}'s {flag} = {value} on /metrics of its API and worker"), Duration::from_secs(10), || async {
        for url in &urls {
            if gauge(url, flag).await? != Some(value) {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_decline_payments_and_take_the_receiver_down_while_the_shop_runs_and_clear_again() {
    let mut f = start("flags").await;
    let product = f.product(100, 1_000).await;
    let customer = f.customer(1_000_000).await;
    for (svc, flag) in FLAGS {
        until_exported(&f, svc, flag, 0.0).await;
    }

    // Every payment declined by the (simulated) issuer.
    let set = f.shop.set_faults("payment", &json!({"decline_rate": 1})).await.unwrap();
    assert_eq!(set, json!({"decline_rate": 1.0, "error_rate": 0.0, "latency_ms": 0.0}));
    until_exported(&f, "payment", "decline_rate", 1.0).await;
    let declined = f.shop.order_placed(customer, &[(product, 1)]).await.unwrap();
    assert_eq!(f.shop.wait_terminal(declined, SAGA).await.unwrap(), Terminal::Cancelled("payment_declined".into()));
    let payments = f.shop.payments(declined).await.unwrap();
    assert_eq!(payments[0]["reason"], "declined by the card issuer (simulated)", "{payments:?}");
    let refused = f.shop.set_faults("payment", &json!({"decline_rate": 2})).await.unwrap_err().to_string();
    assert!(refused.contains("400") && refused.contains("decline_rate"), "{refused}");

    // Cleared: the next order goes through.
    f.shop.clear_faults("payment").await.unwrap();
    until_exported(&f, "payment", "decline_rate", 0.0).await;
    let confirmed = f.shop.order_placed(customer, &[(product, 1)]).await.unwrap();
    assert_eq!(f.shop.wait_terminal(confirmed, SAGA).await.unwrap(), Terminal::Confirmed);
    for order in [declined, confirmed] {
        wait_for("the notifications of the first two orders", SAGA, || async { Ok(!f.shop.notifications(order).await?.is_empty()) }).await.unwrap();
    }
    let delivered_before = f.shop.received().await.unwrap().0.len();

    // The receiver "down": deliveries fail without reaching it, the breaker opens.
    f.shop.set_faults("notification", &json!({"receiver_down": 1})).await.unwrap();
    until_exported(&f, "notification", "receiver_down", 1.0).await;
    let mut orders = Vec::new();
    for _ in 0..4 {
        orders.push(f.shop.order_placed(customer, &[(product, 1)]).await.unwrap());
    }
    for o in &orders {
        assert_eq!(f.shop.wait_terminal(*o, SAGA).await.unwrap(), Terminal::Confirmed);
    }
    f.webhook_circuit_opens().await;
    assert_eq!(f.shop.received().await.unwrap().0.len(), delivered_before, "no delivery reached the receiver while it was 'down'");
    let db = f.db("notification").await;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM conveyor.inbox WHERE state = 'dead'").fetch_one(&db).await.unwrap();
    assert_eq!(dead, 0, "an outage kills no notification");

    // Back up: every notification is delivered, once.
    f.shop.clear_faults("notification").await.unwrap();
    until_exported(&f, "notification", "receiver_down", 0.0).await;
    for o in &orders {
        wait_for("the notification of an order confirmed during the outage", SAGA, || async { Ok(f.shop.notifications(*o).await?.len() == 1) }).await.unwrap();
    }
    let (delivered, duplicates) = f.shop.received().await.unwrap();
    assert_eq!((delivered.len(), duplicates), (delivered_before + 4, 0));

    // The stock worker slowed down, and let go.
    f.shop.set_faults("stock", &json!({"slowdown_ms": 250})).await.unwrap();
    until_exported(&f, "stock", "slowdown_ms", 250.0).await;
    let slowed = f.shop.order_placed(customer, &[(product, 1)]).await.unwrap();
    assert_eq!(f.shop.wait_terminal(slowed, SAGA).await.unwrap(), Terminal::Confirmed);
    f.shop.clear_faults("stock").await.unwrap();
    until_exported(&f, "stock", "slowdown_ms", 0.0).await;
    assert_eq!(f.shop.faults("stock").await.unwrap(), json!({"slowdown_ms": 0.0}));

    f.stack.check_running().unwrap();
    f.stop().await;
}
