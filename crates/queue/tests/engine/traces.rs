//! Trace context across the queue: the publisher's span context goes into the headers, the
//! relay keeps it, and the handler runs in a CONSUMER span that is its child.

use std::sync::OnceLock;

use conveyor_queue::{Consumer, Delivery, HandlerError, Outgoing, RetryPolicy, handler_fn, publish, publish_event};
use futures::FutureExt;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::{Value, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use crate::common::*;

/// One provider for the whole test binary (the propagator and the batch spans' tracer are
/// process-wide), exporting synchronously into memory. Tests pick their spans by trace id.
fn exporter() -> &'static (SdkTracerProvider, InMemorySpanExporter) {
    static OTEL: OnceLock<(SdkTracerProvider, InMemorySpanExporter)> = OnceLock::new();
    OTEL.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        global::set_tracer_provider(provider.clone());
        global::set_text_map_propagator(TraceContextPropagator::new());
        // tracing caches each callsite's interest globally, and while a single dispatcher is
        // registered it asks only the registering thread's: a span first reached on another
        // test's thread (no subscriber) would stay disabled here. A second, permanent
        // dispatcher makes it ask every live one.
        static SECOND: OnceLock<tracing::Dispatch> = OnceLock::new();
        SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        (provider, exporter)
    })
}

/// A subscriber with the OpenTelemetry layer, for this test's thread.
fn traced() -> tracing::subscriber::DefaultGuard {
    let (provider, _) = exporter();
    let subscriber = tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("queue-test")));
    tracing::subscriber::set_default(subscriber)
}

fn spans_of(trace: TraceId) -> Vec<SpanData> {
    exporter().1.get_finished_spans().unwrap().into_iter().filter(|s| s.span_context.trace_id() == trace).collect()
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no span {name:?} among {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>()))
}

async fn stored_headers(pool: &sqlx::PgPool, table: &str, id: uuid::Uuid) -> serde_json::Value {
    let sql = match table {
        "outbox" => "SELECT headers::jsonb FROM conveyor.outbox WHERE message_id = $1",
        _ => "SELECT headers::jsonb FROM conveyor.inbox WHERE message_id = $1",
    };
    sqlx::query_scalar(sql).bind(id).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn publishing_inside_a_span_stores_its_traceparent_and_the_handler_runs_in_a_child_consumer_span() {
    let _subscriber = traced();
    let p = pair().await;
    let request = tracing::info_span!("POST /orders", otel.kind = "server");
    let trace_id = request.context().span().span_context().trace_id();
    assert_ne!(trace_id, TraceId::INVALID);

    let id = async {
        let mut tx = p.publisher.begin().await.unwrap();
        let id = publish_event(&mut tx, &Ping { n: 1 }).await.unwrap();
        tx.commit().await.unwrap();
        id
    }
    .instrument(request.clone())
    .await;
    drop(request);

    let spans = spans_of(trace_id);
    let publish_span = named(&spans, "publish test.ping");
    assert_eq!(publish_span.span_kind, SpanKind::Producer);
    assert_eq!(attr(publish_span, "messaging.system"), Some(&Value::from("conveyor")));
    assert_eq!(attr(publish_span, "messaging.destination.name"), Some(&Value::from("test.ping")));
    assert_eq!(attr(publish_span, "messaging.operation.type"), Some(&Value::from("send")));
    assert_eq!(attr(publish_span, "messaging.message.id"), Some(&Value::from(id.to_string())));
    let insert = named(&spans, "INSERT conveyor.outbox");
    assert_eq!(insert.parent_span_id, publish_span.span_context.span_id());
    assert_eq!(attr(insert, "db.system"), Some(&Value::from("postgresql")));

    let headers = stored_headers(&p.publisher, "outbox", id).await;
    let traceparent = headers["traceparent"].as_str().unwrap_or_else(|| panic!("no traceparent in {headers}"));
    assert_eq!(traceparent, format!("00-{}-{}-01", trace_id, publish_span.span_context.span_id()));

    // The relay copies the headers as they are.
    p.relay_all().await;
    assert_eq!(stored_headers(&p.subscriber, "inbox", id).await, headers);

    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen_in_handler = seen.clone();
    let consumer = Consumer::new(p.subscriber.clone()).named("test-group").subscribe(handler_fn(move |_conn, msg: Delivery<Ping>| {
        // The handler's current span is the consumer span, in the publisher's trace.
        *seen_in_handler.lock().unwrap() = Some((tracing::Span::current().context().span().span_context().clone(), msg.headers.clone()));
        async { Ok(()) }.boxed()
    }));
    assert_eq!(consumer.process_once().await.unwrap(), 1);

    let (handler_cx, delivered) = seen.lock().unwrap().take().expect("the handler ran");
    assert_eq!(handler_cx.trace_id(), trace_id, "the handler runs in the publisher's trace");
    assert_eq!(delivered.get("traceparent").map(String::as_str), Some(traceparent));
    let spans = spans_of(trace_id);
    let process = named(&spans, "process test.ping");
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(process.span_context.span_id(), handler_cx.span_id());
    assert_eq!(process.parent_span_id, publish_span.span_context.span_id(), "the consumer span's parent is the producer span");
    assert_eq!(attr(process, "messaging.system"), Some(&Value::from("conveyor")));
    assert_eq!(attr(process, "messaging.destination.name"), Some(&Value::from("test.ping")));
    assert_eq!(attr(process, "messaging.operation.type"), Some(&Value::from("process")));
    assert_eq!(attr(process, "messaging.consumer.group.name"), Some(&Value::from("test-group")));
    assert_eq!(attr(process, "messaging.message.id"), Some(&Value::from(id.to_string())));
    assert_eq!(attr(process, "messaging.conveyor.attempt"), Some(&Value::I64(1)));
    assert_eq!(process.status, Status::Unset);

    // The relay's and the consumer's batches are traces of their own, linked to the message.
    let all = exporter().1.get_finished_spans().unwrap();
    let linked = |name: &str| {
        all.iter()
            .find(|s| s.name == name && s.links.iter().any(|l| l.span_context.span_id() == publish_span.span_context.span_id()))
            .unwrap_or_else(|| panic!("no {name} span linked to the message"))
    };
    let send = linked("send test.ping");
    assert_eq!(send.span_kind, SpanKind::Producer);
    let receive = linked("receive test.ping");
    assert_eq!(attr(receive, "messaging.consumer.group.name"), Some(&Value::from("test-group")));
    let children = |parent: &SpanData| -> Vec<String> {
        let mut names: Vec<String> = all
            .iter()
            .filter(|s| s.parent_span_id == parent.span_context.span_id() && s.span_context.trace_id() == parent.span_context.trace_id())
            .map(|s| s.name.to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(children(send), ["claim conveyor.outbox", "commit", "deliver conveyor.inbox"]);
    assert_eq!(children(receive), ["claim conveyor.inbox", "commit"]);
}

#[tokio::test]
async fn a_failing_handler_marks_its_span_as_an_error_and_a_callers_traceparent_is_kept() {
    let _subscriber = traced();
    let p = pair().await;
    // A traceparent set by the caller (a message forwarded from elsewhere) wins.
    let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let id = async {
        let mut tx = p.publisher.begin().await.unwrap();
        let id = publish(&mut tx, Outgoing::event(&Ping { n: 2 }).unwrap().with_header("traceparent", theirs)).await.unwrap();
        tx.commit().await.unwrap();
        id
    }
    .instrument(tracing::info_span!("caller"))
    .await;
    assert_eq!(stored_headers(&p.publisher, "outbox", id).await, serde_json::json!({"traceparent": theirs}));
    p.relay_all().await;

    let consumer = Consumer::new(p.subscriber.clone()).subscribe_with(
        handler_fn(|_conn, _msg: Delivery<Ping>| async { Err(HandlerError::permanent(anyhow::anyhow!("bad ping"))) }.boxed()),
        RetryPolicy { max_attempts: 1, ..RetryPolicy::default() },
    );
    assert_eq!(consumer.process_once().await.unwrap(), 1);
    let trace_id = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
    let spans = spans_of(trace_id);
    let process = named(&spans, "process test.ping");
    assert_eq!(process.parent_span_id.to_string(), "b7ad6b7169203331");
    assert!(matches!(&process.status, Status::Error { description } if description.contains("bad ping")), "{:?}", process.status);
    assert_eq!(attr(process, "error.type"), Some(&Value::from("permanent")));
    // The default group name is the executable's.
    let group = attr(process, "messaging.consumer.group.name").map(|v| v.as_str().into_owned()).unwrap_or_default();
    assert!(!group.is_empty());
}

#[tokio::test]
async fn without_an_opentelemetry_layer_nothing_is_injected() {
    exporter(); // the propagator is installed; there is just no layer on this thread
    let p = pair().await;
    let mut tx = p.publisher.begin().await.unwrap();
    let id = publish_event(&mut tx, &Ping { n: 3 }).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(stored_headers(&p.publisher, "outbox", id).await, serde_json::json!({}));
}

/// A batch handler handles messages of several traces in one call; what it publishes for
/// each, named with `caused_by`, goes on in that message's trace: a `publish` span of its
/// own under the message's `process` span.
#[tokio::test]
async fn what_a_batch_handler_publishes_for_each_message_goes_on_in_that_messages_trace() {
    let _subscriber = traced();
    let p = pair().await;
    let mut traces = Vec::new();
    for n in 0..3 {
        let request = tracing::info_span!("POST /orders", otel.kind = "server");
        traces.push(request.context().span().span_context().trace_id());
        async {
            let mut tx = p.publisher.begin().await.unwrap();
            publish_event(&mut tx, &Ping { n }).await.unwrap();
            tx.commit().await.unwrap();
        }
        .instrument(request)
        .await;
    }
    p.relay_all().await;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let consumer = Consumer::new(p.subscriber.clone()).subscribe_batch(
        conveyor_queue::batch_handler_fn(move |conn, msgs: Vec<Delivery<Ping>>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let echoes: Vec<Outgoing> =
                    msgs.iter().map(|m| Outgoing::new("test.echo", serde_json::json!({ "n": m.payload.n })).caused_by(m)).collect();
                conveyor_queue::publish_all(conn, &echoes).await?;
                Ok(())
            }
            .boxed()
        }),
        RetryPolicy::default(),
    );
    assert_eq!(consumer.process_once().await.unwrap(), 3);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "one call for the three");

    let echoes: Vec<(i64, serde_json::Value)> =
        sqlx::query_as("SELECT (payload->>'n')::bigint, headers::jsonb FROM conveyor.outbox WHERE topic = 'test.echo' ORDER BY 1")
            .fetch_all(&p.subscriber)
            .await
            .unwrap();
    assert_eq!(echoes.len(), 3);
    for ((n, headers), trace_id) in echoes.iter().zip(&traces) {
        let spans = spans_of(*trace_id);
        let process = named(&spans, "process test.ping");
        let publish = named(&spans, "publish test.echo");
        assert_eq!(publish.span_kind, SpanKind::Producer);
        assert_eq!(publish.parent_span_id, process.span_context.span_id(), "echo {n}: its publish span is under its message's process span");
        let traceparent = headers["traceparent"].as_str().unwrap_or_else(|| panic!("no traceparent in {headers}"));
        assert_eq!(traceparent, format!("00-{}-{}-01", trace_id, publish.span_context.span_id()), "echo {n}");
    }
}
