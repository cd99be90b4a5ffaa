//! The order's write model: a stream of events per order in `order_events`, appended at the
//! next version under optimistic concurrency, and the state an order's commands are checked
//! against, derived from its stream ([`Order::from_stream`]).
//!
//! Each kind of event happens at most once in an order's life (placed; the reservation
//! reserved, rejected or released; the payment captured, declined or refunded; confirmed or
//! cancelled; notified), so "has this fact been recorded?" is a question about the stream,
//! and the table's `UNIQUE (order_id, type)` refuses a second copy of any fact however it
//! arrives (a duplicate message, a replayed dead letter, a concurrent handler).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use conveyor_contracts::{CancelReason, Money, SagaMode};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::{OrderStatus, PricedLine};

/// Everything that can happen to an order, as stored (`data` of `order_events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrderEvent {
    /// The customer placed it (order-api), priced from the local catalog copy.
    Placed { customer_id: Uuid, lines: Vec<PricedLine>, total: Money, saga_mode: SagaMode },
    /// Stock reserved every line (`stock.reserved`, or `stock.replied` in orchestration).
    StockReserved { lines: Vec<ReservedLine> },
    /// Stock could not reserve: which product fell short.
    StockRejected { reason: String },
    /// Stock gave the reservation back (orchestration's compensation).
    StockReleased,
    PaymentCaptured { payment_id: Uuid, amount: Money },
    PaymentDeclined { reason: String },
    /// A capture given back (orchestration: a capture that came after the saga timed out).
    PaymentRefunded { payment_id: Option<Uuid>, amount: Option<Money> },
    Confirmed,
    Cancelled { reason: CancelReason, detail: String },
    /// The customer was told (`notification.sent`): the receiver accepted it.
    Notified { notification_id: Uuid, event_type: String, subject: String, delivered_at: DateTime<Utc> },
}

/// A line as stock reserved it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReservedLine {
    pub product_id: Uuid,
    pub quantity: i32,
}

impl OrderEvent {
    /// The event's `type`, as stored beside it.
    pub fn kind(&self) -> &'static str {
        match self {
            OrderEvent::Placed { .. } => "placed",
            OrderEvent::StockReserved { .. } => "stock_reserved",
            OrderEvent::StockRejected { .. } => "stock_rejected",
            OrderEvent::StockReleased => "stock_released",
            OrderEvent::PaymentCaptured { .. } => "payment_captured",
            OrderEvent::PaymentDeclined { .. } => "payment_declined",
            OrderEvent::PaymentRefunded { .. } => "payment_refunded",
            OrderEvent::Confirmed => "confirmed",
            OrderEvent::Cancelled { .. } => "cancelled",
            OrderEvent::Notified { .. } => "notified",
        }
    }
}

/// An event as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub order_id: Uuid,
    pub version: i32,
    pub at: DateTime<Utc>,
    pub event: OrderEvent,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    order_id: Uuid,
    version: i32,
    at: DateTime<Utc>,
    data: Json<OrderEvent>,
}

impl From<EventRow> for StoredEvent {
    fn from(r: EventRow) -> Self {
        StoredEvent { order_id: r.order_id, version: r.version, at: r.at, event: r.data.0 }
    }
}

/// An order as its events say it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub lines: Vec<PricedLine>,
    pub total: Money,
    pub saga_mode: SagaMode,
    pub placed_at: DateTime<Utc>,
    pub status: OrderStatus,
    pub reason: Option<CancelReason>,
    pub reason_detail: Option<String>,
    /// When it was confirmed or cancelled (else when placed).
    pub updated_at: DateTime<Utc>,
    /// The version of its last event: the next append goes at `version + 1`.
    pub version: i32,
    kinds: Vec<&'static str>,
}

impl Order {
    /// The state `stream` (one order's events, by version) leads to; `None` for an empty
    /// stream. Panics on a stream that does not start with `placed`: the table's CHECK
    /// admits no other.
    pub fn from_stream(stream: &[StoredEvent]) -> Option<Order> {
        let (first, rest) = stream.split_first()?;
        let OrderEvent::Placed { customer_id, lines, total, saga_mode } = &first.event else {
            panic!("the stream of order {} starts with {}, not placed", first.order_id, first.event.kind());
        };
        let mut order = Order {
            id: first.order_id,
            customer_id: *customer_id,
            lines: lines.clone(),
            total: *total,
            saga_mode: *saga_mode,
            placed_at: first.at,
            status: OrderStatus::Placed,
            reason: None,
            reason_detail: None,
            updated_at: first.at,
            version: first.version,
            kinds: vec!["placed"],
        };
        for e in rest {
            order.apply(&e.event);
            order.version = e.version;
            if matches!(e.event, OrderEvent::Confirmed | OrderEvent::Cancelled { .. }) {
                order.updated_at = e.at;
            }
        }
        Some(order)
    }

    /// Takes `event`, the next in the stream, into the state: the version moves on by one.
    /// (`updated_at` is the store's time of a terminal event, set when it is read.)
    pub fn apply(&mut self, event: &OrderEvent) {
        self.version += 1;
        self.kinds.push(event.kind());
        match event {
            OrderEvent::Confirmed => self.status = OrderStatus::Confirmed,
            OrderEvent::Cancelled { reason, detail } => {
                self.status = OrderStatus::Cancelled;
                (self.reason, self.reason_detail) = (Some(*reason), Some(detail.clone()));
            }
            _ => {}
        }
    }

    /// Whether the stream already has an event of `kind`.
    pub fn has(&self, kind: &str) -> bool {
        self.kinds.contains(&kind)
    }
}

/// Reads the streams of `order_ids`, each by version.
pub const STREAMS: &str = "SELECT order_id, version, at, data FROM order_events WHERE order_id = ANY($1) ORDER BY order_id, version";

/// The streams of `order_ids` (those that exist), each by version.
pub async fn load(conn: &mut PgConnection, order_ids: &[Uuid]) -> sqlx::Result<BTreeMap<Uuid, Vec<StoredEvent>>> {
    let rows: Vec<EventRow> = sqlx::query_as(STREAMS).bind(order_ids).fetch_all(conn).await?;
    let mut streams: BTreeMap<Uuid, Vec<StoredEvent>> = BTreeMap::new();
    for r in rows {
        streams.entry(r.order_id).or_default().push(r.into());
    }
    Ok(streams)
}

/// One order's state, or `None` if there is no such order.
pub async fn order(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Option<Order>> {
    Ok(Order::from_stream(&stream_of(conn, order_id).await?))
}

/// One order's stream, by version (empty if there is no such order).
pub async fn stream_of(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Vec<StoredEvent>> {
    Ok(load(conn, &[order_id]).await?.remove(&order_id).unwrap_or_default())
}

/// The append's `INSERT`, with the parameters its caller numbers: the events' orders,
/// versions, types and data (arrays), and the time to record (NULL: the transaction's).
macro_rules! append_insert {
    ($ids:literal, $versions:literal, $types:literal, $data:literal, $at:literal) => {
        concat!(
            "INSERT INTO order_events (order_id, version, type, data, at)\n",
            "     SELECT e.*, coalesce(", $at, "::timestamptz, now())\n",
            "     FROM unnest(", $ids, "::uuid[], ", $versions, "::int[], ", $types, "::text[], ", $data, "::jsonb[]) AS e"
        )
    };
}
pub(crate) use append_insert;

/// Appends events, each to its order's stream at the version it names: `$1` to `$4` are
/// their orders, versions, types and data, as arrays, and `$5` NULL. Returns the time they
/// were recorded (the transaction's, the same for all).
pub const APPEND: &str = concat!(append_insert!("$1", "$2", "$3", "$4", "$5"), "\n     RETURNING at");

/// An event to append: the next of the stream of `order_id`, at `version`.
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'e> {
    pub order_id: Uuid,
    pub version: i32,
    pub event: &'e OrderEvent,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another transaction appended to one of these streams since it was read (or
    /// recorded one of these facts): read them again and decide again.
    #[error("the events of order(s) {} changed since they were read; read them again", order_ids.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", "))]
    Conflict { order_ids: Vec<Uuid> },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Appends `events` to the stream of `order_id`, which must still be at version `expected`
/// (0 for a new order); see [`append_all`].
pub async fn append(conn: &mut PgConnection, order_id: Uuid, expected: i32, events: &[OrderEvent]) -> Result<Option<DateTime<Utc>>, AppendError> {
    let new: Vec<NewEvent> = events.iter().zip(expected + 1..).map(|(event, version)| NewEvent { order_id, version, event }).collect();
    append_all(conn, &new).await
}

/// Appends `events` (of one order or many) in one statement; returns the time they were
/// recorded, `None` for an empty list. Each must be at the version after the last one of
/// its stream. On a conflict nothing is appended and the failed insert has aborted the
/// caller's transaction: roll it back and decide again from a fresh read (a handler
/// returns the conflict and the consumer retries it).
#[tracing::instrument(level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "INSERT", db.collection.name = "order_events", events = events.len()))]
pub async fn append_all(conn: &mut PgConnection, events: &[NewEvent<'_>]) -> Result<Option<DateTime<Utc>>, AppendError> {
    if events.is_empty() {
        return Ok(None);
    }
    let order_ids: Vec<Uuid> = events.iter().map(|e| e.order_id).collect();
    let versions: Vec<i32> = events.iter().map(|e| e.version).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.event.kind()).collect();
    let data: Vec<Json<&OrderEvent>> = events.iter().map(|e| Json(e.event)).collect();
    match sqlx::query_scalar(APPEND).bind(&order_ids).bind(&versions).bind(&kinds).bind(&data).bind(None::<DateTime<Utc>>).fetch_all(conn).await {
        Ok(at) => {
            metrics::counter!("conveyor_order_events_appended_total").increment(events.len() as u64);
            Ok(at.first().copied())
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            metrics::counter!("conveyor_order_event_conflicts_total").increment(1);
            let order_ids = order_ids.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
            Err(AppendError::Conflict { order_ids })
        }
        Err(e) => Err(e.into()),
    }
}
