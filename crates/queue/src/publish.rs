//! Publishing: insert into the outbox inside the caller's transaction.

use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres};
use tracing::Instrument;

use crate::trace;
use crate::wake::wake_cte;
use crate::{Error, Event, MessageId, Outgoing};

/// The outbox insert of `INSERT`, after its wake-up CTE (which it joins as `wake`): `$1`
/// to `$5` are the messages' ids, topics, keys, payloads and headers, as arrays.
macro_rules! insert_rows {
    () => {
        "INSERT INTO conveyor.outbox (message_id, topic, key, payload, headers)
SELECT m.message_id, m.topic, m.key, m.payload::json, m.headers::json
FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[]) AS m(message_id, topic, key, payload, headers)
CROSS JOIN wake"
    };
}

/// The outbox's wake-up CTE (see `wake`), named `wake`: for `INSERT` and `statement_with`.
macro_rules! outbox_wake {
    () => {
        wake_cte!("conveyor_outbox", 7165066987124913153)
    };
}

/// `INSERT` without its wake-up CTE, for `cargo xtask bench saga` to replay after a CTE
/// `wake` of its own.
pub const INSERT_ROWS: &str = insert_rows!();

// One statement both inserts and, if a relay is idle, wakes it (see `wake`). Postgres
// delivers identical notifications of one transaction once, so a transaction that
// publishes many messages sends at most one NOTIFY.
pub(crate) const INSERT: &str = concat!("WITH ", outbox_wake!(), "\n", insert_rows!());

/// Publishes `event` on its topic. Call it with the transaction that makes the change the
/// event reports: the message exists exactly when that transaction commits.
pub async fn publish_event<E: Event>(conn: &mut PgConnection, event: &E) -> Result<MessageId, Error> {
    publish(conn, Outgoing::event(event)?).await
}

/// Publishes one message (see [`publish_event`]).
pub async fn publish(conn: &mut PgConnection, msg: Outgoing) -> Result<MessageId, Error> {
    let id = msg.id;
    publish_all(conn, std::slice::from_ref(&msg)).await?;
    Ok(id)
}

/// Publishes several messages with one statement, in a `publish {topic}` span (kind
/// PRODUCER) whose W3C trace context goes into each message's headers, unless the caller
/// set a `traceparent` of its own (see the crate's README, "Traces"). A message that names
/// its cause ([`Outgoing::caused_by`]) gets a `publish {topic}` span of its own, a child of
/// its cause's `process` span, and that span's context.
pub async fn publish_all(conn: &mut PgConnection, msgs: &[Outgoing]) -> Result<(), Error> {
    if msgs.is_empty() {
        return Ok(());
    }
    publish_with(conn, INSERT, msgs, |q| q).await.map(drop)
}

/// The text of a statement that publishes messages together with writes of the caller's,
/// in one round trip (one statement, where a publish beside them would be two):
///
/// ```sql
/// WITH wake AS (…), {ctes}
/// INSERT INTO conveyor.outbox … CROSS JOIN wake WHERE {gate}
/// ```
///
/// `ctes` are the caller's common table expressions (`name AS (…)`, comma-separated; a
/// data-modifying one runs whether or not anything reads it), numbering their parameters
/// from `$6` on: `$1` to `$5` are the messages'. The messages are inserted only if `gate`
/// (an SQL condition, which may read the CTEs) holds: `"true"` for always. Build the text
/// once (a `LazyLock<String>`) and run it with [`publish_with`].
///
/// With no transaction around it, the statement is a transaction of its own: the caller's
/// writes and the messages commit together, or neither does.
pub fn statement_with(ctes: &str, gate: &str) -> String {
    format!("WITH {},\n{ctes}\n{}\nWHERE {gate}", outbox_wake!(), insert_rows!())
}

/// Runs `sql` (from [`statement_with`]), publishing `msgs` as [`publish_all`] does, with
/// the caller's parameters (`$6` on) bound by `bind`. Returns how many messages were
/// inserted: all of them, or none when the gate did not hold.
pub async fn publish_with<'q>(
    conn: &mut PgConnection,
    sql: &'static str,
    msgs: &'q [Outgoing],
    bind: impl FnOnce(Query<'q, Postgres, PgArguments>) -> Query<'q, Postgres, PgArguments>,
) -> Result<u64, Error> {
    let single = (msgs.len() == 1).then(|| msgs[0].id);
    let span = trace::publish_span(msgs.iter().map(|m| m.topic.as_str()), msgs.len(), single);
    let result = insert(conn, sql, msgs, &span, bind).instrument(span.clone()).await;
    if let Err(e) = &result {
        trace::record_error(&span, "publish", e);
    }
    result
}

async fn insert<'q>(
    conn: &mut PgConnection,
    sql: &'static str,
    msgs: &'q [Outgoing],
    span: &tracing::Span,
    bind: impl FnOnce(Query<'q, Postgres, PgArguments>) -> Query<'q, Postgres, PgArguments>,
) -> Result<u64, Error> {
    let rows = Rows::of(msgs, span)?;
    let query = sqlx::query(sql).bind(rows.ids).bind(rows.topics).bind(rows.keys).bind(rows.payloads).bind(rows.headers);
    let inserted = bind(query)
        .execute(conn)
        .instrument(trace::db_span("INSERT conveyor.outbox", "INSERT", "conveyor.outbox"))
        .await?
        .rows_affected();
    if inserted > 0 {
        for m in msgs {
            metrics::counter!("conveyor_queue_published_total", "topic" => m.topic.clone()).increment(1);
        }
    }
    Ok(inserted)
}

/// Messages as the columns of one UNNEST insert, each with the trace context it carries.
struct Rows<'m> {
    ids: Vec<uuid::Uuid>,
    topics: Vec<&'m str>,
    keys: Vec<Option<&'m str>>,
    payloads: Vec<&'m str>,
    headers: Vec<String>,
}

impl<'m> Rows<'m> {
    fn of(msgs: &'m [Outgoing], span: &tracing::Span) -> Result<Rows<'m>, Error> {
        let context = trace::context_headers(span);
        let n = msgs.len();
        let mut rows = Rows { ids: Vec::with_capacity(n), topics: Vec::with_capacity(n), keys: Vec::with_capacity(n), payloads: Vec::with_capacity(n), headers: Vec::with_capacity(n) };
        for m in msgs {
            validate_topic(&m.topic)?;
            rows.ids.push(m.id);
            rows.topics.push(m.topic.as_str());
            rows.keys.push(m.key.as_deref());
            rows.payloads.push(m.payload.get());
            let own_context;
            let context = match m.cause() {
                Some(cause) if !cause.is_disabled() => {
                    let span = cause.in_scope(|| trace::publish_span(std::iter::once(m.topic.as_str()), 1, Some(m.id)));
                    own_context = trace::context_headers(&span);
                    &own_context
                }
                _ => &context,
            };
            rows.headers.push(if !context.is_empty() && !m.headers.contains_key(trace::TRACEPARENT) {
                let mut with_context = context.clone();
                with_context.extend(m.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
                serde_json::to_string(&with_context)?
            } else if m.headers.is_empty() {
                "{}".to_owned()
            } else {
                serde_json::to_string(&m.headers)?
            });
        }
        Ok(rows)
    }
}

/// Delivers `msgs` to this database's own inbox, each claimable from `at` on: a timer (a
/// saga step's deadline) kept as a message, in the caller's transaction like a publish.
/// Nothing goes through the outbox or a relay, and the topic needs no route: the
/// messages are for this database's consumer, which must subscribe to their topic.
///
/// Nothing announces that `at` has come: an idle consumer finds the message at its next
/// poll (`Consumer::poll_interval`, 1 s by default), a busy one at its next claim. The
/// message then runs in the `process` span of the trace it was scheduled in.
pub async fn schedule(conn: &mut PgConnection, msgs: &[Outgoing], at: chrono::DateTime<chrono::Utc>) -> Result<(), Error> {
    if msgs.is_empty() {
        return Ok(());
    }
    let single = (msgs.len() == 1).then(|| msgs[0].id);
    let span = trace::publish_span(msgs.iter().map(|m| m.topic.as_str()), msgs.len(), single);
    let rows = Rows::of(msgs, &span)?;
    let result = sqlx::query(SCHEDULE)
        .bind(rows.ids)
        .bind(rows.topics)
        .bind(rows.keys)
        .bind(rows.payloads)
        .bind(rows.headers)
        .bind(at)
        .execute(conn)
        .instrument(trace::db_span("INSERT conveyor.inbox", "INSERT", "conveyor.inbox"))
        .instrument(span.clone())
        .await;
    if let Err(e) = &result {
        trace::record_error(&span, "schedule", e);
    }
    result?;
    for m in msgs {
        metrics::counter!("conveyor_queue_scheduled_total", "topic" => m.topic.clone()).increment(1);
    }
    Ok(())
}

/// `schedule`'s insert: `$1` to `$5` as in `INSERT`, `$6` when the messages become claimable.
const SCHEDULE: &str = "INSERT INTO conveyor.inbox (message_id, topic, key, payload, headers, published_at, visible_at)
SELECT m.message_id, m.topic, m.key, m.payload::json, m.headers::json, now(), $6
FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[]) AS m(message_id, topic, key, payload, headers)";

/// Topic names are code, not data: short, lowercase, dot-separated words.
pub(crate) fn validate_topic(topic: &str) -> Result<(), Error> {
    let ok = !topic.is_empty()
        && topic.len() <= 200
        && topic.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(Error::Config(format!("invalid topic name {topic:?}: use lowercase letters, digits, '.', '_' or '-'"))) }
}
