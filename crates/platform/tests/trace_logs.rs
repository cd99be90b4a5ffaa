//! A request that arrives with a `traceparent` is served in a span of that trace, and the
//! JSON log lines written while it is handled carry the trace's id.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use conveyor_platform::telemetry;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;
use tower::ServiceExt;
use tracing_subscriber::layer::SubscriberExt;
use utoipa_axum::router::OpenApiRouter;

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn parsed(&self) -> Vec<Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
    }
}

#[tokio::test]
async fn the_json_log_line_of_a_traced_request_carries_the_trace_id_of_its_span() {
    telemetry::traces::install_propagators();
    // A provider without an exporter: ids, nothing sent (OTEL_TRACES_EXPORTER=none).
    let provider = SdkTracerProvider::builder().build();
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .with(telemetry::json_layer(move || writer.clone()));
    let _default = tracing::subscriber::set_default(subscriber);

    let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
    let api = OpenApiRouter::new().route(
        "/hello/{name}",
        get(|| async {
            tracing::info!("hello from the handler");
            "hi"
        }),
    );
    let app = conveyor_platform::http::api_router("test", 1024, pool.clone(), api, pool);
    let request = Request::get("/hello/there")
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.oneshot(request).await.unwrap().status(), StatusCode::OK);
    tracing::info!("outside any request");

    let logged = lines.parsed();
    let line = logged.iter().find(|l| l["message"] == "hello from the handler").expect("the handler's line");
    assert_eq!(line["trace_id"], "0af7651916cd43dd8448eb211c80319c", "{line}");
    let span_id = line["span_id"].as_str().unwrap();
    assert_eq!(span_id.len(), 16);
    assert_ne!(span_id, "b7ad6b7169203331", "the server span is the caller's child, not the caller");
    assert_eq!(line["span"]["otel.name"], "GET /hello/{name}", "{line}");
    assert_eq!(line["span"]["http.route"], "/hello/{name}", "{line}");
    assert_eq!(line["level"], "INFO");
    let outside = logged.iter().find(|l| l["message"] == "outside any request").unwrap();
    assert!(outside.get("trace_id").is_none(), "no trace, no id: {outside}");
}
