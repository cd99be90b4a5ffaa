//! `schedule`: a message for this database's own consumer, claimable from a given time on.

use std::time::Duration;

use conveyor_queue::{Consumer, Delivery, Outgoing, handler_fn, schedule};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::common::*;

#[tokio::test]
async fn a_scheduled_message_runs_once_at_its_time_and_a_rolled_back_one_never() {
    let (_db, pool) = queue_db().await;
    sqlx::raw_sql("ALTER TABLE effects ADD COLUMN at timestamptz NOT NULL DEFAULT clock_timestamp()").execute(&pool).await.unwrap();
    let consumer = Consumer::new(pool.clone())
        .with_options(fast_options(2))
        .subscribe(handler_fn(|conn, msg: Delivery<Ping>| async move { Ok(record_effect(conn, &msg).await?) }.boxed()));
    let stop = CancellationToken::new();
    let s = stop.clone();
    let consuming = tokio::spawn(async move { consumer.run(s).await });

    // One kept, one rolled back, both due in 1.5 s (the database's clock decides).
    let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&pool).await.unwrap();
    let due = now + chrono::Duration::milliseconds(1500);
    let kept = Outgoing::event(&Ping { n: 1 }).unwrap();
    let kept_id = kept.id;
    let mut tx = pool.begin().await.unwrap();
    schedule(&mut tx, &[kept], due).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    schedule(&mut tx, &[Outgoing::event(&Ping { n: 2 }).unwrap()], due).await.unwrap();
    tx.rollback().await.unwrap();

    wait_until("the scheduled message has run", Duration::from_secs(30), || async { count(&pool, "SELECT count(*) FROM effects").await > 0 }).await;
    let (n, at): (i64, chrono::DateTime<chrono::Utc>) = sqlx::query_as("SELECT n, at FROM effects").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 1);
    assert!(at >= due, "ran at {at}, before its time {due}");
    stop.cancel();
    consuming.await.unwrap().unwrap();
    assert_exactly_once(&pool, &[kept_id]).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM conveyor.inbox").await, 0, "the rolled-back message must not exist");
}

#[tokio::test]
async fn an_unknown_topic_name_is_refused() {
    let (_db, pool) = queue_db().await;
    let mut tx = pool.begin().await.unwrap();
    let err = schedule(&mut tx, &[Outgoing::new("Not A Topic", serde_json::json!({}))], chrono::Utc::now()).await.unwrap_err();
    assert!(err.to_string().contains("topic"), "{err}");
}
