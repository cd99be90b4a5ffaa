//! The payment worker's handler: `stock.reserved` → capture the order's total from its
//! customer's balance (`payment.captured`) or decline it (`payment.declined`), at most once
//! per order, in the transaction that marks the message done.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use conveyor_contracts::{Money, OrderSummary, PaymentCaptured, PaymentDeclined, StockReserved};
use conveyor_platform::faults::Faults;
use conveyor_queue::{Consumer, Delivery, HandlerError, Outgoing, RetryPolicy, batch_handler_fn, lock_keys_fn};
use futures::FutureExt;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::repo::{self, Capture, CustomerRow, NewPayment};

/// Failures here are transient (simulated processor errors, a lost race with a copy of
/// the message): retried for about a minute (0.25 s doubling to 15 s) before the message
/// is dead, so that an error rate short of 1 does not strand orders.
pub const CAPTURE_RETRY: RetryPolicy = RetryPolicy { max_attempts: 10, base: Duration::from_millis(250), max: Duration::from_secs(15), jitter: 0.25 };

/// Adds the payment service's handler to `consumer`, injecting the faults that `faults`
/// (the payment service's [`FLAGS`](crate::faults::FLAGS)) switch on.
pub fn subscribe(consumer: Consumer, faults: Faults) -> Consumer {
    for status in ["captured", "declined"] {
        metrics::counter!("conveyor_payments_total", "status" => status).increment(0);
    }
    // A batch locks its customers' balances up front, in one order (see `LockKeys`):
    // batches paying for the same customers queue instead of deadlocking.
    consumer
        .subscribe_batch(batch_handler_fn(move |conn, msgs: Vec<Delivery<StockReserved>>| capture(conn, msgs, faults.clone()).boxed()), CAPTURE_RETRY)
        .lock_keys(lock_keys_fn(|_, events: &[&StockReserved]| {
            let keys = events.iter().map(|e| format!("customer:{}", e.order.customer_id)).collect();
            async move { Ok(keys) }.boxed()
        }))
}

/// `stock.reserved`, for a batch of orders at once: each order is paid or declined once,
/// in publish order, against the balances the orders before it in the batch left. Six
/// statements however many orders (which have a payment already, the customers' locks and
/// balances, the payments, the balances, the ledger, the events), where one order at a
/// time took six per order.
///
/// A message the simulated processor fails or snoozes (see `faults`) fails the call: the
/// batch then runs again one order per call, so that only that order is retried or waits.
async fn capture(conn: &mut PgConnection, msgs: Vec<Delivery<StockReserved>>, faults: Faults) -> Result<(), HandlerError> {
    let order_ids: Vec<Uuid> = msgs.iter().map(|m| m.payload.order.order_id).collect();
    let mut seen: HashSet<Uuid> = repo::paid(conn, &order_ids).await?.into_iter().collect();
    let customer_ids: Vec<Uuid> = msgs.iter().map(|m| m.payload.order.customer_id).collect::<BTreeSet<_>>().into_iter().collect();
    let mut customers: HashMap<Uuid, CustomerRow> = repo::lock_customers(conn, &customer_ids).await?.into_iter().map(|c| (c.id, c)).collect();

    let (mut payments, mut events, mut causes) = (Vec::with_capacity(msgs.len()), Vec::with_capacity(msgs.len()), Vec::with_capacity(msgs.len()));
    for msg in &msgs {
        let order = &msg.payload.order;
        if !seen.insert(order.order_id) {
            msg.span.in_scope(|| tracing::info!(order_id = %order.order_id, "order already paid or declined; nothing to capture"));
            continue;
        }
        let declined = decide(order, msg.published_at, &faults, &mut customers)?;
        let payment = NewPayment { id: Uuid::now_v7(), order_id: order.order_id, customer_id: order.customer_id, amount: order.total, declined };
        let event = match &payment.declined {
            None => Outgoing::event(&PaymentCaptured { order_id: payment.order_id, payment_id: payment.id, amount: payment.amount }),
            Some(reason) => Outgoing::event(&PaymentDeclined { order_id: payment.order_id, reason: reason.clone() }),
        };
        events.push(event?.caused_by(msg));
        payments.push(payment);
        causes.push(msg);
    }
    repo::insert_payments(conn, &payments).await?;
    let captures: Vec<Capture> =
        payments.iter().filter(|p| p.declined.is_none()).map(|p| Capture { customer: p.customer_id, order: p.order_id, amount: p.amount.amount_minor }).collect();
    if !repo::debit_all(conn, &captures).await? {
        return Err(HandlerError::retry(anyhow::anyhow!("a balance was short of what the batch's checks saw")));
    }
    conveyor_queue::publish_all(conn, &events).await?;
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
