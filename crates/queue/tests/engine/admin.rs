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
    let d = depth(&p.subscriber).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].table, d[0].state.as_str(), d[0].count), (QueueTable::Inbox, "pending", 3));
    assert!(d[0].oldest_age_seconds.unwrap() >= 90.0);
    consumer.process_once().await.unwrap();
    // Done messages are not depth (they left the inbox for the dedupe record).
    assert_eq!(depth(&p.subscriber).await.unwrap(), []);
    assert_eq!(oldest_pending_age(&p.subscriber).await.unwrap(), None);
    // Dead letters are.
    p.publish(3..6).await;
    p.relay_all().await;
    sqlx::query("UPDATE conveyor.inbox SET state = 'dead'").execute(&p.subscriber).await.unwrap();
    let d = depth(&p.subscriber).await.unwrap();
    assert_eq!((d[0].state.as_str(), d[0].count, d[0].oldest_age_seconds), ("dead", 3, None));
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
    // The first 2000 were published and finished two hours ago (their UUID v7 ids say when
    // they were published), the last 500 just now. A third group was published two hours
    // ago but only finished now: it stays, its window runs from its completion.
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    let old_id = |i: usize| {
        let t = (two_hours_ago + Duration::from_millis(i as u64)).duration_since(std::time::UNIX_EPOCH).unwrap();
        uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, t.as_secs(), t.subsec_nanos()))
    };
    let (old, late): (Vec<uuid::Uuid>, Vec<uuid::Uuid>) = ((0..2000).map(old_id).collect(), (2000..2100).map(old_id).collect());
    sqlx::query(
        "UPDATE conveyor.inbox_done i SET message_id = o.new, done_at = now() - interval '2 hours'
         FROM UNNEST($1::uuid[], $2::uuid[]) AS o(old, new) WHERE i.message_id = o.old",
    )
    .bind(&ids[..2000])
    .bind(&old)
    .execute(&p.subscriber)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO conveyor.inbox_done (message_id, topic, attempts, published_at, received_at)
         SELECT id, 'test.ping', 1, now() - interval '2 hours', now() - interval '2 hours' FROM UNNEST($1::uuid[]) id",
    )
    .bind(&late)
    .execute(&p.subscriber)
    .await
    .unwrap();
    // Rows a worker of the previous version marked done in the inbox itself are pruned too.
    let legacy: Vec<uuid::Uuid> = (2100..2110).map(old_id).collect();
    sqlx::query(
        "INSERT INTO conveyor.inbox (message_id, topic, payload, published_at, state, done_at)
         SELECT id, 'test.ping', '{}', now() - interval '2 hours', 'done', now() - interval '2 hours' FROM UNNEST($1::uuid[]) id",
    )
    .bind(&legacy)
    .execute(&p.subscriber)
    .await
    .unwrap();
    // Small batches: 2000 rows take several short transactions.
    assert_eq!(prune_once(&p.subscriber, Duration::from_secs(3600), 300).await.unwrap(), 2010);
    assert_eq!(prune_once(&p.subscriber, Duration::from_secs(3600), 300).await.unwrap(), 0);
    let left: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT message_id FROM conveyor.inbox_done ORDER BY message_id").fetch_all(&p.subscriber).await.unwrap();
    assert_eq!(left, [&late[..], &ids[2000..]].concat());
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox").await, 0);
    sqlx::query("DELETE FROM conveyor.inbox_done WHERE message_id = ANY($1)").bind(&late).execute(&p.subscriber).await.unwrap();

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
    assert_eq!(consumer.process_once().await.unwrap(), 500, "the copies are claimed …");
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox").await, 0, "… and dropped");
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox_done").await, 500);
    assert_eq!(count(&p.subscriber, "SELECT count(*) FROM effects").await, 2500);
}

/// Explains `statement` as a generic plan on `conn`.
async fn generic_plan(conn: &mut sqlx::PgConnection, statement: &str, args: &str) -> String {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET plan_cache_mode = force_generic_plan; PREPARE s AS {statement}"))).execute(&mut *conn).await.unwrap();
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN EXECUTE s{args}"))).fetch_all(&mut *conn).await.unwrap();
    sqlx::raw_sql("DEALLOCATE s; RESET plan_cache_mode").execute(&mut *conn).await.unwrap();
    plan.join("\n")
}

#[tokio::test]
async fn hot_statements_use_their_indexes_even_under_generic_plans() {
    let p = pair().await;
    p.publish(0..3000).await;
    sqlx::raw_sql(
        "INSERT INTO conveyor.inbox (message_id, topic, payload, published_at)
         SELECT gen_random_uuid(), 'test.ping', '{}', now() FROM generate_series(1, 10000) g;
         INSERT INTO conveyor.inbox_done (message_id, topic, attempts, published_at, received_at)
         SELECT gen_random_uuid(), 'test.ping', 1, now(), now() FROM generate_series(1, 20000) g;
         ANALYZE conveyor.inbox_done;
         INSERT INTO conveyor.outbox (message_id, topic, payload) SELECT gen_random_uuid(), 'test.ping', '{}' FROM generate_series(1, 3000);
         ANALYZE conveyor.inbox; ANALYZE conveyor.outbox;
         INSERT INTO conveyor.pull_cursors (source, part, gen) SELECT 'pub', p, g FROM generate_series(0, 15) p, generate_series(0, 999) g;
         ANALYZE conveyor.pull_cursors",
    )
    .execute(&p.subscriber)
    .await
    .unwrap();
    sqlx::raw_sql("ANALYZE conveyor.outbox").execute(&p.publisher).await.unwrap();
    // sqlx prepares every statement; after five runs Postgres may switch to a generic plan,
    // which knows neither the topics nor the LIMIT. Force it, and look.
    use conveyor_queue::sql;
    let cases = [
        (&p.subscriber, sql::TX_CLAIM, "('{test.ping}', 10, NULL)", "inbox_claim_idx"),
        (&p.subscriber, sql::TX_CLAIM, "('{test.ping}', 10, now())", "inbox_claim_idx"),
        (&p.subscriber, sql::LEASE_CLAIM, "('{test.ping}', '{1000}', 10)", "inbox_claim_idx"),
        (&p.subscriber, sql::LEASE_DONE, "('{00000000-0000-0000-0000-000000000000}', '{1}')", "inbox_pkey"),
        (&p.subscriber, sql::PRUNE, "('00000000-0000-0000-0000-000000000000', 'ffffffff-ffff-ffff-ffff-ffffffffffff', 3600000, 1000)", "inbox_done_pkey"),
        (&p.publisher, sql::RELAY_CLAIM, "('{test.ping}', 100, '00000000-0000-0000-0000-000000000000')", "outbox_pkey"),
        // Pull delivery: a partition's log from its cursor, the partitions with work, and
        // the publisher's pruning of what every subscriber passed.
        (&p.publisher, conveyor_queue::pull::READ, "(3, 0, 0, '{5}', '{0}', '{test.ping}', 100, false)", "outbox_pull_idx"),
        (&p.publisher, conveyor_queue::pull::READ, "(3, 0, 0, '{5}', '{0}', '{test.ping}', 100, true)", "outbox_pull_idx"),
        (&p.publisher, conveyor_queue::pull::PARTS_WITH_WORK, "('{test.ping}', '{0,1,2}', '{0,0,0}', '{0,0,0}', '{1}', '{5}', '{0}')", "outbox_pull_idx"),
        (&p.publisher, conveyor_queue::pull::PRUNE, "(1000, '00000000-0000-0000-0000-000000000000')", "outbox_pkey"),
        // A partition's cursor: the newest generation, looked for among those written
        // since the one the process knew (the older ones, while the horizon is held, are
        // many, and their entries stay in the index).
        (&p.subscriber, conveyor_queue::pull::CLAIM_CURSOR, "('pub', '{3,1,2}', '{990,990,990}')", "AND (gen >= "),
        (&p.subscriber, conveyor_queue::pull::CURSORS, "('pub', '{0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15}', '{990,990,990,990,990,990,990,990,990,990,990,990,990,990,990,990}')", "AND (gen >= "),
        // Scraped for metrics every few seconds: counts what waits (the inbox holds nothing
        // else now: a scan of it is a count of its rows), never the dedupe record.
        (&p.subscriber, sql::DEPTH, "", ""),
        (&p.subscriber, sql::OLDEST, "", ""),
    ];
    for (pool, statement, args, index) in cases {
        let plan = generic_plan(&mut pool.acquire().await.unwrap(), statement, args).await;
        assert!(plan.contains(index), "{statement}\n{plan}");
        // The outbox and the inbox hold only what waits (every row counts for depth); the
        // claims still read their index only, and inbox_done is never walked whole.
        let scans_inbox = plan.contains("Seq Scan on inbox_done") || (plan.contains("Seq Scan on inbox") && ![sql::DEPTH, sql::OLDEST].contains(&statement));
        let scans_outbox_to_claim = (plan.contains("Seq Scan on outbox") && statement != sql::DEPTH) || plan.contains("Seq Scan on pull_cursors");
        assert!(!scans_inbox && !scans_outbox_to_claim, "a statement that scans its table:\n{statement}\n{plan}");
    }
}

#[tokio::test]
async fn claims_keep_their_index_after_vacuum_empties_the_tables() {
    // Vacuum used to cut an emptied inbox or outbox back to a few pages; a generic plan
    // made then read the whole table (with a sort) at every claim while it filled again.
    let p = pair().await;
    // The inbox also needs its publication time; the outbox stamps its own.
    for (pool, table, column, value) in [(&p.subscriber, "inbox", ", published_at", ", now()"), (&p.publisher, "outbox", "", "")] {
        let fill = format!(
            "INSERT INTO conveyor.{table} (message_id, topic, payload{column}) SELECT gen_random_uuid(), 'test.ping', jsonb_build_object('pad', repeat('x', 800)){value} FROM generate_series(1, 3000);
             DELETE FROM conveyor.{table}"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(fill)).execute(pool).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE conveyor.{table}"))).execute(pool).await.unwrap();
    }
    let pages: i32 = sqlx::query_scalar("SELECT relpages FROM pg_class WHERE oid = 'conveyor.inbox'::regclass").fetch_one(&p.subscriber).await.unwrap();
    assert!(pages > 100, "the emptied inbox keeps its pages: {pages}");
    use conveyor_queue::sql;
    let cases = [
        (&p.subscriber, sql::TX_CLAIM, "('{test.ping}', 10, NULL)", "Seq Scan on inbox"),
        (&p.subscriber, sql::LEASE_CLAIM, "('{test.ping}', '{1000}', 10)", "Seq Scan on inbox"),
        (&p.publisher, sql::RELAY_CLAIM, "('{test.ping}', 100, '00000000-0000-0000-0000-000000000000')", "Seq Scan on outbox"),
    ];
    for (pool, statement, args, scan) in cases {
        let plan = generic_plan(&mut pool.acquire().await.unwrap(), statement, args).await;
        assert!(!plan.contains(scan) && !plan.contains("Sort"), "{statement}\n{plan}");
    }
}

#[tokio::test]
async fn a_claim_that_took_rows_plans_the_rest_of_its_transaction_generically() {
    let p = pair().await;
    p.publish(0..3).await;
    p.relay_all().await;
    let mut tx = p.subscriber.begin().await.unwrap();
    let mode = || sqlx::query_scalar::<_, String>("SHOW plan_cache_mode");
    assert_eq!(mode().fetch_one(&mut *tx).await.unwrap(), "auto");
    let claimed = sqlx::query(conveyor_queue::sql::TX_CLAIM).bind(vec!["test.ping"]).bind(10i64).bind(None::<chrono::DateTime<chrono::Utc>>).fetch_all(&mut *tx).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert_eq!(mode().fetch_one(&mut *tx).await.unwrap(), "force_generic_plan", "the handlers' statements are planned once");
    tx.commit().await.unwrap();
    let mut conn = p.subscriber.acquire().await.unwrap();
    assert_eq!(mode().fetch_one(&mut *conn).await.unwrap(), "auto", "only for that transaction");
}

#[tokio::test]
async fn the_queue_schema_keeps_its_own_migration_history_beside_a_services() {
    let db = conveyor_devpg::test_db().await;
    let pool = db.pool().await;
    // A service with a migration whose version equals the queue's own.
    let service = sqlx::migrate::Migrator::with_migrations(vec![sqlx::migrate::Migration::new(
        20260101000001,
        "orders".into(),
        sqlx::migrate::MigrationType::Simple,
        sqlx::SqlSafeStr::into_sql_str("CREATE TABLE orders (id bigint PRIMARY KEY)"),
        false,
    )]);
    conveyor_queue::migrate(&pool).await.unwrap();
    service.run(&pool).await.unwrap();
    conveyor_queue::migrate(&pool).await.unwrap(); // again: nothing to do
    service.run(&pool).await.unwrap();
    let queue_history = count(&pool, "SELECT count(*) FROM conveyor._sqlx_migrations").await;
    let service_history = count(&pool, "SELECT count(*) FROM public._sqlx_migrations").await;
    assert_eq!((queue_history, service_history), (conveyor_queue::migrator().iter().count() as i64, 1));
    assert_eq!(count(&pool, "SELECT count(*) FROM conveyor.inbox").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM orders").await, 0);
}
