//! Every event of the saga (ARCHITECTURE §3), with its topic.

use chrono::{DateTime, Utc};
use conveyor_queue::Event;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Money;

/// A product as the catalog publishes it. `version` grows with every change, so a
/// receiver keeps the newest copy whatever order the events arrive in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: Uuid,
    pub name: String,
    pub price: Money,
    /// Units the stock service starts the item with.
    pub initial_stock: i64,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

/// `product.created`: catalog → stock (create the item), order (keep a copy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductCreated {
    pub product: Product,
}
event!(ProductCreated, "product.created", |e| e.product.id);

/// `product.updated`: catalog → stock, order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductUpdated {
    pub product: Product,
}
event!(ProductUpdated, "product.updated", |e| e.product.id);

/// One line of an order, priced by the order service from its copy of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderLine {
    pub product_id: Uuid,
    pub quantity: i32,
    pub unit_price: Money,
}

/// What every saga event carries about its order, so that each step can act (and the
/// notification fall back) on the event alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderSummary {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub placed_at: DateTime<Utc>,
}

/// `order.placed`: order → stock (reserve every line, all or nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order: OrderSummary,
}
event!(OrderPlaced, "order.placed", |e| e.order.order_id);

/// `stock.reserved`: stock → payment (capture the total).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockReserved {
    pub order: OrderSummary,
}
event!(StockReserved, "stock.reserved", |e| e.order.order_id);

/// `stock.rejected`: stock → order (cancel: out of stock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockRejected {
    pub order_id: Uuid,
    /// Human-readable: which product fell short, by how much.
    pub reason: String,
}
event!(StockRejected, "stock.rejected", |e| e.order_id);

/// `payment.captured`: payment → order (confirm).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    pub order_id: Uuid,
    pub payment_id: Uuid,
    pub amount: Money,
}
event!(PaymentCaptured, "payment.captured", |e| e.order_id);

/// `payment.declined`: payment → order (cancel), stock (release the reservation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentDeclined {
    pub order_id: Uuid,
    pub reason: String,
}
event!(PaymentDeclined, "payment.declined", |e| e.order_id);

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    OutOfStock,
    PaymentDeclined,
    /// Orchestration only: a step got no reply by its deadline.
    Timeout,
}

impl CancelReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            CancelReason::OutOfStock => "out_of_stock",
            CancelReason::PaymentDeclined => "payment_declined",
            CancelReason::Timeout => "timeout",
        }
    }

    pub const ALL: [CancelReason; 3] = [CancelReason::OutOfStock, CancelReason::PaymentDeclined, CancelReason::Timeout];

    pub fn parse(s: &str) -> Option<CancelReason> {
        CancelReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// `order.confirmed`: order → notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    pub order: OrderSummary,
    pub confirmed_at: DateTime<Utc>,
}
event!(OrderConfirmed, "order.confirmed", |e| e.order.order_id);

/// `order.cancelled`: order → notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order: OrderSummary,
    pub reason: CancelReason,
    /// The upstream explanation (which product, which balance).
    pub detail: String,
    pub cancelled_at: DateTime<Utc>,
}
event!(OrderCancelled, "order.cancelled", |e| e.order.order_id);

/// `notification.sent`: notification → order (the order's timeline). Published in the
/// transaction that records a notification the receiver accepted (2xx): once per order and
/// event type, like the record itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationSent {
    pub order_id: Uuid,
    pub notification_id: Uuid,
    /// The event the customer was told about: `order.confirmed` or `order.cancelled`.
    pub event_type: String,
    pub subject: String,
    pub delivered_at: DateTime<Utc>,
}
event!(NotificationSent, "notification.sent", |e| e.order_id);
