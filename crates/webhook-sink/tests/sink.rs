//! The sink over a real socket, and its store across a restart.

use std::path::PathBuf;
use std::sync::Arc;

use conveyor_webhook_sink::{Sink, serve};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A sink on 127.0.0.1:0; returns its base URL and the token that stops it.
async fn start(sink: Arc<Sink>) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, sink, stop.clone()));
    (url, stop)
}

async fn post(url: &str, key: Option<&str>, body: Value) -> u16 {
    let mut req = reqwest::Client::new().post(format!("{url}/notifications")).json(&body);
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    req.send().await.unwrap().status().as_u16()
}

fn temp_store(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    std::env::temp_dir().join(format!("webhook-sink-{name}-{}-{nanos}.jsonl", std::process::id()))
}

#[tokio::test]
async fn records_first_body_per_key_and_counts_duplicates() {
    let (url, stop) = start(Arc::new(Sink::in_memory(0))).await;
    let client = reqwest::Client::new();
    assert_eq!(client.get(format!("{url}/health")).send().await.unwrap().status(), 200);
    assert_eq!(post(&url, Some("o1:order.confirmed"), json!({"n": 1})).await, 200);
    assert_eq!(post(&url, Some("o1:order.confirmed"), json!({"n": 2})).await, 200, "a repeated key is still a success");
    assert_eq!(post(&url, Some("o2:order.cancelled"), json!({"n": 3})).await, 200);
    assert_eq!(post(&url, None, json!({"n": 4})).await, 200);
    assert_eq!(post(&url, None, json!({"n": 4})).await, 200, "posts without a key are never duplicates");
    let got: Value = client.get(format!("{url}/notifications")).send().await.unwrap().json().await.unwrap();
    let bodies: Vec<&Value> = got["delivered"].as_array().unwrap().iter().map(|r| &r["body"]["n"]).collect();
    assert_eq!(bodies, [1, 3, 4, 4]);
    assert_eq!(got["delivered"][0]["idempotency_key"], "o1:order.confirmed");
    assert_eq!(got["duplicates"], 1);
    let not_json = client.post(format!("{url}/notifications")).header("content-type", "application/json").body("{nope").send().await.unwrap();
    assert!(not_json.status().is_client_error());
    stop.cancel();
}

#[tokio::test]
async fn fail_first_refuses_without_recording() {
    let sink = Arc::new(Sink::in_memory(2));
    let (url, stop) = start(sink.clone()).await;
    assert_eq!(post(&url, Some("k"), json!({"n": 1})).await, 503);
    assert_eq!(post(&url, Some("k"), json!({"n": 2})).await, 503);
    assert_eq!(post(&url, Some("k"), json!({"n": 3})).await, 200);
    assert_eq!(post(&url, Some("k"), json!({"n": 4})).await, 200);
    let got = sink.received();
    assert_eq!(got.delivered.len(), 1);
    assert_eq!(got.delivered[0].body, json!({"n": 3}), "refused posts are not recorded");
    assert_eq!(got.duplicates, 1);
    stop.cancel();
}

#[tokio::test]
async fn a_restarted_sink_keeps_what_it_got_and_skips_a_torn_line() {
    let path = temp_store("restart");
    let first = Sink::open(&path, 0).unwrap();
    assert!(!first.record(Some("a".into()), json!({"v": 1})).unwrap());
    assert!(first.record(Some("a".into()), json!({"v": 2})).unwrap());
    assert!(!first.record(Some("b".into()), json!({"v": 3})).unwrap());
    drop(first);
    // A sink killed in the middle of a write leaves half a line behind.
    std::fs::OpenOptions::new().append(true).open(&path).and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"received_at\":")).unwrap();

    let again = Sink::open(&path, 0).unwrap();
    let got = again.received();
    assert_eq!(got.delivered.iter().map(|r| r.body["v"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(got.duplicates, 1);
    assert!(again.record(Some("b".into()), json!({"v": 4})).unwrap(), "keys survive the restart");
    assert!(!again.record(Some("c".into()), json!({"v": 5})).unwrap());
    drop(again);

    let third = Sink::open(&path, 0).unwrap().received();
    assert_eq!(third.delivered.iter().map(|r| r.body["v"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 3, 5], "nothing glued to the torn line");
    assert_eq!(third.duplicates, 2);
    std::fs::remove_file(&path).unwrap();
}
