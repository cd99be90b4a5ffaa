//! The worker's handlers, all in transaction mode: each one's appends to the order's event
//! stream and the events it publishes commit together with the message being marked done.
//!
//! Every message about an order is decided against the state its stream gives
//! ([`stream::Order`]) and recorded as events appended to it. Idempotent beyond the inbox's
//! dedupe: a fact already in the stream is not appended again, an order only leaves
//! `placed` once, and a product copy only moves to a newer version, so a replayed or
//! re-relayed message (a new message id) changes nothing and publishes nothing. The one
//! exception is the answer an orchestrated order owes the coordinator: a repeated
//! `order.confirm` / `order.cancel` changes nothing either, but is answered again
//! (`order.replied`, with the status the order has).
//!
//! The choreography's events (`payment.captured`, `stock.rejected`, `payment.declined`) and
//! the coordinator's commands (`order.confirm`, `order.cancel`) settle an order by the same
//! [`settle`]; only the reply depends on the mode the order was placed in. The other
//! services' facts (`stock.reserved`, `stock.replied`, `payment.replied`,
//! `notification.sent`) are only recorded, for the order's timeline.
//!
//! Every topic about an order locks its id for the batch (`lock_keys`): two workers never
//! append to one stream at once, so the optimistic check of [`stream::append`] is the
//! guarantee, not the everyday path.

use conveyor_contracts::{
    CancelOrder, CancelReason, ConfirmOrder, Event, NotificationSent, OrderCancelled, OrderConfirmed, OrderReplied, PaymentCaptured,
    PaymentDeclined, PaymentOutcome, PaymentReplied, Product, ProductCreated, ProductUpdated, SagaMode, StockOutcome, StockRejected,
    StockReplied, StockReserved, limits,
};
use conveyor_queue::{Consumer, Delivery, HandlerError, handler_fn, lock_keys_fn, publish_event};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{self, OrderStatus};
use crate::repo;
use crate::stream::{self, AppendError, Order, OrderEvent, ReservedLine};

/// Subscribes this service's handlers to `consumer`.
pub fn subscribe(consumer: Consumer) -> Consumer {
    // Every outcome's series exists from the start, so rates see the first orders.
    let cancelled = CancelReason::ALL.map(|r| ("cancelled", r.as_str()));
    for (status, reason) in std::iter::once(("confirmed", "none")).chain(cancelled) {
        metrics::counter!("conveyor_orders_completed_total", "status" => status, "reason" => reason).increment(0);
    }
    metrics::counter!("conveyor_order_events_appended_total").increment(0);
    metrics::counter!("conveyor_order_event_conflicts_total").increment(0);
    let consumer = consumer
        .subscribe(handler_fn(|conn, msg: Delivery<ProductCreated>| Box::pin(sync_product(conn, msg.payload.product))))
        .subscribe(handler_fn(|conn, msg: Delivery<ProductUpdated>| Box::pin(sync_product(conn, msg.payload.product))));
    let consumer = by_order(consumer, |e: &StockRejected| e.order_id, |conn, msg| {
        let e = msg.payload;
        let fact = OrderEvent::StockRejected { reason: clip(&e.reason) };
        Box::pin(settle(conn, e.order_id, Some(fact), Outcome::Cancelled(CancelReason::OutOfStock, e.reason)))
    });
    let consumer = by_order(consumer, |e: &PaymentCaptured| e.order_id, |conn, msg| {
        let e = msg.payload;
        let fact = OrderEvent::PaymentCaptured { payment_id: e.payment_id, amount: e.amount };
        Box::pin(settle(conn, e.order_id, Some(fact), Outcome::Confirmed { payment_id: e.payment_id, amount: e.amount }))
    });
    let consumer = by_order(consumer, |e: &PaymentDeclined| e.order_id, |conn, msg| {
        let e = msg.payload;
        let fact = OrderEvent::PaymentDeclined { reason: clip(&e.reason) };
        Box::pin(settle(conn, e.order_id, Some(fact), Outcome::Cancelled(CancelReason::PaymentDeclined, e.reason)))
    });
    let consumer = by_order(consumer, |c: &ConfirmOrder| c.order_id, |conn, msg| {
        let c = msg.payload;
        Box::pin(settle(conn, c.order_id, None, Outcome::Confirmed { payment_id: c.payment_id, amount: c.amount }))
    });
    let consumer = by_order(consumer, |c: &CancelOrder| c.order_id, |conn, msg| {
        let c = msg.payload;
        Box::pin(settle(conn, c.order_id, None, Outcome::Cancelled(c.reason, c.detail)))
    });
    let consumer = by_order(consumer, |e: &StockReserved| e.order.order_id, |conn, msg| {
        let lines = msg.payload.order.lines.iter().map(|l| ReservedLine { product_id: l.product_id, quantity: l.quantity }).collect();
        Box::pin(record(conn, msg.payload.order.order_id, move |_| Some(OrderEvent::StockReserved { lines })))
    });
    let consumer = by_order(consumer, |e: &StockReplied| e.order_id, |conn, msg| {
        let e = msg.payload;
        Box::pin(record(conn, e.order_id, move |order: &Order| match e.outcome {
            // The reply names no lines: stock reserves all of the order's or none.
            StockOutcome::Reserved => {
                Some(OrderEvent::StockReserved { lines: order.lines.iter().map(|l| ReservedLine { product_id: l.product_id, quantity: l.quantity }).collect() })
            }
            StockOutcome::Rejected => Some(OrderEvent::StockRejected { reason: clip(&e.reason) }),
            StockOutcome::Released => Some(OrderEvent::StockReleased),
        }))
    });
    let consumer = by_order(consumer, |e: &PaymentReplied| e.order_id, |conn, msg| {
        let e = msg.payload;
        Box::pin(record(conn, e.order_id, move |_| match (e.outcome, e.payment_id, e.amount) {
            (PaymentOutcome::Captured, Some(payment_id), Some(amount)) => Some(OrderEvent::PaymentCaptured { payment_id, amount }),
            (PaymentOutcome::Declined, ..) => Some(OrderEvent::PaymentDeclined { reason: clip(&e.reason) }),
            (PaymentOutcome::Refunded, payment_id, amount) => Some(OrderEvent::PaymentRefunded { payment_id, amount }),
            (PaymentOutcome::Captured, ..) => {
                tracing::warn!(order_id = %e.order_id, "payment.replied captured without payment id or amount; not recorded");
                None
            }
            (PaymentOutcome::NothingToRefund, ..) => None,
        }))
    });
    by_order(consumer, |e: &NotificationSent| e.order_id, |conn, msg| {
        let e = msg.payload;
        let fact = OrderEvent::Notified { notification_id: e.notification_id, event_type: clip(&e.event_type), subject: clip(&e.subject), delivered_at: e.delivered_at };
        Box::pin(record(conn, e.order_id, move |_| Some(fact)))
    })
}

/// Subscribes `handler` to `E`, locking the order each message is about for the batch.
fn by_order<E: Event>(
    consumer: Consumer,
    order_of: fn(&E) -> Uuid,
    handler: impl for<'c> Fn(&'c mut PgConnection, Delivery<E>) -> futures::future::BoxFuture<'c, Result<(), HandlerError>> + Send + Sync + 'static,
) -> Consumer {
    consumer.subscribe(handler_fn(handler)).lock_keys(lock_keys_fn(move |_, events: &[&E]| {
        let keys = events.iter().map(|e| format!("order:{}", order_of(e))).collect();
        Box::pin(async move { Ok(keys) })
    }))
}

/// Keeps the newest copy of a product; an older or repeated version is ignored.
async fn sync_product(conn: &mut PgConnection, product: Product) -> Result<(), HandlerError> {
    // The catalog enforces these; a copy breaking them would make orders unpriceable.
    if !(0..=limits::MAX_PRICE_MINOR).contains(&product.price.amount_minor) || product.version < 1 {
        return Err(HandlerError::permanent(anyhow::anyhow!(
            "product {} breaks the contract: price {} minor units, version {}",
            product.id,
            product.price.amount_minor,
            product.version
        )));
    }
    if repo::upsert_product(conn, &product).await? {
        tracing::info!(product_id = %product.id, version = product.version, "product copy updated");
    } else {
        tracing::info!(product_id = %product.id, version = product.version, "product copy already as new; event ignored");
    }
    Ok(())
}

enum Outcome {
    Confirmed { payment_id: Uuid, amount: conveyor_contracts::Money },
    Cancelled(CancelReason, String),
}

/// The order's state, or a permanent error: an unknown order cannot become known by retrying.
async fn current(conn: &mut PgConnection, order_id: Uuid) -> Result<Order, HandlerError> {
    stream::order(conn, order_id).await?.ok_or_else(|| HandlerError::permanent(anyhow::anyhow!("no order with id {order_id}")))
}

fn appended(e: AppendError) -> HandlerError {
    match e {
        // Decided on a stale stream: the retry reads it again.
        AppendError::Conflict { .. } => HandlerError::retry(e),
        AppendError::Db(e) => e.into(),
    }
}

/// Records another service's fact about an order (what `fact` makes of it, given the
/// order), unless the stream already has one of its kind.
async fn record(conn: &mut PgConnection, order_id: Uuid, fact: impl FnOnce(&Order) -> Option<OrderEvent>) -> Result<(), HandlerError> {
    let order = current(conn, order_id).await?;
    let Some(fact) = fact(&order) else { return Ok(()) };
    if order.has(fact.kind()) {
        tracing::info!(order_id = %order_id, fact = fact.kind(), "fact already recorded; repeated message ignored");
        return Ok(());
    }
    stream::append(conn, order_id, order.version, std::slice::from_ref(&fact)).await.map_err(appended)?;
    tracing::info!(order_id = %order_id, fact = fact.kind(), "fact recorded");
    Ok(())
}

/// Moves a placed order to its terminal status, recording `fact` (the other service's event
/// that settles it, in the choreography) before it, and publishes the outcome; an order
/// already terminal records nothing (a repeat, or a contradiction: the first outcome
/// stands). An orchestrated order also answers the coordinator with the status it
/// has, whether this call settled it or an earlier one did.
async fn settle(conn: &mut PgConnection, order_id: Uuid, fact: Option<OrderEvent>, outcome: Outcome) -> Result<(), HandlerError> {
    let order = current(conn, order_id).await?;
    let (to, status) = match &outcome {
        Outcome::Confirmed { .. } => (OrderStatus::Confirmed, "confirmed"),
        Outcome::Cancelled(..) => (OrderStatus::Cancelled, "cancelled"),
    };
    if order.status != OrderStatus::Placed {
        if order.status == to {
            tracing::info!(order_id = %order_id, status, "order already settled so; repeated event ignored");
        } else {
            // The saga never sends both outcomes for one order; if it did, the first stands.
            tracing::warn!(order_id = %order_id, status = order.status.as_str(), wanted = status, "order already settled otherwise; contradicting event ignored");
        }
        // Its fact is either in the stream already or contradicts what settled the order:
        // nothing is recorded.
        return reply(conn, order_id, order.saga_mode, order.status.as_str()).await;
    }
    let mut events: Vec<OrderEvent> = fact.into_iter().filter(|f| !order.has(f.kind())).collect();
    events.push(match &outcome {
        Outcome::Confirmed { .. } => OrderEvent::Confirmed,
        Outcome::Cancelled(reason, detail) => OrderEvent::Cancelled { reason: *reason, detail: clip(detail) },
    });
    let at = stream::append(conn, order_id, order.version, &events).await.map_err(appended)?.expect("events were appended");
    let summary = domain::summary(order.id, order.customer_id, &order.lines, order.total, order.placed_at);
    // Counted when the handler's transaction is about to commit; a rollback after this
    // point (rare: the commit itself failing) would count an outcome twice on its retry.
    let reason_label = match &outcome {
        Outcome::Confirmed { .. } => "none",
        Outcome::Cancelled(reason, _) => reason.as_str(),
    };
    metrics::counter!("conveyor_orders_completed_total", "status" => status, "reason" => reason_label).increment(1);
    let saga = (at - order.placed_at).to_std().unwrap_or_default();
    metrics::histogram!("conveyor_saga_duration_seconds", "status" => status).record(saga.as_secs_f64());
    match outcome {
        Outcome::Confirmed { payment_id, amount } => {
            if amount != summary.total {
                // Payment charges what order.placed said; a difference is its bug, but the
                // money is taken, so the order is confirmed and the mismatch shouted about.
                tracing::warn!(order_id = %order_id, %payment_id, captured = %amount, total = %summary.total, "captured amount differs from the order total");
            }
            publish_event(conn, &OrderConfirmed { order: summary, confirmed_at: at }).await?;
            tracing::info!(order_id = %order_id, %payment_id, "order confirmed");
        }
        Outcome::Cancelled(reason, detail) => {
            let detail = clip(&detail);
            tracing::info!(order_id = %order_id, reason = reason.as_str(), detail, "order cancelled");
            publish_event(conn, &OrderCancelled { order: summary, reason, detail, cancelled_at: at }).await?;
        }
    }
    reply(conn, order_id, order.saga_mode, status).await
}

/// An orchestrated order's answer to the coordinator: its terminal status. The
/// choreography has no one to answer.
async fn reply(conn: &mut PgConnection, order_id: Uuid, mode: SagaMode, status: &str) -> Result<(), HandlerError> {
    if mode == SagaMode::Orchestration {
        publish_event(conn, &OrderReplied { order_id, status: status.to_owned() }).await?;
        tracing::info!(order_id = %order_id, status, "replied to the coordinator");
    }
    Ok(())
}

fn clip(s: &str) -> String {
    s.chars().take(conveyor_contracts::limits::MAX_DETAIL_CHARS).collect()
}
