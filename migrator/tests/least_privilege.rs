//! Least privilege, against a real PostgreSQL: every service's database provisioned as a
//! deployment provisions it (`conveyor_devpg::provision_database`: a migrator, a runtime, a
//! relay and a puller role), migrated and granted by the migrators' own code, then each role tried on
//! what it may and may not do.

use std::collections::BTreeMap;

use conveyor_contracts::{publishers_to, service, subscribers_of};
use conveyor_devpg::{DatabaseRoles, ProvisionedDatabase, provision_database};
use conveyor_platform::db::Migrator;
use conveyor_platform::{DbArgs, GrantArgs};
use conveyor_queue::{Consumer, Delivery, Event, Outgoing, Relay, Routes, handler_fn, publish};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

const SERVICES: [(&str, &Migrator); 5] = [
    (service::CATALOG, &conveyor_catalog::MIGRATOR),
    (service::ORDER, &conveyor_order::MIGRATOR),
    (service::STOCK, &conveyor_stock::MIGRATOR),
    (service::PAYMENT, &conveyor_payment::MIGRATOR),
    (service::NOTIFICATION, &conveyor_notification::MIGRATOR),
];

/// PostgreSQL's `insufficient_privilege`.
const REFUSED: &str = "42501";

/// The five databases, provisioned, migrated and granted.
struct Shop {
    dbs: BTreeMap<&'static str, ProvisionedDatabase>,
}

async fn shop() -> Shop {
    let admin = conveyor_devpg::shared_admin_url().await;
    let prefix = format!("lp{}_", &Uuid::now_v7().simple().to_string()[22..]);
    let mut dbs = BTreeMap::new();
    for (svc, _) in SERVICES {
        let (receives, publishes) = (!publishers_to(svc).is_empty(), !subscribers_of(svc).is_empty());
        let roles = DatabaseRoles::for_service(&prefix, svc, receives, publishes);
        dbs.insert(svc, provision_database(&admin, &format!("{prefix}{svc}"), &roles).await.unwrap());
    }
    let migrations = SERVICES.iter().map(|(svc, migrator)| migrate(&dbs[svc], svc, migrator));
    futures::future::try_join_all(migrations).await.unwrap();
    Shop { dbs }
}

fn grants(db: &ProvisionedDatabase) -> GrantArgs {
    GrantArgs {
        runtime_role: Some(db.roles.runtime.clone()),
        relay_roles: db.roles.relay.iter().cloned().collect(),
        puller_roles: db.roles.puller.iter().cloned().collect(),
    }
}

/// What `<svc>-migrator --runtime-role … --relay-role … --puller-role …` does, with the migrator's URL.
async fn migrate(db: &ProvisionedDatabase, svc: &str, migrator: &Migrator) -> anyhow::Result<()> {
    migrate_with(&db.migrator, &grants(db), svc, migrator).await
}

async fn migrate_with(url: &str, grants: &GrantArgs, svc: &str, migrator: &Migrator) -> anyhow::Result<()> {
    let db = DbArgs { database_url: url.to_owned(), db_max_connections: 2 };
    conveyor_platform::db::migrate(&db, grants, svc, migrator).await
}

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap_or_else(|e| panic!("{}: {e}", conveyor_platform::db::redact(url)))
}

async fn run(conn: &mut PgConnection, sql: &str) -> Result<u64, sqlx::Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(conn).await.map(|r| r.rows_affected())
}

/// `sql` is refused for lack of privilege (in a transaction rolled back afterwards, so that
/// nothing a refusal would not have stopped sticks).
#[track_caller]
fn refused<'a>(conn: &'a mut PgConnection, sql: &'a str) -> impl Future<Output = ()> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let mut tx = conn.begin().await.unwrap();
        match run(&mut tx, sql).await {
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(REFUSED) => {}
            other => panic!("{caller}: expected a refusal (42501) of {sql:?}, got {other:?}"),
        }
        tx.rollback().await.unwrap();
    }
}

#[track_caller]
fn allowed<'a>(conn: &'a mut PgConnection, sql: &'a str) -> impl Future<Output = ()> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let mut tx = conn.begin().await.unwrap();
        if let Err(e) = run(&mut tx, sql).await {
            panic!("{caller}: {sql:?} should be allowed: {e}");
        }
        tx.rollback().await.unwrap();
    }
}

#[tokio::test]
async fn the_migrator_owns_everything_and_the_other_roles_nothing() {
    let shop = shop().await;
    for db in shop.dbs.values() {
        let mut admin = connect(&db.admin).await;
        let owners: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT pg_get_userbyid(c.relowner)::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname IN ('public', 'conveyor')
             UNION SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = 'conveyor'
             UNION SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = current_database()",
        )
        .fetch_all(&mut admin)
        .await
        .unwrap();
        assert_eq!(owners, vec![db.roles.migrator.clone()]);
        // The database is closed to PUBLIC: only its own roles may connect.
        let acl: String = sqlx::query_scalar("SELECT datacl::text FROM pg_database WHERE datname = current_database()").fetch_one(&mut admin).await.unwrap();
        assert!(!acl.contains("{=") && !acl.contains(",="), "no entry for PUBLIC in {acl}");
    }
}

#[tokio::test]
async fn the_runtime_role_does_its_services_work_and_no_ddl() {
    let shop = shop().await;
    let stock = &shop.dbs[service::STOCK];
    let mut rt = connect(&stock.runtime).await;
    // What the service does: its tables (a sequence behind `movements`), the queue's tables,
    // LISTEN and advisory locks, and the check every API and worker runs at start.
    let product = Uuid::now_v7();
    allowed(
        &mut rt,
        &format!(
            "INSERT INTO items (product_id, available) VALUES ('{product}', 5);
             INSERT INTO movements (product_id, kind, quantity) VALUES ('{product}', 'initial', 5);
             UPDATE items SET available = 4 WHERE product_id = '{product}';
             SELECT * FROM reservations FOR UPDATE SKIP LOCKED; DELETE FROM reservations;
             INSERT INTO conveyor.outbox (message_id, topic, payload) VALUES ('{product}', 't.x', '{{}}');
             DELETE FROM conveyor.outbox; UPDATE conveyor.inbox SET attempts = 0; DELETE FROM conveyor.inbox_done;
             LISTEN conveyor_inbox; SELECT pg_try_advisory_xact_lock_shared(1), pg_notify('conveyor_inbox', '');
             SELECT version FROM public._sqlx_migrations; SELECT version FROM conveyor._sqlx_migrations;
             INSERT INTO conveyor.fault_flags (name, value) VALUES ('slowdown_ms', 1) ON CONFLICT (name) DO UPDATE SET value = 0;
             SELECT * FROM conveyor.fault_flags; DELETE FROM conveyor.fault_flags;"
        ),
    )
    .await;
    let pool = sqlx::PgPool::connect(&stock.runtime).await.unwrap();
    conveyor_platform::db::require_migrated(&pool, service::STOCK, &conveyor_stock::MIGRATOR).await.unwrap();

    // No DDL, anywhere; no TEMP tables; no rewriting the migration history.
    for sql in [
        "CREATE TABLE sneaky (x int)",
        "CREATE TABLE conveyor.sneaky (x int)",
        "CREATE SCHEMA sneaky",
        "CREATE TEMP TABLE sneaky (x int)",
        "CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE INDEX sneaky ON items (updated_at)",
        "DROP TABLE items",
        "DROP TABLE conveyor.inbox",
        "ALTER TABLE items ADD COLUMN sneaky int",
        "ALTER TABLE conveyor.outbox SET (autovacuum_enabled = off)",
        "TRUNCATE items",
        "TRUNCATE conveyor.inbox",
        "SELECT setval('movements_id_seq', 1)",
        "INSERT INTO public._sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99, 'x', true, '', 0)",
        "DELETE FROM conveyor._sqlx_migrations",
        "DELETE FROM conveyor._platform_migrations",
        "UPDATE public._sqlx_migrations SET success = false",
        "GRANT SELECT ON items TO PUBLIC",
        "VACUUM items",
    ] {
        match sql {
            // A non-owner's GRANT and VACUUM are not errors: the first grants nothing (a
            // warning), the second skips the table. Checked below instead.
            "GRANT SELECT ON items TO PUBLIC" | "VACUUM items" => {
                let _ = run(&mut rt, sql).await;
            }
            _ => refused(&mut rt, sql).await,
        }
    }
    let mut admin = connect(&stock.admin).await;
    let public_can_read: bool = sqlx::query_scalar("SELECT has_table_privilege('public', 'items', 'SELECT')").fetch_one(&mut admin).await.unwrap();
    assert!(!public_can_read, "the runtime role could not pass its rights on");
}

#[tokio::test]
async fn no_role_can_connect_to_another_services_database() {
    let shop = shop().await;
    for (svc, db) in &shop.dbs {
        let roles = [
            Some((&db.roles.migrator, &db.migrator)),
            Some((&db.roles.runtime, &db.runtime)),
            db.roles.relay.as_ref().zip(db.relay.as_ref()),
            db.roles.puller.as_ref().zip(db.puller.as_ref()),
        ];
        for (role, url) in roles.into_iter().flatten() {
            connect(url).await;
            for (other_svc, other_db) in shop.dbs.iter().filter(|(o, _)| o != &svc) {
                let elsewhere = conveyor_devpg::with_user(&other_db.admin, role, url_password(url));
                match PgConnection::connect(&elsewhere).await {
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(REFUSED) => {
                        assert!(e.message().contains("permission denied for database"), "{e}")
                    }
                    other => panic!("{role} must not connect to {other_svc}'s database: {other:?}"),
                }
            }
        }
    }
}

fn url_password(url: &str) -> &str {
    let userinfo = url.split_once("://").unwrap().1.rsplit_once('@').unwrap().0;
    userinfo.split_once(':').unwrap().1
}

#[tokio::test]
async fn the_relay_role_delivers_through_the_real_relay_and_can_do_nothing_else() {
    let shop = shop().await;
    let (order, stock) = (&shop.dbs[service::ORDER], &shop.dbs[service::STOCK]);
    let relay_url = stock.relay.clone().unwrap();

    // The order worker's relay, connected as it is deployed: the outbox with the runtime
    // role, the subscriber's inbox with the subscriber's relay role. A message relayed twice
    // (a relay that crashed before its outbox delete committed) is dropped by the inbox.
    let outbox = sqlx::PgPool::connect(&order.runtime).await.unwrap();
    let routes = Routes::new().route("order.placed", [service::STOCK]);
    let relay = Relay::connect(outbox.clone(), routes, [(service::STOCK.to_owned(), relay_url.clone())]).unwrap();
    let msg = Outgoing::new("order.placed", serde_json::json!({"order_id": "o-1"})).with_header("traceparent", "00-ab-cd-01");
    for _ in 0..2 {
        let mut tx = outbox.begin().await.unwrap();
        publish(&mut tx, msg.clone()).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(relay.relay_once().await.unwrap(), 1);
    }
    let mut admin = connect(&stock.admin).await;
    let delivered: Vec<(Uuid, String, serde_json::Value, String)> =
        sqlx::query_as("SELECT message_id, topic, payload::jsonb, state FROM conveyor.inbox").fetch_all(&mut admin).await.unwrap();
    assert_eq!(delivered, vec![(msg.id, "order.placed".to_owned(), serde_json::json!({"order_id": "o-1"}), "pending".to_owned())]);

    // Nothing else: not one byte of the inbox read back, no change to a delivered message,
    // no forged state, nothing of the outbox, of the service's tables (it may not even look
    // into `public`), no DDL.
    let mut relay_conn = connect(&relay_url).await;
    for sql in [
        "SELECT payload FROM conveyor.inbox",
        "SELECT message_id FROM conveyor.inbox",
        "SELECT count(*) FROM conveyor.inbox",
        "SELECT * FROM conveyor.inbox_done",
        "SELECT * FROM conveyor.outbox",
        "INSERT INTO conveyor.outbox (message_id, topic, payload) VALUES (gen_random_uuid(), 'x', '{}')",
        "UPDATE conveyor.inbox SET state = 'done'",
        "DELETE FROM conveyor.inbox",
        "TRUNCATE conveyor.inbox",
        "INSERT INTO conveyor.inbox (message_id, topic, payload, published_at, state) VALUES (gen_random_uuid(), 'x', '{}', now(), 'dead')",
        "INSERT INTO conveyor.inbox (message_id, topic, payload, published_at, visible_at) VALUES (gen_random_uuid(), 'x', '{}', now(), 'infinity')",
        "INSERT INTO conveyor.inbox (message_id, topic, payload, published_at) VALUES (gen_random_uuid(), 'x', '{}', now()) RETURNING payload",
        "INSERT INTO conveyor.inbox (message_id, topic, payload, published_at) VALUES (gen_random_uuid(), 'x', '{}', now()) ON CONFLICT (message_id) DO NOTHING",
        "INSERT INTO conveyor.inbox_done (message_id, topic, attempts, published_at, received_at) VALUES (gen_random_uuid(), 'x', 1, now(), now())",
        "SELECT * FROM public.items",
        "SELECT * FROM public.reservations",
        "INSERT INTO public.items (product_id, available) VALUES (gen_random_uuid(), 1)",
        "SELECT * FROM public._sqlx_migrations",
        "CREATE TABLE public.sneaky (x int)",
        "CREATE TABLE conveyor.sneaky (x int)",
        "CREATE TEMP TABLE sneaky (x int)",
        "DROP TABLE conveyor.inbox",
        "ALTER TABLE conveyor.inbox ADD COLUMN sneaky int",
    ] {
        refused(&mut relay_conn, sql).await;
    }
    // What it may do is the relay's statement, as the test above ran it.
    allowed(&mut relay_conn, "INSERT INTO conveyor.inbox (message_id, topic, key, payload, headers, published_at) VALUES (gen_random_uuid(), 'x', NULL, '{}', '{}', now()) ON CONFLICT DO NOTHING").await;
}

/// A message of the order service, as the test's pulling consumer sees it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Placed {
    order_id: String,
}

impl Event for Placed {
    const TOPIC: &'static str = "order.placed";
}

#[tokio::test]
async fn the_puller_role_pulls_through_the_real_consumer_and_can_do_nothing_else() {
    let shop = shop().await;
    let (order, stock) = (&shop.dbs[service::ORDER], &shop.dbs[service::STOCK]);
    let puller_url = order.puller.clone().unwrap();

    // The stock worker pulling the order outbox as deployed: its own database with its
    // runtime role, the publisher's with the publisher's puller role.
    let outbox = sqlx::PgPool::connect(&order.runtime).await.unwrap();
    let msg = Outgoing::event(&Placed { order_id: "o-1".into() }).unwrap();
    let mut tx = outbox.begin().await.unwrap();
    publish(&mut tx, msg.clone()).await.unwrap();
    tx.commit().await.unwrap();
    let consumer = Consumer::new(sqlx::PgPool::connect(&stock.runtime).await.unwrap())
        .named(service::STOCK)
        .subscribe(handler_fn(|conn, m: Delivery<Placed>| {
            Box::pin(async move {
                // Any write of the subscriber's own: the effect that commits with the cursor.
                sqlx::query("INSERT INTO conveyor.fault_flags (name, value) VALUES ($1, 1)")
                    .bind(format!("seen_{}", m.payload.order_id.replace('-', "_")))
                    .execute(conn)
                    .await?;
                Ok(())
            })
        }))
        .pull_from(service::ORDER, sqlx::PgPool::connect(&puller_url).await.unwrap());
    let mut handled = 0;
    for _ in 0..200 {
        handled += consumer.process_once().await.unwrap();
        if handled > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(handled, 1);
    let mut stock_admin = connect(&stock.admin).await;
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM conveyor.fault_flags WHERE name = 'seen_o_1'").fetch_one(&mut stock_admin).await.unwrap();
    assert_eq!(seen, 1);
    consumer.report_pull_positions().await.unwrap();
    let mut admin = connect(&order.admin).await;
    let reported: i64 = sqlx::query_scalar("SELECT count(*) FROM conveyor.pull_positions WHERE subscriber = 'stock' AND tx > '0'")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(reported >= 1, "the pulled position is reported into the publisher's database");

    // Nothing else: no message written, changed or deleted, no position deleted, nothing of
    // the inbox or of the service's tables, no DDL.
    let mut puller_conn = connect(&puller_url).await;
    for sql in [
        "INSERT INTO conveyor.outbox (message_id, topic, payload) VALUES (gen_random_uuid(), 'x', '{}')",
        "UPDATE conveyor.outbox SET payload = '{}'",
        "DELETE FROM conveyor.outbox",
        "TRUNCATE conveyor.outbox",
        "DELETE FROM conveyor.pull_positions",
        "SELECT * FROM conveyor.inbox",
        "SELECT * FROM conveyor.inbox_done",
        "INSERT INTO conveyor.inbox (message_id, topic, payload, published_at) VALUES (gen_random_uuid(), 'x', '{}', now())",
        "SELECT * FROM conveyor.fault_flags",
        "SELECT * FROM public.orders",
        "SELECT * FROM public._sqlx_migrations",
        "CREATE TABLE conveyor.sneaky (x int)",
        "CREATE TEMP TABLE sneaky (x int)",
        "DROP TABLE conveyor.outbox",
    ] {
        refused(&mut puller_conn, sql).await;
    }
    allowed(&mut puller_conn, "SELECT count(*) FROM conveyor.outbox").await;
}

#[tokio::test]
async fn later_tables_follow_and_a_second_run_changes_nothing() {
    let shop = shop().await;
    let payment = &shop.dbs[service::PAYMENT];
    // A table a later migration adds: the runtime role gets it by default privileges, the
    // relay role does not.
    let mut migrator = connect(&payment.migrator).await;
    run(&mut migrator, "CREATE TABLE refunds (id bigserial PRIMARY KEY, note text)").await.unwrap();
    let mut rt = connect(&payment.runtime).await;
    allowed(&mut rt, "INSERT INTO refunds (note) VALUES ('x'); SELECT * FROM refunds; UPDATE refunds SET note = 'y'; DELETE FROM refunds").await;
    refused(&mut rt, "DROP TABLE refunds").await;
    let mut relay = connect(payment.relay.as_ref().unwrap()).await;
    refused(&mut relay, "SELECT * FROM public.refunds").await;

    // The grants are repeated on every run, concurrently too, and end where they were.
    let mut admin = connect(&payment.admin).await;
    let acl = "SELECT string_agg(c.relname || ':' || coalesce(c.relacl::text, '') || ':' || coalesce(a.attacl::text, ''), ',' ORDER BY c.relname, a.attname)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attacl IS NOT NULL
               WHERE n.nspname IN ('public', 'conveyor')";
    let before: String = sqlx::query_scalar(acl).fetch_one(&mut admin).await.unwrap();
    let again = (0..3).map(|_| migrate(payment, service::PAYMENT, &conveyor_payment::MIGRATOR));
    futures::future::try_join_all(again).await.unwrap();
    let after: String = sqlx::query_scalar(acl).fetch_one(&mut admin).await.unwrap();
    assert_eq!(before, after);
}

#[tokio::test]
async fn the_migrator_refuses_roles_that_would_defeat_the_grants() {
    let shop = shop().await;
    let (catalog, order) = (&shop.dbs[service::CATALOG], &shop.dbs[service::ORDER]);
    let with = |runtime: &str, relay: &[&str]| GrantArgs {
        runtime_role: Some(runtime.to_owned()),
        relay_roles: relay.iter().map(|s| s.to_string()).collect(),
        puller_roles: Vec::new(),
    };
    let puller = GrantArgs { puller_roles: vec![catalog.roles.runtime.clone()], ..with(&catalog.roles.runtime, &[]) };
    let cases = [
        (with("postgres", &[]), "is a superuser"),
        (with(&catalog.roles.migrator, &[]), "is the role this migrator runs as"),
        (with("no_such_role", &[]), "does not exist"),
        (with(&catalog.roles.runtime, &[&catalog.roles.runtime]), "both the runtime role and a relay role"),
        (puller, "as a puller role and as the runtime or a relay role"),
    ];
    for (grants, expected) in cases {
        let e = migrate_with(&catalog.migrator, &grants, service::CATALOG, &conveyor_catalog::MIGRATOR).await.unwrap_err();
        assert!(format!("{e:#}").contains(expected), "{expected}: {e:#}");
    }
    // A role that does not own the database cannot close it, so the grant step says so.
    let mut admin = connect(&catalog.admin).await;
    let database = current_db(&mut admin).await;
    run(&mut admin, &format!("GRANT CONNECT ON DATABASE {database} TO {}", order.roles.migrator)).await.unwrap();
    let as_other = conveyor_devpg::with_user(&catalog.admin, &order.roles.migrator, url_password(&order.migrator));
    let pool = sqlx::PgPool::connect(&as_other).await.unwrap();
    let e = conveyor_platform::grants::apply(&pool, &grants(catalog)).await.unwrap_err();
    assert!(format!("{e:#}").contains("does not own this database"), "{e:#}");
}

async fn current_db(conn: &mut PgConnection) -> String {
    sqlx::query_scalar("SELECT current_database()::text").fetch_one(conn).await.unwrap()
}
