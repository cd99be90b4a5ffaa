use std::sync::Arc;
use std::time::{Duration, Instant};

use conveyor_queue::{Consumer, ConsumerOptions, Delivery, LeaseOptions, handler_fn};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// Shutdown bound asserted below: the grace plus generous room for a loaded machine.
const BOUND: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_returns_within_its_bound_and_leaves_nothing_claimed() {
    let p = pair().await;
    let ids = p.publish(0..3000).await;
    p.relay_all().await;
    let consumer = Arc::new(
        Consumer::new(p.subscriber.clone())
            .with_options(ConsumerOptions { concurrency: 4, batch_size: 20, shutdown_grace: Duration::from_secs(2), ..fast_options(4) })
            .subscribe(handler_fn(|conn, msg: Delivery<Ping>| {
                async move {
                    record_effect(conn, &msg).await?;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    Ok(())
                }
                .boxed()
            })),
    );
    let stop = CancellationToken::new();
    let (c, s) = (consumer.clone(), stop.clone());
    let running = tokio::spawn(async move { c.run(s).await });
    wait_until("work is under way", Duration::from_secs(60), || async {
        count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox_done").await >= 200
    })
    .await;
    let asked = Instant::now();
    stop.cancel();
    tokio::time::timeout(BOUND, running).await.expect("shutdown did not return in time").unwrap().unwrap();
    let took = asked.elapsed();
    let done = count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox_done").await;
    assert!(done < 3000, "shutdown came too late to test anything");
    // Nothing claimed: no row locked by a leftover transaction, none running.
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM (SELECT 1 FROM conveyor.inbox FOR UPDATE SKIP LOCKED) unlocked").await, 3000 - done);
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox WHERE state = 'running'").await, 0);
    // What was done has its effect; what was not is untouched and runs later.
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM effects").await, done);
    while consumer.process_once().await.unwrap() > 0 {}
    assert_exactly_once(&p.subscriber, &ids).await;
    println!("shutdown under load took {took:?}");
}

#[tokio::test]
async fn shutdown_releases_leases_whose_handlers_outlive_the_grace() {
    let p = pair().await;
    p.publish(0..10).await;
    p.relay_all().await;
    let consumer = Arc::new(
        Consumer::new(p.subscriber.clone())
            .with_options(ConsumerOptions { batch_size: 10, shutdown_grace: Duration::from_millis(200), ..fast_options(1) })
            .subscribe_leased(
                |_: Delivery<Ping>| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(())
                },
                LeaseOptions { lease: Duration::from_secs(600), ..LeaseOptions::default() },
            ),
    );
    let stop = CancellationToken::new();
    let (c, s) = (consumer.clone(), stop.clone());
    let running = tokio::spawn(async move { c.run(s).await });
    wait_until("the batch is leased", Duration::from_secs(30), || async {
        count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox WHERE state = 'running'").await == 10
    })
    .await;
    stop.cancel();
    tokio::time::timeout(BOUND, running).await.expect("shutdown did not return in time").unwrap().unwrap();
    // Handed back, claimable at once, and the abandoned attempt does not count.
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox WHERE state = 'pending' AND attempts = 0 AND visible_at <= now()").await, 10);
}
