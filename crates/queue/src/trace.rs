//! Trace context across the queue (OpenTelemetry messaging conventions).
//!
//! - **Publish**: [`publish_all`](crate::publish_all) runs in a `publish {topic}` span (kind
//!   PRODUCER) and writes that span's W3C context (`traceparent`, `tracestate`, `baggage`,
//!   through the global propagator) into each message's headers, unless the caller set a
//!   `traceparent` of its own. The relay copies headers unchanged.
//! - **Process**: every handler runs in a `process {topic}` span (kind CONSUMER) whose parent
//!   is the context in the message's headers, so one order's trace runs through every
//!   service it touches.
//! - **Batches**: a relay batch (`send`) and a consumer batch (`receive`) are spans of their
//!   own, linked to the messages they carry, with the queue's statements (claim, deliver,
//!   commit, settle) as `db.system = postgresql` children. They are made only when a claim
//!   found messages, with the claim's start as their start: an idle poll makes no span.
//!
//! Publish and process spans are `tracing` spans (`otel.kind`, `otel.name` fields, mapped by
//! `tracing-opentelemetry`): without an OpenTelemetry layer they are plain, cheap `tracing`
//! spans and nothing is injected. Batch spans use the OpenTelemetry API directly, since they
//! start before anyone knows whether they are worth keeping; without a tracer provider
//! installed (`opentelemetry::global`) they are no-ops.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue, global};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Headers;
use crate::message::InboxRow;

/// `messaging.system` of every span the queue makes.
pub const MESSAGING_SYSTEM: &str = "conveyor";
/// The header a producer's context travels in; a message that has it keeps it.
pub const TRACEPARENT: &str = "traceparent";

struct Inject<'a>(&'a mut Headers);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct Extract<'a>(&'a Headers);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The headers that carry `span`'s context (empty when there is no OpenTelemetry layer, or
/// no propagator installed).
pub(crate) fn context_headers(span: &tracing::Span) -> Headers {
    let mut headers = Headers::new();
    if span.is_disabled() {
        return headers;
    }
    let cx = span.context();
    if cx.span().span_context().is_valid() || !cx.baggage().is_empty() {
        global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Inject(&mut headers)));
    }
    headers
}

/// The context a message's headers carry (empty when they carry none).
pub fn extract(headers: &Headers) -> Context {
    global::get_text_map_propagator(|p| p.extract(&Extract(headers)))
}


/// The span around a [`publish_all`](crate::publish_all) of `topics`.
pub(crate) fn publish_span<'a>(mut topics: impl Iterator<Item = &'a str>, count: usize, single_id: Option<uuid::Uuid>) -> tracing::Span {
    let first = topics.next().unwrap_or_default();
    let one_topic = topics.all(|t| t == first);
    let span = tracing::info_span!(
        "publish",
        otel.name = if one_topic { Cow::Owned(format!("publish {first}")) } else { Cow::Borrowed("publish") }.as_ref(),
        otel.kind = "producer",
        otel.status_code = Empty,
        otel.status_description = Empty,
        messaging.system = MESSAGING_SYSTEM,
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = Empty,
        messaging.message.id = Empty,
        messaging.batch.message_count = Empty,
    );
    if one_topic {
        span.record("messaging.destination.name", first);
    }
    match single_id {
        Some(id) => span.record("messaging.message.id", tracing::field::display(id)),
        None => span.record("messaging.batch.message_count", count as i64),
    };
    span
}

/// The span a handler runs in: a child of the context the message carries.
pub(crate) fn process_span(row: &InboxRow, attempt: i32, group: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "process",
        otel.name = format!("process {}", row.topic),
        otel.kind = "consumer",
        otel.status_code = Empty,
        otel.status_description = Empty,
        "error.type" = Empty,
        messaging.system = MESSAGING_SYSTEM,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = row.topic.as_str(),
        messaging.message.id = %row.message_id,
        messaging.consumer.group.name = group,
        messaging.conveyor.attempt = attempt,
        messaging.conveyor.snoozed_ms = Empty,
    );
    if !span.is_disabled() && row.headers.0.contains_key(TRACEPARENT) {
        let _ = span.set_parent(extract(&row.headers.0));
    }
    span
}

/// Marks `span` failed (`otel.status_code = ERROR`) with `kind` as `error.type`.
pub(crate) fn record_error(span: &tracing::Span, kind: &'static str, error: &dyn std::fmt::Display) {
    if span.is_disabled() {
        return;
    }
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", tracing::field::display(error));
    span.record("error.type", kind);
}

/// A DB statement's span inside a `tracing` span (the publishing INSERT).
pub(crate) fn db_span(name: &'static str, operation: &'static str, table: &'static str) -> tracing::Span {
    tracing::debug_span!(
        "db",
        otel.name = name,
        otel.kind = "client",
        otel.status_code = Empty,
        db.system = "postgresql",
        db.system.name = "postgresql",
        db.operation.name = operation,
        db.collection.name = table,
        db.query.summary = name,
    )
}

fn tracer() -> global::BoxedTracer {
    global::tracer("conveyor-queue")
}

/// The span of one relay or consumer batch, made after its claim found messages (the claim
/// is its first child), ended when dropped. A no-op without a tracer provider.
pub(crate) struct Batch {
    cx: Context,
}

/// What a batch-level statement was.
pub(crate) struct Statement {
    pub name: &'static str,
    pub operation: &'static str,
    pub table: &'static str,
}

pub(crate) const INBOX_CLAIM: Statement = Statement { name: "claim conveyor.inbox", operation: "UPDATE", table: "conveyor.inbox" };
pub(crate) const INBOX_RECLAIM: Statement = Statement { name: "reclaim conveyor.inbox", operation: "SELECT", table: "conveyor.inbox" };
pub(crate) const LOCK_KEYS: Statement = Statement { name: "lock keys", operation: "SELECT", table: "" };
pub(crate) const INBOX_SETTLE: Statement = Statement { name: "settle conveyor.inbox", operation: "UPDATE", table: "conveyor.inbox" };
pub(crate) const INBOX_RELEASE: Statement = Statement { name: "release conveyor.inbox", operation: "UPDATE", table: "conveyor.inbox" };
pub(crate) const OUTBOX_CLAIM: Statement = Statement { name: "claim conveyor.outbox", operation: "DELETE", table: "conveyor.outbox" };
pub(crate) const INBOX_DELIVER: Statement = Statement { name: "deliver conveyor.inbox", operation: "INSERT", table: "conveyor.inbox" };
pub(crate) const PULL_READ: Statement = Statement { name: "read conveyor.outbox", operation: "SELECT", table: "conveyor.outbox" };
pub(crate) const PULL_ADVANCE: Statement = Statement { name: "advance conveyor.pull_cursors", operation: "INSERT", table: "conveyor.pull_cursors" };
pub(crate) const COMMIT: Statement = Statement { name: "commit", operation: "COMMIT", table: "" };
pub(crate) const ROLLBACK: Statement = Statement { name: "rollback", operation: "ROLLBACK", table: "" };

impl Batch {
    /// A `send` batch of the relay (kind PRODUCER), or a `receive` batch of a consumer
    /// (kind CLIENT) of messages on `topics`, started at `started`. [`link`](Self::link)
    /// it to each message's context.
    pub fn start<'a>(operation: &'static str, started: SystemTime, group: Option<&str>, topics: impl ExactSizeIterator<Item = &'a str>) -> Batch {
        let count = topics.len();
        let mut topics = topics;
        let first = topics.next().unwrap_or_default();
        let one_topic = topics.all(|t| t == first);
        let name = if one_topic { format!("{operation} {first}") } else { operation.to_owned() };
        let kind = if operation == "send" { SpanKind::Producer } else { SpanKind::Client };
        let mut attributes = vec![
            KeyValue::new("messaging.system", MESSAGING_SYSTEM),
            KeyValue::new("messaging.operation.type", operation),
            KeyValue::new("messaging.operation.name", if operation == "send" { "relay" } else { "receive" }),
            KeyValue::new("messaging.batch.message_count", count as i64),
        ];
        if one_topic {
            attributes.push(KeyValue::new("messaging.destination.name", first.to_owned()));
        }
        if let Some(group) = group {
            attributes.push(KeyValue::new("messaging.consumer.group.name", group.to_owned()));
        }
        let tracer = tracer();
        // A root: a batch mixes messages of many traces, each reached through a link.
        let span = tracer.span_builder(name).with_kind(kind).with_start_time(started).with_attributes(attributes).start_with_context(&tracer, &Context::new());
        Batch { cx: Context::new().with_span(span) }
    }

    /// Whether the batch is traced (a tracer provider is installed and sampled it).
    pub fn is_recording(&self) -> bool {
        self.cx.span().is_recording()
    }

    /// Links the batch to the context a message carries.
    pub fn link(&self, headers: &Headers) {
        if headers.contains_key(TRACEPARENT) && self.is_recording() {
            let sc = extract(headers).span().span_context().clone();
            if sc.is_valid() {
                self.cx.span().add_link(sc, vec![]);
            }
        }
    }

    /// Records a statement of this batch that ran from `started` until now.
    pub fn statement(&self, what: &Statement, started: SystemTime, rows: Option<usize>, error: Option<&dyn std::fmt::Display>) {
        self.statement_with(what, started, rows, error, Vec::new());
    }

    fn statement_with(&self, what: &Statement, started: SystemTime, rows: Option<usize>, error: Option<&dyn std::fmt::Display>, extra: Vec<KeyValue>) {
        if !self.is_recording() {
            return;
        }
        let tracer = tracer();
        let mut attributes = vec![
            KeyValue::new("db.system", "postgresql"),
            KeyValue::new("db.system.name", "postgresql"),
            KeyValue::new("db.operation.name", what.operation),
            KeyValue::new("db.query.summary", what.name),
        ];
        if !what.table.is_empty() {
            attributes.push(KeyValue::new("db.collection.name", what.table));
        }
        if let Some(rows) = rows {
            attributes.push(KeyValue::new("db.response.returned_rows", rows as i64));
        }
        attributes.extend(extra);
        let mut span = tracer
            .span_builder(what.name)
            .with_kind(SpanKind::Client)
            .with_start_time(started)
            .with_attributes(attributes)
            .start_with_context(&tracer, &self.cx);
        if let Some(e) = error {
            span.set_status(Status::error(e.to_string()));
        }
        span.end();
    }

    /// Runs `statement`, recorded as a child of the batch.
    pub async fn run<T, E: std::fmt::Display>(&self, what: &Statement, statement: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        self.run_on(what, None, statement).await
    }

    /// [`run`](Self::run) on a subscriber's database (`db.namespace` = its name).
    pub async fn run_on<T, E: std::fmt::Display>(&self, what: &Statement, subscriber: Option<&str>, statement: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let started = SystemTime::now();
        let result = statement.await;
        let extra = match subscriber {
            Some(s) if self.is_recording() => vec![KeyValue::new("db.namespace", s.to_owned())],
            _ => Vec::new(),
        };
        self.statement_with(what, started, None, result.as_ref().err().map(|e| e as &dyn std::fmt::Display), extra);
        result
    }

    /// Ends the batch as failed.
    pub fn fail(&self, error: &dyn std::fmt::Display) {
        let span = self.cx.span();
        if span.is_recording() {
            span.set_status(Status::error(error.to_string()));
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.cx.span().end();
    }
}

/// The default consumer group name: this executable's name (`stock-worker`).
pub(crate) fn default_group() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "conveyor".to_owned())
}
