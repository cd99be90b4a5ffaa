use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use conveyor_queue::{handler_fn, Consumer, Delivery, HandlerError, Outgoing, RetryPolicy, dead_letters, publish, replay, replay_all};
use futures::FutureExt;

use crate::common::*;

fn make_visible_now(id: uuid::Uuid) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query("UPDATE conveyor.inbox SET visible_at = now() WHERE message_id = $1").bind(id)
}

#[tokio::test]
async fn a_handler_that_always_fails_ends_dead_with_every_error_and_replay_runs_it_again() {
    let p = pair().await;
    let ids = p.publish(0..1).await;
    p.relay_all().await;
    let healed = Arc::new(AtomicBool::new(false));
    let h = healed.clone();
    let consumer = Consumer::new(p.subscriber.clone()).subscribe_with(
        handler_fn(move |conn, msg: Delivery<Ping>| {
            let healed = h.load(Ordering::SeqCst);
            async move {
                if !healed {
                    return Err(HandlerError::retry(anyhow::anyhow!("boom on attempt {}", msg.attempt)));
                }
                Ok(record_effect(conn, &msg).await?)
            }
            .boxed()
        }),
        RetryPolicy { max_attempts: 3, base: Duration::from_secs(60), max: Duration::from_secs(60), jitter: 0.0 },
    );
    for attempt in 1..=3 {
        assert_eq!(consumer.process_once().await.unwrap(), 1, "attempt {attempt} runs");
        // Backoff hides it for a minute; skip the wait instead of sleeping through it.
        make_visible_now(ids[0]).execute(&p.subscriber).await.unwrap();
    }
    assert_eq!(consumer.process_once().await.unwrap(), 0, "a dead message is not claimed again");

    let dead = dead_letters(&p.subscriber, Some("test.ping"), None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, ids[0]);
    assert_eq!(dead[0].attempts, 3);
    let errors: Vec<&str> = dead[0].errors.as_array().unwrap().iter().map(|e| e["error"].as_str().unwrap()).collect();
    assert_eq!(errors, ["boom on attempt 1", "boom on attempt 2", "boom on attempt 3"]);

    healed.store(true, Ordering::SeqCst);
    assert!(replay(&p.subscriber, ids[0]).await.unwrap());
    assert!(!replay(&p.subscriber, ids[0]).await.unwrap(), "only dead messages can be replayed");
    assert_eq!(consumer.process_once().await.unwrap(), 1);
    assert_exactly_once(&p.subscriber, &ids).await;
    let (state, errors): (String, serde_json::Value) =
        sqlx::query_as("SELECT 'done', errors FROM conveyor.inbox_done WHERE message_id = $1").bind(ids[0]).fetch_one(&p.subscriber).await.unwrap();
    assert_eq!(state, "done");
    assert_eq!(errors.as_array().unwrap().len(), 3, "the history of the failed attempts is kept");
}

#[tokio::test]
async fn replay_all_revives_every_dead_message_of_a_topic() {
    let p = pair().await;
    let ids = p.publish(0..5).await;
    p.relay_all().await;
    let fail = Consumer::new(p.subscriber.clone()).subscribe_with(
        handler_fn(|_, _: Delivery<Ping>| async { Err(HandlerError::permanent(anyhow::anyhow!("rejected"))) }.boxed()),
        RetryPolicy::default(),
    );
    assert_eq!(fail.process_once().await.unwrap(), 5);
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox WHERE state = 'dead' AND attempts = 1").await, 5, "permanent errors are not retried");
    assert_eq!(replay_all(&p.subscriber, Some("test.other")).await.unwrap(), 0);
    assert_eq!(replay_all(&p.subscriber, Some("test.ping")).await.unwrap(), 5);
    let ok = Consumer::new(p.subscriber.clone())
        .subscribe(handler_fn(|conn, msg: Delivery<Ping>| async move { Ok(record_effect(conn, &msg).await?) }.boxed()));
    assert_eq!(ok.process_once().await.unwrap(), 5);
    assert_exactly_once(&p.subscriber, &ids).await;
}

#[tokio::test]
async fn attempt_k_is_not_claimable_before_its_backoff() {
    let p = pair().await;
    let ids = p.publish(0..1).await;
    p.relay_all().await;
    let policy = RetryPolicy { max_attempts: 5, base: Duration::from_secs(10), max: Duration::from_secs(3600), jitter: 0.5 };
    let consumer = Consumer::new(p.subscriber.clone()).subscribe_with(
        handler_fn(|_, _: Delivery<Ping>| async { Err(HandlerError::retry(anyhow::anyhow!("down"))) }.boxed()),
        policy,
    );
    for attempt in 1..=4 {
        assert_eq!(consumer.process_once().await.unwrap(), 1);
        let (visible_at, failed_at): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
            "SELECT visible_at, (errors -> -1 ->> 'at')::timestamptz FROM conveyor.inbox WHERE message_id = $1",
        )
        .bind(ids[0])
        .fetch_one(&p.subscriber)
        .await
        .unwrap();
        let wait = (visible_at - failed_at).to_std().unwrap();
        let ceiling = policy.ceiling(attempt);
        assert!(wait <= ceiling && wait >= ceiling.mul_f64(0.5), "attempt {attempt}: waits {wait:?}, ceiling {ceiling:?}");
        assert_eq!(ceiling, Duration::from_secs(10 * 2u64.pow(attempt as u32 - 1)));
        // Before its time, attempt k + 1 cannot be claimed.
        assert_eq!(consumer.process_once().await.unwrap(), 0, "claimable before its backoff after attempt {attempt}");
        make_visible_now(ids[0]).execute(&p.subscriber).await.unwrap();
    }
}

#[tokio::test]
async fn a_payload_the_handler_type_rejects_is_dead_at_once_with_a_clear_error() {
    let p = pair().await;
    let mut tx = p.publisher.begin().await.unwrap();
    let poison = publish(&mut tx, Outgoing::new("test.ping", serde_json::json!({"n": "not a number"}))).await.unwrap();
    tx.commit().await.unwrap();
    let good = p.publish(1..3).await;
    p.relay_all().await;
    let consumer = Consumer::new(p.subscriber.clone())
        .subscribe(handler_fn(|conn, msg: Delivery<Ping>| async move { Ok(record_effect(conn, &msg).await?) }.boxed()));
    assert_eq!(consumer.process_once().await.unwrap(), 3);
    assert_eq!(consumer.process_once().await.unwrap(), 0, "no retry storm");
    assert_exactly_once(&p.subscriber, &good).await;
    let dead = dead_letters(&p.subscriber, None, None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].message_id, dead[0].attempts), (poison, 1));
    let error = dead[0].errors[0]["error"].as_str().unwrap();
    assert!(error.contains("does not decode as") && error.contains("Ping") && error.contains("invalid type"), "{error}");
}

#[tokio::test]
async fn a_panicking_handler_is_a_failed_attempt_not_a_crash() {
    let p = pair().await;
    let ids = p.publish(0..1).await;
    p.relay_all().await;
    let consumer = Consumer::new(p.subscriber.clone()).subscribe_with(
        handler_fn(|_, _: Delivery<Ping>| async { panic!("handler bug") }.boxed()),
        RetryPolicy { max_attempts: 1, ..RetryPolicy::default() },
    );
    assert_eq!(consumer.process_once().await.unwrap(), 1);
    let dead = dead_letters(&p.subscriber, None, None, 10).await.unwrap();
    assert_eq!(dead[0].message_id, ids[0]);
    assert_eq!(dead[0].errors[0]["error"], "handler panicked: handler bug");
}

/// A retry's backoff ending is announced by no notification: an idle consumer used to find
/// it only at its next poll. It now looks up when the next waiting message is due and wakes
/// then: with a 30 s poll, the retry after a 300 ms backoff runs within seconds.
#[tokio::test]
async fn an_idle_consumer_runs_a_retry_when_its_backoff_ends_not_at_the_next_poll() {
    let p = pair().await;
    let ids = p.publish(0..1).await;
    p.relay_all().await;
    let failed_at: Arc<std::sync::Mutex<Option<std::time::Instant>>> = Arc::default();
    let f = failed_at.clone();
    let consumer = Consumer::new(p.subscriber.clone())
        .with_options(conveyor_queue::ConsumerOptions { poll_interval: Duration::from_secs(30), ..fast_options(2) })
        .subscribe_with(
            handler_fn(move |conn, msg: Delivery<Ping>| {
                let f = f.clone();
                async move {
                    if msg.attempt == 1 {
                        *f.lock().unwrap() = Some(std::time::Instant::now());
                        return Err(HandlerError::retry(anyhow::anyhow!("first attempt fails")));
                    }
                    Ok(record_effect(conn, &msg).await?)
                }
                .boxed()
            }),
            RetryPolicy { max_attempts: 3, base: Duration::from_millis(300), max: Duration::from_millis(300), jitter: 0.0 },
        );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { consumer.run(shutdown).await }
    });
    // Far below the 30 s poll; far above the 300 ms backoff on any machine.
    wait_until("the retry ran", Duration::from_secs(10), || async {
        count(&p.subscriber, "SELECT count(*) FROM effects").await == 1
    })
    .await;
    let took = failed_at.lock().unwrap().expect("the first attempt ran").elapsed();
    assert!(took >= Duration::from_millis(250), "the retry waited for its backoff ({took:?})");
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_exactly_once(&p.subscriber, &ids).await;
}
