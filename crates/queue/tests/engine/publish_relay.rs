use std::collections::HashMap;
use std::time::Duration;

use conveyor_queue::{Outgoing, Relay, RelayOptions, Routes, publish, publish_event};
use tokio_util::sync::CancellationToken;

use crate::common::*;

#[tokio::test]
async fn a_rolled_back_transaction_publishes_nothing_and_a_committed_one_is_relayed_intact() {
    let p = pair().await;
    let mut tx = p.publisher.begin().await.unwrap();
    publish_event(&mut tx, &Ping { n: 1 }).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(count(&p.publisher, "SELECT count(*) FROM conveyor.outbox").await, 0);

    let mut tx = p.publisher.begin().await.unwrap();
    let msg = Outgoing::event(&Ping { n: 7 }).unwrap().with_header("traceparent", "00-abc-def-01");
    let id = publish(&mut tx, msg).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(id.get_version_num(), 7, "message ids are UUID v7");

    p.relay_all().await;
    assert_eq!(count(&p.publisher, "SELECT count(*) FROM conveyor.outbox").await, 0);
    let (topic, key, payload, headers, state): (String, Option<String>, serde_json::Value, serde_json::Value, String) =
        sqlx::query_as("SELECT topic, key, payload, headers, state FROM conveyor.inbox WHERE message_id = $1")
            .bind(id)
            .fetch_one(&p.subscriber)
            .await
            .unwrap();
    assert_eq!(topic, "test.ping");
    assert_eq!(key.as_deref(), Some("k7"));
    assert_eq!(payload, serde_json::json!({"n": 7}));
    assert_eq!(headers, serde_json::json!({"traceparent": "00-abc-def-01"}));
    assert_eq!(state, "pending");
}

#[tokio::test]
async fn the_relay_fans_out_to_every_subscriber_and_keeps_unrouted_topics() {
    let p = pair().await;
    let (third_db, third) = queue_db().await;
    let routes = Routes::new().route("test.ping", ["sub", "third"]).route("test.other", ["third"]);
    // Subscriber databases as configuration names them.
    let config = [format!("sub={}", p.subscriber_db.url), format!("third={}", third_db.url)];
    let urls = config.iter().map(|s| conveyor_queue::parse_subscriber(s).unwrap());
    let relay = Relay::connect(p.publisher.clone(), routes, urls).unwrap();

    let mut tx = p.publisher.begin().await.unwrap();
    publish_event(&mut tx, &Ping { n: 1 }).await.unwrap();
    publish(&mut tx, Outgoing::new("test.other", serde_json::json!({}))).await.unwrap();
    publish(&mut tx, Outgoing::new("test.nobody", serde_json::json!({}))).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(relay.relay_once().await.unwrap(), 2);
    assert_eq!(relay.relay_once().await.unwrap(), 0);
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox").await, 1);
    assert_eq!(count(&third, "SELECT count(*) FROM conveyor.inbox").await, 2);
    // A topic nobody subscribes to is not dropped: it waits, visible in the depth figures.
    let depth = conveyor_queue::depth(&p.publisher).await.unwrap();
    assert_eq!(depth.len(), 1);
    assert_eq!((depth[0].topic.as_str(), depth[0].count), ("test.nobody", 1));
}

#[tokio::test]
async fn a_relay_without_a_database_for_a_subscriber_is_refused() {
    let p = pair().await;
    let routes = Routes::new().route("test.ping", ["sub", "ghost"]);
    let subs = HashMap::from([("sub".to_owned(), p.subscriber.clone())]);
    let err = Relay::new(p.publisher.clone(), routes, subs).err().expect("must be refused");
    assert!(err.to_string().contains("ghost"), "{err}");
}

#[tokio::test]
async fn parallel_relays_deliver_every_message_once() {
    let p = pair().await;
    let ids = p.publish(0..5000).await;
    let relay = p.relay().with_options(RelayOptions { batch_size: 50, concurrency: 4, poll_interval: Duration::from_millis(50) });
    // Two relay processes' worth of loops, racing on one outbox.
    let stop = CancellationToken::new();
    let (a, b) = (relay.clone(), relay.clone());
    let (sa, sb) = (stop.clone(), stop.clone());
    let ta = tokio::spawn(async move { a.run(sa).await });
    let tb = tokio::spawn(async move { b.run(sb).await });
    wait_until("the outbox is empty", Duration::from_secs(120), || async {
        count(&p.publisher, "SELECT count(*) FROM conveyor.outbox").await == 0
    })
    .await;
    stop.cancel();
    ta.await.unwrap().unwrap();
    tb.await.unwrap().unwrap();
    let inbox: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT message_id FROM conveyor.inbox ORDER BY message_id").fetch_all(&p.subscriber).await.unwrap();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(inbox, expected);
}

/// The next notification on `conveyor_outbox`, found by sending a marker after it:
/// notifications arrive in commit order, so whatever precedes the marker was sent before.
async fn notified_before_marker(listener: &mut sqlx::postgres::PgListener, pool: &sqlx::PgPool) -> bool {
    sqlx::query("SELECT pg_notify('conveyor_outbox', 'marker')").execute(pool).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), listener.recv()).await.unwrap().unwrap();
    if first.payload() == "marker" {
        return false;
    }
    let marker = tokio::time::timeout(Duration::from_secs(30), listener.recv()).await.unwrap().unwrap();
    assert_eq!(marker.payload(), "marker");
    true
}

#[tokio::test]
async fn publishers_notify_only_when_a_relay_waits_and_no_wake_up_is_lost() {
    let p = pair().await;
    let mut listener = sqlx::postgres::PgListener::connect(&p.publisher_db.url).await.unwrap();
    listener.listen(conveyor_queue::OUTBOX_CHANNEL).await.unwrap();

    // Nobody idle (no one holds the lock): publishing sends no NOTIFY.
    p.publish(0..3).await;
    assert!(!notified_before_marker(&mut listener, &p.publisher).await, "notified with no relay waiting");

    // An idle relay holds the lock: publishing notifies, once per transaction.
    let mut idle_relay = p.publisher.acquire().await.unwrap();
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(conveyor_queue::OUTBOX_WAKE_LOCK).fetch_one(&mut *idle_relay).await.unwrap();
    assert!(held);
    p.publish(3..6).await;
    assert!(notified_before_marker(&mut listener, &p.publisher).await, "an idle relay was not notified");
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(conveyor_queue::OUTBOX_WAKE_LOCK).execute(&mut *idle_relay).await.unwrap();

    // A publisher that found nobody waiting keeps the lock (shared) until it commits, so a
    // relay that goes idle meanwhile cannot take it before the message is visible.
    let mut tx = p.publisher.begin().await.unwrap();
    publish_event(&mut tx, &Ping { n: 9 }).await.unwrap();
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(conveyor_queue::OUTBOX_WAKE_LOCK).fetch_one(&mut *idle_relay).await.unwrap();
    assert!(!taken, "a relay went idle while an unannounced message was uncommitted");
    tx.commit().await.unwrap();
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(conveyor_queue::OUTBOX_WAKE_LOCK).fetch_one(&mut *idle_relay).await.unwrap();
    assert!(taken);
}

/// A publishing transaction that stays open holds the wake lock (shared) all along. An idle
/// relay must still be woken by the messages committed meanwhile: its listener queues for
/// the lock, so later writers fail their shared try and notify. (A listener that only tried
/// the lock never got it here and left the messages to the poll, 1 h in this test.)
#[tokio::test]
async fn an_idle_relay_is_woken_while_a_publishing_transaction_stays_open() {
    let p = pair().await;
    let relay = p.relay().with_options(RelayOptions { batch_size: 100, concurrency: 1, poll_interval: Duration::from_secs(3600) });
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });

    let mut open = p.publisher.begin().await.unwrap();
    publish_event(&mut open, &Ping { n: 1 }).await.unwrap();
    // The relay is idle and its listener is after the lock, held by the open transaction.
    wait_until("the idle relay's listener asks for the wake lock", Duration::from_secs(30), || async {
        count(&p.publisher, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_%advisory_lock($1)' AND pid <> pg_backend_pid()").await >= 1
    })
    .await;

    let ids = p.publish(2..5).await;
    wait_until("the messages committed meanwhile reach the inbox", Duration::from_secs(30), || async {
        count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox").await == ids.len() as i64
    })
    .await;

    open.commit().await.unwrap();
    wait_until("the open transaction's message follows once committed", Duration::from_secs(30), || async {
        count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox").await == 4
    })
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_statement_with_writes_publishes_only_where_its_gate_holds_and_all_or_nothing() {
    static NOTE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        conveyor_queue::statement_with("n AS (INSERT INTO notes (id, body) VALUES ($6, $7) ON CONFLICT DO NOTHING RETURNING true)", "EXISTS (SELECT FROM n)")
    });
    let p = pair().await;
    sqlx::query("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)").execute(&p.publisher).await.unwrap();
    let note = |id: i32, body: Option<&'static str>| {
        let pool = p.publisher.clone();
        async move {
            let msgs = [Outgoing::event(&Ping { n: i64::from(id) }).unwrap()];
            let mut conn = pool.acquire().await.unwrap();
            conveyor_queue::publish_with(&mut conn, NOTE.as_str(), &msgs, |q| q.bind(id).bind(body)).await
        }
    };
    // No transaction around it: the note and its message commit together.
    assert_eq!(note(1, Some("first")).await.unwrap(), 1);
    // The gate does not hold (the note exists): nothing is published.
    assert_eq!(note(1, Some("again")).await.unwrap(), 0);
    // A write that fails fails the statement: neither the note nor its message is kept.
    assert!(note(2, None).await.is_err());
    assert_eq!(count(&p.publisher, "SELECT count(*) FROM notes").await, 1);
    assert_eq!(count(&p.publisher, "SELECT count(*) FROM conveyor.outbox").await, 1);

    p.relay_all().await;
    let payloads: Vec<serde_json::Value> = sqlx::query_scalar("SELECT payload FROM conveyor.inbox").fetch_all(&p.subscriber).await.unwrap();
    assert_eq!(payloads, vec![serde_json::json!({"n": 1})]);
}
