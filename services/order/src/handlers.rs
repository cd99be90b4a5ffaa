//! The worker's handlers, all in transaction mode: each one's appends to the order's event
//! stream and the events it publishes commit together with the messages being marked done.
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
//! the coordinator's commands (`order.confirm`, `order.cancel`) settle an order
//! ([`Decision::Settle`]); only the reply depends on the mode the order was placed in. The
//! other services' facts (`stock.reserved`, `stock.replied`, `payment.replied`,
//! `notification.sent`) are only recorded, for the order's timeline ([`Decision::Record`]).
//!
//! Each topic is handled a claimed batch at a time ([`handle`]): one read of every stream
//! the batch names, one append of every event it decides, one publish of every message it
//! sends, however many messages (one order at a time took three statements per message).
//! Messages about one order in one batch are decided in turn, each against the state the
//! ones before it left. Every topic about an order also locks its id for the batch
//! (`lock_keys`): two workers never append to one stream at once, so the optimistic check
//! of [`stream::append_all`] is the guarantee, not the everyday path.

use std::collections::{BTreeSet, HashMap};

use conveyor_contracts::{
    CancelOrder, CancelReason, ConfirmOrder, Event, Money, NotificationSent, OrderCancelled, OrderConfirmed, OrderReplied, OrderSummary,
    PaymentCaptured, PaymentDeclined, PaymentOutcome, PaymentReplied, Product, ProductCreated, ProductUpdated, SagaMode, StockOutcome,
    StockRejected, StockReplied, StockReserved, limits,
};
use conveyor_queue::{Consumer, Delivery, HandlerError, Outgoing, RetryPolicy, batch_handler_fn, handler_fn, lock_keys_fn};
use futures::FutureExt;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{self, OrderStatus};
use crate::repo;
use crate::stream::{self, AppendError, NewEvent, Order, OrderEvent, ReservedLine};

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
    let consumer = by_order(consumer, |e: &StockRejected| e.order_id, |e, _| {
        let fact = OrderEvent::StockRejected { reason: clip(&e.reason) };
        Decision::Settle(Some(fact), Outcome::Cancelled(CancelReason::OutOfStock, clip(&e.reason)))
    });
    let consumer = by_order(consumer, |e: &PaymentCaptured| e.order_id, |e, _| {
        let fact = OrderEvent::PaymentCaptured { payment_id: e.payment_id, amount: e.amount };
        Decision::Settle(Some(fact), Outcome::Confirmed { payment_id: e.payment_id, amount: e.amount })
    });
    let consumer = by_order(consumer, |e: &PaymentDeclined| e.order_id, |e, _| {
        let fact = OrderEvent::PaymentDeclined { reason: clip(&e.reason) };
        Decision::Settle(Some(fact), Outcome::Cancelled(CancelReason::PaymentDeclined, clip(&e.reason)))
    });
    let consumer = by_order(consumer, |c: &ConfirmOrder| c.order_id, |c, _| Decision::Settle(None, Outcome::Confirmed { payment_id: c.payment_id, amount: c.amount }));
    let consumer = by_order(consumer, |c: &CancelOrder| c.order_id, |c, _| Decision::Settle(None, Outcome::Cancelled(c.reason, clip(&c.detail))));
    let consumer = by_order(consumer, |e: &StockReserved| e.order.order_id, |e, _| {
        Decision::Record(Some(OrderEvent::StockReserved { lines: e.order.lines.iter().map(|l| ReservedLine { product_id: l.product_id, quantity: l.quantity }).collect() }))
    });
    let consumer = by_order(consumer, |e: &StockReplied| e.order_id, |e, order| {
        Decision::Record(Some(match e.outcome {
            // The reply names no lines: stock reserves all of the order's or none.
            StockOutcome::Reserved => {
                OrderEvent::StockReserved { lines: order.lines.iter().map(|l| ReservedLine { product_id: l.product_id, quantity: l.quantity }).collect() }
            }
            StockOutcome::Rejected => OrderEvent::StockRejected { reason: clip(&e.reason) },
            StockOutcome::Released => OrderEvent::StockReleased,
        }))
    });
    let consumer = by_order(consumer, |e: &PaymentReplied| e.order_id, |e, _| {
        Decision::Record(match (e.outcome, e.payment_id, e.amount) {
            (PaymentOutcome::Captured, Some(payment_id), Some(amount)) => Some(OrderEvent::PaymentCaptured { payment_id, amount }),
            (PaymentOutcome::Declined, ..) => Some(OrderEvent::PaymentDeclined { reason: clip(&e.reason) }),
            (PaymentOutcome::Refunded, payment_id, amount) => Some(OrderEvent::PaymentRefunded { payment_id, amount }),
            (PaymentOutcome::Captured, ..) => {
                tracing::warn!(order_id = %e.order_id, "payment.replied captured without payment id or amount; not recorded");
                None
            }
            (PaymentOutcome::NothingToRefund, ..) => None,
        })
    });
    by_order(consumer, |e: &NotificationSent| e.order_id, |e, _| {
        Decision::Record(Some(OrderEvent::Notified {
            notification_id: e.notification_id,
            event_type: clip(&e.event_type),
            subject: clip(&e.subject),
            delivered_at: e.delivered_at,
        }))
    })
}

/// Subscribes `E`'s messages, a batch at a time ([`handle`]), each decided by `decide`
/// against the state of the order `order_of` names; the batch locks those orders first.
fn by_order<E: Event>(consumer: Consumer, order_of: fn(&E) -> Uuid, decide: fn(&E, &Order) -> Decision) -> Consumer {
    consumer
        .subscribe_batch(batch_handler_fn(move |conn, msgs: Vec<Delivery<E>>| handle(conn, msgs, order_of, decide).boxed()), RetryPolicy::default())
        .lock_keys(lock_keys_fn(move |_, events: &[&E]| {
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

/// What a message asks of the order it is about, given the order's state.
enum Decision {
    /// Record another service's fact (`None`: there is nothing to record), unless the
    /// stream already has one of its kind.
    Record(Option<OrderEvent>),
    /// Move a placed order to its terminal status, recording the other service's event
    /// that settles it (the choreography's) before it; an order already terminal records
    /// nothing (a repeat, or a contradiction: the first outcome stands). An orchestrated
    /// order also answers the coordinator with the status it has, whether this message
    /// settled it or an earlier one did.
    Settle(Option<OrderEvent>, Outcome),
}

enum Outcome {
    Confirmed { payment_id: Uuid, amount: Money },
    Cancelled(CancelReason, String),
}

impl Outcome {
    fn status(&self) -> OrderStatus {
        match self {
            Outcome::Confirmed { .. } => OrderStatus::Confirmed,
            Outcome::Cancelled(..) => OrderStatus::Cancelled,
        }
    }

    fn event(&self) -> OrderEvent {
        match self {
            Outcome::Confirmed { .. } => OrderEvent::Confirmed,
            Outcome::Cancelled(reason, detail) => OrderEvent::Cancelled { reason: *reason, detail: detail.clone() },
        }
    }
}

/// What deciding a message did, published and logged once the batch's events are
/// appended (a settlement's time is theirs).
enum Effect {
    None,
    Recorded(&'static str),
    AlreadyRecorded(&'static str),
    Settled { summary: OrderSummary, outcome: Outcome, reply: bool },
    AlreadySettled { status: OrderStatus, wanted: OrderStatus, reply: bool },
}

/// A batch of `E`'s messages: every order they name read in one statement, each message
/// decided in publish order against its order's state (as the messages before it in the
/// batch left it), every event decided appended in one statement, and every message
/// published in one. An unknown order fails the call for good; the consumer then runs the
/// batch again message by message, and only that message is dead.
async fn handle<E: Event>(
    conn: &mut PgConnection,
    msgs: Vec<Delivery<E>>,
    order_of: fn(&E) -> Uuid,
    decide: fn(&E, &Order) -> Decision,
) -> Result<(), HandlerError> {
    let ids: Vec<Uuid> = msgs.iter().map(|m| order_of(&m.payload)).collect::<BTreeSet<_>>().into_iter().collect();
    let mut orders: HashMap<Uuid, Order> = stream::load(conn, &ids).await?.values().filter_map(|s| Order::from_stream(s)).map(|o| (o.id, o)).collect();
    let (mut appends, mut effects) = (Vec::new(), Vec::with_capacity(msgs.len()));
    for msg in &msgs {
        let order_id = order_of(&msg.payload);
        // An unknown order cannot become known by retrying.
        let order = orders.get_mut(&order_id).ok_or_else(|| HandlerError::permanent(anyhow::anyhow!("no order with id {order_id}")))?;
        let mut append = |order: &mut Order, event: OrderEvent| {
            order.apply(&event);
            appends.push((order.id, order.version, event));
        };
        let reply = order.saga_mode == SagaMode::Orchestration;
        effects.push(match msg.span.in_scope(|| decide(&msg.payload, order)) {
            Decision::Record(None) => Effect::None,
            Decision::Record(Some(fact)) if order.has(fact.kind()) => Effect::AlreadyRecorded(fact.kind()),
            Decision::Record(Some(fact)) => {
                let kind = fact.kind();
                append(order, fact);
                Effect::Recorded(kind)
            }
            Decision::Settle(_, outcome) if order.status != OrderStatus::Placed => {
                // Its fact is either in the stream already or contradicts what settled the
                // order: nothing is recorded.
                Effect::AlreadySettled { status: order.status, wanted: outcome.status(), reply }
            }
            Decision::Settle(fact, outcome) => {
                if let Some(fact) = fact.filter(|f| !order.has(f.kind())) {
                    append(order, fact);
                }
                append(order, outcome.event());
                let summary = domain::summary(order.id, order.customer_id, &order.lines, order.total, order.placed_at);
                Effect::Settled { summary, outcome, reply }
            }
        });
    }
    let new: Vec<NewEvent> = appends.iter().map(|(order_id, version, event)| NewEvent { order_id: *order_id, version: *version, event }).collect();
    let at = stream::append_all(conn, &new).await.map_err(appended)?;

    let mut outgoing = Vec::new();
    for (msg, effect) in msgs.iter().zip(&effects) {
        let (order_id, answer) = match effect {
            Effect::Settled { summary, outcome, reply } => {
                let at = at.expect("a settlement appends events");
                outgoing.push(match outcome {
                    Outcome::Confirmed { .. } => Outgoing::event(&OrderConfirmed { order: summary.clone(), confirmed_at: at }),
                    Outcome::Cancelled(reason, detail) => {
                        Outgoing::event(&OrderCancelled { order: summary.clone(), reason: *reason, detail: detail.clone(), cancelled_at: at })
                    }
                }?.caused_by(msg));
                (summary.order_id, reply.then_some(outcome.status()))
            }
            Effect::AlreadySettled { status, reply, .. } => (order_of(&msg.payload), reply.then_some(*status)),
            _ => continue,
        };
        if let Some(status) = answer {
            outgoing.push(Outgoing::event(&OrderReplied { order_id, status: status.as_str().to_owned() })?.caused_by(msg));
        }
    }
    conveyor_queue::publish_all(conn, &outgoing).await?;

    // Counted and logged when the handler's transaction is about to commit; a rollback
    // after this point (rare: the commit itself failing) would count an outcome twice on
    // its retry.
    for (msg, effect) in msgs.iter().zip(effects) {
        let order_id = order_of(&msg.payload);
        msg.span.in_scope(|| log(order_id, effect, at));
    }
    Ok(())
}

/// Counts and logs what a message did (in its span).
fn log(order_id: Uuid, effect: Effect, at: Option<chrono::DateTime<chrono::Utc>>) {
    match effect {
        Effect::None => {}
        Effect::Recorded(fact) => tracing::info!(%order_id, fact, "fact recorded"),
        Effect::AlreadyRecorded(fact) => tracing::info!(%order_id, fact, "fact already recorded; repeated message ignored"),
        Effect::AlreadySettled { status, wanted, reply } => {
            if status == wanted {
                tracing::info!(%order_id, status = status.as_str(), "order already settled so; repeated event ignored");
            } else {
                // The saga never sends both outcomes for one order; if it did, the first stands.
                tracing::warn!(%order_id, status = status.as_str(), wanted = wanted.as_str(), "order already settled otherwise; contradicting event ignored");
            }
            if reply {
                tracing::info!(%order_id, status = status.as_str(), "replied to the coordinator");
            }
        }
        Effect::Settled { summary, outcome, reply } => {
            let status = outcome.status().as_str();
            let reason = match &outcome {
                Outcome::Confirmed { .. } => "none",
                Outcome::Cancelled(reason, _) => reason.as_str(),
            };
            metrics::counter!("conveyor_orders_completed_total", "status" => status, "reason" => reason).increment(1);
            let at = at.expect("a settlement appends events");
            let saga = (at - summary.placed_at).to_std().unwrap_or_default();
            metrics::histogram!("conveyor_saga_duration_seconds", "status" => status).record(saga.as_secs_f64());
            match outcome {
                Outcome::Confirmed { payment_id, amount } => {
                    if amount != summary.total {
                        // Payment charges what order.placed said; a difference is its bug, but the
                        // money is taken, so the order is confirmed and the mismatch shouted about.
                        tracing::warn!(%order_id, %payment_id, captured = %amount, total = %summary.total, "captured amount differs from the order total");
                    }
                    tracing::info!(%order_id, %payment_id, "order confirmed");
                }
                Outcome::Cancelled(reason, detail) => tracing::info!(%order_id, reason = reason.as_str(), detail, "order cancelled"),
            }
            if reply {
                tracing::info!(%order_id, status, "replied to the coordinator");
            }
        }
    }
}

fn appended(e: AppendError) -> HandlerError {
    match e {
        // Decided on a stale stream: the retry reads it again.
        AppendError::Conflict { .. } => HandlerError::retry(e),
        AppendError::Db(e) => e.into(),
    }
}

fn clip(s: &str) -> String {
    s.chars().take(conveyor_contracts::limits::MAX_DETAIL_CHARS).collect()
}
