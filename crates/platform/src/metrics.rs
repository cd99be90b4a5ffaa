//! Metrics of every process (see `docs/metrics.md` for the catalog).
//!
//! Two kinds, as crates.io splits them: *instance* metrics are recorded as things happen
//! (HTTP requests here, queue and saga events where they occur) and describe this process;
//! *service* metrics are read from the database when Prometheus scrapes (queue depth,
//! oldest pending age, dead letters) and describe the service, whichever process is asked,
//! so dashboards aggregate them with `max`, never `sum`. Pool and process figures are read
//! at scrape too.

use std::collections::BTreeSet;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use sqlx::PgPool;

static PROCESS: LazyLock<metrics_process::Collector> = LazyLock::new(|| {
    let c = metrics_process::Collector::default();
    c.describe();
    c
});

/// Label sets of the depth gauges set at an earlier scrape, so that one that disappeared
/// from the database (its messages all handled) is set to 0 rather than left stale.
static SEEN_DEPTH: Mutex<BTreeSet<(String, String, String)>> = Mutex::new(BTreeSet::new());
static SEEN_DEAD: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Declares the topics this process relays (`outbox`) or consumes (`inbox`), so that their
/// series exist at 0 from the start: the depth and dead-letter gauges before the first
/// message waits, and the counters before their first increment (else `rate()` misses the
/// first burst after a restart).
pub fn register_topics<'a>(queue: &str, topics: impl IntoIterator<Item = &'a str>) {
    let mut seen = SEEN_DEPTH.lock().expect("depth label set");
    let mut seen_dead = SEEN_DEAD.lock().expect("dead label set");
    let inbox = queue == "inbox";
    let states: &[&str] = if inbox { &["pending", "running", "dead"] } else { &["pending"] };
    let loops: &[&'static str] = if inbox { &["consumer", "lease consumer"] } else { &["relay"] };
    for l in loops {
        metrics::counter!("conveyor_queue_loop_errors_total", "loop" => *l).increment(0);
    }
    for topic in topics {
        for state in states {
            seen.insert((queue.to_owned(), topic.to_owned(), (*state).to_owned()));
        }
        if inbox {
            seen_dead.insert(topic.to_owned());
            for outcome in ["done", "retried", "dead", "snoozed", "duplicate"] {
                metrics::counter!("conveyor_queue_consumed_total", "topic" => topic.to_owned(), "outcome" => outcome).increment(0);
            }
            metrics::counter!("conveyor_queue_stale_completions_total", "topic" => topic.to_owned()).increment(0);
        } else {
            metrics::counter!("conveyor_queue_published_total", "topic" => topic.to_owned()).increment(0);
        }
    }
}

/// Middleware: rate, errors and duration of every request by matched route (never the raw
/// path, which carries ids) and status class, and the requests in flight.
pub async fn track_http(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".to_owned());
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_owned(),
        _ => "other".to_owned(),
    };
    let in_flight = metrics::gauge!("http_server_requests_in_flight");
    in_flight.increment(1.0);
    let started = Instant::now();
    let response = next.run(req).await;
    in_flight.decrement(1.0);
    let class = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let labels = [("method", method), ("route", route), ("status_class", class.to_owned())];
    metrics::counter!("http_server_requests_total", &labels).increment(1);
    metrics::histogram!("http_server_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    response
}

/// Reads what is measured at scrape time, then renders every metric.
pub async fn scrape(pool: &PgPool) -> String {
    PROCESS.collect();
    pool_gauges(pool).await;
    if let Err(e) = queue_gauges(pool).await {
        tracing::warn!(error = %e, "queue metrics not read at this scrape");
    }
    crate::telemetry::render_metrics()
}

async fn pool_gauges(pool: &PgPool) {
    let (size, idle) = (pool.size() as f64, pool.num_idle() as f64);
    metrics::gauge!("db_pool_connections", "state" => "in_use").set(size - idle);
    metrics::gauge!("db_pool_connections", "state" => "idle").set(idle);
    metrics::gauge!("db_pool_max_connections").set(pool.options().get_max_connections() as f64);
    // One sample per scrape of what a handler waits for a connection.
    let started = Instant::now();
    if let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(1), pool.acquire()).await {
        metrics::histogram!("db_pool_acquire_duration_seconds").record(started.elapsed().as_secs_f64());
        drop(conn);
    }
}

async fn queue_gauges(pool: &PgPool) -> anyhow::Result<()> {
    let read = async {
        let depth = conveyor_queue::depth(pool).await?;
        let oldest = conveyor_queue::oldest_pending_age(pool).await?;
        Ok::<_, conveyor_queue::Error>((depth, oldest))
    };
    let (depth, oldest) = tokio::time::timeout(Duration::from_secs(2), read).await??;
    metrics::gauge!("conveyor_queue_oldest_pending_age_seconds").set(oldest.map(|d| d.as_secs_f64()).unwrap_or(0.0));

    let mut now_depth = BTreeSet::new();
    let mut now_dead = BTreeSet::new();
    for d in &depth {
        let queue = match d.table {
            conveyor_queue::QueueTable::Outbox => "outbox",
            conveyor_queue::QueueTable::Inbox => "inbox",
        };
        let key = (queue.to_owned(), d.topic.clone(), d.state.clone());
        metrics::gauge!("conveyor_queue_depth", "queue" => key.0.clone(), "topic" => key.1.clone(), "state" => key.2.clone()).set(d.count as f64);
        now_depth.insert(key);
        if d.state == "dead" {
            metrics::gauge!("conveyor_queue_dead_letters", "topic" => d.topic.clone()).set(d.count as f64);
            now_dead.insert(d.topic.clone());
        }
    }
    let mut seen = SEEN_DEPTH.lock().expect("depth label set");
    for (queue, topic, state) in seen.difference(&now_depth) {
        metrics::gauge!("conveyor_queue_depth", "queue" => queue.clone(), "topic" => topic.clone(), "state" => state.clone()).set(0.0);
    }
    seen.extend(now_depth);
    let mut seen_dead = SEEN_DEAD.lock().expect("dead label set");
    for topic in seen_dead.difference(&now_dead) {
        metrics::gauge!("conveyor_queue_dead_letters", "topic" => topic.clone()).set(0.0);
    }
    seen_dead.extend(now_dead);
    Ok(())
}
