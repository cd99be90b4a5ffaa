use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use uuid::Uuid;

/// A message's id: a UUID v7, so ids sort by publish time.
pub type MessageId = Uuid;

/// Message headers: W3C trace context (`traceparent`, `tracestate`, `baggage`) and the like.
pub type Headers = BTreeMap<String, String>;

/// A typed event: its payload type, and the topic it travels on.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The topic name, e.g. `order.placed`.
    const TOPIC: &'static str;
    /// The aggregate this event is about (an order id, a product id), if any.
    fn key(&self) -> Option<String> {
        None
    }
}

/// A message ready to publish: topic, optional key, JSON payload and headers.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: MessageId,
    pub topic: String,
    pub key: Option<String>,
    /// Serialised once, here; stored as written.
    pub payload: Box<RawValue>,
    pub headers: Headers,
    /// The `process` span of the message whose handling publishes this one (see
    /// [`caused_by`](Self::caused_by)).
    cause: Option<tracing::Span>,
}

impl Outgoing {
    /// A message on `topic` with `payload`, a fresh UUID v7 id and no headers.
    pub fn new(topic: impl Into<String>, payload: serde_json::Value) -> Self {
        let payload = serde_json::value::to_raw_value(&payload).expect("a JSON value always serialises");
        Outgoing { id: Uuid::now_v7(), topic: topic.into(), key: None, payload, headers: Headers::new(), cause: None }
    }

    /// A message carrying `event` on its topic, keyed by the event's key.
    pub fn event<E: Event>(event: &E) -> Result<Self, serde_json::Error> {
        Ok(Outgoing {
            id: Uuid::now_v7(),
            topic: E::TOPIC.to_owned(),
            key: event.key(),
            payload: serde_json::value::to_raw_value(event)?,
            headers: Headers::new(),
            cause: None,
        })
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Names the delivery whose handling publishes this message: its `publish` span is a
    /// child of that delivery's `process` span, so the message's trace goes on from there.
    /// A handler of one message needs none of this (what it publishes is in its span); a
    /// [`BatchHandler`](crate::BatchHandler), which handles many messages in one call and
    /// publishes for all of them at once, names each message's cause.
    pub fn caused_by<T>(mut self, msg: &Delivery<T>) -> Self {
        self.cause = Some(msg.span.clone());
        self
    }

    /// The span named by [`caused_by`](Self::caused_by), if any.
    pub(crate) fn cause(&self) -> Option<&tracing::Span> {
        self.cause.as_ref()
    }
}

/// A message as a handler receives it.
#[derive(Debug, Clone)]
pub struct Delivery<T> {
    pub id: MessageId,
    pub topic: String,
    pub key: Option<String>,
    pub payload: T,
    pub headers: Headers,
    /// 1 on the first attempt.
    pub attempt: i32,
    pub published_at: DateTime<Utc>,
    /// The message's `process` span (a child of the trace context it carries). A handler of
    /// one message runs in it; a batch handler runs in the first message's, and names each
    /// message with [`Outgoing::caused_by`] in what it publishes for it.
    pub span: tracing::Span,
}

/// An inbox row as claimed, before its payload is decoded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct InboxRow {
    pub message_id: Uuid,
    pub topic: String,
    pub key: Option<String>,
    pub payload: sqlx::types::Json<Box<RawValue>>,
    pub headers: sqlx::types::Json<Headers>,
    /// Attempts made before this claim (tx mode) or including it (lease mode).
    pub attempts: i32,
    pub published_at: DateTime<Utc>,
    /// Where the claim found it in the claim index (see `floor`), when the claim says.
    #[sqlx(default)]
    pub visible_at: Option<DateTime<Utc>>,
    /// A copy of a message handled before (see the transaction-mode claim): settled without
    /// running its handler.
    #[sqlx(default)]
    pub duplicate: bool,
}

impl InboxRow {
    pub fn decode<T: DeserializeOwned>(&self, attempt: i32) -> Result<Delivery<T>, serde_json::Error> {
        Ok(Delivery {
            id: self.message_id,
            topic: self.topic.clone(),
            key: self.key.clone(),
            payload: serde_json::from_str(self.payload.get())?,
            headers: self.headers.0.clone(),
            attempt,
            published_at: self.published_at,
            span: tracing::Span::none(),
        })
    }
}
