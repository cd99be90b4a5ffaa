//! A webhook receiver for development and tests: it records every notification it is sent
//! (appending it to a JSONL file, so a restarted sink keeps what it got), tells repeated
//! `Idempotency-Key`s apart as duplicates, and can answer 503 to its first posts to play an
//! outage. `GET /notifications` shows what a customer would have received.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// One post as received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub received_at: DateTime<Utc>,
    /// The `Idempotency-Key` header; posts without one are never duplicates of each other.
    pub idempotency_key: Option<String>,
    pub body: Value,
}

/// What `GET /notifications` answers: the first record of every key, and how many posts
/// repeated a key already seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Received {
    pub delivered: Vec<Record>,
    pub duplicates: u64,
}

struct Log {
    delivered: Vec<Record>,
    keys: HashSet<String>,
    duplicates: u64,
    file: Option<File>,
}

impl Log {
    /// Adds a record; true when its key was seen before.
    fn add(&mut self, record: Record) -> bool {
        let duplicate = record.idempotency_key.as_ref().is_some_and(|k| !self.keys.insert(k.clone()));
        if duplicate {
            self.duplicates += 1;
        } else {
            self.delivered.push(record);
        }
        duplicate
    }
}

/// The sink's state, shared by its handlers.
pub struct Sink {
    log: Mutex<Log>,
    fail_remaining: AtomicU64,
}

impl Sink {
    /// A sink that keeps what it receives in memory only.
    pub fn in_memory(fail_first: u64) -> Self {
        let log = Log { delivered: Vec::new(), keys: HashSet::new(), duplicates: 0, file: None };
        Sink { log: Mutex::new(log), fail_remaining: AtomicU64::new(fail_first) }
    }

    /// A sink that appends every record to `path` and starts from what the file holds.
    /// A torn last line (the sink died mid-write) is skipped: its post was never answered
    /// 200, so the sender has retried it.
    pub fn open(path: &Path, fail_first: u64) -> anyhow::Result<Self> {
        let sink = Sink::in_memory(fail_first);
        let mut log = sink.log.lock().expect("not shared yet");
        let existing = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        for (n, line) in existing.split(|&b| b == b'\n').enumerate().filter(|(_, l)| !l.is_empty()) {
            match serde_json::from_slice::<Record>(line) {
                Ok(record) => _ = log.add(record),
                Err(e) => tracing::warn!(file = %path.display(), line = n + 1, error = %e, "skipping an unreadable record"),
            }
        }
        let mut file = OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("cannot append to {}", path.display()))?;
        if existing.last().is_some_and(|&b| b != b'\n') {
            // End the torn line, or the next record would be glued to it and lost too.
            file.write_all(b"\n").context("repairing the store")?;
        }
        log.file = Some(file);
        tracing::info!(file = %path.display(), delivered = log.delivered.len(), duplicates = log.duplicates, "store loaded");
        drop(log);
        Ok(sink)
    }

    /// Records a post; true when it repeats a key. The record is on disk before this returns.
    pub fn record(&self, idempotency_key: Option<String>, body: Value) -> anyhow::Result<bool> {
        let record = Record { received_at: Utc::now(), idempotency_key, body };
        let mut log = self.log.lock().expect("sink lock");
        if let Some(file) = log.file.as_mut() {
            let mut line = serde_json::to_vec(&record)?;
            line.push(b'\n');
            file.write_all(&line).context("appending to the store")?;
        }
        Ok(log.add(record))
    }

    pub fn received(&self) -> Received {
        let log = self.log.lock().expect("sink lock");
        Received { delivered: log.delivered.clone(), duplicates: log.duplicates }
    }

    /// Whether this post is one of the first `--fail-first` ones, to be refused.
    fn should_fail(&self) -> bool {
        self.fail_remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}

pub fn router(sink: Arc<Sink>) -> Router {
    Router::new()
        .route("/notifications", get(list).post(receive))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .with_state(sink)
}

async fn receive(State(sink): State<Arc<Sink>>, headers: HeaderMap, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    if sink.should_fail() {
        tracing::info!("refusing a post (--fail-first)");
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "failing on purpose (--fail-first)"})));
    }
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    match sink.record(key.clone(), body) {
        Ok(duplicate) => {
            tracing::info!(idempotency_key = key.as_deref().unwrap_or(""), duplicate, "notification received");
            (StatusCode::OK, Json(json!({"duplicate": duplicate})))
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot store a notification");
            (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "cannot store the notification"})))
        }
    }
}

async fn list(State(sink): State<Arc<Sink>>) -> Json<Received> {
    Json(sink.received())
}

/// Serves `sink` on `listener` until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, sink: Arc<Sink>, shutdown: CancellationToken) -> anyhow::Result<()> {
    axum::serve(listener, router(sink)).with_graceful_shutdown(shutdown.cancelled_owned()).await.context("webhook sink server failed")
}
