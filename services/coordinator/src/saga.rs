//! The orchestrated order saga: its states and steps, and the worker's handlers that move
//! it on. Each handler is one transaction (the engine's transaction mode): the saga's new
//! state, the steps it records and the commands it sends (outbox) commit together with the
//! message being marked done, so a coordinator killed anywhere resumes where it was, and a
//! repeated message finds the saga moved on and sends nothing.
//!
//! ```text
//! saga.start ─► reserving ──stock reserved──► paying ──payment captured──► confirming ──order confirmed──► confirmed
//!                  │                             │                            
//!                  ├─stock rejected──────────────┼─payment declined (release)─► cancelling ──order cancelled──► cancelled
//!                  └─deadline (release)──────────┴─deadline (release)─────────►
//! ```
//!
//! A reply that comes after its step's deadline finds the saga cancelling or over: a late
//! reservation is given back by the release the timeout sent (stock records a release that
//! precedes its reservation, so the reservation never happens), and a late capture is
//! refunded (`payment.refund`), never kept.

use std::time::Duration;

use chrono::{DateTime, Utc};
use conveyor_contracts::{
    CancelOrder, CancelReason, CapturePayment, ConfirmOrder, Event, OrderReplied, PaymentOutcome, PaymentReplied, RefundPayment, ReleaseStock,
    ReserveStock, SagaDeadline, StartSaga, StockOutcome, StockReplied,
};
use conveyor_queue::{Consumer, Delivery, HandlerError, Outgoing, handler_fn, lock_keys_fn};
use futures::FutureExt;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::repo::{self, SagaRow, Transition};

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `stock.reserve` sent; waiting for stock.
    Reserving,
    /// `payment.capture` sent; waiting for payment.
    Paying,
    /// `order.confirm` sent.
    Confirming,
    /// `order.cancel` sent (and the compensations the cause needs).
    Cancelling,
    Confirmed,
    Cancelled,
}

impl State {
    pub const ALL: [State; 6] = [State::Reserving, State::Paying, State::Confirming, State::Cancelling, State::Confirmed, State::Cancelled];

    pub fn as_str(&self) -> &'static str {
        match self {
            State::Reserving => "reserving",
            State::Paying => "paying",
            State::Confirming => "confirming",
            State::Cancelling => "cancelling",
            State::Confirmed => "confirmed",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|x| x.as_str() == s)
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, State::Confirmed | State::Cancelled)
    }
}

/// A command the coordinator sends, as recorded in `saga_steps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    ReserveStock,
    CapturePayment,
    ConfirmOrder,
    CancelOrder,
    ReleaseStock,
    RefundPayment,
}

impl Step {
    pub const ALL: [Step; 6] = [Step::ReserveStock, Step::CapturePayment, Step::ConfirmOrder, Step::CancelOrder, Step::ReleaseStock, Step::RefundPayment];

    pub fn as_str(&self) -> &'static str {
        match self {
            Step::ReserveStock => "reserve_stock",
            Step::CapturePayment => "capture_payment",
            Step::ConfirmOrder => "confirm_order",
            Step::CancelOrder => "cancel_order",
            Step::ReleaseStock => "release_stock",
            Step::RefundPayment => "refund_payment",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Undoes an earlier step's effect.
    pub fn is_compensation(&self) -> bool {
        matches!(self, Step::ReleaseStock | Step::RefundPayment)
    }

    /// The state in which the saga waits for this step's reply, for the steps that have a
    /// deadline.
    fn waiting_in(&self) -> Option<State> {
        match self {
            Step::ReserveStock => Some(State::Reserving),
            Step::CapturePayment => Some(State::Paying),
            _ => None,
        }
    }
}

/// How the coordinator runs sagas.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long stock and payment each have to answer their command before the saga is
    /// compensated and the order cancelled with reason `timeout`.
    pub step_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { step_timeout: Duration::from_secs(30) }
    }
}

/// Adds the coordinator's handlers to `consumer`. Every message names its order, and every
/// handler locks that order's saga first (`lock_keys`: one order for all of a batch's
/// sagas, so batches never deadlock on them).
pub fn subscribe(consumer: Consumer, settings: Settings) -> Consumer {
    for step in Step::ALL {
        metrics::counter!("conveyor_saga_commands_total", "step" => step.as_str()).increment(0);
    }
    for step in [Step::ReserveStock, Step::CapturePayment] {
        metrics::counter!("conveyor_saga_timeouts_total", "step" => step.as_str()).increment(0);
    }
    for step in [Step::ReleaseStock, Step::RefundPayment] {
        metrics::counter!("conveyor_saga_compensations_total", "step" => step.as_str()).increment(0);
    }
    for (state, reason) in [("confirmed", "none"), ("cancelled", "out_of_stock"), ("cancelled", "payment_declined"), ("cancelled", "timeout")] {
        metrics::counter!("conveyor_sagas_ended_total", "state" => state, "reason" => reason).increment(0);
    }
    metrics::counter!("conveyor_sagas_started_total").increment(0);
    consumer
        .subscribe(handler_fn(move |conn, msg: Delivery<StartSaga>| start(conn, msg, settings).boxed()))
        .subscribe(handler_fn(move |conn, msg: Delivery<StockReplied>| on_stock(conn, msg, settings).boxed()))
        .subscribe(handler_fn(move |conn, msg: Delivery<PaymentReplied>| on_payment(conn, msg).boxed()))
        .subscribe(handler_fn(move |conn, msg: Delivery<OrderReplied>| on_order(conn, msg).boxed()))
        .subscribe(handler_fn(move |conn, msg: Delivery<SagaDeadline>| on_deadline(conn, msg, settings).boxed()))
        .lock_keys(lock_keys_fn(|_, m: &[&StartSaga]| keys(m.iter().map(|m| m.order.order_id))))
        .lock_keys(lock_keys_fn(|_, m: &[&StockReplied]| keys(m.iter().map(|m| m.order_id))))
        .lock_keys(lock_keys_fn(|_, m: &[&PaymentReplied]| keys(m.iter().map(|m| m.order_id))))
        .lock_keys(lock_keys_fn(|_, m: &[&OrderReplied]| keys(m.iter().map(|m| m.order_id))))
        .lock_keys(lock_keys_fn(|_, m: &[&SagaDeadline]| keys(m.iter().map(|m| m.order_id))))
}

fn keys<'c>(orders: impl Iterator<Item = Uuid>) -> futures::future::BoxFuture<'c, Result<Vec<String>, HandlerError>> {
    let keys = orders.map(|o| format!("saga:{o}")).collect();
    async move { Ok(keys) }.boxed()
}

/// `saga.start`: the saga begins by asking stock to reserve, with a deadline.
async fn start(conn: &mut PgConnection, msg: Delivery<StartSaga>, settings: Settings) -> Result<(), HandlerError> {
    let order = &msg.payload.order;
    let deadline = deadline_after(settings.step_timeout);
    if !repo::start(conn, order, deadline).await? {
        tracing::info!(order_id = %order.order_id, "saga already started; repeated start ignored");
        return Ok(());
    }
    metrics::counter!("conveyor_sagas_started_total").increment(1);
    let mut saga = Saga { order_id: order.order_id, cause: &msg };
    saga.send(conn, Step::ReserveStock, &ReserveStock { order: order.clone() }, Some(deadline)).await?;
    tracing::info!(order_id = %order.order_id, "saga started: reserving stock");
    Ok(())
}

/// `stock.replied`.
async fn on_stock(conn: &mut PgConnection, msg: Delivery<StockReplied>, settings: Settings) -> Result<(), HandlerError> {
    let reply = &msg.payload;
    let row = locked(conn, reply.order_id).await?;
    let step = match reply.outcome {
        StockOutcome::Reserved | StockOutcome::Rejected => Step::ReserveStock,
        StockOutcome::Released => Step::ReleaseStock,
    };
    let outcome = serde_plain(&reply.outcome);
    record(conn, reply.order_id, step, reply, &outcome).await?;
    let mut saga = Saga { order_id: reply.order_id, cause: &msg };
    match (reply.outcome, row.state()) {
        (StockOutcome::Reserved, State::Reserving) => {
            let deadline = deadline_after(settings.step_timeout);
            repo::transition(conn, reply.order_id, &Transition { to: State::Paying, deadline: Some(deadline), reason: None, detail: None, payment_id: None }).await?;
            saga.send(conn, Step::CapturePayment, &CapturePayment { order: row.summary.0.clone() }, Some(deadline)).await?;
            tracing::info!(order_id = %reply.order_id, "stock reserved: capturing payment");
        }
        (StockOutcome::Rejected, State::Reserving) => {
            saga.cancel(conn, CancelReason::OutOfStock, &reply.reason).await?;
        }
        (StockOutcome::Released, _) => tracing::info!(order_id = %reply.order_id, "reservation released"),
        (_, state) => {
            // A reservation after the saga timed out: the release sent then gives it back.
            tracing::info!(order_id = %reply.order_id, outcome, state = state.as_str(), "late or repeated stock reply; nothing to do");
        }
    }
    Ok(())
}

/// `payment.replied`.
async fn on_payment(conn: &mut PgConnection, msg: Delivery<PaymentReplied>) -> Result<(), HandlerError> {
    let reply = &msg.payload;
    let row = locked(conn, reply.order_id).await?;
    let step = match reply.outcome {
        PaymentOutcome::Captured | PaymentOutcome::Declined => Step::CapturePayment,
        PaymentOutcome::Refunded | PaymentOutcome::NothingToRefund => Step::RefundPayment,
    };
    let outcome = serde_plain(&reply.outcome);
    record(conn, reply.order_id, step, reply, &outcome).await?;
    let mut saga = Saga { order_id: reply.order_id, cause: &msg };
    match (reply.outcome, row.state()) {
        (PaymentOutcome::Captured, State::Paying) => {
            let (Some(payment_id), Some(amount)) = (reply.payment_id, reply.amount) else {
                return Err(HandlerError::permanent(anyhow::anyhow!("payment.replied captured for order {} without a payment id and amount", reply.order_id)));
            };
            repo::transition(conn, reply.order_id, &Transition { to: State::Confirming, deadline: None, reason: None, detail: None, payment_id: Some(payment_id) })
                .await?;
            saga.send(conn, Step::ConfirmOrder, &ConfirmOrder { order_id: reply.order_id, payment_id, amount }, None).await?;
            tracing::info!(order_id = %reply.order_id, %payment_id, "payment captured: confirming the order");
        }
        (PaymentOutcome::Declined, State::Paying) => {
            saga.cancel(conn, CancelReason::PaymentDeclined, &reply.reason).await?;
        }
        (PaymentOutcome::Captured, state) if !(matches!(state, State::Confirming | State::Confirmed) && row.payment_id == reply.payment_id) => {
            // Captured after the saga gave up on payment: the money goes back, once.
            if repo::has_step(conn, reply.order_id, Step::RefundPayment).await? {
                tracing::info!(order_id = %reply.order_id, "late capture already being refunded");
            } else {
                let reason = format!("captured after the saga was {}", state.as_str());
                tracing::warn!(order_id = %reply.order_id, payment_id = ?reply.payment_id, state = state.as_str(), "payment captured after its saga timed out: refunding it");
                saga.send(conn, Step::RefundPayment, &RefundPayment { order_id: reply.order_id, reason }, None).await?;
            }
        }
        (PaymentOutcome::Refunded | PaymentOutcome::NothingToRefund, _) => tracing::info!(order_id = %reply.order_id, outcome, "refund answered"),
        (_, state) => tracing::info!(order_id = %reply.order_id, outcome, state = state.as_str(), "late or repeated payment reply; nothing to do"),
    }
    Ok(())
}

/// `order.replied`: the order is confirmed or cancelled; the saga ends so.
async fn on_order(conn: &mut PgConnection, msg: Delivery<OrderReplied>) -> Result<(), HandlerError> {
    let reply = &msg.payload;
    let row = locked(conn, reply.order_id).await?;
    let step = if reply.status == "confirmed" { Step::ConfirmOrder } else { Step::CancelOrder };
    record(conn, reply.order_id, step, reply, &reply.status).await?;
    let to = match (reply.status.as_str(), row.state()) {
        ("confirmed", State::Confirming) => State::Confirmed,
        ("cancelled", State::Cancelling) => State::Cancelled,
        (status, state) => {
            if !state.is_terminal() {
                tracing::warn!(order_id = %reply.order_id, status, state = state.as_str(), "the order says otherwise than the saga; the saga waits");
            }
            return Ok(());
        }
    };
    repo::transition(conn, reply.order_id, &Transition { to, deadline: None, reason: None, detail: None, payment_id: None }).await?;
    let reason = if to == State::Confirmed { None } else { row.reason.clone() };
    metrics::counter!("conveyor_sagas_ended_total", "state" => to.as_str(), "reason" => reason.unwrap_or_else(|| "none".to_owned())).increment(1);
    let took = (Utc::now() - row.created_at).to_std().unwrap_or_default();
    metrics::histogram!("conveyor_saga_orchestrated_duration_seconds", "state" => to.as_str()).record(took.as_secs_f64());
    tracing::info!(order_id = %reply.order_id, state = to.as_str(), "saga ended");
    Ok(())
}

/// `saga.deadline`: if the saga still waits for that step, it is compensated.
async fn on_deadline(conn: &mut PgConnection, msg: Delivery<SagaDeadline>, settings: Settings) -> Result<(), HandlerError> {
    let d = &msg.payload;
    let Some(step) = Step::parse(&d.step) else {
        return Err(HandlerError::permanent(anyhow::anyhow!("saga.deadline for order {} names no step with a deadline: {:?}", d.order_id, d.step)));
    };
    let row = locked(conn, d.order_id).await?;
    if step.waiting_in() != Some(row.state()) {
        tracing::debug!(order_id = %d.order_id, step = step.as_str(), state = row.state().as_str(), "deadline of a step answered in time");
        return Ok(());
    }
    repo::time_out(conn, d.order_id, step).await?;
    metrics::counter!("conveyor_saga_timeouts_total", "step" => step.as_str()).increment(1);
    let service = if step == Step::ReserveStock { "stock" } else { "payment" };
    let detail = format!("{service} did not answer {} within {} s", step.as_str(), settings.step_timeout.as_secs_f64());
    tracing::warn!(order_id = %d.order_id, step = step.as_str(), "step timed out: compensating");
    Saga { order_id: d.order_id, cause: &msg }.cancel(conn, CancelReason::Timeout, &detail).await
}

/// The saga of one order, moved on by the message `cause`.
struct Saga<'m, T> {
    order_id: Uuid,
    cause: &'m Delivery<T>,
}

impl<T> Saga<'_, T> {
    /// Records `step` and sends its command (and its deadline, if any), all in the
    /// handler's transaction.
    async fn send<C: Event + Serialize>(&mut self, conn: &mut PgConnection, step: Step, command: &C, deadline: Option<DateTime<Utc>>) -> Result<(), HandlerError> {
        repo::add_step(conn, self.order_id, step, &serde_json::to_value(command)?, deadline).await?;
        conveyor_queue::publish(conn, Outgoing::event(command)?.caused_by(self.cause)).await?;
        if let Some(at) = deadline {
            let timer = Outgoing::event(&SagaDeadline { order_id: self.order_id, step: step.as_str().to_owned() })?.caused_by(self.cause);
            conveyor_queue::schedule(conn, &[timer], at).await?;
        }
        metrics::counter!("conveyor_saga_commands_total", "step" => step.as_str()).increment(1);
        if step.is_compensation() {
            metrics::counter!("conveyor_saga_compensations_total", "step" => step.as_str()).increment(1);
        }
        Ok(())
    }

    /// Moves the saga to `cancelling` for `reason`: releases the stock unless nothing was
    /// reserved (out of stock), then cancels the order. A release after a reservation that
    /// timed out gives back one that lands late (stock records a release that comes first).
    async fn cancel(&mut self, conn: &mut PgConnection, reason: CancelReason, detail: &str) -> Result<(), HandlerError> {
        let detail: String = detail.chars().take(conveyor_contracts::limits::MAX_DETAIL_CHARS).collect();
        let t = Transition { to: State::Cancelling, deadline: None, reason: Some(reason.as_str()), detail: Some(&detail), payment_id: None };
        repo::transition(conn, self.order_id, &t).await?;
        if reason != CancelReason::OutOfStock {
            self.send(conn, Step::ReleaseStock, &ReleaseStock { order_id: self.order_id }, None).await?;
        }
        self.send(conn, Step::CancelOrder, &CancelOrder { order_id: self.order_id, reason, detail: detail.clone() }, None).await?;
        tracing::info!(order_id = %self.order_id, reason = reason.as_str(), detail, "saga cancelling the order");
        Ok(())
    }
}

/// The saga of `order_id`, locked; a reply about an order the coordinator never started
/// cannot become known by retrying: permanent.
async fn locked(conn: &mut PgConnection, order_id: Uuid) -> Result<SagaRow, HandlerError> {
    repo::lock(conn, order_id).await?.ok_or_else(|| HandlerError::permanent(anyhow::anyhow!("no saga for order {order_id}")))
}

/// Records a reply on its step and observes how long the step took.
async fn record(conn: &mut PgConnection, order_id: Uuid, step: Step, reply: &impl Serialize, outcome: &str) -> Result<(), HandlerError> {
    match repo::record_reply(conn, order_id, step, &serde_json::to_value(reply)?, outcome).await? {
        Some(sent_at) => {
            let took = (Utc::now() - sent_at).to_std().unwrap_or_default();
            metrics::histogram!("conveyor_saga_step_duration_seconds", "step" => step.as_str(), "outcome" => outcome.to_owned()).record(took.as_secs_f64());
        }
        None => tracing::info!(%order_id, step = step.as_str(), outcome, "a reply for a step that has one already (a repeat)"),
    }
    Ok(())
}

fn deadline_after(timeout: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX)
}

/// An enum's serde name (`"reserved"`).
fn serde_plain(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}
