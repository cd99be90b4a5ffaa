//! What every system's scenario shares: the send stamp carried in the message, the in-flight
//! window that keeps the queue bounded, and the recording of what was published and consumed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use conveyor_benches::BenchEvent;
use conveyor_benchkit::{Percentiles, Timeline, TimelinePoint};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// One scenario's clock, window and tallies. Producers and consumers of every system use it
/// the same way:
///
/// - a producer takes `batch` credits from the window before it publishes a batch, and
///   stamps each message with the time it started publishing ([`Probe::stamp`]);
/// - a consumer calls [`Probe::consumed`] with the stamps of the messages its code received,
///   which records their latency and gives their credits back.
///
/// The window bounds the messages published and not yet consumed, so a system whose
/// consumers are slower than its producers runs at its consumers' rate with a bounded queue
/// (latency then includes waiting in that queue), and one whose consumers keep up runs at
/// its producers' rate with a queue near empty.
pub struct Probe {
    /// Stamps are microseconds since this instant.
    base: Instant,
    /// The measured window: after the warm-up, for the measured seconds.
    from: Instant,
    until: Instant,
    window: Semaphore,
    /// Paced runs: each producer publishes a batch every this often.
    pace: Option<Duration>,
    stop: CancellationToken,
    consumed: Mutex<Timeline>,
    published: Mutex<Timeline>,
    consumed_all: AtomicU64,
    published_all: AtomicU64,
}

impl Probe {
    pub fn new(warmup: Duration, measure: Duration, window: usize, bucket: Duration) -> Probe {
        let base = Instant::now();
        let from = base + warmup;
        Probe {
            base,
            from,
            until: from + measure,
            window: Semaphore::new(window),
            pace: None,
            stop: CancellationToken::new(),
            consumed: Mutex::new(Timeline::new(from, bucket)),
            published: Mutex::new(Timeline::new(from, bucket)),
            consumed_all: AtomicU64::new(0),
            published_all: AtomicU64::new(0),
        }
    }

    /// A paced run: `producers` producers offering `rate` messages per second in all, in
    /// batches of `batch`.
    pub fn paced(mut self, rate: f64, producers: usize, batch: usize) -> Probe {
        self.pace = Some(Duration::from_secs_f64(producers as f64 * batch as f64 / rate));
        self
    }

    /// The measured window.
    pub fn window_times(&self) -> (Instant, Instant) {
        (self.from, self.until)
    }

    /// The schedule of producer `i` of `n` (paced runs spread the producers over an interval).
    pub fn schedule(&self, i: usize, n: usize) -> Schedule {
        let offset = self.pace.map(|p| p.mul_f64(i as f64 / n.max(1) as f64)).unwrap_or_default();
        Schedule { next: Instant::now() + offset }
    }

    /// Waits until producer may publish its next batch of `batch`: its turn (paced runs)
    /// and room in the window. Returns the batch's send stamp — the time it was due in a
    /// paced run (so a stalled system is charged for the wait, not excused), now otherwise
    /// — or `None` when the scenario stopped.
    pub async fn next_batch(&self, batch: usize, schedule: &mut Schedule) -> Option<i64> {
        let stamp = match self.pace {
            Some(interval) => {
                let due = schedule.next;
                schedule.next += interval;
                tokio::select! {
                    biased;
                    _ = self.stop.cancelled() => return None,
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
                due.saturating_duration_since(self.base).as_micros() as i64
            }
            None => 0,
        };
        if !self.credit(batch).await {
            return None;
        }
        Some(if self.pace.is_some() { stamp } else { self.base.elapsed().as_micros() as i64 })
    }

    /// A message stamped `stamp`: [`BenchEvent::sample`] with the stamp as its number, so
    /// every system carries the same ~220-byte JSON and the stamp travels inside it.
    pub fn event(stamp: i64) -> BenchEvent {
        BenchEvent::sample(stamp)
    }

    /// Stopped: the measured window is over (or a task failed).
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// Waits for `n` credits of the window; `false` when the scenario stopped meanwhile.
    async fn credit(&self, n: usize) -> bool {
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => false,
            permit = self.window.acquire_many(n as u32) => match permit {
                Ok(p) => {
                    p.forget();
                    true
                }
                Err(_) => false,
            },
        }
    }

    /// `n` messages are published (committed, or confirmed by the broker).
    pub fn published(&self, n: usize) {
        self.published_all.fetch_add(n as u64, Ordering::Relaxed);
        let now = Instant::now();
        if self.measuring(now) {
            self.published.lock().unwrap().count(now, n as u64);
        }
    }

    /// The consumer's code received messages with these stamps (before acknowledging them;
    /// a message without a stamp is counted, without a latency).
    pub fn consumed(&self, stamps: impl IntoIterator<Item = Option<i64>>) {
        let now = Instant::now();
        let now_us = now.duration_since(self.base).as_micros() as i64;
        let measuring = self.measuring(now);
        let mut n = 0;
        let mut timeline = measuring.then(|| self.consumed.lock().unwrap());
        for stamp in stamps {
            n += 1;
            match (timeline.as_mut(), stamp) {
                (Some(t), Some(stamp)) => t.record(now, (now_us - stamp) as f64 / 1000.0),
                (Some(t), None) => t.count(now, 1),
                (None, _) => {}
            }
        }
        drop(timeline);
        self.consumed_all.fetch_add(n as u64, Ordering::Relaxed);
        self.window.add_permits(n);
    }

    fn measuring(&self, now: Instant) -> bool {
        now >= self.from && now < self.until
    }

    /// Sleeps until the measured window is over, then stops the scenario; returns early
    /// when it was stopped before (a task failed).
    pub async fn run_out(&self) {
        tokio::select! {
            _ = tokio::time::sleep_until(self.until.into()) => {}
            _ = self.stop.cancelled() => {}
        }
        self.stop.cancel();
    }

    pub fn consumed_all(&self) -> u64 {
        self.consumed_all.load(Ordering::Relaxed)
    }

    pub fn published_all(&self) -> u64 {
        self.published_all.load(Ordering::Relaxed)
    }

    /// What the measured window saw.
    pub fn figures(&self) -> Figures {
        let seconds = (self.until - self.from).as_secs_f64();
        let consumed = self.consumed.lock().unwrap();
        let published = self.published.lock().unwrap();
        let mut timeline = consumed.points();
        // The last bucket may be a partial one (the window is not a whole number of buckets).
        timeline.retain(|p| p.t <= seconds + 1e-9);
        Figures {
            seconds,
            consumed: consumed.total(),
            published: published.total(),
            msgs_per_sec: consumed.total() as f64 / seconds,
            published_per_sec: published.total() as f64 / seconds,
            latency_ms: consumed.latency(),
            timeline,
        }
    }
}

/// When a producer's next batch is due (see [`Probe::next_batch`]).
pub struct Schedule {
    next: Instant,
}

/// The figures of one measured window.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Figures {
    pub seconds: f64,
    /// Messages the consumers received within the window.
    pub consumed: u64,
    /// Messages published (committed / confirmed) within the window.
    pub published: u64,
    /// `consumed / seconds`: the end-to-end rate, the headline figure.
    pub msgs_per_sec: f64,
    pub published_per_sec: f64,
    /// Publish start → consumer's code has the message, over the window.
    pub latency_ms: Option<Percentiles>,
    /// Per bucket: consumed per second and its latency.
    pub timeline: Vec<TimelinePoint>,
}

/// The stamp a message carries (see [`Probe::event`]): the number in its `order_id`.
pub fn stamp_of(event: &BenchEvent) -> Option<i64> {
    let hex = event.order_id.rsplit('-').next()?;
    i64::from_str_radix(hex, 16).ok()
}

/// The default in-flight window for a batch size: room for every producer's and consumer's
/// batch several times over, at least 1,000 messages.
pub fn default_window(batch: usize, producers: usize, consumers: usize) -> usize {
    (4 * batch * (producers + consumers)).max(1000)
}

/// Runs a scenario's tasks until the window is over, then waits for them to end; the
/// first task error stops the others and is returned.
pub async fn drive(probe: &Probe, tasks: Vec<(String, tokio::task::JoinHandle<anyhow::Result<()>>)>) -> anyhow::Result<()> {
    let stop = probe.stop().clone();
    let mut handles = Vec::new();
    for (name, task) in tasks {
        let stop = stop.clone();
        handles.push(tokio::spawn(async move {
            let r = match task.await {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("task panicked: {e}")),
            };
            if r.is_err() {
                stop.cancel();
            }
            r.map_err(|e| e.context(name))
        }));
    }
    probe.run_out().await;
    let mut first = Ok(());
    for h in handles {
        let r = tokio::time::timeout(Duration::from_secs(60), h)
            .await
            .map_err(|_| anyhow::anyhow!("a task did not stop within 60 s of the end of the window"))
            .and_then(|r| r.map_err(|e| anyhow::anyhow!("{e}")))
            .and_then(|r| r);
        if first.is_ok() {
            first = r;
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_travels_in_the_sample_event() {
        for stamp in [0i64, 1, 123_456_789, 86_400_000_000] {
            let e = Probe::event(stamp);
            assert_eq!(stamp_of(&e), Some(stamp));
            let len = serde_json::to_string(&e).unwrap().len();
            assert!((200..=240).contains(&len), "{len} bytes");
        }
    }

    #[tokio::test]
    async fn paced_producers_publish_on_schedule_and_stamp_the_due_time() {
        // 2 producers offering 100 msgs/s in batches of 10: each one a batch every 200 ms.
        let probe = Probe::new(Duration::ZERO, Duration::from_secs(5), 1000, Duration::from_secs(1)).paced(100.0, 2, 10);
        let (mut a, mut b) = (probe.schedule(0, 2), probe.schedule(1, 2));
        let started = Instant::now();
        let a0 = probe.next_batch(10, &mut a).await.unwrap();
        let b0 = probe.next_batch(10, &mut b).await.unwrap();
        let a1 = probe.next_batch(10, &mut a).await.unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(195) && took < Duration::from_millis(400), "{took:?}");
        assert!((b0 - a0 - 100_000).abs() < 5_000, "producers spread over the interval: {a0} {b0}");
        assert!((a1 - a0 - 200_000).abs() < 1_000, "stamps are due times: {a0} {a1}");
        probe.stop().cancel();
        assert!(probe.next_batch(10, &mut b).await.is_none());
    }

    #[test]
    fn windows_leave_room_for_every_batch() {
        assert_eq!(default_window(1, 4, 4), 1000);
        assert_eq!(default_window(100, 4, 4), 3200);
    }

    #[tokio::test]
    async fn the_probe_counts_only_the_window_and_returns_credits() {
        let probe = Probe::new(Duration::from_millis(30), Duration::from_millis(200), 10, Duration::from_millis(50));
        let mut schedule = probe.schedule(0, 1);
        let s = probe.next_batch(10, &mut schedule).await.unwrap();
        // Before the window: counted in the totals, not in the figures.
        probe.published(10);
        probe.consumed([Some(s); 10]);
        tokio::time::sleep(Duration::from_millis(40)).await;
        let s = probe.next_batch(10, &mut schedule).await.expect("credits come back when messages are consumed");
        probe.published(4);
        tokio::time::sleep(Duration::from_millis(5)).await;
        probe.consumed([Some(s), Some(s), Some(s), None]);
        probe.run_out().await;
        assert!(probe.stop().is_cancelled());
        assert!(probe.next_batch(1, &mut schedule).await.is_none(), "no batch after the end");
        let f = probe.figures();
        assert_eq!((f.published, f.consumed), (4, 4));
        assert_eq!((probe.published_all(), probe.consumed_all()), (14, 14));
        let l = f.latency_ms.unwrap();
        assert!(l.p50 >= 5.0 && l.p50 < 1000.0, "{l:?}");
        assert_eq!(l.count, 3, "the unstamped message has no latency");
        assert!((f.msgs_per_sec - 20.0).abs() < 1e-9);
    }
}
