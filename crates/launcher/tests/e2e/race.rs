//! 500 orders racing for 50 units.

use std::time::Duration;

use conveyor_launcher::{Terminal, wait_for};
use futures::StreamExt;
use rand::{Rng, SeedableRng};

use conveyor_contracts::SagaMode;

use crate::{in_both_modes, start_in};

in_both_modes!(five_hundred_orders_race_for_fifty_units_and_exactly_those_that_fit_are_confirmed);

async fn five_hundred_orders_race_for_fifty_units_and_exactly_those_that_fit_are_confirmed(mode: SagaMode) {
    let f = start_in("race", mode).await;
    let product = f.product(100, 50).await;
    let mut customers = Vec::new();
    for _ in 0..10 {
        customers.push(f.customer(10_000_000).await);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(50);
    let wanted: Vec<(uuid::Uuid, i64)> = (0..500).map(|i| (customers[i % customers.len()], rng.random_range(1..=3))).collect();
    let shop = &f.shop;
    let placed: Vec<(uuid::Uuid, i64)> = futures::stream::iter(wanted)
        .map(|(customer, qty)| async move { (shop.order_placed(customer, &[(product, qty)]).await.unwrap(), qty) })
        .buffer_unordered(16)
        .collect()
        .await;

    let limit = Duration::from_secs(300);
    let outcomes: Vec<(Terminal, i64)> = futures::stream::iter(placed.iter().copied())
        .map(|(order, qty)| async move { (shop.wait_terminal(order, limit).await.unwrap(), qty) })
        .buffer_unordered(16)
        .collect()
        .await;

    let confirmed: i64 = outcomes.iter().filter(|(t, _)| *t == Terminal::Confirmed).map(|(_, q)| q).sum();
    let (available, reserved) = f.shop.stock(product).await.unwrap();
    assert!(available >= 0 && reserved >= 0);
    assert_eq!(confirmed + available, 50, "confirmed quantities plus what is left make the 50 units");
    assert_eq!(reserved, confirmed, "reserved stock is exactly what confirmed orders hold");
    for (t, qty) in &outcomes {
        if let Terminal::Cancelled(reason) = t {
            assert_eq!(reason, "out_of_stock");
            assert!(*qty > available, "an order of {qty} was refused though {available} units are left");
        }
    }
    let n_confirmed = outcomes.iter().filter(|(t, _)| *t == Terminal::Confirmed).count();
    assert!(n_confirmed >= 17, "at least 50/3 orders fit");
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE status = 'captured'").fetch_one(&f.db("payment").await).await.unwrap();
    assert_eq!(payments as usize, n_confirmed, "one capture per confirmed order");
    wait_for("a notification for each of the 500 orders", limit, || async { Ok(f.shop.received().await?.0.len() == 500) }).await.unwrap();
    assert_eq!(f.shop.received().await.unwrap().1, 0, "no notification twice");
    f.stop().await;
}
