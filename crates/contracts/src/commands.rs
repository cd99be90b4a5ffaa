//! The orchestrated saga (ARCHITECTURE §3b): what the order service sends the coordinator
//! to start a saga, the commands the coordinator sends the services, and their replies.
//!
//! Commands are addressed to one service and named by what it is to do (`stock.reserve`);
//! a reply names the service that answers and says what came of which command
//! (`stock.replied`). Every payload names its order: the services key their effects by it,
//! so a repeated command changes nothing, and the coordinator keys its saga by it. A
//! command's effect is the same as the choreography's event for it (`stock.reserve` does
//! what `order.placed` does), by the same code; only what is published afterwards differs.
//!
//! Versioned like the events: fields may be added, never removed or changed in meaning.

use conveyor_queue::Event;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{CancelReason, Money, OrderSummary};

/// How a shop runs its order saga. The order service records on each order the mode it
/// started in, and the order ends in that mode whatever the shop is switched to meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SagaMode {
    /// Each service reacts to the previous one's event (ARCHITECTURE §3).
    #[default]
    Choreography,
    /// The coordinator sends each step's command and runs the compensations.
    Orchestration,
}

impl SagaMode {
    pub const ALL: [SagaMode; 2] = [SagaMode::Choreography, SagaMode::Orchestration];

    pub fn as_str(&self) -> &'static str {
        match self {
            SagaMode::Choreography => "choreography",
            SagaMode::Orchestration => "orchestration",
        }
    }

    pub fn parse(s: &str) -> Option<SagaMode> {
        SagaMode::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl std::fmt::Display for SagaMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SagaMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SagaMode::parse(s).ok_or_else(|| format!("unknown saga mode {s:?}: choreography or orchestration"))
    }
}

/// `saga.start`: order → coordinator. An order placed in orchestration mode: the
/// coordinator takes it from here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartSaga {
    pub order: OrderSummary,
}
event!(StartSaga, "saga.start", |e| e.order.order_id);

/// `stock.reserve`: coordinator → stock. Reserve every line, all or nothing (what
/// `order.placed` does in the choreography). Answered by `stock.replied`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReserveStock {
    pub order: OrderSummary,
}
event!(ReserveStock, "stock.reserve", |e| e.order.order_id);

/// `stock.release`: coordinator → stock. Give the order's reservation back. Sent also when
/// the reservation's reply never came: a reservation that arrives after its release finds
/// the order released and reserves nothing. Answered by `stock.replied`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseStock {
    pub order_id: Uuid,
}
event!(ReleaseStock, "stock.release", |e| e.order_id);

/// `payment.capture`: coordinator → payment. Capture the order's total (what
/// `stock.reserved` does in the choreography). Answered by `payment.replied`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapturePayment {
    pub order: OrderSummary,
}
event!(CapturePayment, "payment.capture", |e| e.order.order_id);

/// `payment.refund`: coordinator → payment. Give back what was captured for the order, once
/// (a capture that came after its saga had timed out). Answered by `payment.replied`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefundPayment {
    pub order_id: Uuid,
    /// Why, for the ledger and the logs.
    pub reason: String,
}
event!(RefundPayment, "payment.refund", |e| e.order_id);

/// `order.confirm`: coordinator → order. Confirm the order (what `payment.captured` does in
/// the choreography). Answered by `order.replied`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfirmOrder {
    pub order_id: Uuid,
    pub payment_id: Uuid,
    pub amount: Money,
}
event!(ConfirmOrder, "order.confirm", |e| e.order_id);

/// `order.cancel`: coordinator → order. Cancel the order. Answered by `order.replied`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelOrder {
    pub order_id: Uuid,
    pub reason: CancelReason,
    pub detail: String,
}
event!(CancelOrder, "order.cancel", |e| e.order_id);

/// What stock did with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StockOutcome {
    /// `stock.reserve`: every line reserved.
    Reserved,
    /// `stock.reserve`: not reserved (`reason` says which product fell short).
    Rejected,
    /// `stock.release`: the reservation is given back (or there was none to give: the
    /// order can no longer reserve).
    Released,
}

/// `stock.replied`: stock → coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockReplied {
    pub order_id: Uuid,
    pub outcome: StockOutcome,
    /// Why a reservation was rejected; empty otherwise.
    #[serde(default)]
    pub reason: String,
}
event!(StockReplied, "stock.replied", |e| e.order_id);

/// What payment did with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentOutcome {
    /// `payment.capture`: the total is taken (`payment_id`, `amount`).
    Captured,
    /// `payment.capture`: not taken (`reason`).
    Declined,
    /// `payment.refund`: what was captured is given back (`payment_id`, `amount`).
    Refunded,
    /// `payment.refund`: nothing was captured for the order, so nothing is given back.
    NothingToRefund,
}

/// `payment.replied`: payment → coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentReplied {
    pub order_id: Uuid,
    pub outcome: PaymentOutcome,
    pub payment_id: Option<Uuid>,
    pub amount: Option<Money>,
    #[serde(default)]
    pub reason: String,
}
event!(PaymentReplied, "payment.replied", |e| e.order_id);

/// `order.replied`: order → coordinator. The order's terminal status after `order.confirm`
/// or `order.cancel` (the first one it got stands).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderReplied {
    pub order_id: Uuid,
    /// `confirmed` or `cancelled`.
    pub status: String,
}
event!(OrderReplied, "order.replied", |e| e.order_id);

/// `saga.deadline`: coordinator → itself, delivered when a step's time is up. Ignored if the
/// saga has moved past that step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaDeadline {
    pub order_id: Uuid,
    /// The step whose reply is due (`reserve_stock`, `capture_payment`).
    pub step: String,
}
event!(SagaDeadline, "saga.deadline", |e| e.order_id);
