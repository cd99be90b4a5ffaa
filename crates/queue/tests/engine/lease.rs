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
