//! The order service's transactions in the replay: placing an order (order-api), the
//! worker's handlers (each appends to the orders' event streams) and its projector.
//!
//! Every append follows a read of the streams it appends to, as in the service: a worker's
//! batch reads every stream it names with the service's `STREAMS` and keeps what the
//! service's fold would (each order's version, placed event and time), then appends every
//! event of the batch with one `APPEND`, as the worker's `handlers::handle` does.

use std::fmt::Write as _;

use conveyor_contracts::service;

use super::{APPEND, GET_VIEW, PLACE, PRODUCTS, PUBLISH, STREAMS, ScriptOptions, Sql, bind, publish_all, publish_one_args, put, tx_claim, with_publish};

// services/order/src/projection.rs
sql!(POSITION_SKIP_LOCKED, "services/order/src/projection.rs", conveyor_order::sql::POSITION_SKIP_LOCKED);
sql!(NEXT_EVENTS, "services/order/src/projection.rs", conveyor_order::sql::NEXT_EVENTS);
sql!(UPSERT_VIEWS, "services/order/src/projection.rs", conveyor_order::sql::UPSERT_VIEWS);
sql!(ADVANCE, "services/order/src/projection.rs", conveyor_order::sql::ADVANCE);

// crates/queue/src/consumer/tx.rs: the batch's keys, locked before its handlers run.
sql!(LOCK_KEYS, "crates/queue/src/consumer/tx.rs", conveyor_queue::sql::LOCK_KEYS);

/// Events the projector applies per batch (`projection::run`'s `BATCH`).
pub(super) const PROJECTOR_BATCH: usize = 500;

/// The name of the order views' projection (`projection::ORDER_VIEWS`).
const ORDER_VIEWS: &str = conveyor_order::projection::ORDER_VIEWS.name;

/// `STREAMS` of the claimed batch's orders (`:oids`) as one row for `\gset`: what the
/// service's fold keeps of each (its version, its placed event and when it was placed), as
/// arrays in the claim's order.
fn streams_for_gset() -> String {
    format!(
        "SELECT array_agg(s.version ORDER BY o.n) AS versions, array_agg(s.placed::text ORDER BY o.n) AS placeds, \
         array_agg(s.placed_at ORDER BY o.n) AS placed_ats\n\
         FROM unnest(:oids::uuid[]) WITH ORDINALITY AS o(id, n) JOIN (\n\
         SELECT order_id, max(version) AS version, min(at) FILTER (WHERE version = 1) AS placed_at, \
         (array_agg(data) FILTER (WHERE version = 1))[1] AS placed\n\
         FROM ({}) AS e GROUP BY order_id) AS s ON s.order_id = o.id",
        bind(STREAMS.text, &[":oids::uuid[]"])
    )
}

/// order-api `POST /orders`: the product copy (with the time it was read; the API reads it
/// only when it does not keep it), then, in one statement (`PLACE`), its version checked,
/// the key with the stored response, the `placed` event and `order.placed`; no transaction
/// around them.
pub(super) fn place(s: &mut String, o: &ScriptOptions, i: usize) {
    let first = i == 1;
    let _ = writeln!(s, "-- == order-api: POST /orders ({i} of {}), the product (the API reads it once and keeps it) and one statement (services/order/src/http.rs place_order) ==", o.batch);
    let _ = writeln!(s, "\\set p random(1, {})\n\\set c random(1, {})", o.products, o.customers);
    if first {
        let _ = writeln!(s, "-- {} ({}), with the order id, which the API makes in Rust", PRODUCTS.name.to_lowercase(), PRODUCTS.source);
    }
    let products = bind(PRODUCTS.text, &["ARRAY[saga_product(:p)]"]);
    let _ = writeln!(s, "SELECT q.*, saga_uuid_v7() AS order_id FROM ({products}) AS q \\gset p_");
    let event = "saga_placed_event(saga_customer(:c), :p_id::uuid, :p_name::text, 1, :p_price_minor::bigint)";
    let payload = format!("saga_placed(:p_order_id::uuid, {event}, :p_read_at::timestamptz)");
    let request = "json_build_object('customer_id', saga_customer(:c), 'lines', json_build_array(json_build_object('product_id', saga_product(:p), 'quantity', 1)))::text";
    let view = format!("saga_order_view(:p_order_id::uuid, ARRAY[1], ARRAY[:p_read_at::timestamptz], ARRAY[{event}])");
    let event_array = format!("ARRAY[{event}]");
    let own = [
        // the key ($6 to $10)
        "saga_uuid_v7()::text",
        request,
        ":p_order_id::uuid",
        "201",
        &view,
        // the events ($11 to $15)
        "ARRAY[:p_order_id::uuid]",
        "ARRAY[1]",
        "ARRAY['placed']",
        &event_array,
        ":p_read_at::timestamptz",
        // the products it was priced from ($16, $17)
        "ARRAY[saga_product(:p)]",
        "ARRAY[:p_version::bigint]",
    ];
    let publish = publish_one_args("order.placed", ":p_order_id", &payload);
    put(s, first, &PLACE, &with_publish(PLACE.text, service::ORDER, publish, &own), ";\n");
}

/// What the order worker does with each message of a batch: the events it appends (their
/// types, and their data as an SQL array made from the message's payload) and whether it
/// publishes `order.confirmed`.
struct Handling<'a> {
    topic: &'a str,
    /// How services/order/src/handlers.rs decides the message.
    decision: &'a str,
    /// The claimed message's order id.
    order_id: &'a str,
    types: &'a [&'a str],
    /// The events' data, from `payload`: the message's payload as jsonb.
    data: fn(payload: &str) -> String,
    confirms: bool,
}

/// `stock.reserved` recorded as a fact of the order's stream (`Decision::Record`).
pub(super) fn record_reserved(s: &mut String, batch: usize) {
    let data = |p: &str| format!("ARRAY[saga_reserved_event({p})]");
    let h = Handling { topic: "stock.reserved", decision: "Decision::Record", order_id: "payload->'order'->>'order_id'", types: &["stock_reserved"], data, confirms: false };
    worker(s, batch, &h);
}

/// `payment.captured` settles the order (`Decision::Settle`): the capture and the
/// confirmation appended, `order.confirmed` published.
pub(super) fn confirm(s: &mut String, batch: usize) {
    let data = |p: &str| format!("ARRAY[saga_captured_event({p}), jsonb_build_object('type', 'confirmed')]");
    let h = Handling { topic: "payment.captured", decision: "Decision::Settle", order_id: "payload->>'order_id'", types: &["payment_captured", "confirmed"], data, confirms: true };
    worker(s, batch, &h);
}

/// `notification.sent` recorded as a fact of the order's stream (`Decision::Record`).
pub(super) fn record_notified(s: &mut String, batch: usize) {
    let data = |p: &str| format!("ARRAY[saga_notified_event({p})]");
    let h = Handling { topic: "notification.sent", decision: "Decision::Record", order_id: "payload->>'order_id'", types: &["notified"], data, confirms: false };
    worker(s, batch, &h);
}

/// A batch of `h.topic` in one transaction and one handler call (`handlers::handle`): the
/// claim, the lock on every order of the batch (`by_order`), one read of the batch's
/// streams, one append of every message's events (numbered on from its order's version),
/// and for confirmations one publish of them all.
fn worker(s: &mut String, batch: usize, h: &Handling) {
    let _ = writeln!(
        s,
        "-- == order-worker: {}, a batch in one transaction, one handler call (services/order/src/handlers.rs handle, {}) ==\nBEGIN;",
        h.topic, h.decision
    );
    let select = format!("array_agg(payload::text) AS payloads, array_agg({}) AS oids", h.order_id);
    let _ = writeln!(s, "{}", tx_claim(service::ORDER, &[h.topic], batch, &select));
    let _ = writeln!(s, "\\if :n > 0");
    put(s, true, &LOCK_KEYS, &bind(LOCK_KEYS.text, &["(SELECT array_agg('order:' || o) FROM unnest(:oids::text[]) AS o)"]), ";");
    put(s, true, &STREAMS, &streams_for_gset(), " \\gset s_");
    let types = format!("ARRAY[{}]", h.types.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", "));
    let events = format!(
        "WITH m AS (SELECT o, v, p, n FROM unnest(:oids::uuid[], :s_versions::int[], :payloads::jsonb[]) WITH ORDINALITY AS m(o, v, p, n)),\n\
         e AS (SELECT m.o, m.v + x.k AS version, x.type, x.data, m.n, x.k FROM m, LATERAL unnest({types}, {}) WITH ORDINALITY AS x(type, data, k))",
        (h.data)("m.p")
    );
    let all = |col: &str| format!("(SELECT array_agg({col} ORDER BY n, k) FROM e)");
    let append = bind(APPEND.text, &[&all("o"), &all("version"), &all("type"), &all("data"), "NULL"]);
    if h.confirms {
        // The time the events were recorded (`stream::append_all` returns it) is confirmed_at.
        put(s, true, &APPEND, &format!("{events},\na AS ({append})\nSELECT min(at) AS at FROM a"), " \\gset s_");
        let confirmed = "(SELECT array_agg(saga_confirmed(o, pl::jsonb, pa, :s_at::timestamptz) ORDER BY n) \
                         FROM unnest(:oids::uuid[], :s_placeds::text[], :s_placed_ats::timestamptz[]) WITH ORDINALITY AS u(o, pl, pa, n))";
        put(s, true, &PUBLISH, &publish_all(service::ORDER, "order.confirmed", ":oids::text[]", confirmed), ";");
    } else {
        put(s, true, &APPEND, &format!("{events}\n{append}"), ";");
    }
    let _ = writeln!(s, "\\endif\nCOMMIT;\n");
}

/// The notification worker's lookup, order-api's `GET /orders/{id}`: the order's view, or
/// its stream when the projector has not reached it yet.
pub(super) fn lookup(s: &mut String, first: bool, oid: &str) {
    if first {
        let _ = writeln!(s, "-- the lookup: order-api's GET /orders/{{id}} (services/order/src/http.rs get_order)");
    }
    let view = format!("SELECT count(*) AS found, min(view::text) AS view FROM ({}) AS v", bind(GET_VIEW.text, &[oid]));
    put(s, first, &GET_VIEW, &view, " \\gset v_");
    let _ = writeln!(s, "\\if :v_found = 0");
    put(s, first, &STREAMS, &bind(STREAMS.text, &[&format!("ARRAY[{oid}]")]), ";");
    let _ = writeln!(s, "\\endif");
}

/// One batch of the order worker's projector: its position (skipped while another
/// projector holds it), the events after it, the whole streams of their orders, the views
/// made from them, the new position; one transaction.
pub(super) fn project(s: &mut String) {
    let _ = writeln!(s, "-- == order-worker's projector: one batch of {ORDER_VIEWS} (services/order/src/projection.rs apply_batch) ==\nBEGIN;");
    let name = format!("'{ORDER_VIEWS}'");
    let position = bind(POSITION_SKIP_LOCKED.text, &[&name]);
    put(s, true, &POSITION_SKIP_LOCKED, &format!("SELECT count(*) AS held, max(tx) AS tx, max(seq) AS seq FROM ({position}) AS p"), " \\gset j_");
    let _ = writeln!(s, "\\if :j_held > 0");
    let next = bind(NEXT_EVENTS.text, &[":j_tx::text", ":j_seq::bigint", &PROJECTOR_BATCH.to_string()]);
    let read = format!(
        "SELECT count(*) AS n, array_agg(DISTINCT order_id) AS oids, (array_agg(tx ORDER BY tx DESC, seq DESC))[1] AS last_tx, \
         (array_agg(seq ORDER BY tx DESC, seq DESC))[1] AS last_seq\nFROM ({next}) AS e"
    );
    put(s, true, &NEXT_EVENTS, &read, " \\gset j_");
    let _ = writeln!(s, "\\if :j_n > 0");
    // The service reads the streams, folds each into its view in Rust and writes them: here
    // the fold is SQL (saga_order_view) between the read and the write, in one statement.
    let streams = bind(STREAMS.text, &[":j_oids::uuid[]"]);
    let views = "v AS (SELECT order_id AS id, saga_order_view(order_id, array_agg(version ORDER BY version), array_agg(at ORDER BY version), \
                 array_agg(data ORDER BY version)) AS view FROM s GROUP BY order_id),\n\
                 w AS (SELECT array_agg(id) AS ids, array_agg((view->>'customer_id')::uuid) AS cids, array_agg(view->>'status') AS statuses, \
                 array_agg((view->>'version')::int) AS versions, array_agg(view) AS views FROM v)";
    let upsert = bind(
        UPSERT_VIEWS.text,
        &["(SELECT ids FROM w)", "(SELECT cids FROM w)", "(SELECT statuses FROM w)", "(SELECT versions FROM w)", "(SELECT views FROM w)"],
    );
    let _ = writeln!(
        s,
        "-- {} ({}) and {} ({}), with the views made in between",
        STREAMS.name.to_lowercase(),
        STREAMS.source,
        UPSERT_VIEWS.name.to_lowercase(),
        UPSERT_VIEWS.source
    );
    let _ = writeln!(s, "WITH s AS ({streams}),\n{views}\n{upsert};");
    put(s, true, &ADVANCE, &bind(ADVANCE.text, &[&name, ":j_last_tx::text", ":j_last_seq::bigint"]), ";");
    let _ = writeln!(s, "\\endif\n\\endif\nCOMMIT;\n");
}
