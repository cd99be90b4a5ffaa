//! The order service's transactions in the replay: placing an order (order-api), the
//! worker's handlers (each appends to the orders' event streams) and its projector.
//!
//! Every append follows a read of the order's stream, as `stream::append` follows
//! `stream::order` in the service: the replay reads the stream with the service's `STREAMS`
//! and keeps what the service's fold would (the version, the placed event and its time).

use std::fmt::Write as _;

use conveyor_contracts::service;

use super::{APPEND, CLAIM_KEY, GET_VIEW, PRODUCTS, PUBLISH, SAVE_RESPONSE, STREAMS, ScriptOptions, Sql, bind, nth, publish, put, tx_claim};

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

/// `STREAMS` of one order as one row for `\gset`: the stream's version, its placed event and
/// when it was placed.
fn stream_for_gset(oid: &str) -> String {
    format!(
        "SELECT max(version) AS version, min(at) FILTER (WHERE version = 1) AS placed_at, (array_agg(data) FILTER (WHERE version = 1))[1] AS placed\n\
         FROM ({}) AS s",
        bind(STREAMS.text, &[&format!("ARRAY[{oid}]")])
    )
}

/// order-api `POST /orders`: the key, the product copy, the `placed` event, `order.placed`
/// and the stored response, in one transaction.
pub(super) fn place(s: &mut String, o: &ScriptOptions, i: usize) {
    let first = i == 1;
    let _ = writeln!(s, "-- == order-api: POST /orders ({i} of {}), one transaction (services/order/src/http.rs place_order) ==", o.batch);
    let _ = writeln!(s, "\\set p random(1, {})\n\\set c random(1, {})\nBEGIN;", o.products, o.customers);
    if first {
        let _ = writeln!(s, "-- claim_key ({}), RETURNING also the key and the order id, which the API makes in Rust", CLAIM_KEY.source);
    }
    let request = "json_build_object('customer_id', saga_customer(:c), 'lines', json_build_array(json_build_object('product_id', saga_product(:p), 'quantity', 1)))::text";
    let _ = writeln!(s, "{}, key, order_id \\gset k_", bind(CLAIM_KEY.text, &["saga_uuid_v7()::text", request, "saga_uuid_v7()"]));
    put(s, first, &PRODUCTS, &bind(PRODUCTS.text, &["ARRAY[saga_product(:p)]"]), " \\gset p_");
    let event = "saga_placed_event(saga_customer(:c), :p_id::uuid, :p_name::text, 1, :p_price_minor::bigint)";
    put(s, first, &APPEND, &bind(APPEND.text, &[":k_order_id::uuid", "0", "ARRAY['placed']", &format!("ARRAY[{event}]")]), ";");
    let payload = format!("saga_placed(:k_order_id::uuid, {event}, :k_created_at::timestamptz)");
    put(s, first, &PUBLISH, &publish(service::ORDER, "order.placed", ":k_order_id", &payload), ";");
    let view = format!("saga_order_view(:k_order_id::uuid, ARRAY[1], ARRAY[:k_created_at::timestamptz], ARRAY[{event}])");
    put(s, first, &SAVE_RESPONSE, &bind(SAVE_RESPONSE.text, &[":k_key", "201", &view]), ";");
    let _ = writeln!(s, "COMMIT;\n");
}

/// What the order worker does with one message of a batch: the events it appends (their
/// types and data, as SQL arrays) and whether it publishes `order.confirmed`.
struct Handling<'a> {
    topic: &'a str,
    /// What the handler is called in services/order/src/handlers.rs.
    handler: &'a str,
    /// The claimed message's order id.
    order_id: &'a str,
    types: &'a str,
    /// The events' data, from `payload`: the claimed message's payload as jsonb.
    data: fn(payload: &str) -> String,
    confirms: bool,
}

/// `stock.reserved` recorded as a fact of the order's stream (`record`).
pub(super) fn record_reserved(s: &mut String, batch: usize) {
    let data = |p: &str| format!("ARRAY[saga_reserved_event({p})]");
    let h = Handling { topic: "stock.reserved", handler: "record", order_id: "payload->'order'->>'order_id'", types: "ARRAY['stock_reserved']", data, confirms: false };
    worker(s, batch, &h);
}

/// `payment.captured` settles the order (`settle`): the capture and the confirmation
/// appended, `order.confirmed` published.
pub(super) fn confirm(s: &mut String, batch: usize) {
    let data = |p: &str| format!("ARRAY[saga_captured_event({p}), jsonb_build_object('type', 'confirmed')]");
    let h = Handling { topic: "payment.captured", handler: "settle", order_id: "payload->>'order_id'", types: "ARRAY['payment_captured', 'confirmed']", data, confirms: true };
    worker(s, batch, &h);
}

/// `notification.sent` recorded as a fact of the order's stream (`record`).
pub(super) fn record_notified(s: &mut String, batch: usize) {
    let data = |p: &str| format!("ARRAY[saga_notified_event({p})]");
    let h = Handling { topic: "notification.sent", handler: "record", order_id: "payload->>'order_id'", types: "ARRAY['notified']", data, confirms: false };
    worker(s, batch, &h);
}

/// A batch of `h.topic` in one transaction: the claim, the lock on every order of the batch
/// (`by_order`), then per message the order's stream and the append at its version.
fn worker(s: &mut String, batch: usize, h: &Handling) {
    let _ = writeln!(s, "-- == order-worker: {}, a batch in one transaction (services/order/src/handlers.rs {}) ==\nBEGIN;", h.topic, h.handler);
    let select = format!("array_agg(payload::text) AS payloads, array_agg({}) AS oids", h.order_id);
    let _ = writeln!(s, "{}", tx_claim(service::ORDER, &[h.topic], batch, &select));
    let _ = writeln!(s, "\\if :n > 0");
    put(s, true, &LOCK_KEYS, &bind(LOCK_KEYS.text, &["(SELECT array_agg('order:' || o) FROM unnest(:oids::text[]) AS o)"]), ";");
    let _ = writeln!(s, "\\endif");
    for i in 1..=batch {
        let (first, oid) = (i == 1, nth("oids", "uuid", i));
        let _ = writeln!(s, "\\if :n >= {i}");
        put(s, first, &STREAMS, &stream_for_gset(&oid), " \\gset s_");
        let append = bind(APPEND.text, &[&oid, ":s_version::int", h.types, &(h.data)(&nth("payloads", "jsonb", i))]);
        if h.confirms {
            // The time the events were recorded (`stream::append` returns it) is confirmed_at.
            put(s, first, &APPEND, &format!("WITH a AS ({append})\nSELECT min(at) AS at FROM a"), " \\gset s_");
            let confirmed = format!("saga_confirmed({oid}, :s_placed::jsonb, :s_placed_at::timestamptz, :s_at::timestamptz)");
            put(s, first, &PUBLISH, &publish(service::ORDER, "order.confirmed", &oid, &confirmed), ";");
        } else {
            put(s, first, &APPEND, &append, ";");
        }
        let _ = writeln!(s, "\\endif");
    }
    let _ = writeln!(s, "COMMIT;\n");
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
