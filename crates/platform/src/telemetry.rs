//! Logs, traces and metrics setup, once per process.
//!
//! - **Logs**: `RUST_LOG` (default `info`); JSON lines (`LOG_FORMAT=json`, or `auto` when
//!   stdout is not a terminal) carry `trace_id` and `span_id` of the current span whenever
//!   tracing is on; text lines for terminals.
//! - **Traces**: OpenTelemetry, configured only by the standard `OTEL_*` variables (see
//!   [`traces`]). Off unless `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//!   or `OTEL_TRACES_EXPORTER` is set: then there is no OpenTelemetry layer at all, and the
//!   spans the code makes are plain `tracing` spans.
//! - **Metrics**: the Prometheus recorder behind `/metrics`.

use std::io::IsTerminal;
use std::sync::{Once, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogArgs, LogFormat};

pub mod logs;
pub mod traces;

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();
static LOGS_AND_TRACES: Once = Once::new();

/// Buckets for durations in seconds: 1 ms to 60 s.
const SECONDS_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Buckets for messages per claim (batches are at most a few hundred).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];

/// Sets up logging (level from `RUST_LOG`, default `info`), tracing (from the `OTEL_*`
/// variables, see [`traces`]) and the Prometheus recorder, labelling every metric with
/// `service` and `process` (`catalog`, `catalog-api`). Safe to call more than once (tests):
/// only the first call sets up logs and traces. Call [`shutdown`] before the process exits,
/// so the last spans are exported.
pub fn init(service: &'static str, process: &'static str, log: &LogArgs) {
    LOGS_AND_TRACES.call_once(|| init_logs_and_traces(process, log));
    PROMETHEUS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .add_global_label("service", service)
            .add_global_label("process", process)
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .expect("static buckets are valid")
            .set_buckets_for_metric(Matcher::Full("conveyor_queue_claim_batch_size".into()), BATCH_BUCKETS)
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::debug!("a metrics recorder was installed already");
        }
        handle
    });
}

/// The text exposition of every metric this process recorded.
pub fn render_metrics() -> String {
    PROMETHEUS.get().map(|h| h.render()).unwrap_or_default()
}

fn init_logs_and_traces(process: &'static str, log: &LogArgs) {
    let directives = std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| "info".to_owned());
    let json = match log.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let tracer = traces::init(process);
    // Spans of Conveyor's own code always reach the OpenTelemetry layer, whatever RUST_LOG
    // says (it governs logs); events reach it per RUST_LOG, as span events.
    let otel = tracer.map(|tracer| tracing_opentelemetry::layer().with_tracer(tracer).with_filter(traces::filter(&directives)));
    let text = (!json).then(|| tracing_subscriber::fmt::layer().with_target(true).with_filter(EnvFilter::new(&directives)));
    let json = json.then(|| json_layer(std::io::stdout).with_filter(EnvFilter::new(&directives)));
    if tracing_subscriber::registry().with(otel).with(text).with(json).try_init().is_err() {
        // Tests may have installed a subscriber of their own.
        tracing::debug!("a tracing subscriber was installed already");
    }
}

/// The JSON log layer `LOG_FORMAT=json` installs, writing to `writer`: one object per
/// event, its fields flattened, the current span and its ancestors, and `trace_id` and
/// `span_id` when the event happens inside a traced span (see [`logs::WithTraceIds`]).
pub fn json_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
        .event_format(logs::WithTraceIds(tracing_subscriber::fmt::format().json().flatten_event(true).with_current_span(true).with_target(true)))
}

/// Exports the spans still buffered and stops the exporter (no-op when tracing is off).
/// [`run_api`](crate::run_api), [`run_worker`](crate::run_worker) and
/// [`run_migrator`](crate::run_migrator) call it on their way out.
pub async fn shutdown() {
    if traces::provider().is_some() {
        // The SDK's shutdown blocks until its batch thread has exported.
        let _ = tokio::task::spawn_blocking(traces::shutdown).await;
    }
}
