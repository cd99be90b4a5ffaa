//! The ceiling: the saga's SQL replayed by pgbench, without any application.
//!
//! One scratch database holds every table the saga touches: the services' own tables from
//! their real migrations (their names do not collide, so they share `public`), and one
//! queue schema per service (`q_order`, `q_stock`, `q_payment`, `q_notification`: the
//! engine's migration with `conveyor` renamed), standing for the service databases.
//!
//! The script replays, per saga, what the services run, statement for statement and in
//! the same transactions:
//!
//! 1. **order-api** `POST /orders`: the product copy (the API keeps it; read here before
//!    each order), then one statement per order — the product's version checked, the
//!    idempotency key with the stored response (the view of that one event), the order's
//!    `placed` event appended to its stream, `order.placed` into the outbox.
//! 2. **relays** (every publishing worker): claim outbox rows, copy them into each
//!    subscriber's inbox (routing from `conveyor_contracts::routes`), delete them.
//! 3. **stock-worker** `order.placed` (a batch handler): one transaction claims a batch
//!    and, for the whole batch at once, looks up the orders handled already, locks the
//!    items, records the reservations, moves the units, writes the movements and publishes
//!    the `stock.reserved` events (to payment, and to order for the order's stream).
//! 4. **order-worker** `stock.reserved`: claims a batch, locks its orders (the consumer's
//!    lock keys) and, per message, reads the order's stream and appends `stock_reserved`.
//! 5. **payment-worker** `stock.reserved` (a batch handler): claims a batch and, for the
//!    whole batch at once, looks up the orders paid already, locks the customers, writes the
//!    payments, debits the balances, writes the ledger entries and publishes the
//!    `payment.captured` events.
//! 6. **order-worker** `payment.captured`: claims a batch, locks its orders and, per
//!    message, reads the order's stream, appends `payment_captured` and `confirmed` and
//!    publishes `order.confirmed`.
//! 7. **notification-worker** `order.confirmed` (lease mode): claims a batch (committed),
//!    then per message checks whether it was notified, reads the template, does the order
//!    API's read of the lookup (the order's view, or its stream if the projector has not
//!    written the view yet) and records the notification with its `notification.sent` (each
//!    its own transaction); then settles the batch.
//! 8. **order-worker** `notification.sent`: claims a batch, locks its orders and, per
//!    message, reads the order's stream and appends `notified`.
//!
//! Beside the script's clients, one more client runs the order worker's projector in a loop
//! ([`projector_script`]): a batch of events after its position, the whole streams of their
//! orders, the views made of them upserted, the position moved; one transaction each.
//!
//! The statements are the ones the services run, taken from their `sql` modules
//! (`conveyor_order::sql`, `conveyor_stock::sql`, …) and from the engine's
//! `conveyor_queue::sql`: nothing here is a copy. Parameters become the values the services
//! would bind: from pgbench variables (`\gset` of an earlier statement, as the service uses
//! what an earlier statement returned) or from the claimed batch (`(:oids::uuid[])[7]`: the
//! 7th message's order id). What cannot be the same is listed in [`DIFFERENCES`].

use std::fmt::Write as _;

use conveyor_contracts::service;

/// Where the replay differs from the shop, for the report.
pub const DIFFERENCES: &[&str] = &[
    "One database instead of one per service: the queue tables of each service live in their own schema; the services' tables share `public` (no two have the same name).",
    "A relay hop is one transaction (claim-and-delete from the outbox and insert into the subscriber's inbox, in one statement); our relay commits the inbox insert on the subscriber's database and then the outbox delete: one commit more per relayed batch and subscriber.",
    "What the services compute in Rust is computed by SQL here: ids (UUID v7, by `saga_uuid_v7()`; a notification's from its order and event by a hash, as the service's UUID v5), the order's events, the message payloads and the stored response (`jsonb_build_object`), the state an order's stream gives (its version, placed event and time, aggregated from the stream as it is read), the values a handler reads from its message (`payload->'order'->>…`, once per batch in the claim), and the projector's views (`saga_order_view`, PL/pgSQL, in the statement that writes them: PostgreSQL's CPU carries the fold the order worker does in Rust).",
    "The order worker's claims take one topic each (stock.reserved, payment.captured, notification.sent, the script's steps in turn), where the shop's one consumer claims whatever of its topics is due, several kinds in one batch under load: more, smaller order-worker transactions here in the batched variant.",
    "No HTTP at all: the client's request to order-api, the notification worker's lookup (its read of the order database is replayed) and its webhook post are not.",
    "No LISTEN/NOTIFY traffic: nobody listens, so the writers' wake-up check never notifies (as in the shop under load, when no worker is idle).",
    "The order API reads a product once and keeps it, reading it again only when its version changed (`PLACE` checks); the replay reads the order's product before each `PLACE`: one statement per order more than the shop.",
    "Every order has one line of quantity 1, for a product and customer chosen uniformly, as the driver of the shop does.",
];

/// The services of the choreography's saga: the ones the replay has queue tables for. (The
/// coordinator is routed to as well, but only the orchestration sends it anything.)
const SERVICES: [&str; 4] = [service::ORDER, service::STOCK, service::PAYMENT, service::NOTIFICATION];

/// The schema standing for a service's queue tables.
pub fn queue_schema(svc: &str) -> String {
    format!("q_{svc}")
}

/// A statement as a service's source has it (`$1`, `$2`, … for its parameters).
#[derive(Debug, Clone, Copy)]
pub struct Sql {
    /// What the script's comments call it.
    pub name: &'static str,
    /// The source file, relative to the workspace root.
    pub source: &'static str,
    /// The statement itself, from the crate that runs it.
    pub text: &'static str,
}

macro_rules! sql {
    ($name:ident, $source:literal, $text:expr) => {
        pub const $name: Sql = Sql { name: stringify!($name), source: $source, text: $text };
    };
}

/// A statement its service builds at first use (the engine's publish with the service's
/// writes, `conveyor_queue::statement_with`).
macro_rules! built_sql {
    ($name:ident, $source:literal, $text:expr) => {
        pub static $name: std::sync::LazyLock<Sql> = std::sync::LazyLock::new(|| Sql { name: stringify!($name), source: $source, text: $text.as_str() });
    };
}

mod order;

// services/order/src/repo.rs and stream.rs (the projector's statements are in `order`)
sql!(PRODUCTS, "services/order/src/repo.rs", conveyor_order::sql::PRODUCTS);
built_sql!(PLACE, "services/order/src/repo.rs", conveyor_order::sql::PLACE);
sql!(GET_VIEW, "services/order/src/repo.rs", conveyor_order::sql::GET_VIEW);
sql!(APPEND, "services/order/src/stream.rs", conveyor_order::sql::APPEND);
sql!(STREAMS, "services/order/src/stream.rs", conveyor_order::sql::STREAMS);

// services/stock/src/repo.rs
sql!(HANDLED, "services/stock/src/repo.rs", conveyor_stock::sql::HANDLED);
sql!(LOCK_ITEMS, "services/stock/src/repo.rs", conveyor_stock::sql::LOCK_ITEMS);
built_sql!(RESERVE, "services/stock/src/repo.rs", conveyor_stock::sql::RESERVE);

// services/payment/src/repo.rs
sql!(PAID, "services/payment/src/repo.rs", conveyor_payment::sql::PAID);
sql!(LOCK_CUSTOMERS, "services/payment/src/repo.rs", conveyor_payment::sql::LOCK_CUSTOMERS);
built_sql!(CAPTURE, "services/payment/src/repo.rs", conveyor_payment::sql::CAPTURE);

// services/notification/src/repo.rs
sql!(TO_NOTIFY, "services/notification/src/repo.rs", conveyor_notification::sql::TO_NOTIFY);
built_sql!(RECORD, "services/notification/src/repo.rs", conveyor_notification::sql::RECORD);

// crates/queue/src/publish.rs: the engine's publish `INSERT` after its wake-up CTE.
sql!(PUBLISH, "crates/queue/src/publish.rs", conveyor_queue::sql::PUBLISH_INSERT);

/// `sql` with `$1`, `$2`, … replaced by `args[0]`, `args[1]`, …: the expressions pgbench
/// sends in their place. Panics on a parameter without an argument (a bug in this file).
pub fn bind(sql: &str, args: &[&str]) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut chars = sql.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) {
            let mut end = i + 1;
            while let Some((j, d)) = chars.peek().copied() {
                if !d.is_ascii_digit() {
                    break;
                }
                end = j + 1;
                chars.next();
            }
            let n: usize = sql[i + 1..end].parse().expect("digits");
            let arg = args.get(n.wrapping_sub(1)).unwrap_or_else(|| panic!("${n} has no argument in {sql}"));
            out.push_str(arg);
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes a bound statement ending with `end` (`;` or a `\gset`), naming its source the
/// first time (`first`) it appears in a batch.
fn put(s: &mut String, first: bool, sql: &Sql, bound: &str, end: &str) {
    if first {
        let _ = writeln!(s, "-- {} ({})", sql.name.to_lowercase(), sql.source);
    }
    let _ = writeln!(s, "{bound}{end}");
}

/// The engine's statement `sql` on the queue tables of `svc`.
fn on_queue(sql: &str, svc: &str) -> String {
    sql.replace("conveyor.", &format!("{}.", queue_schema(svc)))
}

/// The wake-up CTE of the engine's writers (`wake_cte!`), here never notifying anybody.
fn wake_cte(channel: &str, key: i64) -> String {
    format!("wake AS (SELECT CASE WHEN pg_try_advisory_xact_lock_shared({key}) THEN NULL ELSE pg_notify('{channel}', '') END)")
}

/// A consumer's claim turned into one row for pgbench's `\gset`: `n` messages and the
/// arrays `select` builds from `claimed`. The engine's claims are CTEs ending in one
/// statement — `UPDATE … RETURNING …` (lease mode) or `SELECT … FROM d …` (transaction
/// mode) —, which becomes the CTE `claimed`.
pub fn claim_for_gset(claim: &str, select: &str) -> String {
    let at = [")\nUPDATE conveyor.inbox AS i", ")\nSELECT d."]
        .iter()
        .find_map(|mark| claim.find(mark))
        .unwrap_or_else(|| panic!("the engine's claim changed shape; update the saga replay:\n{claim}"));
    format!("{})\n, claimed AS ({})\nSELECT count(*) AS n, {select}\nFROM claimed", &claim[..at], &claim[at + 2..])
}

/// A text[] literal for topic lists.
fn text_array(items: &[&str]) -> String {
    format!("'{{{}}}'::text[]", items.join(","))
}

/// What the generated script needs to know.
#[derive(Debug, Clone, Copy)]
pub struct ScriptOptions {
    /// Orders placed per script run, and messages a consumer claims at once.
    pub batch: usize,
    /// Outbox rows a relay moves at once (the engine's default is 100).
    pub relay_batch: usize,
    pub products: u32,
    pub customers: u32,
}

/// Topics each consumer subscribes to (the services' `handlers::subscribe`). The order
/// worker's claims take one topic each instead (see [`DIFFERENCES`]).
fn consumer_topics(svc: &str) -> &'static [&'static str] {
    match svc {
        service::STOCK => &["product.created", "product.updated", "order.placed", "payment.declined"],
        service::PAYMENT => &["stock.reserved"],
        service::NOTIFICATION => &["order.confirmed", "order.cancelled"],
        _ => &[],
    }
}

/// The pgbench script of one variant: `batch` orders placed (one transaction each), then
/// every later step of their sagas with batches of `batch` messages.
pub fn script(o: &ScriptOptions) -> String {
    let mut s = String::new();
    let b = o.batch;
    let _ = writeln!(
        s,
        "-- The order saga's SQL, replayed by pgbench: one run of this script places {b} order(s), one\n\
         -- transaction each, then takes {b} saga(s) through every later step, each consumer claiming up to\n\
         -- {b} message(s) per transaction and each relay moving up to {} outbox row(s).\n\
         -- Written by `cargo xtask bench saga`; the tables come from saga-ceiling-setup.sql.\n",
        o.relay_batch
    );
    for i in 1..=b {
        order::place(&mut s, o, i);
    }
    relay(&mut s, service::ORDER, o.relay_batch);
    stock(&mut s, b);
    relay(&mut s, service::STOCK, o.relay_batch);
    order::record_reserved(&mut s, b);
    payment(&mut s, b);
    relay(&mut s, service::PAYMENT, o.relay_batch);
    order::confirm(&mut s, b);
    relay(&mut s, service::ORDER, o.relay_batch);
    notify(&mut s, b);
    relay(&mut s, service::NOTIFICATION, o.relay_batch);
    order::record_notified(&mut s, b);
    around_pgbench_gset_bug(&s)
}

/// The order worker's projector (`projection::run`), for a pgbench client of its own beside
/// the script's: one batch of up to 500 events per run, then a pause of 10 ms unless the
/// batch was full (the projector's pause while events keep coming).
pub fn projector_script() -> String {
    let mut s = String::from(
        "-- The order worker's projector, replayed by pgbench: one client runs it in a loop beside the saga's\n\
         -- clients, as order-worker runs its projector task beside its consumer.\n\
         -- Written by `cargo xtask bench saga`; the tables come from saga-ceiling-setup.sql.\n\n\\set j_n 0\n",
    );
    order::project(&mut s);
    let _ = writeln!(s, "\\if :j_n < {}\n\\sleep 10 ms\n\\endif", order::PROJECTOR_BATCH);
    s
}

/// pgbench (15 and earlier) grows its command array in steps of 128 at the end of each
/// parsing round, but a `\gset` round ends early (`continue`) and skips that check: when
/// the SQL command a `\gset` ends is the 128th, 256th, … the next command is written past
/// the array's end and pgbench crashes (`realloc(): invalid next size`). A `\set` inserted
/// before such a command moves it off the boundary.
fn around_pgbench_gset_bug(script: &str) -> String {
    let mut out = String::with_capacity(script.len() + 256);
    let mut commands = 0usize; // commands pgbench has stored so far
    let mut statement = String::new(); // the SQL statement being read
    for line in script.lines() {
        let t = line.trim();
        if statement.is_empty() && (t.is_empty() || t.starts_with("--")) {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if statement.is_empty() && t.starts_with('\\') {
            commands += 1;
            out.push_str(line);
            out.push('\n');
            continue;
        }
        statement.push_str(line);
        statement.push('\n');
        let gset = t.contains(" \\gset");
        if gset || t.ends_with(';') {
            commands += 1;
            if gset && commands.is_multiple_of(128) {
                out.push_str("\\set saga_pgbench_pad 0\n");
                commands += 1;
            }
            out.push_str(&statement);
            statement.clear();
        }
    }
    out.push_str(&statement);
    out
}

/// The engine's publish of `:n` messages on `topic` in one statement, with the arrays
/// `keys` and `payloads`.
fn publish_all(svc: &str, topic: &str, keys: &str, payloads: &str) -> String {
    let insert = with_publish(PUBLISH.text, svc, publish_args(topic, keys, payloads), &[]);
    format!("WITH {}\n{insert}", wake_cte(conveyor_queue::OUTBOX_CHANNEL, conveyor_queue::OUTBOX_WAKE_LOCK))
}

/// The engine's `$1` to `$5` for `:n` messages on `topic` with the arrays `keys` and
/// `payloads`: of `PUBLISH`, and of a service's statement that publishes with its writes
/// (`conveyor_queue::statement_with`).
fn publish_args(topic: &str, keys: &str, payloads: &str) -> Vec<String> {
    vec![
        "(SELECT array_agg(saga_uuid_v7()) FROM generate_series(1, :n::int))".to_owned(),
        format!("array_fill('{topic}'::text, ARRAY[:n::int])"),
        keys.to_owned(),
        payloads.to_owned(),
        "array_fill('{}'::text, ARRAY[:n::int])".to_owned(),
    ]
}

/// `sql` on the queue tables of `svc`, with the engine's `$1` to `$5` from `publish` and
/// the service's own parameters from `own`.
pub(super) fn with_publish(sql: &str, svc: &str, publish: Vec<String>, own: &[&str]) -> String {
    let args: Vec<&str> = publish.iter().map(String::as_str).chain(own.iter().copied()).collect();
    bind(&on_queue(sql, svc), &args)
}

/// The engine's `$1` to `$5` for one message on `topic` (see [`publish_args`]).
pub(super) fn publish_one_args(topic: &str, key: &str, payload: &str) -> Vec<String> {
    vec!["ARRAY[saga_uuid_v7()]".to_owned(), format!("ARRAY['{topic}']"), format!("ARRAY[{key}::text]"), format!("ARRAY[{payload}]"), "ARRAY['{}']".to_owned()]
}

/// The relay of `svc`'s worker: claim-and-delete outbox rows, insert them into every
/// subscriber's inbox (routes from the contracts, to the choreography's services), in one
/// statement.
fn relay(s: &mut String, svc: &str, limit: usize) {
    let routes = conveyor_contracts::routes(svc);
    let replayed = |t: &&str| routes.subscribers(t).iter().any(|sub| SERVICES.contains(&sub.as_str()));
    let topics: Vec<&str> = routes.topics().filter(replayed).collect();
    let mut per_sub: Vec<(String, Vec<&str>)> = Vec::new();
    for t in &topics {
        for sub in routes.subscribers(t).iter().filter(|sub| SERVICES.contains(&sub.as_str())) {
            match per_sub.iter_mut().find(|(s, _)| s == sub) {
                Some((_, ts)) => ts.push(t),
                None => per_sub.push((sub.clone(), vec![t])),
            }
        }
    }
    let claim = bind(&on_queue(conveyor_queue::sql::RELAY_CLAIM, svc), &[&text_array(&topics), &limit.to_string(), "'00000000-0000-0000-0000-000000000000'"]);
    let mut stmt = format!(
        "WITH moved AS ({claim}),\n{}",
        wake_cte(conveyor_queue::INBOX_CHANNEL, conveyor_queue::INBOX_WAKE_LOCK)
    );
    let insert = |sub: &str, ts: &[&str]| {
        format!(
            "INSERT INTO {}.inbox (message_id, topic, key, payload, headers, published_at)\n\
             SELECT m.message_id, m.topic, m.key, m.payload::json, m.headers::json, m.created_at\n\
             FROM moved AS m CROSS JOIN wake WHERE m.topic = ANY({})\n\
             AND NOT EXISTS (SELECT 1 FROM {}.inbox_done AS d WHERE d.message_id = m.message_id)\n\
             ON CONFLICT (message_id) DO NOTHING",
            queue_schema(sub),
            text_array(ts),
            queue_schema(sub)
        )
    };
    let (last, rest) = per_sub.split_last().expect("every publisher of the saga has subscribers");
    for (i, (sub, ts)) in rest.iter().enumerate() {
        let _ = write!(stmt, ",\nto_{i} AS ({})", insert(sub, ts));
    }
    let _ = writeln!(s, "-- == {svc}-worker's relay: up to {limit} outbox row(s) to {} (crates/queue/src/relay.rs) ==", per_sub.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(" and "));
    let _ = writeln!(s, "{stmt}\n{};\n", insert(&last.0, &last.1));
}

/// A transaction-mode consumer's claim of `topics` with the values its handler reads, as
/// arrays.
fn tx_claim(svc: &str, topics: &[&str], batch: usize, select: &str) -> String {
    let claim = claim_for_gset(conveyor_queue::sql::TX_CLAIM, select);
    format!("{} \\gset", bind(&on_queue(&claim, svc), &[&text_array(topics), &batch.to_string(), "NULL"]))
}

/// The i-th element of a claimed array, as `ty`.
fn nth(array: &str, ty: &str, i: usize) -> String {
    format!("(:{array}::{ty}[])[{i}]")
}

/// The stock worker's batch handler: every statement once for the whole claimed batch,
/// with the claimed arrays as its arrays.
fn stock(s: &mut String, batch: usize) {
    let _ = writeln!(s, "-- == stock-worker: order.placed, a batch in one transaction, one handler call (services/stock/src/handlers.rs reserve) ==\nBEGIN;");
    let select = "array_agg(payload::text) AS payloads, array_agg(payload->'order'->>'order_id') AS oids, \
                  array_agg(payload->'order'->'lines'->0->>'product_id') AS pids, array_agg(payload->'order'->'lines'->0->>'quantity') AS qtys";
    let _ = writeln!(s, "{}", tx_claim(service::STOCK, consumer_topics(service::STOCK), batch, select));
    let (oids, pids, qtys) = (":oids::uuid[]", ":pids::uuid[]", ":qtys::bigint[]");
    let lines = format!("(SELECT array_agg(jsonb_build_array(jsonb_build_object('product_id', p, 'quantity', q))::text) FROM UNNEST({pids}, {qtys}) AS u(p, q))");
    let _ = writeln!(s, "\\if :n > 0");
    put(s, true, &HANDLED, &bind(HANDLED.text, &[oids]), ";");
    put(s, true, &LOCK_ITEMS, &bind(LOCK_ITEMS.text, &[pids]), ";");
    // stock.reserved carries the order as order.placed did: the claimed payloads themselves.
    let publish = publish_args("stock.reserved", ":oids::text[]", ":payloads::text[]");
    let own = [oids, &lines, "array_fill(NULL::text, ARRAY[:n::int])", pids, qtys, "'reserve'", oids];
    put(s, true, &RESERVE, &with_publish(RESERVE.text, service::STOCK, publish, &own), ";");
    let _ = writeln!(s, "\\endif");
    let _ = writeln!(s, "COMMIT;\n");
}

/// The payment worker's batch handler: every statement once for the whole claimed batch.
fn payment(s: &mut String, batch: usize) {
    let _ = writeln!(s, "-- == payment-worker: stock.reserved, a batch in one transaction, one handler call (services/payment/src/handlers.rs capture) ==\nBEGIN;");
    let select = "array_agg(payload->'order'->>'order_id') AS oids, array_agg(payload->'order'->>'customer_id') AS cids, \
                  array_agg(payload->'order'->'total'->>'amount_minor') AS totals";
    let _ = writeln!(s, "{}", tx_claim(service::PAYMENT, consumer_topics(service::PAYMENT), batch, select));
    let (oids, cids, totals) = (":oids::uuid[]", ":cids::uuid[]", ":totals::bigint[]");
    let _ = writeln!(s, "\\if :n > 0");
    put(s, true, &PAID, &bind(PAID.text, &[oids]), ";");
    put(s, true, &LOCK_CUSTOMERS, &bind(LOCK_CUSTOMERS.text, &[cids]), ";");
    let ids = "(SELECT array_agg(saga_uuid_v7()) FROM generate_series(1, :n::int))";
    let captured = format!("(SELECT array_agg(saga_captured(o, saga_uuid_v7(), t)) FROM UNNEST({oids}, {totals}) AS u(o, t))");
    let publish = publish_args("payment.captured", ":oids::text[]", &captured);
    let debits = format!("(SELECT array_agg(-t) FROM unnest({totals}) AS t)");
    let own = [ids, oids, cids, totals, "array_fill('EUR'::text, ARRAY[:n::int])", "array_fill(NULL::text, ARRAY[:n::int])", cids, totals, "'capture'", &debits, oids];
    put(s, true, &CAPTURE, &with_publish(CAPTURE.text, service::PAYMENT, publish, &own), ";");
    let _ = writeln!(s, "\\endif");
    let _ = writeln!(s, "COMMIT;\n");
}

fn notify(s: &mut String, batch: usize) {
    let _ = writeln!(
        s,
        "-- == notification-worker: order.confirmed in lease mode, a batch handler (crates/queue/src/consumer/lease.rs, services/notification/src/notifier.rs) ==\n\
         -- the claim commits by itself; one check of the whole batch; the order API's read per notification; the batch's\n\
         -- notifications recorded with their notification.sent in one statement, its own transaction; the batch settled at the end"
    );
    // The messages' ids are minted with the claim: RECORD names them twice (the messages,
    // and which message announces which row).
    let select = "array_agg(message_id) AS ids, array_agg(attempts) AS atts, array_agg(payload->'order'->>'order_id') AS oids, \
                  array_agg(payload->'order'->>'customer_id') AS cids, array_agg(saga_uuid_v7()) AS mids";
    let claim = claim_for_gset(conveyor_queue::sql::LEASE_CLAIM, select);
    let topics = consumer_topics(service::NOTIFICATION);
    let lease_ms = format!("'{{{}}}'::bigint[]", topics.iter().map(|_| "30000").collect::<Vec<_>>().join(","));
    let _ = writeln!(s, "{} \\gset", bind(&on_queue(&claim, service::NOTIFICATION), &[&text_array(topics), &lease_ms, &batch.to_string()]));
    let (oids, cids, mids) = (":oids::uuid[]", ":cids::uuid[]", ":mids::uuid[]");
    let confirmed = "array_fill('order.confirmed'::text, ARRAY[:n::int])";
    let _ = writeln!(s, "\\if :n > 0");
    put(s, true, &TO_NOTIFY, &bind(TO_NOTIFY.text, &[oids, confirmed]), ";");
    let _ = writeln!(s, "\\endif");
    for i in 1..=batch {
        let _ = writeln!(s, "\\if :n >= {i}");
        order::lookup(s, i == 1, &nth("oids", "uuid", i));
        let _ = writeln!(s, "\\endif");
    }
    let each = |f: &str| format!("(SELECT array_agg({f}) FROM unnest({oids}) AS o)");
    let id = "saga_notification_id(o, 'order.confirmed')";
    let own = [
        each(id),
        oids.to_owned(),
        confirmed.to_owned(),
        cids.to_owned(),
        each("saga_subject(o)"),
        each("saga_body(o)"),
        "array_fill('lookup'::text, ARRAY[:n::int])".to_owned(),
        ":atts::int[]".to_owned(),
        "array_fill(now(), ARRAY[:n::int])".to_owned(),
        mids.to_owned(),
    ];
    let own: Vec<&str> = own.iter().map(String::as_str).collect();
    let sent = each(&format!("saga_sent(o, {id}, 'order.confirmed', saga_subject(o), now())"));
    let mut publish = publish_args("notification.sent", ":oids::text[]", &sent);
    publish[0] = mids.to_owned();
    let _ = writeln!(s, "\\if :n > 0");
    put(s, true, &RECORD, &with_publish(RECORD.text, service::NOTIFICATION, publish, &own), ";");
    let _ = writeln!(s, "{};", bind(&on_queue(conveyor_queue::sql::LEASE_DONE, service::NOTIFICATION), &[":ids", ":atts"]));
    let _ = writeln!(s, "\\endif");
}

/// The scratch database's schema and data: the services' migrations, one queue schema per
/// service, the helper functions the script calls, the products, items and customers.
pub fn setup_sql(migrations: &[(String, String)], queue_migration: &str, products: u32, customers: u32) -> String {
    let mut s = String::from("-- The saga replay's tables (written by `cargo xtask bench saga`).\n\n");
    for (name, text) in migrations {
        let _ = writeln!(s, "-- ===== {name} =====\n{text}\n");
    }
    for svc in SERVICES {
        let _ = writeln!(s, "-- ===== the queue schema as {} =====\n{}\n", queue_schema(svc), queue_migration.replace("conveyor", &queue_schema(svc)));
    }
    s.push_str(HELPERS);
    let _ = writeln!(
        s,
        "\n-- ===== data: {products} products (the order service's copy, the stock items), {customers} customers =====\n\
         INSERT INTO products (id, name, price_minor, currency, version, updated_at)\n\
         SELECT saga_product(n), 'Saga product ' || n, saga_price(n), 'EUR', 1, now() FROM generate_series(1, {products}) AS n;\n\
         INSERT INTO items (product_id, available) SELECT saga_product(n), 1000000000 FROM generate_series(1, {products}) AS n;\n\
         INSERT INTO customers (id, name, currency, balance_minor)\n\
         SELECT saga_customer(n), 'Saga customer ' || n, 'EUR', 1000000000000000 FROM generate_series(1, {customers}) AS n;"
    );
    s
}

/// What a run leaves behind, cleared before each variant. (`orders`, `order_lines` and
/// `order_status_history` are views of `order_events`.)
pub const RESET_SQL: &str = "TRUNCATE order_events, order_views, idempotency_keys, reservations, movements, payments, ledger, notifications, \
     q_order.outbox, q_order.inbox, q_stock.outbox, q_stock.inbox, q_payment.outbox, q_payment.inbox, q_notification.outbox, q_notification.inbox, \
     q_order.inbox_done, q_stock.inbox_done, q_payment.inbox_done, q_notification.inbox_done;\n\
     UPDATE projections SET tx = '0', seq = 0, updated_at = now();\n\
     UPDATE items SET available = 1000000000, reserved = 0;\n\
     UPDATE customers SET balance_minor = 1000000000000000;";

/// The tables the replay writes, for VACUUM ANALYZE before a run.
pub const TABLES: &[&str] = &[
    "order_events", "order_views", "projections", "idempotency_keys", "products", "items", "reservations", "movements", "customers",
    "payments", "ledger", "notifications", "templates", "q_order.outbox", "q_order.inbox", "q_stock.outbox", "q_stock.inbox",
    "q_payment.outbox", "q_payment.inbox", "q_notification.outbox", "q_notification.inbox", "q_order.inbox_done", "q_stock.inbox_done",
    "q_payment.inbox_done", "q_notification.inbox_done",
];

/// Counts after a run: orders placed, confirmed, sagas notified (complete), messages still
/// waiting anywhere, and events the projector has not applied. From the event store itself,
/// not from the views of the old tables (which join it with itself).
pub const COUNTS_SQL: &str = "SELECT (SELECT count(*) FROM order_events WHERE type = 'placed'), (SELECT count(*) FROM order_events WHERE type = 'confirmed'), \
     (SELECT count(*) FROM notifications), \
     (SELECT count(*) FROM q_order.outbox) + (SELECT count(*) FROM q_stock.outbox) + (SELECT count(*) FROM q_payment.outbox) \
     + (SELECT count(*) FROM q_notification.outbox) + (SELECT count(*) FROM q_stock.inbox) + (SELECT count(*) FROM q_payment.inbox) \
     + (SELECT count(*) FROM q_order.inbox) + (SELECT count(*) FROM q_notification.inbox), \
     (SELECT count(*) FROM order_events e, projections p WHERE p.name = 'order_views' AND (e.tx, e.seq) > (p.tx, p.seq))";

/// Sagas completed (notifications recorded) and orders confirmed in `[from, to)`, unix seconds.
pub fn rates_sql(from: f64, to: f64) -> String {
    format!(
        "SELECT (SELECT count(*) FROM notifications WHERE created_at >= to_timestamp({from}) AND created_at < to_timestamp({to})), \
         (SELECT count(*) FROM order_events WHERE type = 'confirmed' AND at >= to_timestamp({from}) AND at < to_timestamp({to}))"
    )
}

/// The messages the replay sends, by the inbox they reach and their topic, each checked
/// against its contract's type ([`check_samples`]).
const SAMPLED: [(&str, &str); 6] = [
    ("q_stock.inbox", "order.placed"),
    ("q_payment.inbox", "stock.reserved"),
    ("q_order.inbox", "stock.reserved"),
    ("q_order.inbox", "payment.captured"),
    ("q_notification.inbox", "order.confirmed"),
    ("q_order.inbox", "notification.sent"),
];

/// The kinds of event the replay appends to the order's stream.
const EVENTS: [&str; 5] = ["placed", "stock_reserved", "payment_captured", "confirmed", "notified"];

/// One message of each kind the replay sent (see [`SAMPLED`]), one event of each kind it
/// appended ([`EVENTS`]), the most complete order view the projector wrote with the events it
/// was made of, and one stored response of `POST /orders`; `|`-separated, for
/// [`check_samples`].
pub fn samples_sql() -> String {
    let messages = SAMPLED.iter().map(|(inbox, topic)| format!("(SELECT payload FROM replay_samples WHERE inbox = '{inbox} {topic}')"));
    let events = EVENTS.iter().map(|t| format!("(SELECT data::text FROM order_events WHERE type = '{t}' LIMIT 1)"));
    let view = "(SELECT json_build_object('view', v.view, 'stream', (SELECT json_agg(json_build_object('order_id', e.order_id, 'version', e.version, \
                'at', e.at, 'event', e.data) ORDER BY e.version) FROM order_events e WHERE e.order_id = v.id AND e.version <= v.version)) \
                FROM (SELECT id, version, view FROM order_views ORDER BY version DESC LIMIT 1) AS v)";
    let response = "(SELECT response_body::text FROM idempotency_keys LIMIT 1)";
    let all: Vec<String> = messages.chain(events).chain([view.to_owned(), response.to_owned()]).collect();
    format!("SELECT {}", all.join(", "))
}

/// Keeps the first message of each topic inserted into each inbox in `replay_samples` (for
/// [`samples_sql`]: handled messages leave the inbox), until [`UNCAPTURE_SQL`].
pub const CAPTURE_SQL: &str = "DROP TABLE IF EXISTS replay_samples; CREATE TABLE replay_samples (inbox text PRIMARY KEY, payload text NOT NULL);
CREATE OR REPLACE FUNCTION replay_sample() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO replay_samples VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME || ' ' || NEW.topic, NEW.payload::text) ON CONFLICT DO NOTHING;
    RETURN NEW;
END $$;
CREATE TRIGGER replay_sample AFTER INSERT ON q_stock.inbox FOR EACH ROW EXECUTE FUNCTION replay_sample();
CREATE TRIGGER replay_sample AFTER INSERT ON q_payment.inbox FOR EACH ROW EXECUTE FUNCTION replay_sample();
CREATE TRIGGER replay_sample AFTER INSERT ON q_order.inbox FOR EACH ROW EXECUTE FUNCTION replay_sample();
CREATE TRIGGER replay_sample AFTER INSERT ON q_notification.inbox FOR EACH ROW EXECUTE FUNCTION replay_sample();";

/// Removes what [`CAPTURE_SQL`] made.
pub const UNCAPTURE_SQL: &str = "DROP TRIGGER replay_sample ON q_stock.inbox; DROP TRIGGER replay_sample ON q_payment.inbox;
DROP TRIGGER replay_sample ON q_order.inbox; DROP TRIGGER replay_sample ON q_notification.inbox;
DROP FUNCTION replay_sample(); DROP TABLE replay_samples;";

/// Checks that what the replay wrote is what the services would read: each message parses
/// as its contract's event, each event as the order service's `OrderEvent`, the stored
/// response as its `OrderView`, and the projector's view is the one the service makes from
/// the same events (`OrderView::from_stream`). `samples` as [`samples_sql`] returns them.
pub fn check_samples(samples: &str) -> anyhow::Result<()> {
    use conveyor_contracts::{NotificationSent, OrderConfirmed, OrderPlaced, PaymentCaptured, StockReserved};
    use conveyor_order::stream::OrderEvent;
    use conveyor_order::views::OrderView;

    fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> anyhow::Result<T> {
        serde_json::from_str::<T>(text).map_err(|e| anyhow::anyhow!("the replay's {what} does not read as the service's type ({e}): {text}"))
    }
    #[derive(serde::Deserialize)]
    struct Projected {
        view: OrderView,
        stream: serde_json::Value,
    }

    let names: Vec<String> = SAMPLED
        .iter()
        .map(|(inbox, topic)| format!("{topic} in {inbox}"))
        .chain(EVENTS.iter().map(|t| format!("{t} event")))
        .chain(["order view".to_owned(), "stored response".to_owned()])
        .collect();
    let parts: Vec<&str> = samples.split('|').collect();
    anyhow::ensure!(parts.len() == names.len(), "expected {} samples from the replay, got {}: {samples:?}", names.len(), parts.len());
    if let Some((name, _)) = names.iter().zip(&parts).find(|(_, p)| p.is_empty()) {
        anyhow::bail!("the replay wrote no {name}: {samples:?}");
    }
    let (messages, rest) = parts.split_at(SAMPLED.len());
    let (events, rest) = rest.split_at(EVENTS.len());
    let contracts: [fn(&str, &str) -> anyhow::Result<()>; SAMPLED.len()] = [
        |w, t| parse::<OrderPlaced>(w, t).map(drop),
        |w, t| parse::<StockReserved>(w, t).map(drop),
        |w, t| parse::<StockReserved>(w, t).map(drop),
        |w, t| parse::<PaymentCaptured>(w, t).map(drop),
        |w, t| parse::<OrderConfirmed>(w, t).map(drop),
        |w, t| parse::<NotificationSent>(w, t).map(drop),
    ];
    for ((check, name), text) in contracts.iter().zip(&names).zip(messages) {
        check(name, text)?;
    }
    for ((kind, name), text) in EVENTS.iter().zip(&names[SAMPLED.len()..]).zip(events) {
        let event: OrderEvent = parse(name, text)?;
        anyhow::ensure!(event.kind() == *kind, "the replay's {name} reads as a {} event: {text}", event.kind());
    }
    let projected: Projected = parse("order view", rest[0])?;
    let made = OrderView::from_stream(&stored_events(projected.stream).map_err(|e| anyhow::anyhow!("the replay's events of its order view: {e}"))?);
    anyhow::ensure!(
        made.as_ref() == Some(&projected.view),
        "the replay's projector wrote a view the order service would not make of the same events:\n  replay:  {:?}\n  service: {made:?}",
        projected.view
    );
    parse::<OrderView>("stored response", rest[1]).map(drop)
}

/// An order's events as JSON (`order_id`, `version`, `at`, `event`), as the order service
/// reads them.
fn stored_events(json: serde_json::Value) -> serde_json::Result<Vec<conveyor_order::stream::StoredEvent>> {
    // `At`: the events' time, as the order crate has it.
    #[derive(serde::Deserialize)]
    struct Stored<At> {
        order_id: uuid::Uuid,
        version: i32,
        at: At,
        event: conveyor_order::stream::OrderEvent,
    }
    let stored: Vec<Stored<_>> = serde_json::from_value(json)?;
    Ok(stored.into_iter().map(|e| conveyor_order::stream::StoredEvent { order_id: e.order_id, version: e.version, at: e.at, event: e.event }).collect())
}

/// Ids, prices, events, payloads and views made by SQL where the services make them in Rust.
const HELPERS: &str = include_str!("replay/helpers.sql");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_replaces_every_parameter_including_two_digit_ones() {
        assert_eq!(bind("a = $1 AND b = $2 OR c = $1", &["x", "'y'"]), "a = x AND b = 'y' OR c = x");
        let args: Vec<String> = (1..=10).map(|i| format!("v{i}")).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(bind("($1, $10)", &args), "(v1, v10)");
        assert_eq!(bind("x::uuid[] $$ y", &[]), "x::uuid[] $$ y");
    }

    #[test]
    #[should_panic(expected = "$3 has no argument")]
    fn bind_refuses_a_missing_argument() {
        bind("$1 $3", &["a", "b"]);
    }

    #[test]
    fn the_engine_claims_become_one_row_for_gset() {
        for claim in [conveyor_queue::sql::TX_CLAIM, conveyor_queue::sql::LEASE_CLAIM] {
            let q = claim_for_gset(claim, "array_agg(message_id) AS ids");
            assert!(q.starts_with("WITH c AS ("), "{q}");
            assert!(q.contains(", claimed AS (UPDATE conveyor.inbox AS i") || q.contains(", claimed AS (SELECT d.message_id"), "{q}");
            assert!(q.ends_with("SELECT count(*) AS n, array_agg(message_id) AS ids\nFROM claimed"), "{q}");
            assert_eq!(q.matches('(').count(), q.matches(')').count(), "{q}");
        }
    }

    #[test]
    fn scripts_have_every_step_and_only_known_variables() {
        for batch in [1, 3] {
            let s = script(&ScriptOptions { batch, relay_batch: 100, products: 10, customers: 5 });
            // placed (one per order), then one append per order-worker batch: stock_reserved,
            // payment_captured with confirmed, notified
            assert_eq!(s.matches("INSERT INTO order_events").count(), batch + 3);
            for (schema, n) in [("q_order.outbox", batch + 3), ("q_stock.outbox", 3), ("q_payment.outbox", 3), ("q_notification.outbox", 3)] {
                // publishes (order-api's one per message; the batch handlers' one per
                // batch) + the relay's claim (two FROMs in one statement)
                assert!(s.matches(schema).count() >= n, "{schema}: {}", s.matches(schema).count());
            }
            // Each relay inserts into every subscriber of its service's topics: order's twice
            // (to stock and notification), payment's also into stock (payment.declined).
            for (sub, relays) in [("q_stock.inbox", 3), ("q_payment.inbox", 1), ("q_order.inbox", 3), ("q_notification.inbox", 2)] {
                assert_eq!(s.matches(&format!("INSERT INTO {sub} ")).count(), relays, "relays into {sub}");
            }
            well_formed(&s);
            assert!(!s.contains("INSERT INTO order_views"), "the projector runs in a client of its own");
        }
        let p = projector_script();
        well_formed(&p);
        // the position, the events after it and their streams, the views, the new position
        for (statement, n) in [("FOR UPDATE SKIP LOCKED", 1), ("FROM order_events", 2), ("INSERT INTO order_views", 1), ("UPDATE projections", 1)] {
            assert_eq!(p.matches(statement).count(), n, "{statement}");
        }
    }

    /// Balanced `\if`s and transactions, every parameter bound, and every pgbench variable
    /// used one a script sets.
    fn well_formed(s: &str) {
        assert_eq!(s.matches("\\if ").count(), s.matches("\\endif").count());
        assert_eq!(s.matches("BEGIN;").count(), s.matches("COMMIT;").count());
        assert!(!s.contains('$'), "a parameter was left unbound");
        let known = ["p", "c", "n", "ids", "oids", "pids", "qtys", "cids", "totals", "atts", "payloads", "mids"];
        let prefixed = ["k_", "p_", "s_", "v_", "j_"];
        let bytes = s.as_bytes();
        for (i, _) in s.match_indices(':') {
            if bytes.get(i + 1) == Some(&b':') || (i > 0 && bytes[i - 1] == b':') {
                continue;
            }
            let name: String = s[i + 1..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if name.is_empty() {
                continue;
            }
            assert!(known.contains(&name.as_str()) || prefixed.iter().any(|p| name.starts_with(p)), "unknown variable :{name}");
        }
    }

    #[test]
    fn no_gset_command_ends_on_a_multiple_of_128() {
        // A model of pgbench's parser: every meta-command and SQL statement is a command; a
        // `\gset` belongs to the statement it ends.
        for batch in [1, 50] {
            let s = script(&ScriptOptions { batch, relay_batch: 100, products: 10, customers: 5 });
            let (mut n, mut in_statement, mut pads) = (0usize, false, 0);
            for line in s.lines() {
                let t = line.trim();
                if !in_statement && (t.is_empty() || t.starts_with("--")) {
                    continue;
                }
                if !in_statement && t.starts_with('\\') {
                    n += 1;
                    pads += usize::from(t.starts_with("\\set saga_pgbench_pad"));
                    continue;
                }
                in_statement = true;
                if t.contains(" \\gset") {
                    n += 1;
                    assert_ne!(n % 128, 0, "a \\gset command is the {n}th");
                    in_statement = false;
                } else if t.ends_with(';') {
                    n += 1;
                    in_statement = false;
                }
            }
            assert!(!in_statement);
            if batch == 50 {
                // Long enough to cross several multiples of 128. Whether it needs a pad
                // depends on its length; the padding itself is checked below.
                assert!(n > 4 * 128, "{n} commands, {pads} pads");
            }
        }
        let padded = around_pgbench_gset_bug(&format!("{}SELECT 2 AS x \\gset\n", "SELECT 1;\n".repeat(127)));
        assert!(padded.ends_with("SELECT 1;\n\\set saga_pgbench_pad 0\nSELECT 2 AS x \\gset\n"), "{padded}");
    }

    #[test]
    fn samples_are_checked_against_the_services_types() {
        let (order, customer, product) = ("0190f3c2-7d4e-7a61-9b2c-3f5e8d1a4b6c", "00000000-0000-4000-9000-000000000001", "00000000-0000-4000-8000-000000000001");
        let price = r#"{"amount_minor":101,"currency":"EUR"}"#;
        let summary = format!(r#"{{"order_id":"{order}","customer_id":"{customer}","lines":[{{"product_id":"{product}","quantity":1,"unit_price":{price}}}],"total":{price},"placed_at":"2026-01-01T00:00:00.123456+00:00"}}"#);
        let placed = format!(r#"{{"order":{summary}}}"#);
        let captured = format!(r#"{{"order_id":"{order}","payment_id":"0190f3c2-7d4e-7a61-9b2c-3f5e8d1a4b6d","amount":{price}}}"#);
        let confirmed = format!(r#"{{"order":{summary},"confirmed_at":"2026-01-01T00:00:01+00:00"}}"#);
        let sent = format!(r#"{{"order_id":"{order}","notification_id":"6e0c1c56-1b7a-4a43-8d6b-0b2e5c8f9a10","event_type":"order.confirmed","subject":"Your order {order} is confirmed","delivered_at":"2026-01-01T00:00:02+00:00"}}"#);
        let events = [
            format!(r#"{{"type":"placed","customer_id":"{customer}","lines":[{{"product_id":"{product}","name":"Saga product 1","quantity":1,"unit_price":{price}}}],"total":{price},"saga_mode":"choreography"}}"#),
            format!(r#"{{"type":"stock_reserved","lines":[{{"product_id":"{product}","quantity":1}}]}}"#),
            format!(r#"{{"type":"payment_captured","payment_id":"0190f3c2-7d4e-7a61-9b2c-3f5e8d1a4b6d","amount":{price}}}"#),
            r#"{"type":"confirmed"}"#.to_owned(),
            format!(r#"{{"type":"notified","notification_id":"6e0c1c56-1b7a-4a43-8d6b-0b2e5c8f9a10","event_type":"order.confirmed","subject":"Your order {order} is confirmed","delivered_at":"2026-01-01T00:00:02+00:00"}}"#),
        ];
        let stream: Vec<String> = events
            .iter()
            .enumerate()
            .map(|(i, e)| format!(r#"{{"order_id":"{order}","version":{},"at":"2026-01-01T00:00:0{i}.5+00:00","event":{e}}}"#, i + 1))
            .collect();
        let stream = format!("[{}]", stream.join(","));
        let events_of = |n: usize| stored_events(serde_json::from_str(&stream).unwrap()).unwrap().into_iter().take(n).collect::<Vec<_>>();
        let view = |n: usize| serde_json::to_string(&conveyor_order::views::OrderView::from_stream(&events_of(n)).unwrap()).unwrap();
        let projected = format!(r#"{{"view":{},"stream":{stream}}}"#, view(5));
        let samples = |messages: [&str; 6], projected: &str| format!("{}|{}|{projected}|{}", messages.join("|"), events.join("|"), view(1));
        check_samples(&samples([&placed, &placed, &placed, &captured, &confirmed, &sent], &projected)).unwrap();
        // A message that is not its topic's event, a view that is not the events'.
        assert!(check_samples(&samples([&placed, &captured, &placed, &captured, &confirmed, &sent], &projected)).is_err());
        let stale = format!(r#"{{"view":{},"stream":{stream}}}"#, view(4));
        assert!(check_samples(&samples([&placed, &placed, &placed, &captured, &confirmed, &sent], &stale)).unwrap_err().to_string().contains("would not make"));
        assert!(check_samples(&"|".repeat(12)).is_err());
    }
}
