//! What the API answers: an order with its lines, history and timeline (the read model the
//! projector keeps, `order_views`), and the local product copy.

use chrono::{DateTime, Utc};
use conveyor_contracts::{CancelReason, Money, SagaMode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{OrderStatus, Priced, PricedLine};
use crate::repo::ProductRow;
use crate::stream::{Order, OrderEvent, ReservedLine, StoredEvent};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderView {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub status: OrderStatus,
    /// Why it was cancelled; absent unless cancelled.
    pub reason: Option<CancelReason>,
    /// The upstream explanation of the cancellation (which product, which balance).
    pub reason_detail: Option<String>,
    pub lines: Vec<LineView>,
    pub total: Money,
    /// How its saga runs: chosen by the shop's mode when it was placed, kept until it ends.
    pub saga_mode: SagaMode,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Every status the order went through, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Every step of its saga the order service has heard of, in the saga's order: placed,
    /// the reservation, the payment, the outcome, the notification.
    pub timeline: Vec<TimelineEntry>,
    /// The version of the order's event stream this view reflects.
    pub version: i32,
}

/// A line as it was priced when the order was placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LineView {
    pub product_id: Uuid,
    pub name: String,
    pub quantity: i32,
    pub unit_price: Money,
}

impl From<&PricedLine> for LineView {
    fn from(l: &PricedLine) -> Self {
        LineView { product_id: l.product_id, name: l.name.clone(), quantity: l.quantity, unit_price: l.unit_price }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntry {
    pub status: OrderStatus,
    pub reason: Option<CancelReason>,
    pub at: DateTime<Utc>,
}

/// One step of an order's saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TimelineEntry {
    /// `placed`, `stock_reserved`, `stock_rejected`, `stock_released`, `payment_captured`,
    /// `payment_declined`, `payment_refunded`, `confirmed`, `cancelled` or `notified`.
    pub step: String,
    /// When the order service recorded it.
    pub at: DateTime<Utc>,
    /// What happened, in words.
    pub detail: String,
    /// `stock_reserved`: the lines reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<Vec<ReservedLine>>,
    /// `payment_captured`, `payment_refunded`: the amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<Uuid>,
    /// `notified`: the notification delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_id: Option<Uuid>,
}

/// Where a step sits in the saga: the timeline shows steps in this order whatever order the
/// services' messages arrived in (each step happens at most once).
fn rank(e: &OrderEvent) -> u8 {
    match e {
        OrderEvent::Placed { .. } => 0,
        OrderEvent::StockReserved { .. } | OrderEvent::StockRejected { .. } => 1,
        OrderEvent::PaymentCaptured { .. } | OrderEvent::PaymentDeclined { .. } => 2,
        OrderEvent::Confirmed | OrderEvent::Cancelled { .. } => 3,
        OrderEvent::StockReleased | OrderEvent::PaymentRefunded { .. } => 4,
        OrderEvent::Notified { .. } => 5,
    }
}

fn entry(e: &StoredEvent, order: &Order) -> TimelineEntry {
    let mut t = TimelineEntry {
        step: e.event.kind().to_owned(),
        at: e.at,
        detail: String::new(),
        reserved: None,
        amount: None,
        payment_id: None,
        notification_id: None,
    };
    t.detail = match &e.event {
        OrderEvent::Placed { lines, total, .. } => format!("placed: {} line(s), {total}", lines.len()),
        OrderEvent::StockReserved { lines } => {
            let units: i64 = lines.iter().map(|l| i64::from(l.quantity)).sum();
            t.reserved = Some(lines.clone());
            format!("stock reserved: {units} unit(s) of {} product(s)", lines.len())
        }
        OrderEvent::StockRejected { reason } => format!("stock rejected: {reason}"),
        OrderEvent::StockReleased => "stock released: the reservation was given back".to_owned(),
        OrderEvent::PaymentCaptured { payment_id, amount } => {
            (t.amount, t.payment_id) = (Some(*amount), Some(*payment_id));
            format!("payment captured: {amount}")
        }
        OrderEvent::PaymentDeclined { reason } => format!("payment declined: {reason}"),
        OrderEvent::PaymentRefunded { payment_id, amount } => {
            (t.amount, t.payment_id) = (*amount, *payment_id);
            match amount {
                Some(a) => format!("payment refunded: {a}"),
                None => "payment refunded".to_owned(),
            }
        }
        OrderEvent::Confirmed => format!("confirmed: {}", order.total),
        OrderEvent::Cancelled { reason, detail } => format!("cancelled ({}): {detail}", reason.as_str()),
        OrderEvent::Notified { notification_id, event_type, subject, .. } => {
            t.notification_id = Some(*notification_id);
            format!("customer notified of {event_type}: {subject:?}")
        }
    };
    t
}

impl OrderView {
    /// The view of an order from its whole stream (by version); `None` for an empty one.
    /// The projector and the rebuild both make views with this, and only with this.
    pub fn from_stream(stream: &[StoredEvent]) -> Option<OrderView> {
        let order = Order::from_stream(stream)?;
        let mut steps: Vec<&StoredEvent> = stream.iter().collect();
        steps.sort_by_key(|e| (rank(&e.event), e.version));
        let history = stream
            .iter()
            .filter_map(|e| match &e.event {
                OrderEvent::Placed { .. } => Some(HistoryEntry { status: OrderStatus::Placed, reason: None, at: e.at }),
                OrderEvent::Confirmed => Some(HistoryEntry { status: OrderStatus::Confirmed, reason: None, at: e.at }),
                OrderEvent::Cancelled { reason, .. } => Some(HistoryEntry { status: OrderStatus::Cancelled, reason: Some(*reason), at: e.at }),
                _ => None,
            })
            .collect();
        Some(OrderView {
            id: order.id,
            customer_id: order.customer_id,
            status: order.status,
            reason: order.reason,
            reason_detail: order.reason_detail.clone(),
            lines: order.lines.iter().map(LineView::from).collect(),
            total: order.total,
            saga_mode: order.saga_mode,
            created_at: order.placed_at,
            updated_at: order.updated_at,
            history,
            timeline: steps.into_iter().map(|e| entry(e, &order)).collect(),
            version: order.version,
        })
    }

    /// The view of an order just placed at `now` (the answer to POST /orders), without
    /// reading it back: the same as its one-event stream gives.
    pub fn placed(id: Uuid, customer_id: Uuid, priced: &Priced, saga_mode: SagaMode, now: DateTime<Utc>) -> OrderView {
        let event = OrderEvent::Placed { customer_id, lines: priced.lines.clone(), total: priced.total, saga_mode };
        OrderView::from_stream(&[StoredEvent { order_id: id, version: 1, at: now, event }]).expect("one event")
    }
}

/// The order service's copy of a catalog product.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProductView {
    pub id: Uuid,
    pub name: String,
    pub price: Money,
    /// The catalog's version this copy has.
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

impl From<ProductRow> for ProductView {
    fn from(r: ProductRow) -> Self {
        ProductView { id: r.id, price: r.price(), name: r.name, version: r.version, updated_at: r.updated_at }
    }
}
