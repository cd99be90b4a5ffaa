//! The payment worker's handler: `stock.reserved` → capture the order's total from its
//! customer's balance (`payment.captured`) or decline it (`payment.declined`), at most once
//! per order, in the transaction that marks the message done.

use std::time::Duration;

use chrono::{DateTime, Utc};
use conveyor_contracts::{Money, OrderSummary, PaymentCaptured, PaymentDeclined, StockReserved};
use conveyor_platform::faults::Faults;
use conveyor_queue::{Consumer, Delivery, HandlerError, RetryPolicy, handler_fn, lock_keys_fn};
use futures::FutureExt;
use sqlx::PgConnection;

use crate::repo::{self, Outcome};

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
        .subscribe_with(
            handler_fn(move |conn, msg: Delivery<StockReserved>| capture(conn, msg.payload.order, msg.published_at, faults.clone()).boxed()),
            CAPTURE_RETRY,
        )
        .lock_keys(lock_keys_fn(|_, events: &[&StockReserved]| {
            let keys = events.iter().map(|e| format!("customer:{}", e.order.customer_id)).collect();
            async move { Ok(keys) }.boxed()
        }))
}

async fn capture(conn: &mut PgConnection, order: OrderSummary, published_at: DateTime<Utc>, faults: Faults) -> Result<(), HandlerError> {
    let order_id = order.order_id;
    if repo::payment_exists(conn, order_id).await? {
        tracing::info!(%order_id, "order already paid or declined; nothing to capture");
        return Ok(());
    }
    if let Err(why) = check_amount(&order) {
        return decline(conn, &order, &format!("amount mismatch: {why}")).await;
    }
    let Some(customer) = repo::get_customer(conn, order.customer_id).await? else {
        return decline(conn, &order, &format!("unknown customer {}", order.customer_id)).await;
    };
    let amount = order.total;
    if customer.currency != amount.currency.as_str() {
        let reason = format!("currency mismatch: customer {} pays in {}, the order is in {}", customer.id, customer.currency, amount.currency);
        return decline(conn, &order, &reason).await;
    }
    // The simulated processor: latency snoozes the message (no transaction waits for it).
    if let Some(reason) = crate::faults::apply(&faults, published_at)? {
        return decline(conn, &order, reason).await;
    }
    let Some(balance) = repo::debit(conn, customer.id, order_id, amount.amount_minor).await? else {
        // The debit found the balance short; read what it found for the reason.
        let has = repo::get_customer(conn, customer.id).await?.map_or(0, |c| c.balance_minor);
        let has = Money { amount_minor: has, currency: amount.currency };
        return decline(conn, &order, &format!("insufficient balance: needs {amount}, has {has}")).await;
    };
    let payment_id = repo::insert_payment(conn, order_id, customer.id, amount, Outcome::Captured).await?;
    conveyor_queue::publish_event(conn, &PaymentCaptured { order_id, payment_id, amount }).await?;
    metrics::counter!("conveyor_payments_total", "status" => "captured").increment(1);
    tracing::info!(%order_id, %payment_id, customer_id = %customer.id, amount_minor = amount.amount_minor, balance, "payment captured");
    Ok(())
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

/// Records the declined payment and tells order (cancel) and stock (release).
async fn decline(conn: &mut PgConnection, order: &OrderSummary, reason: &str) -> Result<(), HandlerError> {
    let order_id = order.order_id;
    let payment_id = repo::insert_payment(conn, order_id, order.customer_id, order.total, Outcome::Declined(reason)).await?;
    conveyor_queue::publish_event(conn, &PaymentDeclined { order_id, reason: reason.to_owned() }).await?;
    metrics::counter!("conveyor_payments_total", "status" => "declined").increment(1);
    tracing::info!(%order_id, %payment_id, customer_id = %order.customer_id, reason, "payment declined");
    Ok(())
}
