//! Crashes and outages: workers killed mid-saga, the notification receiver down.

use std::time::Duration;

use conveyor_launcher::{Terminal, wait_for};
use futures::StreamExt;

use conveyor_contracts::SagaMode;

use crate::{SAGA, in_both_modes, start, start_in};

in_both_modes!(workers_killed_mid_saga_and_restarted_complete_every_saga_exactly_once);

async fn workers_killed_mid_saga_and_restarted_complete_every_saga_exactly_once(mode: SagaMode) {
    let mut f = start_in("sigkill", mode).await;
    let product = f.product(100, 10_000).await;
    let customer = f.customer(100_000_000).await;
    let shop = f.shop.clone();
    let orders: Vec<uuid::Uuid> = futures::stream::iter(0..120)
        .map(|_| {
            let shop = shop.clone();
            async move { shop.order_placed(customer, &[(product, 2)]).await.unwrap() }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    // Kill while the sagas are in flight: after the first confirmation, before the last.
    wait_for("the first confirmation", SAGA, || async { Ok(shop.order(orders[0]).await?["status"] != "placed") }).await.unwrap();
    let workers: &[&str] = match mode {
        SagaMode::Choreography => &["stock-worker", "payment-worker", "order-worker"],
        SagaMode::Orchestration => &["coordinator-worker", "stock-worker", "payment-worker", "order-worker"],
    };
    for worker in workers {
        f.stack.kill(worker).await.unwrap();
    }
    let confirmed_while_down = count_confirmed(&shop, &orders).await;
    for worker in workers {
        f.stack.start_process(worker).await.unwrap();
    }
    eprintln!("{confirmed_while_down} of 120 sagas had completed when the workers were killed");
    for order in &orders {
        assert_eq!(shop.wait_terminal(*order, SAGA).await.unwrap(), Terminal::Confirmed);
    }
    assert_eq!(f.shop.stock(product).await.unwrap(), (10_000 - 240, 240));
    let captured: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE status = 'captured'").fetch_one(&f.db("payment").await).await.unwrap();
    assert_eq!(captured, 120);
    assert_eq!(f.shop.customer_balance(customer).await.unwrap(), 100_000_000 - 120 * 200);
    wait_for("120 notifications", SAGA, || async { Ok(shop.received().await?.0.len() == 120) }).await.unwrap();
    f.stack.check_running().unwrap();
    f.stop().await;
}

async fn count_confirmed(shop: &conveyor_launcher::Shop, orders: &[uuid::Uuid]) -> usize {
    let mut n = 0;
    for o in orders {
        if shop.order(*o).await.unwrap()["status"] == "confirmed" {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn notifications_wait_out_a_receiver_outage_behind_an_open_circuit_and_are_delivered_after() {
    let mut f = start("receiver-down").await;
    let product = f.product(100, 100).await;
    let customer = f.customer(100_000).await;
    f.stack.kill("webhook-sink").await.unwrap();
    let mut orders = Vec::new();
    for _ in 0..6 {
        orders.push(f.shop.order_placed(customer, &[(product, 1)]).await.unwrap());
    }
    for o in &orders {
        assert_eq!(f.shop.wait_terminal(*o, SAGA).await.unwrap(), Terminal::Confirmed);
    }
    f.webhook_circuit_opens().await;
    let db = f.db("notification").await;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM conveyor.inbox WHERE state = 'dead'").fetch_one(&db).await.unwrap();
    assert_eq!(dead, 0, "an outage kills no notification");
    for o in &orders {
        assert!(f.shop.notifications(*o).await.unwrap().is_empty());
    }
    f.stack.start_process("webhook-sink").await.unwrap();
    wait_for("every pending notification to be delivered", Duration::from_secs(120), || async {
        Ok(f.shop.received().await?.0.len() == orders.len())
    })
    .await
    .unwrap();
    // The worker records a notification after the receiver answered: wait for the records.
    wait_for("every delivered notification to be recorded", SAGA, || async {
        for o in &orders {
            if f.shop.notifications(*o).await?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await
    .unwrap();
    for o in &orders {
        assert_eq!(f.shop.notifications(*o).await.unwrap().len(), 1);
    }
    assert_eq!(f.shop.received().await.unwrap().0.len(), orders.len(), "each notification was received once");
    f.stop().await;
}
