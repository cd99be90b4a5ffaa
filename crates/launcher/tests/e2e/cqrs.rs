//! The order's read model in the running shop: rebuilt from the event store with
//! `cargo xtask projections rebuild` while orders keep coming, its lag on the worker's
//! metrics, and the customer's list answered from it.

use std::time::Duration;

use conveyor_launcher::{Terminal, wait_for};
use uuid::Uuid;

use crate::{SAGA, start};

async fn xtask(args: &[&str]) -> (i32, String) {
    let xtask = conveyor_launcher::default_bin_dir().join("xtask");
    let out = tokio::process::Command::new(&xtask).args(args).output().await.unwrap_or_else(|e| panic!("running {}: {e}", xtask.display()));
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Every view the projection holds, by id.
async fn views(pool: &sqlx::PgPool) -> Vec<(Uuid, i32, serde_json::Value)> {
    sqlx::query_as::<_, (Uuid, i32, sqlx::types::Json<serde_json::Value>)>("SELECT id, version, view FROM order_views ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, v, view)| (id, v, view.0))
        .collect()
}

#[tokio::test]
async fn the_read_model_rebuilds_while_orders_keep_coming_and_ends_equal_to_the_live_one() {
    let f = start("cqrs-rebuild").await;
    let product = f.product(1000, 1_000).await;
    let customer = f.customer(10_000_000).await;
    let stack = f.stack.info_path().display().to_string();
    let orders = f.db("order").await;

    // Orders placed before, during and after the rebuild.
    let shop = f.shop.clone();
    let placing = tokio::spawn(async move {
        let mut ids = Vec::new();
        for _ in 0..40 {
            ids.push(shop.order_placed(customer, &[(product, 1)]).await.unwrap());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        ids
    });
    wait_for("some orders to be projected", SAGA, || async {
        Ok(sqlx::query_scalar::<_, i64>("SELECT count(*) FROM order_views").fetch_one(&orders).await? >= 5)
    })
    .await
    .unwrap();
    let owner = || async { sqlx::query_scalar::<_, String>("SELECT tableowner::text FROM pg_tables WHERE tablename = 'order_views'").fetch_one(&orders).await.unwrap() };
    let migrator = owner().await;
    let (code, out) = xtask(&["projections", "rebuild", "--stack", &stack]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("views swapped in"), "{out}");
    assert_eq!(owner().await, migrator, "the fresh table is the migrator's, like the one it replaced");
    let ids = placing.await.unwrap();
    for id in &ids {
        assert_eq!(f.shop.wait_terminal(*id, SAGA).await.unwrap(), Terminal::Confirmed);
    }
    // Every order reaches its full timeline in the rebuilt table, notification included.
    wait_for("every timeline to be complete", SAGA, || async {
        let complete: i64 = sqlx::query_scalar("SELECT count(*) FROM order_views WHERE jsonb_array_length(view -> 'timeline') = 5").fetch_one(&orders).await?;
        Ok(complete == ids.len() as i64)
    })
    .await
    .unwrap();
    let (code, out) = xtask(&["projections", "status", "--stack", &stack]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("order_views: 0 events behind (caught up)"), "{out}");
    let metrics_url = format!("{}/metrics", f.stack.worker["order"]);
    wait_for("the projector's lag of 0 on its metrics", SAGA, || async {
        let text = reqwest::get(&metrics_url).await?.text().await?;
        Ok(text.lines().any(|l| l.starts_with("conveyor_projection_lag_events{") && l.contains("order_views") && l.ends_with(" 0")))
    })
    .await
    .unwrap();

    // A second rebuild, from a quiet store, gives exactly what the live projection holds.
    let live = views(&orders).await;
    let (code, out) = xtask(&["projections", "rebuild", "--stack", &stack]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(views(&orders).await, live);

    // The customer's list is the read model: newest first, filtered by status.
    let page = f.shop.get("order", &format!("/customers/{customer}/orders?status=confirmed&limit=100")).await.unwrap().unwrap();
    let listed: Vec<Uuid> = page["items"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap().parse().unwrap()).collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    f.stop().await;
}
