//! Outgoing HTTP: a CLIENT span per request (OpenTelemetry HTTP conventions) whose trace
//! context travels in the request's `traceparent`, so the server's span joins the trace.

use tracing::Instrument;
use tracing::field::Empty;

use crate::telemetry::traces;

/// Sends `request` in a `{METHOD}` span of kind CLIENT with the W3C trace context injected
/// into its headers; records the status (4xx and 5xx mark the span failed) or the error.
pub async fn send(request: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
    let (client, request) = request.build_split();
    let mut request = request?;
    let url = request.url();
    let span = tracing::info_span!(
        "http client",
        otel.name = request.method().as_str(),
        otel.kind = "client",
        otel.status_code = Empty,
        otel.status_description = Empty,
        http.request.method = request.method().as_str(),
        url.full = url.as_str(),
        server.address = url.host_str().unwrap_or_default(),
        server.port = url.port_or_known_default().map(i64::from),
        http.response.status_code = Empty,
        "error.type" = Empty,
    );
    traces::inject(&span, request.headers_mut());
    let sent = client.execute(request).instrument(span.clone()).await;
    match &sent {
        Ok(response) => {
            let status = response.status();
            span.record("http.response.status_code", status.as_u16());
            if status.is_client_error() || status.is_server_error() {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", status.as_str());
            }
        }
        Err(e) => {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", tracing::field::display(e));
            span.record("error.type", if e.is_timeout() { "timeout" } else if e.is_connect() { "connect" } else { "request" });
        }
    }
    sent
}
