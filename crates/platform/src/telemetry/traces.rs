//! OpenTelemetry traces, configured only by the standard `OTEL_*` variables:
//!
//! | variable | effect |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | turns tracing on; OTLP to this endpoint (`/v1/traces` is appended for HTTP) |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | turns tracing on; the full URL for traces |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL`, `…_TRACES_PROTOCOL` | `http/protobuf` (default), `http/json` or `grpc` |
//! | `OTEL_TRACES_EXPORTER` | `otlp` turns tracing on (default endpoint `http://localhost:4318`); `none` turns it on without exporting: trace ids in logs and in message headers, nothing sent |
//! | `OTEL_SDK_DISABLED=true` | turns tracing off whatever else is set |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the resource; `service.name` defaults to the process (`order-api`) |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | sampling (default `parentbased_always_on`) |
//! | `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, … | the batch span processor |
//! | `OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT`, `…_COMPRESSION` | the exporter, as the OTLP crate reads them |
//!
//! With none of the first four set there is no provider, no exporter and no OpenTelemetry
//! layer: the spans the code makes are plain `tracing` spans. The W3C trace-context and
//! baggage propagators are installed either way (the queue and the HTTP server use them;
//! with no layer there is no context to inject).

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, global};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::Metadata;
use tracing::subscriber::Interest;
use tracing_subscriber::filter::{EnvFilter, FilterExt};
use tracing_subscriber::layer::Filter;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// What the `OTEL_*` variables ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Off,
    /// Spans and ids, nothing exported (`OTEL_TRACES_EXPORTER=none`).
    NoExport,
    Otlp(Protocol),
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Reads the mode from the environment.
pub fn mode() -> Mode {
    mode_from(var)
}

fn mode_from(var: impl Fn(&str) -> Option<String>) -> Mode {
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Mode::Off;
    }
    let endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")).is_some();
    let exporter = var("OTEL_TRACES_EXPORTER").map(|v| v.to_ascii_lowercase());
    match exporter.as_deref() {
        Some("none") => return Mode::NoExport,
        Some("otlp") => {}
        Some(other) => {
            eprintln!("OTEL_TRACES_EXPORTER={other} is not supported (otlp or none); exporting with OTLP");
        }
        None if !endpoint => return Mode::Off,
        None => {}
    }
    let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    Mode::Otlp(match protocol.as_deref() {
        None | Some("http/protobuf") => Protocol::HttpBinary,
        Some("http/json") => Protocol::HttpJson,
        Some("grpc") => Protocol::Grpc,
        Some(other) => {
            eprintln!("OTEL_EXPORTER_OTLP_PROTOCOL={other} is not one of grpc, http/protobuf, http/json; using http/protobuf");
            Protocol::HttpBinary
        }
    })
}

/// Installs the propagators and, when the environment turns tracing on, the tracer provider
/// (also as the global one, for the queue's batch spans). Returns the tracer for the
/// `tracing` layer, or `None` when tracing is off. Must run inside a Tokio runtime (gRPC).
pub(crate) fn init(process: &'static str) -> Option<SdkTracer> {
    install_propagators();
    let mode = mode();
    if mode == Mode::Off {
        return None;
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource(process));
    if let Mode::Otlp(protocol) = mode {
        match exporter(protocol) {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(e) => {
                // Logging is not set up yet: say it on stderr, and run without traces.
                eprintln!("{process}: traces are off: the OTLP exporter could not be built: {e}");
                return None;
            }
        }
    }
    let provider = builder.build();
    global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer("conveyor");
    let _ = PROVIDER.set(provider);
    Some(tracer)
}

/// Makes W3C trace context (`traceparent`, `tracestate`) and baggage the global propagators.
pub fn install_propagators() {
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
}

fn exporter(protocol: Protocol) -> Result<opentelemetry_otlp::SpanExporter, opentelemetry_otlp::ExporterBuildError> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    match protocol {
        Protocol::Grpc => builder.with_tonic().with_protocol(protocol).build(),
        _ => builder.with_http().with_protocol(protocol).build(),
    }
}

/// `service.name` = the process (`order-api`) unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` say otherwise; `service.namespace` = `conveyor`.
fn resource(process: &'static str) -> Resource {
    let mut builder = Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", process),
            KeyValue::new("service.namespace", "conveyor"),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .with_detectors(&[Box::new(TelemetryResourceDetector), Box::new(EnvResourceDetector::new())]);
    if let Some(name) = var("OTEL_SERVICE_NAME") {
        builder = builder.with_service_name(name);
    }
    builder.build()
}

/// The provider, when tracing is on.
pub(crate) fn provider() -> Option<&'static SdkTracerProvider> {
    PROVIDER.get()
}

/// Exports what is buffered and stops the exporter (blocks; at most 5 s).
pub(crate) fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5))
    {
        tracing::warn!(error = %e, "flushing the last spans failed");
    }
}

/// What reaches the OpenTelemetry layer: every span of Conveyor's own crates (targets
/// `conveyor_*`), whatever `RUST_LOG` says (it governs the logs, not the traces), and the
/// events `RUST_LOG` enables, as span events. Other crates' spans stay out (the exporter's
/// own HTTP client would otherwise trace itself), as do the SDK's own events.
pub(crate) fn filter<S>(directives: &str) -> impl Filter<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let own_spans = ByCallsite(|m: &Metadata<'_>| m.is_span() && m.target().starts_with("conveyor"));
    let events = EnvFilter::new(directives).and(ByCallsite(|m: &Metadata<'_>| m.is_event() && !m.target().starts_with("opentelemetry")));
    own_spans.or(events)
}

/// A filter on what a callsite is, decided once per callsite (a `filter_fn` would be asked
/// again at every event).
struct ByCallsite<F>(F);

impl<S, F: Fn(&Metadata<'_>) -> bool> Filter<S> for ByCallsite<F> {
    fn enabled(&self, meta: &Metadata<'_>, _: &tracing_subscriber::layer::Context<'_, S>) -> bool {
        (self.0)(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if (self.0)(meta) { Interest::always() } else { Interest::never() }
    }
}

/// Reads W3C headers from an `http::HeaderMap`.
pub struct HeaderExtractor<'a>(pub &'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes W3C headers into an `http::HeaderMap`.
pub struct HeaderInjector<'a>(pub &'a mut axum::http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (axum::http::HeaderName::try_from(key), axum::http::HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// The trace context an incoming request carries (empty when none).
pub fn extract(headers: &axum::http::HeaderMap) -> opentelemetry::Context {
    global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes `span`'s trace context into `headers` (nothing when tracing is off).
pub fn inject(span: &tracing::Span, headers: &mut axum::http::HeaderMap) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(vars: &[(&str, &str)]) -> Mode {
        mode_from(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn tracing_is_on_only_when_the_otel_variables_ask_for_it() {
        assert_eq!(mode_of(&[]), Mode::Off);
        assert_eq!(mode_of(&[("OTEL_SERVICE_NAME", "x"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]), Mode::Off);
        assert_eq!(mode_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]), Mode::Otlp(Protocol::HttpBinary));
        assert_eq!(mode_of(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")]), Mode::Otlp(Protocol::HttpBinary));
        assert_eq!(
            mode_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
            Mode::Otlp(Protocol::Grpc)
        );
        assert_eq!(
            mode_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
            ]),
            Mode::Otlp(Protocol::HttpJson)
        );
        assert_eq!(mode_of(&[("OTEL_TRACES_EXPORTER", "otlp")]), Mode::Otlp(Protocol::HttpBinary));
        assert_eq!(mode_of(&[("OTEL_TRACES_EXPORTER", "none")]), Mode::NoExport);
        assert_eq!(mode_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "true")]), Mode::Off);
    }

    #[test]
    fn an_exporter_builds_for_every_protocol() {
        exporter(Protocol::HttpBinary).unwrap();
        exporter(Protocol::HttpJson).unwrap();
        // tonic's channel needs the runtime the binaries run in.
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let grpc = runtime.block_on(async { exporter(Protocol::Grpc) });
        grpc.unwrap();
    }
}
