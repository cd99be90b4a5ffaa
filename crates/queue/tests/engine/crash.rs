//! Real processes killed with SIGKILL: the parent test starts this same test binary as a
//! child running one of the `child_*` entry points below, waits until the child reports it
//! is in the middle of its work, kills it, and checks what another worker makes of it.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use conveyor_queue::{Consumer, ConsumerOptions, Delivery, LeaseOptions, Relay, RetryPolicy, Routes, handler_fn};
use futures::FutureExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::*;

const READY: &str = "CHILD-IS-MID-BATCH";

/// Starts `entry` (a test in this file) in a child process and waits for its READY line.
async fn spawn_child(entry: &str, env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([entry, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("CONVEYOR_CHILD", "1")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(READY) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "child {entry} never reached the middle of its batch");
    child
}

async fn sigkill(mut child: Child) {
    child.start_kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().await.unwrap();
    assert!(!status.success());
}

fn child_env() -> Option<(String, String)> {
    std::env::var("CONVEYOR_CHILD").ok()?;
    Some((std::env::var("CHILD_PUB").unwrap(), std::env::var("CHILD_SUB").unwrap()))
}

async fn hang_forever() -> ! {
    println!("{READY}");
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

#[tokio::test]
#[ignore = "child process of killed_transaction_consumer_loses_nothing"]
async fn child_tx_consumer() {
    let Some((_, sub)) = child_env() else { return };
    let pool = pool(&sub, 5).await;
    // Handles (and writes the effects of) four messages, then hangs inside the fifth with
    // the batch's transaction open.
    let consumer = Consumer::new(pool).with_options(ConsumerOptions { batch_size: 20, ..fast_options(1) }).subscribe(handler_fn(
        |conn, msg: Delivery<Ping>| {
            async move {
                record_effect(conn, &msg).await?;
                if msg.payload.n == 4 {
                    hang_forever().await;
                }
                Ok(())
            }
            .boxed()
        },
    ));
    consumer.process_once().await.unwrap();
}

#[tokio::test]
async fn killed_transaction_consumer_loses_nothing_and_its_work_is_taken_at_once() {
    let p = pair().await;
    let ids = p.publish(0..20).await;
    p.relay_all().await;
    let child = spawn_child("crash::child_tx_consumer", &[("CHILD_PUB", &p.publisher_db.url), ("CHILD_SUB", &p.subscriber_db.url)]).await;
    sigkill(child).await;
    // No lease to wait for: the server rolls the dead worker's transaction back as its
    // connection drops, and the rows are claimable again with no attempt counted.
    let consumer = Consumer::new(p.subscriber.clone())
        .with_options(ConsumerOptions { batch_size: 20, ..fast_options(1) })
        .subscribe(handler_fn(|conn, msg: Delivery<Ping>| async move { Ok(record_effect(conn, &msg).await?) }.boxed()));
    wait_until("the killed worker's batch is handled", Duration::from_secs(30), || async {
        consumer.process_once().await.unwrap();
        count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox_done").await == 20
    })
    .await;
    assert_exactly_once(&p.subscriber, &ids).await;
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox_done WHERE attempts <> 1").await, 0);
}

#[tokio::test]
#[ignore = "child process of killed_lease_consumer_loses_nothing"]
async fn child_lease_consumer() {
    let Some((_, sub)) = child_env() else { return };
    let pool = pool(&sub, 5).await;
    let consumer = Consumer::new(pool).with_options(ConsumerOptions { batch_size: 20, ..fast_options(1) }).subscribe_leased(
        |msg: Delivery<Ping>| async move {
            // Every handler of the batch starts; the last to start reports, then all hang
            // before doing anything.
            if msg.payload.n == 19 {
                hang_forever().await;
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        },
        LeaseOptions { lease: Duration::from_secs(10), retry: RetryPolicy::default() },
    );
    consumer.process_once().await.unwrap();
}

#[tokio::test]
async fn killed_lease_consumer_loses_nothing_and_its_work_is_taken_after_the_lease() {
    let p = pair().await;
    let ids = p.publish(0..20).await;
    p.relay_all().await;
    let child = spawn_child("crash::child_lease_consumer", &[("CHILD_PUB", &p.publisher_db.url), ("CHILD_SUB", &p.subscriber_db.url)]).await;
    sigkill(child).await;
    let pool = p.subscriber.clone();
    let consumer = Consumer::new(p.subscriber.clone()).with_options(ConsumerOptions { batch_size: 20, ..fast_options(1) }).subscribe_leased(
        move |msg: Delivery<Ping>| {
            let pool = pool.clone();
            async move {
                let mut conn = pool.acquire().await?;
                Ok(record_effect(&mut conn, &msg).await?)
            }
        },
        LeaseOptions { lease: Duration::from_secs(2), retry: RetryPolicy::default() },
    );
    // The dead worker's leases still hold: nobody may take its messages yet.
    let leased = count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox WHERE state = 'running' AND visible_at > now()").await;
    assert_eq!(leased, 20, "the child's ten-second leases hold");
    assert_eq!(consumer.process_once().await.unwrap(), 0, "claimed while the lease held");
    wait_until("the killed worker's leases expire and its batch is handled", Duration::from_secs(30), || async {
        consumer.process_once().await.unwrap();
        count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox_done").await == 20
    })
    .await;
    assert_exactly_once(&p.subscriber, &ids).await;
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox_done WHERE attempts = 2").await, 20, "one lost attempt, one that finished");
}

#[tokio::test]
#[ignore = "child process of killed_relay_delivers_no_duplicate"]
async fn child_relay() {
    let Some((publ, sub)) = child_env() else { return };
    let relay = Relay::new(pool(&publ, 5).await, Routes::new().route("test.ping", ["sub"]), HashMap::from([("sub".to_owned(), pool(&sub, 5).await)]))
        .unwrap()
        .with_options(conveyor_queue::RelayOptions { batch_size: 1000, ..Default::default() });
    let batch = relay.claim().await.unwrap().unwrap();
    batch.deliver().await.unwrap();
    hang_forever().await; // killed here: delivered, never acknowledged
}

#[tokio::test]
async fn killed_relay_between_insert_and_delete_delivers_no_duplicate_effect() {
    let p = pair().await;
    let ids = p.publish(0..300).await;
    let child = spawn_child("crash::child_relay", &[("CHILD_PUB", &p.publisher_db.url), ("CHILD_SUB", &p.subscriber_db.url)]).await;
    sigkill(child).await;
    // The kill landed between the two steps: everything is in the inbox, and still in the outbox.
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox").await, 300);
    wait_until("the killed relay's locks are gone", Duration::from_secs(30), || async {
        count(&p.publisher, "SELECT count(*) FROM (SELECT 1 FROM conveyor.outbox FOR UPDATE SKIP LOCKED) unlocked").await == 300
    })
    .await;
    p.relay_all().await;
    assert_eq!(count(&p.publisher, "SELECT count(*) FROM conveyor.outbox").await, 0);
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox").await, 300);
    let consumer = Consumer::new(p.subscriber.clone())
        .with_options(ConsumerOptions { batch_size: 100, ..fast_options(1) })
        .subscribe(handler_fn(|conn, msg: Delivery<Ping>| async move { Ok(record_effect(conn, &msg).await?) }.boxed()));
    while consumer.process_once().await.unwrap() > 0 {}
    assert_exactly_once(&p.subscriber, &ids).await;
}

#[tokio::test]
#[ignore = "child process of killed_pulling_consumer_loses_nothing"]
async fn child_pulling_consumer() {
    let Some((publisher, sub)) = child_env() else { return };
    let (publisher, pool) = (pool(&publisher, 5).await, pool(&sub, 5).await);
    // Pulls a batch, writes the effect of its first message, then hangs with the
    // transaction that would move the cursor open.
    let consumer = Consumer::new(pool)
        .with_options(ConsumerOptions { batch_size: 20, ..fast_options(1) })
        .subscribe(handler_fn(|conn, msg: Delivery<Ping>| {
            async move {
                record_effect(conn, &msg).await?;
                hang_forever().await;
            }
            .boxed()
        }))
        .pull_from("pub", publisher);
    // Until a batch is read (and hangs in its handler): a pass can find the rows held back
    // behind another test's transaction, the horizon being the server's.
    loop {
        consumer.process_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn killed_pulling_consumer_loses_nothing_and_its_partition_is_taken_at_once() {
    let p = pair().await;
    let ids = p.publish(0..20).await;
    let child = spawn_child("crash::child_pulling_consumer", &[("CHILD_PUB", &p.publisher_db.url), ("CHILD_SUB", &p.subscriber_db.url)]).await;
    sigkill(child).await;
    // Its transaction dies with its connection: no effect, the cursor where it was, the
    // partition free for the next claim.
    let consumer = Consumer::new(p.subscriber.clone())
        .with_options(ConsumerOptions { batch_size: 20, ..fast_options(1) })
        .subscribe(handler_fn(|conn, msg: Delivery<Ping>| async move { Ok(record_effect(conn, &msg).await?) }.boxed()))
        .pull_from("pub", p.publisher.clone());
    wait_until("every pulled message is handled", Duration::from_secs(30), || async {
        consumer.process_once().await.unwrap();
        count(&p.subscriber, "SELECT count(*) FROM effects").await == 20
    })
    .await;
    assert_exactly_once(&p.subscriber, &ids).await;
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox").await, 0);
}
