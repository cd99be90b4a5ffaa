//! Pull delivery: subscribers read the publisher's outbox with cursors of their own.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use conveyor_queue::{Consumer, ConsumerOptions, Delivery, HandlerError, Outgoing, RetryPolicy, handler_fn, prune_once, publish_all};
use futures::FutureExt;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use crate::common::*;

const QUICK_RETRY: RetryPolicy = RetryPolicy { max_attempts: 3, base: Duration::from_millis(10), max: Duration::from_millis(50), jitter: 0.5 };

/// Records the effect; fails the first attempt of every 33rd message (retried from the
/// inbox) and every attempt of n = 7 (a poison message).
fn handler(calls: Arc<AtomicUsize>) -> impl for<'c> Fn(&'c mut PgConnection, Delivery<Ping>) -> futures::future::BoxFuture<'c, Result<(), HandlerError>> + Send + Sync + 'static {
    move |conn, msg| {
        calls.fetch_add(1, Ordering::Relaxed);
        async move {
            if msg.payload.n == 7 {
                return Err(HandlerError::permanent(anyhow::anyhow!("poison {}", msg.payload.n)));
            }
            record_effect(conn, &msg).await?;
            if msg.payload.n % 33 == 0 && msg.attempt == 1 {
                return Err(HandlerError::retry(anyhow::anyhow!("transient failure of {}", msg.payload.n)));
            }
            Ok(())
        }
        .boxed()
    }
}

fn puller(p: &Pair, calls: Arc<AtomicUsize>, opts: ConsumerOptions) -> Consumer {
    Consumer::new(p.subscriber.clone()).named("sub").with_options(opts).subscribe_with(handler(calls), QUICK_RETRY).pull_from("pub", p.publisher.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pulling_processes_have_every_effect_exactly_once_with_retries_and_a_poison_message() {
    let p = pair().await;
    let calls = Arc::new(AtomicUsize::new(0));
    // Two consumers stand for two worker processes of one subscriber: 8 loops over 16
    // partitions, claimed with SKIP LOCKED.
    let consumers = [Arc::new(puller(&p, calls.clone(), fast_options(4))), Arc::new(puller(&p, calls.clone(), fast_options(4)))];
    let stop = CancellationToken::new();
    let running: Vec<_> = consumers.iter().map(|c| tokio::spawn({
        let (c, stop) = (c.clone(), stop.clone());
        async move { c.run(stop).await }
    })).collect();

    // Four publishers at once, so transactions commit out of their id order.
    let p = Arc::new(p);
    let publishing: Vec<_> = (0..4).map(|i| tokio::spawn({
        let p = p.clone();
        async move { p.publish(i * 1_500..(i + 1) * 1_500).await }
    })).collect();
    let mut ids = Vec::new();
    for t in publishing {
        ids.extend(t.await.unwrap());
    }
    wait_until("5,999 effects and the poison message dead", Duration::from_secs(300), || async {
        count(&p.subscriber, "SELECT count(DISTINCT message_id) FROM effects").await == 5_999
            && count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox WHERE state <> 'dead'").await == 0
    })
    .await;
    stop.cancel();
    for r in running {
        r.await.unwrap().unwrap();
    }

    let poison = ids[7];
    let handled: Vec<_> = ids.iter().copied().filter(|id| *id != poison).collect();
    assert_exactly_once(&p.subscriber, &handled).await;
    // Every 33rd failed once in the log, went to the inbox and succeeded there.
    let retried = count(&p.subscriber, "SELECT count(*) FROM effects WHERE n % 33 = 0 AND attempt = 2").await;
    assert_eq!(retried, (0..6_000).filter(|n| n % 33 == 0).count() as i64);
    let dead: Vec<(uuid::Uuid, i32)> = sqlx::query_as("SELECT message_id, attempts FROM conveyor.inbox WHERE state = 'dead'").fetch_all(&p.subscriber).await.unwrap();
    assert_eq!(dead, vec![(poison, 1)], "the poison message is a dead letter after its one (permanent) failure");
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox_done WHERE attempts = 2").await, retried);

    // Once the positions are reported, the publisher prunes everything pulled.
    assert_eq!(count(&p.publisher, "SELECT count(*) FROM conveyor.outbox").await, 6_000);
    consumers[0].report_pull_positions().await.unwrap();
    prune_once(&p.publisher, Duration::from_secs(3600), 1000).await.unwrap();
    assert_eq!(count(&p.publisher, "SELECT count(*) FROM conveyor.outbox").await, 0);
}

/// Pulls until the subscriber holds `effects` effects. (A single pass can stop early: the
/// horizon is the server's, so another test's transaction in another database can hold
/// rows back until reads pass it.)
async fn drain(consumer: &Consumer, subscriber: &sqlx::PgPool, effects: i64) {
    wait_until("the pulled messages are handled", Duration::from_secs(30), || async {
        while consumer.process_once().await.unwrap() > 0 {}
        count(subscriber, "SELECT count(*) FROM effects").await >= effects
    })
    .await;
}

#[tokio::test]
async fn a_transaction_held_open_holds_back_only_its_own_messages_which_come_when_it_commits() {
    let p = pair().await;
    let consumer = puller(&p, Arc::default(), ConsumerOptions { batch_size: 3, ..fast_options(1) });
    // The first message's transaction stays open while later ones, with later ids, commit.
    let mut late = p.publisher.begin().await.unwrap();
    let first = Outgoing::event(&Ping { n: 100 }).unwrap();
    publish_all(&mut late, std::slice::from_ref(&first)).await.unwrap();
    let late_tx: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint").fetch_one(&mut *late).await.unwrap();
    let mut ids = p.publish(101..110).await;
    // Passed once it has stayed the oldest running transaction for a moment.
    wait_until("the later commits are delivered past the open transaction", Duration::from_secs(30), || async {
        while consumer.process_once().await.unwrap() > 0 {}
        count(&p.subscriber, "SELECT count(*) FROM effects").await == 9
    })
    .await;
    assert_exactly_once(&p.subscriber, &ids).await;
    // The cursors passed it while it ran: they remember it.
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM conveyor.pull_cursors WHERE $1 = ANY (pending_tx)").bind(late_tx).fetch_one(&p.subscriber).await.unwrap();
    assert!(waiting > 0, "no cursor remembers the running transaction");

    late.commit().await.unwrap();
    drain(&consumer, &p.subscriber, 10).await;
    ids.push(first.id);
    assert_exactly_once(&p.subscriber, &ids).await;
    // Its rows read and it ended: forgotten at the next read of each partition.
    p.publish(200..240).await;
    drain(&consumer, &p.subscriber, 49).await; // all but 231's first attempt
    // (Only it: a cursor also remembers whatever other transactions of the server, in any
    // database, ran at its last read, until its partition is read again after they end.)
    let remembered: i64 = sqlx::query_scalar("SELECT count(*) FROM conveyor.pull_cursors WHERE $1 = ANY (pending_tx)").bind(late_tx).fetch_one(&p.subscriber).await.unwrap();
    assert_eq!(remembered, 0, "cursors still wait for the ended transaction {late_tx}");
}

#[tokio::test]
async fn pruning_keeps_what_a_subscriber_has_not_passed_and_topics_nobody_pulls() {
    let p = pair().await;
    let consumer = puller(&p, Arc::default(), fast_options(1));
    p.publish(0..20).await;
    // All but n = 0 (its first attempt fails: retried from the inbox) and 7 (poison).
    drain(&consumer, &p.subscriber, 18).await;
    consumer.report_pull_positions().await.unwrap();
    // Published after the report: not passed as far as the publisher knows.
    p.publish(1_000..1_005).await;
    let mut tx = p.publisher.begin().await.unwrap();
    publish_all(&mut tx, &[Outgoing::new("test.unpulled", serde_json::json!({}))]).await.unwrap();
    tx.commit().await.unwrap();

    prune_once(&p.publisher, Duration::from_secs(3600), 1000).await.unwrap();
    let left: Vec<(String, i64)> =
        sqlx::query_as("SELECT topic, count(*) FROM conveyor.outbox GROUP BY topic ORDER BY topic").fetch_all(&p.publisher).await.unwrap();
    assert_eq!(left, vec![("test.ping".to_owned(), 5), ("test.unpulled".to_owned(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pulling_consumer_is_woken_by_a_publish() {
    let p = pair().await;
    // Polling every 30 s: only a wake-up can deliver within the wait below.
    let opts = ConsumerOptions { poll_interval: Duration::from_secs(30), ..fast_options(2) };
    let consumer = Arc::new(
        Consumer::new(p.subscriber.clone())
            .with_options(opts)
            .subscribe(handler_fn(|conn, msg: Delivery<Ping>| async move { Ok(record_effect(conn, &msg).await?) }.boxed()))
            .pull_from("pub", p.publisher.clone()),
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (c, stop) = (consumer.clone(), stop.clone());
        async move { c.run(stop).await }
    });
    // Wait until its loops are idle: the listener holds the wake lock.
    wait_until("the pull listener holds the wake lock", Duration::from_secs(10), || async {
        count(&p.publisher, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
            AND classid::bigint = x'636f6e76'::bigint AND objid::bigint = x'6f757401'::bigint").await > 0
    })
    .await;
    let ids = p.publish(0..3).await;
    wait_until("the messages are handled", Duration::from_secs(10), || async { count(&p.subscriber, "SELECT count(*) FROM effects").await == 3 }).await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_exactly_once(&p.subscriber, &ids).await;
}

#[tokio::test]
async fn lease_mode_topics_are_pulled_into_the_inbox_for_the_lease_loops() {
    let p = pair().await;
    let pool = p.subscriber.clone();
    let consumer = Consumer::new(p.subscriber.clone())
        .with_options(fast_options(1))
        .subscribe_leased(
            move |msg: Delivery<Ping>| {
                let pool = pool.clone();
                async move {
                    let mut conn = pool.acquire().await?;
                    Ok(record_effect(&mut conn, &msg).await?)
                }
            },
            conveyor_queue::LeaseOptions::default(),
        )
        .pull_from("pub", p.publisher.clone());
    let ids = p.publish(0..30).await;
    wait_until("every leased message is handled", Duration::from_secs(30), || async {
        consumer.process_once().await.unwrap();
        count(&p.subscriber, "SELECT count(*) FROM effects").await == 30
    })
    .await;
    assert_exactly_once(&p.subscriber, &ids).await;
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox_done WHERE attempts = 1").await, 30);
}
