use std::time::Duration;

use conveyor_queue::{Consumer, Delivery, HandlerError, LeaseOptions, RetryPolicy, dead_letters};
use sqlx::PgPool;

use crate::common::*;

/// A leased handler with the pool it writes its (non-transactional) effect with.
fn recording(pool: PgPool) -> impl Fn(Delivery<Ping>) -> futures::future::BoxFuture<'static, Result<(), HandlerError>> + Send + Sync + 'static {
    use futures::FutureExt;
    move |msg| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await?;
            Ok(record_effect(&mut conn, &msg).await?)
        }
        .boxed()
    }
}

#[tokio::test]
async fn leased_messages_are_handled_outside_the_claim_and_completed() {
    let p = pair().await;
    let ids = p.publish(0..20).await;
    p.relay_all().await;
    let consumer = Consumer::new(p.subscriber.clone()).subscribe_leased(recording(p.subscriber.clone()), LeaseOptions::default());
    assert_eq!(consumer.process_once().await.unwrap(), 20);
    assert_exactly_once(&p.subscriber, &ids).await;
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox_done WHERE attempts = 1").await, 20);
}

#[tokio::test]
async fn a_stale_worker_cannot_complete_a_message_claimed_again_since() {
    let p = pair().await;
    let ids = p.publish(0..1).await;
    p.relay_all().await;
    let pool = p.subscriber.clone();
    // While this handler runs, its lease is taken over: another worker claims the message
    // (attempt 2), exactly what happens after a lease expires under a slow worker.
    let consumer = Consumer::new(p.subscriber.clone()).subscribe_leased(
        move |msg: Delivery<Ping>| {
            let pool = pool.clone();
            async move {
                sqlx::query("UPDATE conveyor.inbox SET attempts = attempts + 1, visible_at = now() + interval '1 hour' WHERE message_id = $1")
                    .bind(msg.id)
                    .execute(&pool)
                    .await?;
                Ok(())
            }
        },
        LeaseOptions::default(),
    );
    assert_eq!(consumer.process_once().await.unwrap(), 1);
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM conveyor.inbox WHERE message_id = $1").bind(ids[0]).fetch_one(&p.subscriber).await.unwrap();
    assert_eq!((state.as_str(), attempts), ("running", 2), "the completion of attempt 1 must not land on attempt 2");
}

#[tokio::test]
async fn a_handler_running_past_its_lease_is_abandoned_and_retried() {
    let p = pair().await;
    let ids = p.publish(0..1).await;
    p.relay_all().await;
    let consumer = Consumer::new(p.subscriber.clone()).subscribe_leased(
        |_: Delivery<Ping>| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        },
        LeaseOptions { lease: Duration::from_millis(300), retry: RetryPolicy::default() },
    );
    assert_eq!(consumer.process_once().await.unwrap(), 1);
    let (state, errors): (String, serde_json::Value) =
        sqlx::query_as("SELECT state, errors FROM conveyor.inbox WHERE message_id = $1").bind(ids[0]).fetch_one(&p.subscriber).await.unwrap();
    assert_eq!(state, "pending");
    assert!(errors[0]["error"].as_str().unwrap().contains("did not finish within its lease"), "{errors}");
}

#[tokio::test]
async fn a_lease_that_expires_on_the_last_attempt_makes_the_message_dead() {
    let p = pair().await;
    let ids = p.publish(0..1).await;
    p.relay_all().await;
    // As a worker that died during attempt 3 of 3 leaves it.
    sqlx::query("UPDATE conveyor.inbox SET state = 'running', attempts = 3, visible_at = now() - interval '1 second'")
        .execute(&p.subscriber)
        .await
        .unwrap();
    let consumer = Consumer::new(p.subscriber.clone()).subscribe_leased(recording(p.subscriber.clone()), LeaseOptions::default());
    assert_eq!(consumer.process_once().await.unwrap(), 1);
    let dead = dead_letters(&p.subscriber, None, None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, ids[0]);
    assert!(dead[0].errors[0]["error"].as_str().unwrap().contains("lease of attempt 3 expired"), "{:?}", dead[0].errors);
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM effects").await, 0);
}

#[tokio::test]
async fn a_snoozed_message_comes_back_without_using_an_attempt_in_either_mode() {
    let p = pair().await;
    let ids = p.publish(0..2).await;
    p.relay_all().await;
    let snooze = || HandlerError::snooze(Duration::from_secs(3600), anyhow::anyhow!("circuit open"));
    let retry = RetryPolicy { max_attempts: 1, ..RetryPolicy::default() };
    // With one attempt allowed, a counted failure would make the message dead.
    let leased = Consumer::new(p.subscriber.clone())
        .subscribe_leased(move |_msg: Delivery<Ping>| async move { Err::<(), _>(snooze()) }, LeaseOptions { retry, ..LeaseOptions::default() });
    let tx = Consumer::new(p.subscriber.clone())
        .subscribe_with(conveyor_queue::handler_fn(move |_c, _m: Delivery<Ping>| futures::FutureExt::boxed(async move { Err::<(), _>(snooze()) })), retry);
    for consumer in [leased, tx] {
        sqlx::query("UPDATE conveyor.inbox SET visible_at = now()").execute(&p.subscriber).await.unwrap();
        assert_eq!(consumer.process_once().await.unwrap(), 2);
        let rows: Vec<(String, i32, i64, bool)> = sqlx::query_as(
            "SELECT state, attempts, jsonb_array_length(errors)::bigint, visible_at > now() + interval '59 minutes' FROM conveyor.inbox WHERE message_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&p.subscriber)
        .await
        .unwrap();
        assert!(rows.iter().all(|r| r == &("pending".to_string(), 0, 0, true)), "{rows:?}");
    }
}

#[tokio::test]
async fn a_lease_batch_handler_gets_the_batch_in_one_call_and_each_message_is_settled_by_its_own_outcome() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let p = pair().await;
    let mut tx = p.publisher.begin().await.unwrap();
    let poison = conveyor_queue::publish(&mut tx, conveyor_queue::Outgoing::new("test.ping", serde_json::json!({"n": "not a number"}))).await.unwrap();
    tx.commit().await.unwrap();
    let ids = p.publish(0..10).await;
    p.relay_all().await;
    let (calls, pool) = (Arc::new(AtomicUsize::new(0)), p.subscriber.clone());
    let counted = calls.clone();
    // Even messages have their effect; odd ones fail for good, 3 is snoozed.
    let consumer = Consumer::new(p.subscriber.clone()).subscribe_leased_batch(
        move |msgs: Vec<Delivery<Ping>>| {
            let (pool, calls) = (pool.clone(), counted.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let mut conn = pool.acquire().await.unwrap();
                let mut outcomes = Vec::new();
                for msg in &msgs {
                    outcomes.push(match msg.payload.n {
                        3 => Err(HandlerError::snooze(Duration::from_secs(3600), anyhow::anyhow!("not now"))),
                        n if n % 2 == 1 => Err(HandlerError::permanent(anyhow::anyhow!("odd {n}"))),
                        _ => record_effect(&mut conn, msg).await.map_err(HandlerError::from),
                    });
                }
                outcomes
            }
        },
        LeaseOptions::default(),
    );
    assert_eq!(consumer.process_once().await.unwrap(), 11);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the ten decodable messages in one call");
    let even: Vec<_> = ids.iter().step_by(2).copied().collect();
    assert_exactly_once(&p.subscriber, &even).await;
    let dead = dead_letters(&p.subscriber, None, None, 10).await.unwrap();
    let mut dead_ids: Vec<_> = dead.iter().map(|d| d.message_id).collect();
    dead_ids.sort();
    let mut want = vec![poison, ids[1], ids[5], ids[7], ids[9]];
    want.sort();
    assert_eq!(dead_ids, want, "the odd ones but the snoozed 3, and the payload that does not decode");
    let poisoned = dead.iter().find(|d| d.message_id == poison).unwrap();
    assert!(poisoned.errors[0]["error"].as_str().unwrap().contains("does not decode as"), "{:?}", poisoned.errors);
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM conveyor.inbox WHERE message_id = $1").bind(ids[3]).fetch_one(&p.subscriber).await.unwrap();
    assert_eq!((state.as_str(), attempts), ("pending", 0), "a snooze in a batch uses no attempt");
}

#[tokio::test]
async fn a_lease_batch_handler_that_answers_wrongly_or_panics_has_every_message_tried_again() {
    let p = pair().await;
    let ids = p.publish(0..4).await;
    p.relay_all().await;
    let short = Consumer::new(p.subscriber.clone())
        .subscribe_leased_batch(|msgs: Vec<Delivery<Ping>>| async move { msgs.iter().skip(1).map(|_| Ok(())).collect() }, LeaseOptions::default());
    let panicking = Consumer::new(p.subscriber.clone()).subscribe_leased_batch(
        |_: Vec<Delivery<Ping>>| async move {
            panic!("boom");
            #[allow(unreachable_code)]
            Vec::new()
        },
        LeaseOptions::default(),
    );
    for (consumer, error) in [(short, "answered 3 outcomes for 4 messages"), (panicking, "handler panicked: boom")] {
        sqlx::query("UPDATE conveyor.inbox SET visible_at = now()").execute(&p.subscriber).await.unwrap();
        assert_eq!(consumer.process_once().await.unwrap(), 4);
        let rows: Vec<(String, serde_json::Value)> =
            sqlx::query_as("SELECT state, errors -> -1 -> 'error' FROM conveyor.inbox WHERE message_id = ANY($1)").bind(&ids).fetch_all(&p.subscriber).await.unwrap();
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|(state, e)| state == "pending" && e.as_str().unwrap().contains(error)), "{rows:?}");
    }
}
