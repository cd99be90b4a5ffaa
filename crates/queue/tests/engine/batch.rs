//! Batch handlers: one call per run of consecutive messages of a topic, in publish order;
//! a failing call runs the batch again one message per call, so the failure is charged to
//! the message that causes it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use conveyor_queue::{Consumer, ConsumerOptions, Delivery, HandlerError, RetryPolicy, batch_handler_fn};
use futures::FutureExt;

use crate::common::*;

#[tokio::test]
async fn a_batch_handler_gets_runs_in_publish_order_and_a_failure_is_charged_to_its_message() {
    let p = pair().await;
    let ids = p.publish(0..120).await;
    p.relay_all().await;
    // Each call's messages as (n, attempt).
    type Calls = Arc<Mutex<Vec<Vec<(i64, i32)>>>>;
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let quick = RetryPolicy { max_attempts: 3, base: Duration::from_millis(10), max: Duration::from_millis(20), jitter: 0.0 };
    let consumer = Consumer::new(p.subscriber.clone()).with_options(ConsumerOptions { batch_size: 50, ..fast_options(1) }).subscribe_batch(
        batch_handler_fn(move |conn, msgs: Vec<Delivery<Ping>>| {
            seen.lock().unwrap().push(msgs.iter().map(|m| (m.payload.n, m.attempt)).collect());
            async move {
                for m in &msgs {
                    record_effect(conn, m).await?;
                }
                match msgs.iter().find(|m| m.payload.n == 77 && m.attempt == 1) {
                    Some(m) => Err(HandlerError::retry(anyhow::anyhow!("the first attempt of {} fails", m.payload.n))),
                    None => Ok(()),
                }
            }
            .boxed()
        }),
        quick,
    );
    wait_until("every message is handled", Duration::from_secs(30), || async {
        consumer.process_once().await.unwrap();
        count(&p.subscriber, "SELECT count(*) FROM effects").await == 120
    })
    .await;
    assert_exactly_once(&p.subscriber, &ids).await;

    let calls = calls.lock().unwrap().clone();
    let ns = |call: &Vec<(i64, i32)>| call.iter().map(|(n, _)| *n).collect::<Vec<_>>();
    assert_eq!(ns(&calls[0]), (0..50).collect::<Vec<_>>(), "one call for the first batch, in publish order");
    assert_eq!(ns(&calls[1]), (50..100).collect::<Vec<_>>(), "then one for the second, which fails");
    let singles: Vec<i64> = calls[2..52].iter().map(|c| {
        assert_eq!(c.len(), 1, "after a failure, one message per call");
        c[0].0
    }).collect();
    assert_eq!(singles, (50..100).collect::<Vec<_>>(), "the failed batch again, message by message");
    // Then the rest, and 77 again once its backoff ends (in a call of its own, or first in
    // the rest's call when its backoff ended before that claim: a batch runs in publish order).
    let rest: Vec<(i64, i32)> = calls[52..].iter().flatten().copied().collect();
    let mut expected: Vec<(i64, i32)> = (100..120).map(|n| (n, 1)).collect();
    expected.push((77, 2));
    let mut sorted = rest.clone();
    sorted.sort_unstable_by_key(|(n, _)| (*n != 77, *n));
    expected.sort_unstable_by_key(|(n, _)| (*n != 77, *n));
    assert_eq!(sorted, expected, "the rest once each, and only the failing message again, as its second attempt");
    for call in &calls[52..] {
        assert!(call.windows(2).all(|w| w[0].0 < w[1].0), "each call in publish order: {call:?}");
    }
    let attempts: i32 = sqlx::query_scalar("SELECT attempt FROM effects WHERE n = 77").fetch_one(&p.subscriber).await.unwrap();
    assert_eq!(attempts, 2, "the failed attempt's effects were rolled back");
}

#[tokio::test]
async fn runs_break_at_another_topic_and_plain_handlers_beside_them_see_every_message_in_order() {
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Pong {
        n: i64,
    }
    impl conveyor_queue::Event for Pong {
        const TOPIC: &'static str = "test.pong";
    }
    let p = pair().await;
    // Interleaved: 3 pings, 2 pongs, 3 pings, straight into the inbox in that order.
    let order = [("test.ping", 0), ("test.ping", 1), ("test.ping", 2), ("test.pong", 3), ("test.pong", 4), ("test.ping", 5), ("test.ping", 6), ("test.ping", 7)];
    for (topic, n) in order {
        sqlx::query("INSERT INTO conveyor.inbox (message_id, topic, payload, published_at, visible_at) VALUES ($1, $2, jsonb_build_object('n', $3::bigint), now(), now() + $3 * interval '1 microsecond')")
            .bind(uuid::Uuid::now_v7())
            .bind(topic)
            .bind(n)
            .execute(&p.subscriber)
            .await
            .unwrap();
    }
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let (pings, pongs) = (log.clone(), log.clone());
    let consumer = Consumer::new(p.subscriber.clone())
        .subscribe_batch(
            batch_handler_fn(move |_conn, msgs: Vec<Delivery<Ping>>| {
                pings.lock().unwrap().push(format!("pings {:?}", msgs.iter().map(|m| m.payload.n).collect::<Vec<_>>()));
                async { Ok(()) }.boxed()
            }),
            RetryPolicy::default(),
        )
        .subscribe(conveyor_queue::handler_fn(move |_conn, msg: Delivery<Pong>| {
            pongs.lock().unwrap().push(format!("pong {}", msg.payload.n));
            async { Ok(()) }.boxed()
        }));
    assert_eq!(consumer.process_once().await.unwrap(), 8);
    assert_eq!(*log.lock().unwrap(), ["pings [0, 1, 2]", "pong 3", "pong 4", "pings [5, 6, 7]"]);
}
