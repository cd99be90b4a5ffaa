//! The worker's handlers, all in transaction mode: each one's writes and the events it
//! publishes commit together with the message being marked done.
//!
//! Idempotent beyond the inbox's dedupe: a product copy only moves to a newer version, and
//! an order only leaves `placed` once, so a replayed or re-relayed event (a new message id)
//! changes nothing and publishes nothing. The one exception is the answer an orchestrated
//! order owes the coordinator: a repeated `order.confirm` / `order.cancel` changes nothing
//! either, but is answered again (`order.replied`, with the status the order has).
//!
//! The choreography's events (`payment.captured`, `stock.rejected`, `payment.declined`) and
//! the coordinator's commands (`order.confirm`, `order.cancel`) settle an order by the same
//! [`settle`]; only the reply depends on the mode the order was placed in.

use conveyor_contracts::{
    CancelOrder, CancelReason, ConfirmOrder, OrderCancelled, OrderConfirmed, OrderReplied, PaymentCaptured, PaymentDeclined, Product,
    ProductCreated, ProductUpdated, SagaMode, StockRejected, limits,
};
use conveyor_queue::{Consumer, Delivery, HandlerError, handler_fn, publish_event};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{self, OrderStatus, saga_mode_from_db};
use crate::repo;

/// Subscribes this service's handlers to `consumer`.
pub fn subscribe(consumer: Consumer) -> Consumer {
    // Every outcome's series exists from the start, so rates see the first orders.
    let cancelled = CancelReason::ALL.map(|r| ("cancelled", r.as_str()));
    for (status, reason) in std::iter::once(("confirmed", "none")).chain(cancelled) {
        metrics::counter!("conveyor_orders_completed_total", "status" => status, "reason" => reason).increment(0);
    }
    consumer
        .subscribe(handler_fn(|conn, msg: Delivery<ProductCreated>| Box::pin(sync_product(conn, msg.payload.product))))
        .subscribe(handler_fn(|conn, msg: Delivery<ProductUpdated>| Box::pin(sync_product(conn, msg.payload.product))))
        .subscribe(handler_fn(|conn, msg: Delivery<StockRejected>| {
            let e = msg.payload;
            Box::pin(settle(conn, e.order_id, Outcome::Cancelled(CancelReason::OutOfStock, e.reason)))
        }))
        .subscribe(handler_fn(|conn, msg: Delivery<PaymentCaptured>| Box::pin(confirm(conn, msg.payload))))
        .subscribe(handler_fn(|conn, msg: Delivery<PaymentDeclined>| {
            let e = msg.payload;
            Box::pin(settle(conn, e.order_id, Outcome::Cancelled(CancelReason::PaymentDeclined, e.reason)))
        }))
        .subscribe(handler_fn(|conn, msg: Delivery<ConfirmOrder>| {
            let c = msg.payload;
            Box::pin(settle(conn, c.order_id, Outcome::Confirmed { payment_id: c.payment_id, amount: c.amount }))
        }))
        .subscribe(handler_fn(|conn, msg: Delivery<CancelOrder>| {
            let c = msg.payload;
            Box::pin(settle(conn, c.order_id, Outcome::Cancelled(c.reason, c.detail)))
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

async fn confirm(conn: &mut PgConnection, e: PaymentCaptured) -> Result<(), HandlerError> {
    settle(conn, e.order_id, Outcome::Confirmed { payment_id: e.payment_id, amount: e.amount }).await
}

enum Outcome {
    Confirmed { payment_id: Uuid, amount: conveyor_contracts::Money },
    Cancelled(CancelReason, String),
}

/// Moves a placed order to its terminal status and publishes it, or does nothing if it is
/// already terminal. An orchestrated order also answers the coordinator with the status it
/// has, whether this call settled it or an earlier one did. An unknown order cannot become
/// known by retrying: permanent.
async fn settle(conn: &mut PgConnection, order_id: Uuid, outcome: Outcome) -> Result<(), HandlerError> {
    let (to, reason, detail) = match &outcome {
        Outcome::Confirmed { .. } => (OrderStatus::Confirmed, None, None),
        Outcome::Cancelled(reason, detail) => (OrderStatus::Cancelled, Some(*reason), Some(clip(detail))),
    };
    let Some(order) = repo::settle(conn, order_id, to, reason, detail.as_deref()).await? else {
        let Some((status, mode)) = repo::status_of(conn, order_id).await? else {
            return Err(HandlerError::permanent(anyhow::anyhow!("no order with id {order_id}")));
        };
        if status == to.as_str() {
            tracing::info!(order_id = %order_id, status, "order already settled so; repeated event ignored");
        } else {
            // The saga never sends both outcomes for one order; if it did, the first stands.
            tracing::warn!(order_id = %order_id, status, wanted = to.as_str(), "order already settled otherwise; contradicting event ignored");
        }
        return reply(conn, order_id, saga_mode_from_db(&mode), &status).await;
    };
    let lines: Vec<_> = repo::lines_of(conn, &[order_id]).await?.iter().map(|l| l.priced(&order.currency)).collect();
    let summary = domain::summary(order.id, order.customer_id, &lines, order.total(), order.created_at);
    let at = order.updated_at;
    // Counted when the handler's transaction is about to commit; a rollback after this
    // point (rare: the commit itself failing) would count an outcome twice on its retry.
    let (status, reason_label) = match &outcome {
        Outcome::Confirmed { .. } => ("confirmed", "none"),
        Outcome::Cancelled(reason, _) => ("cancelled", reason.as_str()),
    };
    metrics::counter!("conveyor_orders_completed_total", "status" => status, "reason" => reason_label).increment(1);
    let saga = (at - order.created_at).to_std().unwrap_or_default();
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
        Outcome::Cancelled(reason, _) => {
            let detail = detail.unwrap_or_default();
            tracing::info!(order_id = %order_id, reason = reason.as_str(), detail, "order cancelled");
            publish_event(conn, &OrderCancelled { order: summary, reason, detail, cancelled_at: at }).await?;
        }
    }
    reply(conn, order_id, order.saga_mode(), status).await
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
