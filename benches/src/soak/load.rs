//! The load: producers that publish in transactions as a service does (through a system's
//! [`Sink`]), the handlers' side, and the counters both share (throughput, backlog, latency
//! of the current window and of the current phase).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conveyor_benchkit::{Percentiles, Timeline};
use conveyor_queue::{Delivery, HandlerError};
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::PgConnection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use conveyor_benches::BenchEvent;

/// Header carrying the producer's clock (µs since the load started) at BEGIN, so that the
/// handler measures publish → handled on one monotonic clock, whatever the server's.
pub const SENT_HEADER: &str = "soak-sent-us";

/// Bucket width of the per-window timeline: wider than any window, so that one bucket
/// holds it all (a fresh timeline per window keeps memory flat over a long run).
const WINDOW: Duration = Duration::from_secs(3600);
/// The same for a phase: wider than any run.
const PHASE: Duration = Duration::from_secs(100 * 24 * 3600);

/// What producers and handlers share.
pub struct Load {
    start: Instant,
    /// Producers pause while `backlog() >= cap` and resume at `low`.
    cap: i64,
    low: i64,
    published: AtomicU64,
    handled: AtomicU64,
    publish_errors: AtomicU64,
    /// Offered messages a paced producer could not send within a second of their time.
    missed: AtomicU64,
    /// Microseconds producers spent paused at the cap (summed over producers).
    paused_us: AtomicU64,
    /// Messages handled in the current sample window, and in the current phase (before,
    /// during or after a hold), with their latencies.
    window: Mutex<Timeline>,
    phase: Mutex<Timeline>,
    /// A producer waits at the cap, or the end of the run waits for the backlog to drain.
    waiting: AtomicBool,
    room: Notify,
}

/// Counters at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub published: u64,
    pub handled: u64,
    pub publish_errors: u64,
    pub missed: u64,
    pub paused_us: u64,
}

impl Load {
    pub fn new(start: Instant, cap: u64) -> Arc<Load> {
        let cap = cap.max(1) as i64;
        Arc::new(Load {
            start,
            cap,
            low: cap - cap / 10,
            published: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            paused_us: AtomicU64::new(0),
            window: Mutex::new(Timeline::new(start, WINDOW)),
            phase: Mutex::new(Timeline::new(start, PHASE)),
            waiting: AtomicBool::new(false),
            room: Notify::new(),
        })
    }

    /// Published (committed) and not yet handled.
    pub fn backlog(&self) -> i64 {
        self.published.load(Ordering::SeqCst) as i64 - self.handled.load(Ordering::SeqCst) as i64
    }

    pub fn totals(&self) -> Totals {
        Totals {
            published: self.published.load(Ordering::SeqCst),
            handled: self.handled.load(Ordering::SeqCst),
            publish_errors: self.publish_errors.load(Ordering::SeqCst),
            missed: self.missed.load(Ordering::SeqCst),
            paused_us: self.paused_us.load(Ordering::SeqCst),
        }
    }

    /// Ends the current window: the latencies of what was handled in it, and starts the next.
    pub fn take_window(&self, now: Instant) -> Option<Percentiles> {
        let mut w = self.window.lock().expect("window lock");
        std::mem::replace(&mut *w, Timeline::new(now, WINDOW)).latency()
    }

    /// Ends the current phase: the latencies of every message handled in it.
    pub fn take_phase(&self, now: Instant) -> Option<Percentiles> {
        let mut p = self.phase.lock().expect("phase lock");
        std::mem::replace(&mut *p, Timeline::new(now, PHASE)).latency()
    }

    /// The producers' clock: microseconds since the load started (what a message is
    /// stamped with when its transaction begins).
    pub fn clock_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Records one handled message, stamped `sent_us` by its producer (called by the
    /// handler, inside its transaction).
    pub fn handled_one(&self, sent_us: Option<u64>) {
        let now = Instant::now();
        let now_us = now.duration_since(self.start).as_micros() as u64;
        match sent_us {
            Some(sent) => {
                let ms = now_us.saturating_sub(sent) as f64 / 1000.0;
                self.window.lock().expect("window lock").record(now, ms);
                self.phase.lock().expect("phase lock").record(now, ms);
            }
            None => self.window.lock().expect("window lock").count(now, 1),
        }
        self.handled.fetch_add(1, Ordering::SeqCst);
        if self.backlog() <= self.low && self.waiting.swap(false, Ordering::SeqCst) {
            self.room.notify_waiters();
        }
    }

    /// Waits until `ready()` holds (re-checked whenever a handler makes room), or `stop`.
    /// Returns false on `stop`.
    async fn wait_until(&self, stop: &CancellationToken, ready: impl Fn() -> bool) -> bool {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiting.store(true, Ordering::SeqCst);
            if ready() {
                return true;
            }
            tokio::select! {
                _ = notified => {}
                _ = stop.cancelled() => return false,
            }
        }
    }

    /// Waits while the backlog is at the cap (counted as paused). False on `stop`.
    async fn room_to_publish(&self, stop: &CancellationToken) -> bool {
        if self.backlog() < self.cap {
            return true;
        }
        let paused = Instant::now();
        let ok = self.wait_until(stop, || self.backlog() < self.cap).await;
        self.paused_us.fetch_add(paused.elapsed().as_micros() as u64, Ordering::SeqCst);
        ok
    }

    /// Waits until every published message was handled, at most `limit`. Returns the
    /// backlog left (0: drained).
    pub async fn drain(&self, limit: Duration) -> i64 {
        let give_up = CancellationToken::new();
        let timer = give_up.clone();
        let deadline = tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            timer.cancel();
        });
        // The handler wakes waiters only at or below the low mark; the drain asks for 0,
        // so it looks again at every wake-up and whenever the low mark is crossed again.
        let drained = self.wait_until(&give_up, || self.backlog() <= 0).await;
        deadline.abort();
        if drained { 0 } else { self.backlog() }
    }
}

/// The handler: a transaction-mode handler that records the message and writes nothing
/// (the soak measures the queue, not a business's statements).
pub fn handler(load: Arc<Load>) -> impl for<'c> Fn(&'c mut PgConnection, Delivery<BenchEvent>) -> BoxFuture<'c, Result<(), HandlerError>> + Send + Sync + 'static {
    move |_conn, msg: Delivery<BenchEvent>| {
        load.handled_one(msg.headers.get(SENT_HEADER).and_then(|v| v.parse().ok()));
        async { Ok(()) }.boxed()
    }
}

/// How a producer paces itself.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as it can (closed loop, bounded by the cap).
    FullSpeed,
    /// One transaction every `period`.
    Every(Duration),
}

/// How a system publishes: one transaction of `batch` messages, numbered from `seq`,
/// stamped with the producer's clock `sent_us` (what the handler measures latency from).
pub trait Sink: Send + 'static {
    fn publish(&mut self, seq: i64, batch: usize, sent_us: u64) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Forgets the connection after a failure (it may be broken).
    fn reset(&mut self);
}

/// One producer: publishes `batch` messages per transaction (BEGIN; INSERT; COMMIT — what a
/// service's request does) through `sink`, until `stop`.
pub async fn producer(load: Arc<Load>, mut sink: Box<dyn Sink>, id: usize, batch: usize, pace: Pace, stop: CancellationToken) {
    let mut seq = (id as i64) << 40;
    let mut due = tokio::time::Instant::now();
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        if !load.room_to_publish(&stop).await {
            return;
        }
        if let Pace::Every(period) = pace {
            due += period;
            let now = tokio::time::Instant::now();
            if now > due + Duration::from_secs(1) {
                // More than a second behind (paused at the cap, or too slow): what was not
                // sent in time is offered load lost, not a burst to make up later.
                let behind = (now - due).as_secs_f64() / period.as_secs_f64();
                load.missed.fetch_add(behind as u64 * batch as u64, Ordering::SeqCst);
                due = now;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = stop.cancelled() => return,
            }
        }
        let first = seq + 1;
        seq += batch as i64;
        match sink.publish(first, batch, load.clock_us()).await {
            Ok(()) => {
                failures = 0;
                load.published.fetch_add(batch as u64, Ordering::SeqCst);
            }
            Err(e) => {
                sink.reset();
                failures += 1;
                let n = load.publish_errors.fetch_add(1, Ordering::SeqCst) + 1;
                if n <= 10 || n.is_power_of_two() {
                    eprintln!("soak: producer {id}: publishing failed ({n} failures so far): {e:#}");
                }
                let backoff = Duration::from_millis(50 * 2u64.pow(failures.min(5)));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn producers_wait_at_the_cap_until_handlers_make_room() {
        let load = Load::new(Instant::now(), 20);
        load.published.store(20, Ordering::SeqCst);
        let stop = CancellationToken::new();
        let l = load.clone();
        let s = stop.clone();
        let waiter = tokio::spawn(async move { l.room_to_publish(&s).await });
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished());
        // One handled: 19 left, above the low mark (18): nobody is woken.
        load.handled_one(Some(0));
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished());
        // At the low mark the handler wakes the producer.
        load.handled_one(None);
        assert!(tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").unwrap());
        assert_eq!(load.backlog(), 18);
        let w = load.take_window(Instant::now()).expect("one latency");
        assert_eq!(w.count, 1);
        let p = load.take_phase(Instant::now()).expect("one latency in the phase");
        assert_eq!(p.count, 1);
        assert!(load.take_phase(Instant::now()).is_none(), "a new phase starts empty");
    }

    #[tokio::test]
    async fn drain_returns_what_is_left_when_time_runs_out() {
        let load = Load::new(Instant::now(), 100);
        load.published.store(3, Ordering::SeqCst);
        assert_eq!(load.drain(Duration::from_millis(50)).await, 3);
        let l = load.clone();
        let drain = tokio::spawn(async move { l.drain(Duration::from_secs(30)).await });
        for _ in 0..3 {
            tokio::task::yield_now().await;
            load.handled_one(None);
        }
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), drain).await.unwrap().unwrap(), 0);
    }
}
