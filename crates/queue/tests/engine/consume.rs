use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use conveyor_queue::{handler_fn, Consumer, ConsumerOptions, Delivery, HandlerError, RetryPolicy};
use futures::FutureExt;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// Fails the first attempt of every 33rd message, so batches take the savepoint path too.
fn flaky_handler(calls: Arc<AtomicUsize>) -> impl for<'c> Fn(&'c mut PgConnection, Delivery<Ping>) -> futures::future::BoxFuture<'c, Result<(), HandlerError>> + Send + Sync + 'static {
    move |conn, msg| {
        calls.fetch_add(1, Ordering::Relaxed);
        async move {
            record_effect(conn, &msg).await?;
            if msg.payload.n % 33 == 0 && msg.attempt == 1 {
                return Err(HandlerError::retry(anyhow::anyhow!("transient failure of {}", msg.payload.n)));
            }
            Ok(())
        }
        .boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_consumers_and_ten_thousand_messages_have_every_effect_exactly_once() {
    let p = pair().await;
    let quick_retry = RetryPolicy { max_attempts: 3, base: Duration::from_millis(10), max: Duration::from_millis(50), jitter: 0.5 };
    let calls = Arc::new(AtomicUsize::new(0));
    let consumer = Arc::new(
        Consumer::new(p.subscriber.clone()).with_options(fast_options(8)).subscribe_with(flaky_handler(calls.clone()), quick_retry),
    );
    let stop = CancellationToken::new();
    let relay = p.relay();
    let (c, s1, s2) = (consumer.clone(), stop.clone(), stop.clone());
    let consuming = tokio::spawn(async move { c.run(s1).await });
    let relaying = tokio::spawn(async move { relay.run(s2).await });

    let ids = p.publish(0..10_000).await;
    wait_until("all 10,000 messages are done", Duration::from_secs(300), || async {
        count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox_done").await == 10_000
    })
    .await;
    stop.cancel();
    consuming.await.unwrap().unwrap();
    relaying.await.unwrap().unwrap();

    assert_exactly_once(&p.subscriber, &ids).await;
    assert_eq!(count(&p.publisher, "SELECT count(*) FROM conveyor.outbox").await, 0);
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox").await, 0);
    // Every 33rd message failed once and then succeeded: its effect of the failed attempt
    // was rolled back (exactly one effect, from attempt 2).
    let retried = count(&p.subscriber, "SELECT count(*) FROM effects WHERE n % 33 = 0 AND attempt = 2").await;
    assert_eq!(retried, (0..10_000).filter(|n| n % 33 == 0).count() as i64);
    assert!(calls.load(Ordering::Relaxed) >= 10_000);
}

#[tokio::test]
async fn one_failing_message_does_not_undo_the_rest_of_its_batch() {
    let p = pair().await;
    let ids = p.publish(0..10).await;
    p.relay_all().await;
    let consumer = Consumer::new(p.subscriber.clone())
        .with_options(ConsumerOptions { batch_size: 10, ..fast_options(1) })
        .subscribe(handler_fn(|conn, msg: Delivery<Ping>| {
            async move {
                record_effect(conn, &msg).await?;
                if msg.payload.n == 4 { Err(HandlerError::retry(anyhow::anyhow!("n = 4 fails"))) } else { Ok(()) }
            }
            .boxed()
        }));
    assert_eq!(consumer.process_once().await.unwrap(), 10);
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox_done").await, 9);
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM effects").await, 9, "the failed handler's writes are rolled back");
    let (state, attempts, errors): (String, i32, serde_json::Value) =
        sqlx::query_as("SELECT state, attempts, errors FROM conveyor.inbox WHERE message_id = $1")
            .bind(ids[4])
            .fetch_one(&p.subscriber)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("pending", 1));
    assert_eq!(errors[0]["error"], "n = 4 fails");
}

async fn advisory_locks(pool: &sqlx::PgPool) -> i64 {
    count(pool, "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory' AND d.datname = current_database()").await
}

#[tokio::test]
async fn an_idle_consumer_is_woken_by_notify_not_by_polling() {
    let p = pair().await;
    // Twice, with fresh workers on the same pools: a stopped worker must leave no wake
    // lock behind on a pooled connection (a publisher on that connection would never
    // notify, and the next worker would never be woken).
    for run in 0..2 {
        let consumer = Arc::new(
            Consumer::new(p.subscriber.clone())
                .with_options(ConsumerOptions { poll_interval: Duration::from_secs(3600), ..fast_options(2) })
                .subscribe(handler_fn(|conn, msg: Delivery<Ping>| async move { Ok(record_effect(conn, &msg).await?) }.boxed())),
        );
        let relay = p.relay().with_options(conveyor_queue::RelayOptions { poll_interval: Duration::from_secs(3600), ..Default::default() });
        let stop = CancellationToken::new();
        let (c, s1, s2) = (consumer.clone(), stop.clone(), stop.clone());
        let consuming = tokio::spawn(async move { c.run(s1).await });
        let relaying = tokio::spawn(async move { relay.run(s2).await });
        // After round 0 every loop has gone idle with an hour to its next poll.
        for round in 0..3 {
            p.publish(run * 10 + round..run * 10 + round + 1).await;
            // Polling would take an hour: only the notifications can make this pass.
            wait_until("the message is handled", Duration::from_secs(20), || async {
                count(&p.subscriber, "SELECT count(*) FROM effects").await == run * 3 + round + 1
            })
            .await;
        }
        stop.cancel();
        consuming.await.unwrap().unwrap();
        relaying.await.unwrap().unwrap();
        wait_until("the stopped workers' wake locks are released", Duration::from_secs(20), || async {
            advisory_locks(&p.publisher).await == 0 && advisory_locks(&p.subscriber).await == 0
        })
        .await;
    }
}

/// A copy of a handled message that reaches the inbox anyway — a relay's repeated insert
/// that raced the original's completion, so that the relay's check of `inbox_done` missed
/// it — is dropped when claimed, in either mode, and its handler never runs.
#[tokio::test]
async fn a_copy_of_a_handled_message_is_dropped_at_its_claim_without_running_its_handler() {
    let p = pair().await;
    let ids = p.publish(0..4).await;
    p.relay_all().await;
    let tx_consumer = Consumer::new(p.subscriber.clone())
        .subscribe(handler_fn(|conn, msg: Delivery<Ping>| async move { Ok(record_effect(conn, &msg).await?) }.boxed()));
    assert_eq!(tx_consumer.process_once().await.unwrap(), 4);
    // The race, made by hand: the same ids straight into the inbox, past the relay's check.
    let copy = |ids: &[uuid::Uuid]| {
        sqlx::query(
            "INSERT INTO conveyor.inbox (message_id, topic, payload, published_at) SELECT id, 'test.ping', '{\"n\": 0}', now() FROM UNNEST($1::uuid[]) id",
        )
        .bind(ids.to_vec())
    };
    copy(&ids).execute(&p.subscriber).await.unwrap();
    assert_eq!(tx_consumer.process_once().await.unwrap(), 4, "claimed and settled");
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox").await, 0);
    assert_exactly_once(&p.subscriber, &ids).await;

    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let lease_consumer = Consumer::new(p.subscriber.clone()).subscribe_leased(
        move |_: Delivery<Ping>| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        },
        conveyor_queue::LeaseOptions::default(),
    );
    copy(&ids).execute(&p.subscriber).await.unwrap();
    lease_consumer.process_once().await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 0, "no lease handler runs for a copy");
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox").await, 0);
}
