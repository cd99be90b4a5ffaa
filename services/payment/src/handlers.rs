//! The payment worker's handlers, each run in the transaction that marks its message done:
//! `stock.reserved` → capture the order's total from its customer's balance
//! (`payment.captured`) or decline it (`payment.declined`), at most once per order.
//!
//! The coordinator's commands (ARCHITECTURE §3b): `payment.capture` is `stock.reserved`'s
//! batch capture, by the same code, answered with `payment.replied` instead;
//! `payment.refund` gives a captured payment back to the balance, once. A command is
//! answered every time it comes, repeats included (with what is recorded); an event
//! publishes once, when it decides the order's payment.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use conveyor_contracts::{
    CapturePayment, Money, OrderSummary, PaymentCaptured, PaymentDeclined, PaymentOutcome, PaymentReplied, RefundPayment, StockReserved, limits,
};
use conveyor_platform::faults::Faults;
use conveyor_queue::{Consumer, Delivery, Event, HandlerError, Outgoing, RetryPolicy, batch_handler_fn, handler_fn, lock_keys_fn};
use futures::FutureExt;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::repo::{self, CustomerRow, NewPayment, Paid};

/// Failures here are transient (simulated processor errors, a lost race with a copy of
/// the message): retried for about a minute (0.25 s doubling to 15 s) before the message
/// is dead, so that an error rate short of 1 does not strand orders.
pub const CAPTURE_RETRY: RetryPolicy = RetryPolicy { max_attempts: 10, base: Duration::from_millis(250), max: Duration::from_secs(15), jitter: 0.25 };

/// `payment.refund` can fail only on a transient error (a deadlock): retried as long as a
/// capture, so that a refund is never lost to one.
pub const REFUND_RETRY: RetryPolicy = CAPTURE_RETRY;

/// Adds the payment service's handlers to `consumer`, injecting the faults that `faults`
/// (the payment service's [`FLAGS`](crate::faults::FLAGS)) switch on into captures.
pub fn subscribe(consumer: Consumer, faults: Faults) -> Consumer {
    for status in ["captured", "declined", "refunded"] {
        metrics::counter!("conveyor_payments_total", "status" => status).increment(0);
    }
    // A batch locks its customers' balances up front, in one order (see `LockKeys`):
    // batches paying for the same customers queue instead of deadlocking.
    let command_faults = faults.clone();
    consumer
        .subscribe_batch(batch_handler_fn(move |conn, msgs: Vec<Delivery<StockReserved>>| capture(conn, msgs, faults.clone()).boxed()), CAPTURE_RETRY)
        .subscribe_batch(batch_handler_fn(move |conn, msgs: Vec<Delivery<CapturePayment>>| capture(conn, msgs, command_faults.clone()).boxed()), CAPTURE_RETRY)
        .subscribe_with(handler_fn(|conn, msg: Delivery<RefundPayment>| refund(conn, msg.payload).boxed()), REFUND_RETRY)
        .lock_keys(lock_keys_fn(|_, events: &[&StockReserved]| {
            let keys = paying_customers(events);
            async move { Ok(keys) }.boxed()
        }))
        .lock_keys(lock_keys_fn(|_, commands: &[&CapturePayment]| {
            let keys = paying_customers(commands);
            async move { Ok(keys) }.boxed()
        }))
        .lock_keys(lock_keys_fn(|conn, commands: &[&RefundPayment]| {
            let orders: Vec<Uuid> = commands.iter().map(|c| c.order_id).collect();
            async move { Ok(repo::captured_customers(conn, &orders).await?.into_iter().map(repo::customer_key).collect()) }.boxed()
        }))
}

/// The lock keys of a capture: the balances of its orders' customers.
fn paying_customers<M: CaptureRequest>(msgs: &[&M]) -> Vec<String> {
    msgs.iter().map(|m| repo::customer_key(m.order().customer_id)).collect()
}

/// An order's payment as recorded (or just decided in this batch): what a repeated
/// `payment.capture` is answered with.
#[derive(Debug)]
struct Recorded {
    payment_id: Uuid,
    outcome: PaymentOutcome,
    amount: Money,
    /// Why it was declined; empty otherwise.
    reason: String,
}

impl Recorded {
    fn decided(p: &NewPayment) -> Recorded {
        let outcome = if p.declined.is_some() { PaymentOutcome::Declined } else { PaymentOutcome::Captured };
        Recorded { payment_id: p.id, outcome, amount: p.amount, reason: p.declined.clone().unwrap_or_default() }
    }

    fn of(p: &Paid) -> Recorded {
        let outcome = match p.status.as_str() {
            "captured" => PaymentOutcome::Captured,
            "refunded" => PaymentOutcome::Refunded,
            _ => PaymentOutcome::Declined,
        };
        let currency = p.currency.parse().expect("stored currencies were validated");
        Recorded { payment_id: p.id, outcome, amount: Money { amount_minor: p.amount_minor, currency }, reason: p.reason.clone().unwrap_or_default() }
    }

    /// The command's answer: a payment id and amount for what was taken (captured, or
    /// refunded since), a reason for a decline.
    fn replied(&self, order_id: Uuid) -> PaymentReplied {
        let taken = self.outcome != PaymentOutcome::Declined;
        PaymentReplied {
            order_id,
            outcome: self.outcome,
            payment_id: taken.then_some(self.payment_id),
            amount: taken.then_some(self.amount),
            reason: self.reason.clone(),
        }
    }
}

/// A message that asks for an order's payment (`stock.reserved`, `payment.capture`): what
/// [`capture`] needs of it, and what it publishes for it.
trait CaptureRequest: Event {
    fn order(&self) -> &OrderSummary;
    /// What to publish when this message has just decided the order's payment.
    fn answer(&self, decided: &Recorded) -> Result<Outgoing, serde_json::Error>;
    /// What to publish when the order had a payment already (recorded, or decided by a
    /// copy of this message earlier in the batch): nothing, unless the message says.
    fn answer_again(&self, _recorded: &Recorded) -> Option<Result<Outgoing, serde_json::Error>> {
        None
    }
}

/// The choreography: the payment's own event, once.
impl CaptureRequest for StockReserved {
    fn order(&self) -> &OrderSummary {
        &self.order
    }

    fn answer(&self, decided: &Recorded) -> Result<Outgoing, serde_json::Error> {
        let order_id = self.order.order_id;
        match decided.outcome {
            PaymentOutcome::Declined => Outgoing::event(&PaymentDeclined { order_id, reason: decided.reason.clone() }),
            _ => Outgoing::event(&PaymentCaptured { order_id, payment_id: decided.payment_id, amount: decided.amount }),
        }
    }
}

/// The coordinator's command: a reply every time, so that a repeated command (the
/// coordinator's retry after a lost reply) learns the outcome too.
impl CaptureRequest for CapturePayment {
    fn order(&self) -> &OrderSummary {
        &self.order
    }

    fn answer(&self, decided: &Recorded) -> Result<Outgoing, serde_json::Error> {
        Outgoing::event(&decided.replied(self.order.order_id))
    }

    fn answer_again(&self, recorded: &Recorded) -> Option<Result<Outgoing, serde_json::Error>> {
        Some(self.answer(recorded))
    }
}

/// `stock.reserved` or `payment.capture`, for a batch of orders at once: each order is paid
/// or declined once, in publish order, against the balances the orders before it in the
/// batch left. Three statements however many orders (which have a payment already, the
/// customers' locks and balances, then the payments, balances, ledger and messages in
/// one), where one order at a time took six per order.
///
/// A message the simulated processor fails or snoozes (see `faults`) fails the call: the
/// batch then runs again one order per call, so that only that order is retried or waits.
async fn capture<M: CaptureRequest>(conn: &mut PgConnection, msgs: Vec<Delivery<M>>, faults: Faults) -> Result<(), HandlerError> {
    let order_ids: Vec<Uuid> = msgs.iter().map(|m| m.payload.order().order_id).collect();
    let mut known: HashMap<Uuid, Recorded> = repo::paid(conn, &order_ids).await?.iter().map(|p| (p.order_id, Recorded::of(p))).collect();
    let customer_ids: Vec<Uuid> = msgs.iter().map(|m| m.payload.order().customer_id).collect::<BTreeSet<_>>().into_iter().collect();
    let mut customers: HashMap<Uuid, CustomerRow> = repo::lock_customers(conn, &customer_ids).await?.into_iter().map(|c| (c.id, c)).collect();

    let (mut payments, mut events, mut causes) = (Vec::with_capacity(msgs.len()), Vec::with_capacity(msgs.len()), Vec::with_capacity(msgs.len()));
    for msg in &msgs {
        let order = msg.payload.order();
        if let Some(recorded) = known.get(&order.order_id) {
            msg.span.in_scope(|| tracing::info!(order_id = %order.order_id, status = ?recorded.outcome, "order already paid or declined; nothing to capture"));
            if let Some(again) = msg.payload.answer_again(recorded) {
                events.push(again?.caused_by(msg));
            }
            continue;
        }
        let declined = decide(order, msg.published_at, &faults, &mut customers)?;
        let payment = NewPayment { id: Uuid::now_v7(), order_id: order.order_id, customer_id: order.customer_id, amount: order.total, declined };
        let decided = Recorded::decided(&payment);
        events.push(msg.payload.answer(&decided)?.caused_by(msg));
        known.insert(order.order_id, decided);
        payments.push(payment);
        causes.push(msg);
    }
    if !repo::capture_all(conn, &payments, &events).await? {
        return Err(HandlerError::retry(anyhow::anyhow!("a balance was short of what the batch's checks saw")));
    }
    for (p, msg) in payments.iter().zip(causes) {
        let (order_id, payment_id, customer_id) = (p.order_id, p.id, p.customer_id);
        // Each line in its message's span, so that it carries that message's trace.
        msg.span.in_scope(|| match &p.declined {
            None => {
                metrics::counter!("conveyor_payments_total", "status" => "captured").increment(1);
                tracing::info!(%order_id, %payment_id, %customer_id, amount_minor = p.amount.amount_minor, "payment captured");
            }
            Some(reason) => {
                metrics::counter!("conveyor_payments_total", "status" => "declined").increment(1);
                tracing::info!(%order_id, %payment_id, %customer_id, reason, "payment declined");
            }
        });
    }
    Ok(())
}

/// `payment.refund`: a `captured` payment goes back to its customer's balance, once (the
/// payment becomes `refunded`, the ledger gets a `refund` entry for the order); answered
/// `refunded` every time after that, and `nothing_to_refund` for an order with no payment
/// or a declined one. A refund that would take the balance past
/// [`limits::MAX_BALANCE_MINOR`] fails for good: the balance cannot hold it, and no retry
/// changes that until an operator does.
async fn refund(conn: &mut PgConnection, command: RefundPayment) -> Result<(), HandlerError> {
    let order_id = command.order_id;
    let reply = match repo::refund_payment(conn, order_id).await? {
        Some(payment) => {
            let (customer_id, amount) = (payment.customer_id, payment.amount_minor);
            // A captured payment's customer exists (an unknown one is declined), and customers are never deleted.
            let customer = repo::lock_customer(conn, customer_id).await?.ok_or_else(|| anyhow::anyhow!("customer {customer_id} of a captured payment is gone"))?;
            if customer.balance_minor.checked_add(amount).is_none_or(|b| b > limits::MAX_BALANCE_MINOR) {
                return Err(HandlerError::permanent(anyhow::anyhow!(
                    "refunding {} for order {order_id} would take customer {customer_id}'s balance from {} past the limit of {}",
                    payment.amount(),
                    customer.balance_minor,
                    limits::MAX_BALANCE_MINOR
                )));
            }
            let after = repo::credit_refund(conn, customer_id, order_id, amount).await?;
            metrics::counter!("conveyor_payments_total", "status" => "refunded").increment(1);
            tracing::info!(%order_id, payment_id = %payment.id, %customer_id, amount_minor = amount, balance_minor = after.balance_minor, reason = command.reason, "payment refunded");
            PaymentReplied { order_id, outcome: PaymentOutcome::Refunded, payment_id: Some(payment.id), amount: Some(payment.amount()), reason: String::new() }
        }
        None => match repo::payments_of_order(conn, order_id).await?.pop() {
            Some(p) if p.status == "refunded" => {
                tracing::info!(%order_id, payment_id = %p.id, "payment refunded already; nothing more to refund");
                PaymentReplied { order_id, outcome: PaymentOutcome::Refunded, payment_id: Some(p.id), amount: Some(p.amount()), reason: String::new() }
            }
            found => {
                let reason = match found {
                    Some(p) => format!("the payment was declined: {}", p.reason.unwrap_or_default()),
                    None => "no payment for the order".to_owned(),
                };
                tracing::info!(%order_id, reason, "nothing to refund");
                PaymentReplied { order_id, outcome: PaymentOutcome::NothingToRefund, payment_id: None, amount: None, reason }
            }
        },
    };
    conveyor_queue::publish(conn, Outgoing::event(&reply)?).await?;
    Ok(())
}

/// Why `order` is declined (`None`: it is captured), against the balances in `customers`,
/// which a capture lowers. The simulated processor may fail or snooze it (`Err`).
fn decide(order: &OrderSummary, published_at: DateTime<Utc>, faults: &Faults, customers: &mut HashMap<Uuid, CustomerRow>) -> Result<Option<String>, HandlerError> {
    if let Err(why) = check_amount(order) {
        return Ok(Some(format!("amount mismatch: {why}")));
    }
    let Some(customer) = customers.get_mut(&order.customer_id) else {
        return Ok(Some(format!("unknown customer {}", order.customer_id)));
    };
    let amount = order.total;
    if customer.currency != amount.currency.as_str() {
        return Ok(Some(format!("currency mismatch: customer {} pays in {}, the order is in {}", customer.id, customer.currency, amount.currency)));
    }
    // The simulated processor: latency snoozes the message (no transaction waits for it).
    if let Some(reason) = crate::faults::apply(faults, published_at)? {
        return Ok(Some(reason.to_owned()));
    }
    if customer.balance_minor < amount.amount_minor {
        let has = Money { amount_minor: customer.balance_minor, currency: amount.currency };
        return Ok(Some(format!("insufficient balance: needs {amount}, has {has}")));
    }
    customer.balance_minor -= amount.amount_minor;
    Ok(None)
}

/// The order's lines, re-priced: quantity × unit price summed without overflow, in the
/// total's currency, must come to exactly the total the order service computed.
fn check_amount(order: &OrderSummary) -> Result<(), String> {
    if order.total.amount_minor < 0 {
        return Err(format!("the total {} is negative", order.total.amount_minor));
    }
    let mut sum = Money::zero(order.total.currency);
    for line in &order.lines {
        if line.quantity <= 0 || line.unit_price.amount_minor < 0 {
            return Err(format!("product {}: {} × {} is not a valid line", line.product_id, line.quantity, line.unit_price.amount_minor));
        }
        sum = sum.add_times(line.unit_price, i64::from(line.quantity)).map_err(|e| format!("product {}: {e}", line.product_id))?;
    }
    if sum != order.total {
        return Err(format!("the lines come to {sum}, the total says {}", order.total));
    }
    Ok(())
}
