//! Queue engine throughput (publish, relay, claim+complete at batch 1, 10, 100) and idle
//! wake-up latency, against a real PostgreSQL. `cargo xtask bench queue` runs it next to the
//! raw-SQL reference (pgbench, same server, same run) and prints the ratios.
//!
//! Every figure uses `BENCH_CLIENTS` concurrent clients (default 4), like the reference.
//! Set `DATABASE_URL` to a server's admin URL, or a private durable cluster is started.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conveyor_benchkit::{Percentiles, results_dir};
use conveyor_benches::{BenchEvent, EngineResults, Figure, Latency, fresh_db};
use conveyor_devpg::{ClusterOptions, PgCluster};
use sqlx::Connection;
use conveyor_queue::{
    Consumer, ConsumerOptions, Delivery, Event, HandlerError, Outgoing, Relay, RelayOptions, RetryPolicy, Routes, handler_fn, publish_all,
};
use criterion::{BenchmarkId, Criterion, Throughput};
use futures::FutureExt;
use sqlx::PgPool;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

const BATCHES: [usize; 3] = [1, 10, 100];

/// Messages and time measured per (benchmark, batch), summed over criterion's iterations.
type Tally = Arc<Mutex<HashMap<(&'static str, usize), (u64, Duration)>>>;

struct Bench {
    rt: Runtime,
    publisher: PgPool,
    subscriber: PgPool,
    clients: usize,
    tally: Tally,
}

impl Bench {
    /// Splits `total` units of work over the clients.
    fn shares(&self, total: u64) -> Vec<u64> {
        let c = self.clients as u64;
        (0..c).map(|i| total / c + u64::from(i < total % c)).collect()
    }

    fn tally(&self, name: &'static str, batch: usize, msgs: u64, took: Duration) {
        let mut t = self.tally.lock().unwrap();
        let e = t.entry((name, batch)).or_default();
        e.0 += msgs;
        e.1 += took;
    }

    async fn truncate(&self) {
        for pool in [&self.publisher, &self.subscriber] {
            sqlx::raw_sql("TRUNCATE conveyor.outbox, conveyor.inbox").execute(pool).await.unwrap();
        }
        self.checkpoint().await;
    }

    /// Every measurement starts right after a checkpoint, as every pgbench reference does,
    /// so that none pays for another's dirty buffers and full-page writes more than others.
    async fn checkpoint(&self) {
        sqlx::raw_sql("CHECKPOINT").execute(&self.subscriber).await.unwrap();
    }

    /// Puts `n` messages into the outbox (untimed set-up for the relay benchmark).
    async fn fill_outbox(&self, n: u64) {
        let msgs: Vec<Outgoing> = (0..n as i64).map(|i| Outgoing::event(&BenchEvent::sample(i)).unwrap()).collect();
        for chunk in msgs.chunks(1000) {
            let mut tx = self.publisher.begin().await.unwrap();
            publish_all(&mut tx, chunk).await.unwrap();
            tx.commit().await.unwrap();
        }
        sqlx::raw_sql("VACUUM ANALYZE conveyor.outbox").execute(&self.publisher).await.unwrap();
        self.checkpoint().await;
    }

    /// Puts `n` pending messages into the inbox (untimed set-up for claim+complete).
    async fn fill_inbox(&self, n: u64) {
        let payload = serde_json::to_value(BenchEvent::sample(1)).unwrap();
        sqlx::query(
            "INSERT INTO conveyor.inbox (message_id, topic, payload, published_at)
             SELECT gen_random_uuid(), $1, $2, now() FROM generate_series(1, $3)",
        )
        .bind(BenchEvent::TOPIC)
        .bind(payload)
        .bind(n as i64)
        .execute(&self.subscriber)
        .await
        .unwrap();
        sqlx::raw_sql("VACUUM ANALYZE conveyor.inbox").execute(&self.subscriber).await.unwrap();
        self.checkpoint().await;
    }

    fn relay(&self, batch: usize) -> Relay {
        Relay::new(
            self.publisher.clone(),
            Routes::new().route(BenchEvent::TOPIC, ["sub"]),
            HashMap::from([("sub".to_owned(), self.subscriber.clone())]),
        )
        .unwrap()
        .with_options(RelayOptions { batch_size: batch as i64, ..Default::default() })
    }

}

/// Runs `one(bench, batch, iters)` — which sets up untimed, then returns the time
/// `iters × batch` messages took — as criterion benchmark `name/batch` for every batch size,
/// and keeps the tally the report is made of.
fn measure<F, Fut>(c: &mut Criterion, b: &Arc<Bench>, name: &'static str, one: F)
where
    F: Fn(Arc<Bench>, usize, u64) -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    let mut group = c.benchmark_group(name);
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::from_parameter(batch), |bencher| {
            bencher.iter_custom(|iters| {
                let took = b.rt.block_on(one(b.clone(), batch, iters));
                b.tally(name, batch, iters * batch as u64, took);
                took
            })
        });
    }
    group.finish();
}

/// Publishing `batch` messages per transaction. `publish` sends each batch as its own
/// statement on a connection outside any transaction (autocommit, the shape of the raw
/// INSERT reference); `publish_tx` wraps it in BEGIN … COMMIT, as a service publishing
/// with its state change does.
fn bench_publish(c: &mut Criterion, b: &Arc<Bench>, name: &'static str, explicit_tx: bool) {
    measure(c, b, name, |b, batch, iters| async move {
        b.truncate().await;
        let started = Instant::now();
        let tasks: Vec<_> = b
            .shares(iters)
            .into_iter()
            .map(|txs| {
                let pool = b.publisher.clone();
                tokio::spawn(async move {
                    let mut conn = pool.acquire().await.unwrap();
                    for t in 0..txs {
                        let msgs: Vec<Outgoing> =
                            (0..batch).map(|i| Outgoing::event(&BenchEvent::sample(t as i64 + i as i64)).unwrap()).collect();
                        if explicit_tx {
                            let mut tx = conn.begin().await.unwrap();
                            publish_all(&mut tx, &msgs).await.unwrap();
                            tx.commit().await.unwrap();
                        } else {
                            publish_all(&mut conn, &msgs).await.unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        started.elapsed()
    });
}

/// Relaying with `relay.run` (`clients` loops, `batch` rows a claim) from a full outbox
/// until it is empty.
fn bench_relay(c: &mut Criterion, b: &Arc<Bench>) {
    measure(c, b, "relay", |b, batch, iters| async move {
        b.truncate().await;
        b.fill_outbox(iters * batch as u64).await;
        let relay = b.relay(batch).with_options(RelayOptions {
            batch_size: batch as i64,
            concurrency: b.clients,
            poll_interval: Duration::from_millis(5),
        });
        let stop = CancellationToken::new();
        let started = Instant::now();
        let running = tokio::spawn({
            let stop = stop.clone();
            async move { relay.run(stop).await }
        });
        loop {
            let left: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM conveyor.outbox)").fetch_one(&b.publisher).await.unwrap();
            if !left {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took = started.elapsed();
        stop.cancel();
        running.await.unwrap().unwrap();
        took
    });
}

/// Claim + complete with `consumer.run` (`clients` loops, `batch` messages a claim, a
/// handler that does nothing) from a full inbox until every message is handled.
fn bench_claim_complete(c: &mut Criterion, b: &Arc<Bench>) {
    measure(c, b, "claim_complete", |b, batch, iters| async move {
        b.truncate().await;
        let total = iters * batch as u64;
        b.fill_inbox(total).await;
        let handled = Arc::new(AtomicUsize::new(0));
        let all_done = Arc::new(tokio::sync::Notify::new());
        let d = all_done.clone();
        let consumer = Consumer::new(b.subscriber.clone())
            .with_options(ConsumerOptions {
                concurrency: b.clients,
                batch_size: batch as i64,
                poll_interval: Duration::from_millis(5),
                ..Default::default()
            })
            .subscribe(handler_fn(move |_, _: Delivery<BenchEvent>| {
                if handled.fetch_add(1, Ordering::Relaxed) as u64 + 1 == total {
                    d.notify_one();
                }
                async { Ok(()) }.boxed()
            }));
        let stop = CancellationToken::new();
        let started = Instant::now();
        let running = tokio::spawn({
            let stop = stop.clone();
            async move { consumer.run(stop).await }
        });
        all_done.notified().await;
        // Stop the clock once the last batch has committed: run() returns after its
        // in-flight cycles end.
        stop.cancel();
        running.await.unwrap().unwrap();
        started.elapsed()
    });
}

/// Publish → handler start with every loop idle (woken by NOTIFY, polling far away).
fn wakeup_latency(b: &Arc<Bench>, samples: usize) -> Latency {
    b.rt.block_on(async {
        b.truncate().await;
        let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let consumer = Arc::new(
            Consumer::new(b.subscriber.clone())
                .with_options(ConsumerOptions { concurrency: 2, poll_interval: Duration::from_secs(600), ..Default::default() })
                .subscribe(handler_fn(move |_, _: Delivery<BenchEvent>| {
                    let _ = started_tx.send(Instant::now());
                    async { Ok(()) }.boxed()
                })),
        );
        let relay = b.relay(100).with_options(RelayOptions { poll_interval: Duration::from_secs(600), ..Default::default() });
        let stop = CancellationToken::new();
        let (c, s1, s2) = (consumer.clone(), stop.clone(), stop.clone());
        let running = tokio::spawn(async move { tokio::join!(c.run(s1), relay.run(s2)) });
        // Warm-up: the first message also proves both loops are listening.
        let mut ms = Vec::with_capacity(samples);
        for i in 0..samples + 5 {
            tokio::time::sleep(Duration::from_millis(20)).await; // let every loop go idle
            let msg = Outgoing::event(&BenchEvent::sample(i as i64)).unwrap();
            let t0 = Instant::now();
            let mut tx = b.publisher.begin().await.unwrap();
            publish_all(&mut tx, &[msg]).await.unwrap();
            tx.commit().await.unwrap();
            let t1 = tokio::time::timeout(Duration::from_secs(30), started_rx.recv()).await.expect("no wake-up in 30 s").unwrap();
            if i >= 5 {
                ms.push((t1 - t0).as_secs_f64() * 1000.0);
            }
        }
        stop.cancel();
        let _ = running.await;
        let p = Percentiles::of(&ms).expect("wake-up samples");
        Latency { p50: p.p50, p95: p.p95, p99: p.p99, samples: ms.len() }
    })
}

/// How late a retry runs: a message fails its first attempt with a fixed 200 ms backoff,
/// every loop idle and polling far away; the second attempt's start minus the end of the
/// backoff the database recorded (`visible_at`). Same machine, same clock.
fn retry_lateness(b: &Arc<Bench>, samples: usize) -> Latency {
    b.rt.block_on(async {
        b.truncate().await;
        let (retried_tx, mut retried_rx) = tokio::sync::mpsc::unbounded_channel::<chrono::DateTime<chrono::Utc>>();
        let backoff = RetryPolicy { max_attempts: 3, base: Duration::from_millis(200), max: Duration::from_millis(200), jitter: 0.0 };
        let consumer = Arc::new(
            Consumer::new(b.subscriber.clone())
                .with_options(ConsumerOptions { concurrency: 2, poll_interval: Duration::from_secs(600), ..Default::default() })
                .subscribe_with(
                    handler_fn(move |_, msg: Delivery<BenchEvent>| {
                        if msg.attempt > 1 {
                            let _ = retried_tx.send(chrono::Utc::now());
                        }
                        let first = msg.attempt == 1;
                        async move { if first { Err(HandlerError::retry(anyhow::anyhow!("first attempt fails"))) } else { Ok(()) } }.boxed()
                    }),
                    backoff,
                ),
        );
        let stop = CancellationToken::new();
        let (c, s) = (consumer.clone(), stop.clone());
        let running = tokio::spawn(async move { c.run(s).await });
        let mut ms = Vec::with_capacity(samples);
        for i in 0..samples + 3 {
            let id = uuid::Uuid::now_v7();
            sqlx::query(
                "INSERT INTO conveyor.inbox (message_id, topic, payload, published_at) VALUES ($1, $2, $3, now()); ",
            )
            .bind(id)
            .bind(<BenchEvent as conveyor_queue::Event>::TOPIC)
            .bind(sqlx::types::Json(BenchEvent::sample(i as i64)))
            .execute(&b.subscriber)
            .await
            .unwrap();
            sqlx::query("SELECT pg_notify('conveyor_inbox', '')").execute(&b.subscriber).await.unwrap();
            // The first attempt's failure is recorded with the end of its backoff.
            let due: chrono::DateTime<chrono::Utc> = loop {
                let row: Option<chrono::DateTime<chrono::Utc>> =
                    sqlx::query_scalar("SELECT visible_at FROM conveyor.inbox WHERE message_id = $1 AND attempts = 1 AND state = 'pending'")
                        .bind(id)
                        .fetch_optional(&b.subscriber)
                        .await
                        .unwrap();
                if let Some(t) = row {
                    break t;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            let ran = tokio::time::timeout(Duration::from_secs(30), retried_rx.recv()).await.expect("no retry in 30 s").unwrap();
            if i >= 3 {
                ms.push((ran - due).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            }
        }
        stop.cancel();
        let _ = running.await;
        let p = Percentiles::of(&ms).expect("retry samples");
        Latency { p50: p.p50, p95: p.p95, p99: p.p99, samples: ms.len() }
    })
}

fn main() {
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let clients: usize = std::env::var("BENCH_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let rt = if std::env::var("BENCH_RUNTIME").is_ok_and(|v| v == "current") {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
    };
    let (_cluster, admin_url) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (None, url),
        _ => {
            let cluster = PgCluster::start(ClusterOptions { durable: true, name: "bench".into(), ..Default::default() })
                .expect("start a private PostgreSQL");
            let url = cluster.admin_url();
            (Some(cluster), url)
        }
    };
    let (publisher, subscriber) = rt.block_on(async {
        let p = fresh_db(&admin_url, "bench_engine_pub", clients as u32 + 4).await.unwrap();
        let s = fresh_db(&admin_url, "bench_engine_sub", clients as u32 + 4).await.unwrap();
        (p, s)
    });
    let b = Arc::new(Bench { rt, publisher, subscriber, clients, tally: Tally::default() });

    let mut c = Criterion::default().configure_from_args().sample_size(10);
    c = if quick {
        c.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1))
    } else {
        let secs = std::env::var("BENCH_MEASURE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
        c.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(secs))
    };
    bench_publish(&mut c, &b, "publish", false);
    bench_publish(&mut c, &b, "publish_tx", true);
    bench_relay(&mut c, &b);
    bench_claim_complete(&mut c, &b);
    let wakeup = wakeup_latency(&b, if quick { 30 } else { 200 });
    let retry = retry_lateness(&b, if quick { 10 } else { 100 });
    c.final_summary();

    let tally = b.tally.lock().unwrap();
    let mut results = Vec::new();
    for name in ["publish", "publish_tx", "relay", "claim_complete"] {
        for batch in BATCHES {
            if let Some((msgs, took)) = tally.get(&(name, batch)) {
                results.push(Figure { name: name.into(), batch, msgs_per_sec: *msgs as f64 / took.as_secs_f64() });
            }
        }
    }
    let out = EngineResults { clients, results, wakeup_ms: wakeup, retry_lateness_ms: retry };
    println!("\nengine throughput ({clients} clients), messages/s:");
    for f in &out.results {
        println!("  {:<15} batch {:>3}: {:>10.0}", f.name, f.batch, f.msgs_per_sec);
    }
    println!("idle wake-up, publish -> handler start: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms ({} samples)", out.wakeup_ms.p50, out.wakeup_ms.p95, out.wakeup_ms.p99, out.wakeup_ms.samples);
    let r = &out.retry_lateness_ms;
    println!("retry, end of backoff -> handler start: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max target 50 ms ({} samples)", r.p50, r.p95, r.p99, r.samples);
    let path = results_dir().expect("bench-results directory").join("queue-engine.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&out).unwrap()).unwrap();
    println!("wrote {}", path.display());
}
