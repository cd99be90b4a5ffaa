//! What only the orchestrated saga has: deadlines, a late capture refunded, a coordinator
//! killed mid-saga, and switching the shop's mode with orders in flight.

use std::time::Duration;

use conveyor_contracts::SagaMode;
use conveyor_launcher::audit::{Options, Targets};
use conveyor_launcher::{Terminal, wait_for};
use futures::StreamExt;
use uuid::Uuid;

use crate::{SAGA, start_with};

/// Asserts the shop's invariants (`conveyor_launcher::audit`): every order terminal, stock
/// adds up, one capture per confirmed order and none kept for a cancelled one, balances,
/// one notification per order, queues drained.
async fn audit_passes(f: &crate::Fixture, accepted: Vec<Uuid>) {
    let mut targets = Targets::from_stack(&f.stack);
    targets.accepted = accepted;
    crate::audit::passes(&targets, &Options::default()).await;
}

#[tokio::test]
async fn a_payment_service_that_never_answers_times_the_order_out_and_its_late_capture_is_refunded() {
    let mut f = start_with("payment-silent", |mut o| {
        o.saga_mode = SagaMode::Orchestration;
        o.arg("coordinator-worker", &["--step-timeout", "3s"])
    })
    .await;
    let product = f.product(2599, 10).await;
    let customer = f.customer(100_000).await;
    f.stack.stop_process("payment-worker").await.unwrap();

    let order = f.shop.order_placed(customer, &[(product, 2)]).await.unwrap();
    assert_eq!(f.shop.wait_terminal(order, SAGA).await.unwrap(), Terminal::Cancelled("timeout".into()));
    wait_for("the reservation's release", SAGA, || async { Ok(f.shop.reservation(order).await?.is_some_and(|r| r["state"] == "released")) }).await.unwrap();
    assert_eq!(f.shop.stock(product).await.unwrap(), (10, 0));
    let detail = f.shop.order(order).await.unwrap()["reason_detail"].to_string();
    assert!(detail.contains("capture_payment"), "{detail}");

    // Payment comes back and works off its inbox: it captures, too late. The coordinator
    // has it refunded; the balance and the ledger show both.
    f.stack.start_process("payment-worker").await.unwrap();
    wait_for("the late capture's refund", SAGA, || async { Ok(f.shop.payments(order).await?.first().is_some_and(|p| p["status"] == "refunded")) })
        .await
        .unwrap();
    assert_eq!(f.shop.customer_balance(customer).await.unwrap(), 100_000);
    let ledger: Vec<(String, i64)> = sqlx::query_as("SELECT kind, amount_minor FROM ledger WHERE order_id = $1 ORDER BY id")
        .bind(order)
        .fetch_all(&f.db("payment").await)
        .await
        .unwrap();
    assert_eq!(ledger, [("capture".to_owned(), -5198), ("refund".to_owned(), 5198)]);

    // Payment's answer to the refund reaches the coordinator after the payment shows refunded.
    let path = format!("/sagas/{order}");
    let refund_answered = |s: &serde_json::Value| s["steps"].as_array().is_some_and(|steps| steps.iter().any(|x| x["step"] == "refund_payment" && x["outcome"] == "refunded"));
    wait_for("the coordinator to record the refund", SAGA, || async { Ok(f.shop.get("coordinator", &path).await?.is_some_and(|s| refund_answered(&s))) }).await.unwrap();
    let saga = f.shop.get("coordinator", &path).await.unwrap().expect("the saga");
    assert_eq!(saga["state"], "cancelled", "{saga}");
    assert_eq!(saga["reason"], "timeout");
    let steps: Vec<(String, bool, String)> = saga["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap().to_owned(), s["compensation"].as_bool().unwrap(), s["outcome"].as_str().unwrap_or("").to_owned()))
        .collect();
    let expected = [
        ("reserve_stock", false, "reserved"),
        ("capture_payment", false, "captured"),
        ("release_stock", true, "released"),
        ("cancel_order", false, "cancelled"),
        ("refund_payment", true, "refunded"),
    ];
    assert_eq!(steps, expected.map(|(s, c, o)| (s.to_owned(), c, o.to_owned())), "{saga}");
    assert!(saga["steps"][1]["timed_out_at"].is_string(), "the capture step timed out before its reply: {saga}");
    wait_for("one notification", SAGA, || async { Ok(f.shop.notifications(order).await?.len() == 1) }).await.unwrap();
    audit_passes(&f, vec![order]).await;
    f.stop().await;
}

#[tokio::test]
async fn a_coordinator_killed_again_and_again_mid_saga_resumes_every_saga_exactly_once() {
    let mut f = start_with("coordinator-killed", |mut o| {
        o.saga_mode = SagaMode::Orchestration;
        o
    })
    .await;
    let product = f.product(100, 1_000).await;
    let customers = [f.customer(10_000_000).await, f.customer(10_000_000).await, f.customer(150).await];
    let mut placed = Vec::new();
    // Ten rounds: orders placed while the coordinator runs, then killed (SIGKILL) with their
    // sagas at whatever step they reached, then started again.
    for round in 0..10 {
        let shop = &f.shop;
        let batch: Vec<Uuid> = futures::stream::iter(0..6)
            .map(|i| async move { shop.order_placed(customers[(round + i) % customers.len()], &[(product, 1 + (i as i64 % 3))]).await.unwrap() })
            .buffer_unordered(6)
            .collect()
            .await;
        placed.extend(batch);
        tokio::time::sleep(Duration::from_millis(50 * (round as u64 % 4))).await;
        f.stack.kill("coordinator-worker").await.unwrap();
        f.stack.start_process("coordinator-worker").await.unwrap();
    }
    let mut outcomes = Vec::new();
    for order in &placed {
        outcomes.push(f.shop.wait_terminal(*order, SAGA).await.unwrap());
    }
    assert!(outcomes.contains(&Terminal::Confirmed), "{outcomes:?}");
    assert!(outcomes.contains(&Terminal::Cancelled("payment_declined".into())), "the poor customer's orders are declined: {outcomes:?}");
    // The orders' replies reach the coordinator after the orders ended.
    let coordinator = f.db("coordinator").await;
    wait_for("one ended saga per order", SAGA, || async {
        let ended: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas WHERE ended_at IS NOT NULL").fetch_one(&coordinator).await?;
        Ok(ended as usize == placed.len())
    })
    .await
    .unwrap();
    let sagas: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas").fetch_one(&coordinator).await.unwrap();
    assert_eq!(sagas as usize, placed.len(), "one saga per order");
    // Every command sent once: one reservation and one capture per saga at most.
    let repeated: i64 = sqlx::query_scalar("SELECT count(*) FROM (SELECT order_id, step FROM saga_steps GROUP BY order_id, step HAVING count(*) > 1) r")
        .fetch_one(&f.db("coordinator").await)
        .await
        .unwrap();
    assert_eq!(repeated, 0);
    wait_for("a notification per order", SAGA, || async { Ok(f.shop.received().await?.0.len() == placed.len()) }).await.unwrap();
    audit_passes(&f, placed).await;
    f.stop().await;
}

#[tokio::test]
async fn a_coordinator_killed_between_every_pair_of_steps_resumes_each_step_once() {
    let mut f = start_with("coordinator-steps", |mut o| {
        o.saga_mode = SagaMode::Orchestration;
        o
    })
    .await;
    let product = f.product(1000, 10).await;
    let customer = f.customer(100_000).await;
    let coordinator = f.db("coordinator").await;
    // At each step the service that answers next is stopped, so the saga waits there; the
    // coordinator is SIGKILLed with the saga at that step and its command sent, started
    // again, and the service let go.
    f.stack.stop_process("stock-worker").await.unwrap();
    let order = f.shop.order_placed(customer, &[(product, 1)]).await.unwrap();
    for (waiting_in, answers, next) in [("reserving", "stock-worker", Some("payment-worker")), ("paying", "payment-worker", Some("order-worker")), ("confirming", "order-worker", None)] {
        wait_for(&format!("the saga to wait in {waiting_in}"), SAGA, || async {
            let state: Option<String> = sqlx::query_scalar("SELECT state FROM sagas WHERE order_id = $1").bind(order).fetch_optional(&coordinator).await?;
            Ok(state.as_deref() == Some(waiting_in))
        })
        .await
        .unwrap();
        f.stack.kill("coordinator-worker").await.unwrap();
        f.stack.start_process("coordinator-worker").await.unwrap();
        if let Some(next) = next {
            f.stack.stop_process(next).await.unwrap();
        }
        f.stack.start_process(answers).await.unwrap();
    }
    assert_eq!(f.shop.wait_terminal(order, SAGA).await.unwrap(), Terminal::Confirmed);
    // The order's reply reaches the coordinator after the order is confirmed.
    wait_for("the saga to end", SAGA, || async { Ok(f.shop.get("coordinator", &format!("/sagas/{order}")).await?.is_some_and(|s| s["state"] == "confirmed")) })
        .await
        .unwrap();
    let saga = f.shop.get("coordinator", &format!("/sagas/{order}")).await.unwrap().expect("the saga");
    let steps: Vec<(&str, &str)> = saga["steps"].as_array().unwrap().iter().map(|s| (s["step"].as_str().unwrap(), s["outcome"].as_str().unwrap_or(""))).collect();
    assert_eq!(steps, [("reserve_stock", "reserved"), ("capture_payment", "captured"), ("confirm_order", "confirmed")], "each step once: {saga}");
    assert_eq!(f.shop.stock(product).await.unwrap(), (9, 1));
    assert_eq!(f.shop.customer_balance(customer).await.unwrap(), 100_000 - 1000);
    wait_for("one notification", SAGA, || async { Ok(f.shop.notifications(order).await?.len() == 1) }).await.unwrap();
    audit_passes(&f, vec![order]).await;
    f.stop().await;
}

#[tokio::test]
async fn switching_the_mode_with_orders_in_flight_ends_each_order_in_the_mode_it_began() {
    let mut f = start_with("switch", |o| o).await;
    let product = f.product(500, 100).await;
    let customer = f.customer(1_000_000).await;
    // Stock is down, so the first orders wait mid-saga while the shop switches.
    f.stack.stop_process("stock-worker").await.unwrap();
    let mut choreographed = Vec::new();
    for _ in 0..3 {
        choreographed.push(f.shop.order_placed(customer, &[(product, 1)]).await.unwrap());
    }
    f.stack.switch_saga_mode(SagaMode::Orchestration).await.unwrap();
    let mut orchestrated = Vec::new();
    for _ in 0..3 {
        orchestrated.push(f.shop.order_placed(customer, &[(product, 1)]).await.unwrap());
    }
    f.stack.switch_saga_mode(SagaMode::Choreography).await.unwrap();
    choreographed.push(f.shop.order_placed(customer, &[(product, 1)]).await.unwrap());
    f.stack.start_process("stock-worker").await.unwrap();

    for (orders, mode) in [(&choreographed, SagaMode::Choreography), (&orchestrated, SagaMode::Orchestration)] {
        for order in orders {
            assert_eq!(f.shop.wait_terminal(*order, SAGA).await.unwrap(), Terminal::Confirmed);
            assert_eq!(f.shop.order(*order).await.unwrap()["saga_mode"], mode.as_str());
            let saga = f.shop.get("coordinator", &format!("/sagas/{order}")).await.unwrap();
            match mode {
                SagaMode::Choreography => assert!(saga.is_none(), "a choreographed order has no saga: {saga:?}"),
                SagaMode::Orchestration => {
                    assert!(saga.is_some(), "an orchestrated order has its saga");
                    let path = format!("/sagas/{order}");
                    wait_for("its saga to end", SAGA, || async { Ok(f.shop.get("coordinator", &path).await?.is_some_and(|s| s["state"] == "confirmed")) }).await.unwrap();
                }
            }
        }
    }
    assert_eq!(f.shop.stock(product).await.unwrap(), (93, 7));
    let all: Vec<Uuid> = choreographed.iter().chain(&orchestrated).copied().collect();
    wait_for("a notification per order", SAGA, || async { Ok(f.shop.received().await?.0.len() == all.len()) }).await.unwrap();
    audit_passes(&f, all).await;
    f.stop().await;
}
