use std::time::Duration;

use conveyor_queue::{Consumer, Delivery, QueueTable, depth, handler_fn, oldest_pending_age, prune_once};
use futures::FutureExt;

use crate::common::*;

#[tokio::test]
async fn depth_and_oldest_age_describe_what_waits() {
    let p = pair().await;
    assert_eq!(oldest_pending_age(&p.subscriber).await.unwrap(), None);
    p.publish(0..3).await;
    let d = depth(&p.publisher).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].table, d[0].topic.as_str(), d[0].state.as_str(), d[0].count), (QueueTable::Outbox, "test.ping", "pending", 3));
    assert!(oldest_pending_age(&p.publisher).await.unwrap().is_some());

    p.relay_all().await;
    sqlx::query("UPDATE conveyor.inbox SET published_at = now() - interval '90 seconds'").execute(&p.subscriber).await.unwrap();
    let age = oldest_pending_age(&p.subscriber).await.unwrap().unwrap();
    assert!(age >= Duration::from_secs(90) && age < Duration::from_secs(200), "{age:?}");
    let consumer = Consumer::new(p.subscriber.clone())
        .subscribe(handler_fn(|conn, msg: Delivery<Ping>| async move { Ok(record_effect(conn, &msg).await?) }.boxed()));
    consumer.process_once().await.unwrap();
    let d = depth(&p.subscriber).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].table, d[0].state.as_str(), d[0].count, d[0].oldest_age_seconds), (QueueTable::Inbox, "done", 3, None));
    assert_eq!(oldest_pending_age(&p.subscriber).await.unwrap(), None);
}

#[tokio::test]
async fn pruning_keeps_the_dedupe_window_and_dedupe_holds_inside_it() {
    let p = pair().await;
    let ids = p.publish(0..2500).await;
    p.relay_all().await;
    let consumer = Consumer::new(p.subscriber.clone())
        .with_options(conveyor_queue::ConsumerOptions { batch_size: 500, ..fast_options(1) })
        .subscribe(handler_fn(|conn, msg: Delivery<Ping>| async move { Ok(record_effect(conn, &msg).await?) }.boxed()));
    while consumer.process_once().await.unwrap() > 0 {}
    // The first 2000 finished two hours ago, the last 500 just now.
    sqlx::query("UPDATE conveyor.inbox SET done_at = now() - interval '2 hours' WHERE message_id = ANY($1)")
        .bind(&ids[..2000])
        .execute(&p.subscriber)
        .await
        .unwrap();
    // Small batches: 2000 rows take several short transactions.
    assert_eq!(prune_once(&p.subscriber, Duration::from_secs(3600), 300).await.unwrap(), 2000);
    assert_eq!(prune_once(&p.subscriber, Duration::from_secs(3600), 300).await.unwrap(), 0);
    let left: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT message_id FROM conveyor.inbox ORDER BY message_id").fetch_all(&p.subscriber).await.unwrap();
    assert_eq!(left, ids[2000..]);

    // A repeated delivery of a message inside the window (a relay that repeats a batch) is
    // rejected: put the outbox rows back and relay them again.
    sqlx::query(
        "INSERT INTO conveyor.outbox (message_id, topic, key, payload) SELECT id, 'test.ping', NULL, jsonb_build_object('n', 0) FROM UNNEST($1::uuid[]) id",
    )
    .bind(&ids[2000..])
    .execute(&p.publisher)
    .await
    .unwrap();
    p.relay_all().await;
    assert_eq!(consumer.process_once().await.unwrap(), 0);
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox").await, 500);
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM effects").await, 2500);
}

#[tokio::test]
async fn prune_uses_its_index_not_a_table_scan() {
    let (_db, pool) = queue_db().await;
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql("SET enable_seqscan = off").execute(&mut *conn).await.unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT message_id FROM conveyor.inbox WHERE state = 'done' AND done_at < now() - interval '1 hour' ORDER BY done_at LIMIT 1000",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert!(plan.iter().any(|l| l.contains("inbox_prune_idx")), "{plan:#?}");
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT message_id FROM conveyor.inbox WHERE state IN ('pending', 'running') AND visible_at <= now() AND topic = ANY('{a}') ORDER BY visible_at LIMIT 50",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert!(plan.iter().any(|l| l.contains("inbox_claim_idx")), "{plan:#?}");
}
