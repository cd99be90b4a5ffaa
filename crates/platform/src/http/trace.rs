//! Server spans: one `{METHOD} {route}` span (kind SERVER) per request, following the
//! OpenTelemetry HTTP conventions, the child of the trace context the request carries.

use std::time::Duration;

use axum::body::Body;
use axum::extract::MatchedPath;
use axum::http::{Request, Response};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{DefaultOnRequest, DefaultOnResponse, OnResponse, TraceLayer};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::traces;

pub(crate) type Layer = TraceLayer<SharedClassifier<ServerErrorsAsFailures>, fn(&Request<Body>) -> Span, DefaultOnRequest, fn(&Response<Body>, Duration, &Span)>;

/// tower-http's `TraceLayer` with Conveyor's span and the status recorded on it; its events
/// (`started processing request`, `finished processing request`, failures) are unchanged.
pub(crate) fn layer() -> Layer {
    TraceLayer::new_for_http().make_span_with(server_span as fn(&Request<Body>) -> Span).on_response(on_response as fn(&Response<Body>, Duration, &Span))
}

/// The request's span. Health checks and scrapes get none: they are not the shop's traffic
/// and would bury it.
fn server_span(req: &Request<Body>) -> Span {
    let path = req.uri().path();
    if path == "/metrics" || path.starts_with("/health/") {
        return Span::none();
    }
    let method = req.method().as_str();
    let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let span = tracing::info_span!(
        "request",
        otel.name = match route { Some(route) => format!("{method} {route}"), None => method.to_owned() },
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = route,
        http.response.status_code = Empty,
        url.path = path,
        url.scheme = "http",
        "error.type" = Empty,
    );
    if !span.is_disabled() && req.headers().contains_key("traceparent") {
        let _ = span.set_parent(traces::extract(req.headers()));
    }
    span
}

fn on_response(res: &Response<Body>, latency: Duration, span: &Span) {
    let status = res.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", status.as_str());
    }
    DefaultOnResponse::default().on_response(res, latency, span);
}
