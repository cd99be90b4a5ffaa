//! `Consumer::pause_before_claim`: a consumer slowed down on purpose waits before each
//! claim, holding no transaction and no claim, and speeds up again when the pause is zero.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use conveyor_queue::{Consumer, ConsumerOptions, Delivery, handler_fn};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// The oldest transaction open in the database besides this query's, in seconds.
const OLDEST_TRANSACTION: &str = "\
SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0)::float8 FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_consumer_waits_before_each_claim_holding_no_transaction() {
    let p = pair().await;
    let pause_ms = Arc::new(AtomicU64::new(400));
    let asked = Arc::new(AtomicUsize::new(0));
    let opts = ConsumerOptions { concurrency: 1, batch_size: 1, poll_interval: Duration::from_millis(50), shutdown_grace: Duration::from_secs(5) };
    let consumer = Consumer::new(p.subscriber.clone())
        .with_options(opts)
        .subscribe(handler_fn(|conn, msg: Delivery<Ping>| async move { Ok(record_effect(conn, &msg).await?) }.boxed()))
        .pause_before_claim({
            let (pause_ms, asked) = (pause_ms.clone(), asked.clone());
            move || {
                asked.fetch_add(1, Ordering::Relaxed);
                Duration::from_millis(pause_ms.load(Ordering::Relaxed))
            }
        });
    p.publish(0..3).await;
    p.relay_all().await;

    let stop = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { consumer.run(stop).await }
    });
    let longest = Arc::new(AtomicU64::new(0f64.to_bits()));
    wait_until("the 3 messages are done", Duration::from_secs(10), || {
        let (pool, longest) = (p.subscriber.clone(), longest.clone());
        async move {
            let oldest: f64 = sqlx::query_scalar(OLDEST_TRANSACTION).fetch_one(&pool).await.unwrap();
            longest.fetch_max(oldest.to_bits(), Ordering::Relaxed); // non-negative floats order as their bits
            count(&pool, "SELECT count(*) FROM effects").await == 3
        }
    })
    .await;
    let longest = f64::from_bits(longest.load(Ordering::Relaxed));
    let slowed = started.elapsed();
    // One claim of one message after each pause: three pauses at least.
    assert!(slowed >= Duration::from_millis(1200), "3 messages took {slowed:?} with a 400 ms pause before each claim");
    assert!(asked.load(Ordering::Relaxed) >= 3);
    assert!(longest < 0.3, "a transaction stayed open {longest:.3} s: the pause ran inside it");

    // Pause off: the next messages are claimed without waiting.
    pause_ms.store(0, Ordering::Relaxed);
    let started = Instant::now();
    p.publish(3..23).await;
    p.relay_all().await;
    wait_until("the next 20 messages are done", Duration::from_secs(10), || async { count(&p.subscriber, "SELECT count(*) FROM effects").await == 23 }).await;
    let fast = started.elapsed();
    assert!(fast < Duration::from_secs(4), "20 messages took {fast:?} with the pause off (8 s with it on)");
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(count(&p.subscriber, "SELECT count(DISTINCT message_id) FROM effects").await, 23, "each message had its effect once");
}
