//! The order's write model: a stream of events per order in `order_events`, appended at the
//! next version under optimistic concurrency, and the state an order's commands are checked
//! against, derived from its stream ([`Order::from_stream`]).
//!
//! Each kind of event happens at most once in an order's life (placed; the reservation
//! reserved, rejected or released; the payment captured, declined or refunded; confirmed or
//! cancelled; notified), so "has this fact been recorded?" is a question about the stream,
//! and the table's `UNIQUE (order_id, type)` refuses a second copy of any fact however it
//! arrives (a duplicate message, a replayed dead letter, a concurrent handler).

use std::collections::BTreeMap;

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
            order.version = e.version;
            order.kinds.push(e.event.kind());
            match &e.event {
                OrderEvent::Confirmed => (order.status, order.updated_at) = (OrderStatus::Confirmed, e.at),
                OrderEvent::Cancelled { reason, detail } => {
                    (order.status, order.updated_at) = (OrderStatus::Cancelled, e.at);
                    (order.reason, order.reason_detail) = (Some(*reason), Some(detail.clone()));
                }
                _ => {}
            }
        }
        Some(order)
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

/// Appends `events` at versions `expected + 1 …`; returns the time they were recorded.
pub const APPEND: &str = "INSERT INTO order_events (order_id, version, type, data)
     SELECT $1, $2 + e.n, e.type, e.data FROM unnest($3::text[], $4::jsonb[]) WITH ORDINALITY AS e(type, data, n)
     RETURNING at";

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another transaction appended to the stream since it was read (or recorded one of
    /// these facts): read it again and decide again.
    #[error("order {order_id} changed since version {expected} was read; read its events again")]
    Conflict { order_id: Uuid, expected: i32 },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Appends `events` to the stream of `order_id`, which must still be at version `expected`
/// (0 for a new order). An empty list appends nothing. On a conflict nothing is appended
/// and the failed insert has aborted the caller's transaction: roll it back and decide
/// again from a fresh read (a handler returns the conflict and the consumer retries it).
#[tracing::instrument(level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "INSERT", db.collection.name = "order_events", %order_id, expected))]
pub async fn append(conn: &mut PgConnection, order_id: Uuid, expected: i32, events: &[OrderEvent]) -> Result<Option<DateTime<Utc>>, AppendError> {
    if events.is_empty() {
        return Ok(None);
    }
    let kinds: Vec<&str> = events.iter().map(OrderEvent::kind).collect();
    let data: Vec<Json<&OrderEvent>> = events.iter().map(Json).collect();
    match sqlx::query_scalar(APPEND).bind(order_id).bind(expected).bind(&kinds).bind(&data).fetch_all(conn).await {
        Ok(at) => {
            metrics::counter!("conveyor_order_events_appended_total").increment(events.len() as u64);
            Ok(at.first().copied())
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            metrics::counter!("conveyor_order_event_conflicts_total").increment(1);
            Err(AppendError::Conflict { order_id, expected })
        }
        Err(e) => Err(e.into()),
    }
}
