//! The worker's handler: one notification per (order, event type), rendered from the stored
//! template and delivered by webhook, however often its event arrives.
//!
//! It runs under a lease (it calls the network, so no transaction stays open), a claimed
//! batch at a time: one read and one write for the whole batch, the lookups and webhook
//! calls one per event, all at once. Not notifying twice rests on three things: the
//! `notifications` row written after a 2xx and checked first; a set of the keys this worker is delivering right now, so two copies of
//! an event in one batch do not both post; and the `Idempotency-Key` header, for the gap a
//! crash leaves between a 2xx and the row (the next attempt posts again with the same key).
//!
//! Each row is written together with its `notification.sent`, which tells the order
//! service what was delivered: one statement for the batch, each event published only when
//! its row is new, so each recorded notification is published exactly once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow};
use chrono::Utc;
use conveyor_contracts::{CancelReason, NotificationSent, OrderCancelled, OrderConfirmed, OrderSummary};
use conveyor_platform::auth::TokenFile;
use conveyor_platform::faults::Faults;
use conveyor_queue::{Consumer, Delivery, HandlerError, Outgoing};
use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

use crate::EventType;
use crate::render::DataSource;
use crate::breaker::Breaker;
use crate::config::NotifierArgs;
use crate::lookup::OrderLookup;
use crate::render::{self, Vars};
use crate::repo::{self, NewNotification};
use crate::webhook::{Payload, Webhook};

/// Namespace of notification ids: the id is a function of (order, event type), the same
/// on every attempt, so a receiver sees one id per notification.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x4f1c_2a57_9e0b_4d3a_8c61_52b7_d0e9_a3f4);

/// An order event, whichever of the two it was.
#[derive(Debug, Clone)]
struct Occurrence {
    event_type: EventType,
    order: OrderSummary,
    reason: Option<CancelReason>,
    detail: Option<String>,
}

impl From<OrderConfirmed> for Occurrence {
    fn from(e: OrderConfirmed) -> Self {
        Occurrence { event_type: EventType::Confirmed, order: e.order, reason: None, detail: None }
    }
}

impl From<OrderCancelled> for Occurrence {
    fn from(e: OrderCancelled) -> Self {
        Occurrence { event_type: EventType::Cancelled, order: e.order, reason: Some(e.reason), detail: Some(e.detail) }
    }
}

pub struct Notifier {
    pool: PgPool,
    lookup: OrderLookup,
    webhook: Webhook,
    in_flight: Mutex<HashSet<(Uuid, EventType)>>,
}

/// Holds a key in the in-flight set until dropped.
struct InFlight<'a> {
    set: &'a Mutex<HashSet<(Uuid, EventType)>>,
    key: (Uuid, EventType),
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.set.lock().expect("in-flight lock").remove(&self.key);
    }
}

impl Notifier {
    pub fn new(pool: PgPool, args: &NotifierArgs) -> anyhow::Result<Self> {
        args.validate()?;
        let client = reqwest::Client::builder().build().context("building the HTTP client")?;
        let breaker = |target| Breaker::new(target, args.breaker_failures, args.breaker_cooldown);
        let faults = Faults::new(pool.clone(), &crate::FLAGS);
        Ok(Notifier {
            pool,
            lookup: OrderLookup::new(client.clone(), args.order_api_url.clone(), args.order_api_token_file.clone().map(TokenFile), args.lookup_timeout, breaker("order-api")),
            webhook: Webhook::new(client, args.webhook_url.clone(), args.webhook_timeout, breaker("webhook"), faults),
            in_flight: Mutex::new(HashSet::new()),
        })
    }

    /// Delivers as the fault flags of `faults` say (see `crate::faults`); without this,
    /// they stay off.
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.webhook.set_faults(faults);
        self
    }

    /// `consumer` with this notifier subscribed (lease mode) to both order events.
    pub fn subscribe(self: Arc<Self>, consumer: Consumer, args: &NotifierArgs) -> Consumer {
        for event_type in [EventType::Confirmed, EventType::Cancelled] {
            for source in [DataSource::Lookup, DataSource::Event] {
                metrics::counter!("conveyor_notifications_sent_total", "event_type" => event_type.as_str(), "data_source" => source.as_str()).increment(0);
            }
        }
        let confirmed = self.clone();
        let breaker = self.clone();
        consumer
            // Every message here goes to the webhook: while its circuit is open the claim
            // loops wait out the cooldown instead of claiming each waiting notification to
            // snooze it again (with a 1 s cooldown that was ~10,000 snoozes a minute).
            .pause_before_claim(move || breaker.webhook.open_for())
            .subscribe_leased_batch(
                move |msgs: Vec<Delivery<OrderConfirmed>>| {
                    let n = confirmed.clone();
                    async move { n.handle(msgs).await }
                },
                args.lease_options(),
            )
            .subscribe_leased_batch(
                move |msgs: Vec<Delivery<OrderCancelled>>| {
                    let n = self.clone();
                    async move { n.handle(msgs).await }
                },
                args.lease_options(),
            )
    }

    /// Notifies about each event of a claimed batch once (see the module's documentation):
    /// one read for the whole batch (notified already? the templates), the lookups and the
    /// webhook calls one per event, all at once, and one write of every delivery with its
    /// `notification.sent`. An outcome per event, in their order.
    async fn handle<E: Into<Occurrence>>(&self, msgs: Vec<Delivery<E>>) -> Vec<Result<(), HandlerError>> {
        let events: Vec<(Occurrence, i32, tracing::Span)> = msgs.into_iter().map(|m| (m.payload.into(), m.attempt, m.span)).collect();
        let mut outcomes: Vec<Option<Result<(), HandlerError>>> = events.iter().map(|_| None).collect();
        // Held until the batch is recorded: a second copy of an event, in this batch or
        // another, waits for this one instead of posting too.
        let mut held = Vec::with_capacity(events.len());
        for (i, (event, ..)) in events.iter().enumerate() {
            let (order_id, event_type) = (event.order.order_id, event.event_type);
            match self.claim(order_id, event_type) {
                Some(in_flight) => held.push((i, in_flight)),
                // Another copy of this event is being delivered right now: look again when it is done.
                None => outcomes[i] = Some(Err(HandlerError::snooze(std::time::Duration::from_secs(1), anyhow!("{event_type} of order {order_id} is being delivered already")))),
            }
        }
        let keys: Vec<(Uuid, EventType)> = held.iter().map(|(i, _)| (events[*i].0.order.order_id, events[*i].0.event_type)).collect();
        // No connection is held while the network is called.
        let found = async { repo::to_notify(&mut *self.pool.acquire().await?, &keys).await }.await;
        let found = match found {
            Ok(found) if found.len() == keys.len() => found,
            Ok(found) => return fail_all(outcomes, &held, &anyhow!("the check of {} notifications answered {} rows", keys.len(), found.len())),
            Err(e) => return fail_all(outcomes, &held, &anyhow::Error::from(e)),
        };
        let deliveries = futures::future::join_all(held.iter().zip(found).map(|((i, _), to_notify)| {
            let (event, attempt, span) = &events[*i];
            self.deliver(event, *attempt, to_notify).instrument(span.clone())
        }))
        .await;
        let (mut records, mut sent, mut recorded) = (Vec::new(), Vec::new(), Vec::new());
        for ((i, _), delivery) in held.iter().zip(deliveries) {
            match delivery {
                Ok(Some((record, message))) => {
                    records.push(record);
                    sent.push(message);
                    recorded.push(*i);
                }
                Ok(None) => outcomes[*i] = Some(Ok(())),
                Err(e) => outcomes[*i] = Some(Err(e)),
            }
        }
        if !records.is_empty() {
            // Only a new row is announced: one already there was announced by the statement that wrote it.
            let written = async { repo::record_notifications(&mut *self.pool.acquire().await?, &records, &sent).await }.await;
            for (i, record) in recorded.iter().zip(&records) {
                outcomes[*i] = Some(match &written {
                    Ok(_) => {
                        let (order_id, event_type, id, attempt) = (record.order_id, record.event_type, record.id, record.attempts);
                        metrics::counter!("conveyor_notifications_sent_total", "event_type" => event_type.as_str(), "data_source" => record.data_source.as_str()).increment(1);
                        events[*i].2.in_scope(|| tracing::info!(%order_id, %event_type, notification_id = %id, attempt, data_source = record.data_source.as_str(), "notification delivered"));
                        Ok(())
                    }
                    Err(e) => Err(HandlerError::retry(anyhow!("recording the delivery failed: {e}"))),
                });
            }
        }
        drop(held);
        settled(outcomes)
    }

    /// Renders and delivers one event the batch's read found not notified yet: the record
    /// to write and its `notification.sent`, or `None` when it was notified already.
    async fn deliver(&self, event: &Occurrence, attempt: i32, to_notify: repo::ToNotify) -> Result<Option<(NewNotification, Outgoing)>, HandlerError> {
        let (order_id, event_type) = (event.order.order_id, event.event_type);
        if to_notify.notified {
            tracing::info!(%order_id, %event_type, "already notified; nothing to do");
            return Ok(None);
        }
        let (Some(subject_template), Some(body_template)) = (to_notify.subject, to_notify.body) else {
            return Err(HandlerError::permanent(anyhow!("no template is stored for {event_type}")));
        };
        let permit = self.webhook.permit().map_err(|wait| HandlerError::snooze(wait, anyhow!("the webhook's circuit breaker is open; next try in {wait:?}")))?;

        let mut vars = Vars::from_event(event_type, &event.order, event.reason, event.detail.clone());
        self.lookup.enrich(&mut vars).await;
        let subject = render::render_part(render::Part::Subject, &subject_template, &vars).map_err(|e| HandlerError::permanent(anyhow!("the {event_type} subject template failed: {e}")))?;
        let body = render::render_part(render::Part::Body, &body_template, &vars).map_err(|e| HandlerError::permanent(anyhow!("the {event_type} body template failed: {e}")))?;

        let key = format!("{order_id}:{event_type}");
        let id = Uuid::new_v5(&ID_NAMESPACE, key.as_bytes());
        let payload = Payload { notification_id: id, order_id, event_type, customer_id: event.order.customer_id, subject: &subject, body: &body };
        self.webhook.deliver(permit, &key, &payload).await.map_err(HandlerError::retry)?;
        let delivered_at = Utc::now();
        let sent = NotificationSent { order_id, notification_id: id, event_type: event_type.as_str().to_owned(), subject: subject.clone(), delivered_at };
        let message = Outgoing::event(&sent).map_err(anyhow::Error::from)?;
        let record = NewNotification { id, order_id, event_type, customer_id: event.order.customer_id, subject, body, data_source: vars.data_source, attempts: attempt, delivered_at };
        Ok(Some((record, message)))
    }

    fn claim(&self, order_id: Uuid, event_type: EventType) -> Option<InFlight<'_>> {
        let key = (order_id, event_type);
        let inserted = self.in_flight.lock().expect("in-flight lock").insert(key);
        // Built only when this call took the key: dropping one would release it.
        inserted.then(|| InFlight { set: &self.in_flight, key })
    }
}

/// Every event held for delivery fails with `e`, to be tried again (the batch's read
/// failed before any was delivered); the others keep their outcomes.
fn fail_all(mut outcomes: Vec<Option<Result<(), HandlerError>>>, held: &[(usize, InFlight<'_>)], e: &anyhow::Error) -> Vec<Result<(), HandlerError>> {
    for (i, _) in held {
        outcomes[*i] = Some(Err(HandlerError::retry(anyhow!("{e:#}"))));
    }
    settled(outcomes)
}

/// The batch's outcomes, one per event; an event left without one (a bug) is tried again.
fn settled(outcomes: Vec<Option<Result<(), HandlerError>>>) -> Vec<Result<(), HandlerError>> {
    outcomes.into_iter().map(|o| o.unwrap_or_else(|| Err(HandlerError::retry(anyhow!("no outcome (a bug)"))))).collect()
}
