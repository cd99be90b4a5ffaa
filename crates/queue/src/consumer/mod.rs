//! Consumers: claim inbox rows with `FOR UPDATE SKIP LOCKED` and run their topic's handler.
//!
//! Two modes, chosen per subscription:
//! - **transaction** ([`Consumer::subscribe`]): claim, handle and mark done in one
//!   transaction. A crash rolls everything back and the row is claimable again at once.
//! - **lease** ([`Consumer::subscribe_leased`]): the claim commits with a lease
//!   (`visible_at` in the future, attempt number raised); the handler runs outside any
//!   transaction; completion is a second transaction fenced by the attempt number, so a
//!   worker whose lease ran out cannot complete a message somebody else claimed since.

mod handler;
mod lease;
mod pull;
mod tx;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use handler::{BatchHandler, Handler, HandlerError, LeaseBatchHandler, LeaseHandler, LockKeys, batch_handler_fn, handler_fn, lock_keys_fn};
use handler::{Batched, KeysDispatch, LeaseBatched, LeaseDispatch, TxDispatch, Typed};
pub use lease::{CLAIM as LEASE_CLAIM, DONE as LEASE_DONE};
pub use tx::{CLAIM_AS_DONE as TX_CLAIM, LOCK_KEYS};

use crate::conn::LoopConn;
use crate::floor::{Floor, sweep_interval};
use crate::wake::{self, Idle, Pacer, spawn_listener};
use crate::{Error, Event, RetryPolicy};

/// Tuning shared by a consumer's subscriptions.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Claim loops per mode, each holding one connection while it works: the inbox's
    /// transaction and lease modes get this many each; the publishers pulled from share
    /// this many (at least one each).
    pub concurrency: usize,
    /// Messages claimed at a time.
    pub batch_size: i64,
    /// How often an idle loop looks without being notified (and finds retries whose
    /// backoff has passed).
    pub poll_interval: Duration,
    /// On shutdown, how long in-flight work may run on before it is abandoned (its
    /// transaction rolled back, its lease released).
    pub shutdown_grace: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions { concurrency: 4, batch_size: 50, poll_interval: Duration::from_secs(1), shutdown_grace: Duration::from_secs(10) }
    }
}

/// Settings of a leased subscription.
#[derive(Debug, Clone, Copy)]
pub struct LeaseOptions {
    /// How long a claim lasts. The handler is abandoned when it runs longer, so that no
    /// two workers ever run the same message at once.
    pub lease: Duration,
    pub retry: RetryPolicy,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions { lease: Duration::from_secs(30), retry: RetryPolicy::default() }
    }
}

pub(crate) struct TxSub {
    handler: Box<dyn TxDispatch>,
    retry: RetryPolicy,
    /// The hot rows its handlers lock, locked for the whole batch first (see [`LockKeys`]).
    keys: Option<Box<dyn KeysDispatch>>,
}

pub(crate) struct LeaseSub {
    handler: Box<dyn LeaseDispatch>,
    opts: LeaseOptions,
}

/// The handlers of one service's inbox. Build it with the `subscribe*` methods, then
/// [`run`](Self::run) it (or drive it step by step with [`process_once`](Self::process_once)).
pub struct Consumer {
    pool: PgPool,
    /// `messaging.consumer.group.name` of its spans: the consuming service.
    name: String,
    opts: ConsumerOptions,
    tx_subs: HashMap<String, TxSub>,
    lease_subs: HashMap<String, LeaseSub>,
    tx_topics: Vec<String>,
    lease_topics: Vec<String>,
    lease_ms: Vec<i64>,
    /// Where transaction-mode claims start reading the claim index (see `floor`).
    floor: Arc<Floor>,
    /// When the retries this consumer scheduled come due, so an idle loop wakes then.
    retries: RetryClock,
    /// Asked before each claim how long to wait first (see [`Consumer::pause_before_claim`]).
    pause: Option<Pause>,
    /// Publishers whose outbox this consumer pulls its transaction-mode topics from (see
    /// [`Consumer::pull_from`]).
    sources: Vec<pull::Source>,
}

/// How long a claim loop waits before its next claim; zero: not at all.
type Pause = Arc<dyn Fn() -> Duration + Send + Sync>;

/// The times at which messages this consumer failed become claimable again. No notification
/// announces the end of a backoff: without this an idle loop would find the retry only at
/// its next poll (a second by default). Retries scheduled by other processes are found by
/// the poll.
#[derive(Default)]
pub(crate) struct RetryClock {
    due: std::sync::Mutex<Vec<std::time::Instant>>,
}

impl RetryClock {
    /// Notes failures recorded just now: each is claimable after its delay.
    pub fn scheduled<'a>(&self, failures: impl IntoIterator<Item = &'a Failure>) {
        let now = std::time::Instant::now();
        let mut due = self.due.lock().expect("retry clock");
        // A little after the end of the backoff: the database stamped it before this ran.
        due.extend(failures.into_iter().filter(|f| !f.dead).map(|f| now + Duration::from_millis(f.delay_ms.max(0) as u64 + 2)));
    }

    /// How long until the next retry comes due, forgetting those that have.
    pub fn next_due(&self) -> Option<Duration> {
        let now = std::time::Instant::now();
        let mut due = self.due.lock().expect("retry clock");
        due.retain(|t| *t > now);
        due.iter().min().map(|t| *t - now)
    }
}

impl Consumer {
    pub fn new(pool: PgPool) -> Self {
        Consumer {
            pool,
            name: crate::trace::default_group(),
            opts: ConsumerOptions::default(),
            tx_subs: HashMap::new(),
            lease_subs: HashMap::new(),
            tx_topics: Vec::new(),
            lease_topics: Vec::new(),
            lease_ms: Vec::new(),
            floor: Arc::new(Floor::new(sweep_interval(ConsumerOptions::default().poll_interval))),
            retries: RetryClock::default(),
            pause: None,
            sources: Vec::new(),
        }
    }

    pub fn with_options(mut self, opts: ConsumerOptions) -> Self {
        self.floor = Arc::new(Floor::new(sweep_interval(opts.poll_interval)));
        self.opts = opts;
        self
    }

    /// Names the consumer (the consuming service, e.g. `stock`): its spans carry it as
    /// `messaging.consumer.group.name`. By default, the executable's name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The consumer's name (see [`named`](Self::named)).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes every claim loop (both modes, and [`process_once`](Self::process_once)) ask
    /// `pause` before each claim how long to wait first, and wait that long holding no
    /// transaction and no claim: a slowed-down consumer (a fault flag, a throttle) whose
    /// backlog grows in its inbox, where other workers can still take it. Called once per
    /// claim, so it must be cheap (read an atomic); zero means no wait. Without a pause the
    /// loops never look.
    pub fn pause_before_claim(mut self, pause: impl Fn() -> Duration + Send + Sync + 'static) -> Self {
        self.pause = Some(Arc::new(pause));
        self
    }

    /// Waits what the pause asks, or until `shutdown`.
    async fn pause(&self, shutdown: &CancellationToken) {
        let Some(pause) = &self.pause else { return };
        let wait = pause();
        if wait.is_zero() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {}
        }
    }

    /// Pulls this consumer's topics from the outbox of the publisher `source` (its
    /// database: `publisher`) instead of having a relay push them into the inbox (see
    /// [`crate::pull`]): each claim loop claims one of the publisher's partitions, reads a
    /// batch of its log, runs the transaction-mode handlers and moves the partition's
    /// cursor in one transaction of this database. A message whose handler fails goes to
    /// the inbox, where the usual loops retry it; lease-mode messages go to the inbox too,
    /// for the lease loops. The role of `publisher` needs SELECT on `conveyor.outbox`
    /// and INSERT, UPDATE on `conveyor.pull_positions` there, nothing else. The publisher's
    /// relay must not route these topics.
    pub fn pull_from(mut self, source: impl Into<String>, publisher: PgPool) -> Self {
        let source = source.into();
        assert!(!self.sources.iter().any(|s| s.name == source), "pulling from {source} twice");
        self.sources.push(pull::Source::new(source, publisher));
        self
    }

    /// Handles `E` in transaction mode with the default retry policy (3 attempts).
    pub fn subscribe<E: Event>(self, handler: impl Handler<E>) -> Self {
        self.subscribe_with(handler, RetryPolicy::default())
    }

    /// Handles `E` in transaction mode with `retry`.
    pub fn subscribe_with<E: Event>(self, handler: impl Handler<E>, retry: RetryPolicy) -> Self {
        self.add_tx(E::TOPIC, Box::new(Typed { handler, _event: PhantomData::<fn() -> E> }), retry)
    }

    /// Handles `E` in transaction mode with a [`BatchHandler`]: one call per run of
    /// consecutive `E` messages in a claimed batch (a call per message when a batch runs
    /// again message by message after a failure).
    pub fn subscribe_batch<E: Event>(self, handler: impl BatchHandler<E>, retry: RetryPolicy) -> Self {
        self.add_tx(E::TOPIC, Box::new(Batched { handler, _event: PhantomData::<fn() -> E> }), retry)
    }

    fn add_tx(mut self, topic: &str, handler: Box<dyn TxDispatch>, retry: RetryPolicy) -> Self {
        self.check_new_topic(topic, retry);
        self.tx_topics.push(topic.to_owned());
        self.tx_subs.insert(topic.to_owned(), TxSub { handler, retry, keys: None });
        self
    }

    /// Declares the rows `E`'s (transaction-mode) handler locks that other handlers lock
    /// too, so that each batch locks all of them up front in one global order (see
    /// [`LockKeys`]): many messages about the same few rows (a flash sale on one product)
    /// then never deadlock. Subscribe to `E` first.
    pub fn lock_keys<E: Event>(mut self, keys: impl LockKeys<E>) -> Self {
        let sub = self.tx_subs.get_mut(E::TOPIC).unwrap_or_else(|| panic!("lock_keys for {}: subscribe to it in transaction mode first", E::TOPIC));
        sub.keys = Some(Box::new(Typed { handler: keys, _event: PhantomData::<fn() -> E> }));
        self
    }

    /// Handles `E` in lease mode, each message in a call of its own (all of a claimed
    /// batch's at once).
    pub fn subscribe_leased<E: Event>(self, handler: impl LeaseHandler<E>, opts: LeaseOptions) -> Self {
        self.add_leased(E::TOPIC, Box::new(Typed { handler, _event: PhantomData::<fn() -> E> }), opts)
    }

    /// Handles `E` in lease mode with a [`LeaseBatchHandler`]: one call per claimed batch
    /// for all its `E` messages, each settled by its own outcome.
    pub fn subscribe_leased_batch<E: Event>(self, handler: impl LeaseBatchHandler<E>, opts: LeaseOptions) -> Self {
        self.add_leased(E::TOPIC, Box::new(LeaseBatched { handler, _event: PhantomData::<fn() -> E> }), opts)
    }

    fn add_leased(mut self, topic: &str, handler: Box<dyn LeaseDispatch>, opts: LeaseOptions) -> Self {
        self.check_new_topic(topic, opts.retry);
        assert!(opts.lease >= Duration::from_millis(100), "lease of {:?} for {topic} is too short", opts.lease);
        self.lease_topics.push(topic.to_owned());
        self.lease_ms.push(opts.lease.as_millis() as i64);
        self.lease_subs.insert(topic.to_owned(), LeaseSub { handler, opts });
        self
    }

    // Subscriptions are code: a wrong one is a bug, reported at start-up like axum's
    // overlapping routes.
    fn check_new_topic(&self, topic: &str, retry: RetryPolicy) {
        if let Err(e) = crate::publish::validate_topic(topic) {
            panic!("{e}");
        }
        assert!(
            !self.tx_subs.contains_key(topic) && !self.lease_subs.contains_key(topic),
            "topic {topic} has two handlers in one consumer"
        );
        assert!(retry.max_attempts >= 1, "max_attempts of {topic} must be at least 1");
    }

    /// The topics this consumer handles.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.tx_topics.iter().chain(&self.lease_topics).map(String::as_str)
    }

    /// Claims and handles one batch in each mode; returns how many messages it settled.
    /// Tests use it to drain the inbox deterministically.
    pub async fn process_once(&self) -> Result<usize, Error> {
        let never = CancellationToken::new();
        self.pause(&never).await;
        let mut conn = self.pool.acquire().await?;
        if !self.tx_topics.is_empty() {
            self.floor.sweep_if_due(&mut conn, &tx::SWEEP, &self.tx_topics).await?;
        }
        let mut pulled = 0;
        for src in &self.sources {
            let mut publisher = src.pool.acquire().await?;
            pulled += self.pull_cycle(src, &mut conn, &mut publisher, &mut Vec::new(), &mut false).await?;
        }
        Ok(pulled + self.tx_cycle(&mut conn).await? + self.lease_cycle(&mut conn, &never).await?)
    }

    /// Runs until `shutdown` is cancelled, then stops claiming, lets in-flight work finish
    /// within `shutdown_grace` (or rolls it back / releases its leases) and returns.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), Error> {
        let (tx_wake, lease_wake) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let idle = Arc::new(Idle::default());
        let listening = shutdown.child_token();
        let _stop_listening = listening.clone().drop_guard();
        let topics = self.topics().map(str::to_owned).collect();
        spawn_listener(self.pool.clone(), &wake::INBOX, topics, wake::ProbeFrom::Floor(self.floor.clone(), crate::floor::Positions::Time), idle.clone(), vec![tx_wake.clone(), lease_wake.clone()], listening.clone());

        let n = self.opts.concurrency.max(1);
        let tx_loops = (!self.tx_topics.is_empty()).then(|| (0..n).map(|_| self.tx_loop(&tx_wake, &idle, &shutdown)));
        let lease_loops = (!self.lease_topics.is_empty()).then(|| (0..n).map(|_| self.lease_loop(&lease_wake, &idle, &shutdown)));
        let sweeps = async {
            if !self.tx_topics.is_empty() {
                self.floor.sweep_loop(&self.pool, &tx::SWEEP, &self.tx_topics, &tx_wake, &shutdown).await;
            }
        };
        // Pull loops, a listener on each publisher and a reporter of the positions. The
        // `concurrency` loops are shared among the publishers (at least one each): each
        // holds a connection to this database, like the inbox's loops.
        let per_source = (n / self.sources.len().max(1)).max(1);
        let shutdown = &shutdown;
        let pulls = self.sources.iter().map(|src| {
            let (wake, idle) = (Arc::new(Notify::new()), Arc::new(Idle::default()));
            let from = wake::ProbeFrom::Cursors(src.cursors.clone());
            spawn_listener(src.pool.clone(), &wake::PULL, self.topics().map(str::to_owned).collect(), from, idle.clone(), vec![wake.clone()], listening.clone());
            async move {
                let loops = (0..per_source).map(|_| self.pull_loop(src, &wake, &idle, shutdown));
                futures::future::join(futures::future::join_all(loops), self.report_positions(src, Duration::from_secs(1), shutdown)).await;
            }
        });
        futures::future::join4(
            futures::future::join_all(tx_loops.into_iter().flatten()),
            futures::future::join_all(lease_loops.into_iter().flatten()),
            sweeps,
            futures::future::join_all(pulls),
        )
        .await;
        Ok(())
    }

    async fn tx_loop(&self, wake: &Notify, idle: &Idle, shutdown: &CancellationToken) {
        let grace = self.opts.shutdown_grace;
        let mut pacer = self.pacer(wake, idle, shutdown, "consumer", true);
        let mut conn = LoopConn::default();
        while !shutdown.is_cancelled() {
            self.pause(shutdown).await;
            if shutdown.is_cancelled() {
                break;
            }
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // A cycle runs to its end unless shutdown's grace runs out first; dropping it
            // then rolls its transaction back, which releases its claims.
            let cycle = match conn.get(&self.pool).await {
                Err(e) => Err(e.into()),
                Ok(c) => tokio::select! {
                    r = self.tx_cycle(c) => r,
                    _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                        tracing::warn!(?grace, "shutdown grace over: rolling back the batch in flight");
                        return;
                    }
                },
            };
            if cycle.is_err() {
                conn.reset();
            }
            pacer.due = self.retries.next_due();
            pacer.after(cycle, notified).await;
        }
    }

    async fn lease_loop(&self, wake: &Notify, idle: &Idle, shutdown: &CancellationToken) {
        let mut pacer = self.pacer(wake, idle, shutdown, "lease consumer", true);
        let mut conn = LoopConn::default();
        while !shutdown.is_cancelled() {
            self.pause(shutdown).await;
            if shutdown.is_cancelled() {
                break;
            }
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let cycle = match conn.get(&self.pool).await {
                Err(e) => Err(e.into()),
                Ok(c) => self.lease_cycle(c, shutdown).await,
            };
            if cycle.is_err() {
                conn.reset();
            }
            pacer.due = self.retries.next_due();
            pacer.after(cycle, notified).await;
        }
    }

    fn pacer<'a>(&self, wake: &'a Notify, idle: &'a Idle, shutdown: &'a CancellationToken, what: &'static str, partial_waits: bool) -> Pacer<'a> {
        Pacer { wake, idle, poll: self.opts.poll_interval, batch_size: self.opts.batch_size, shutdown, what, failures: 0, partial_waits, due: None }
    }
}

/// The outcome of one failed attempt, ready to store.
pub(crate) struct Failure {
    pub id: uuid::Uuid,
    pub dead: bool,
    /// False for a snooze: the attempt is handed back and no error is recorded.
    pub counted: bool,
    pub delay_ms: i64,
    pub error: String,
}

impl Failure {
    pub fn new(topic: &str, id: uuid::Uuid, attempt: i32, retry: &RetryPolicy, err: &HandlerError) -> Self {
        if let Some(delay) = err.snoozed_for() {
            metrics::counter!("conveyor_queue_consumed_total", "topic" => topic.to_owned(), "outcome" => "snoozed").increment(1);
            tracing::info!(%id, topic, attempt, reason = %err, snooze_ms = delay.as_millis() as u64, "handler snoozed the message");
            return Failure { id, dead: false, counted: false, delay_ms: delay.as_millis() as i64, error: err.to_string() };
        }
        let dead = err.is_permanent() || retry.exhausted(attempt);
        let mut error = err.to_string();
        if error.len() > 4000 {
            let cut = (0..=4000).rev().find(|&i| error.is_char_boundary(i)).unwrap_or(0);
            error.truncate(cut);
        }
        let delay_ms = if dead { 0 } else { retry.delay(attempt).as_millis() as i64 };
        let outcome = if dead { "dead" } else { "retried" };
        metrics::counter!("conveyor_queue_consumed_total", "topic" => topic.to_owned(), "outcome" => outcome).increment(1);
        if dead {
            tracing::error!(%id, topic, attempt, error, "message is dead");
        } else {
            tracing::warn!(%id, topic, attempt, error, retry_in_ms = delay_ms, "handler failed; will retry");
        }
        Failure { id, dead, counted: true, delay_ms, error }
    }
}

/// Counts handled messages, and how long each took from publish to done.
pub(crate) fn record_done<'a>(rows: impl IntoIterator<Item = &'a crate::message::InboxRow>) {
    let now = chrono::Utc::now();
    let mut per_topic: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for r in rows {
        *per_topic.entry(r.topic.as_str()).or_default() += 1;
        let latency = (now - r.published_at).to_std().unwrap_or_default();
        metrics::histogram!("conveyor_queue_message_latency_seconds", "topic" => r.topic.clone()).record(latency.as_secs_f64());
    }
    for (topic, n) in per_topic {
        metrics::counter!("conveyor_queue_consumed_total", "topic" => topic.to_owned(), "outcome" => "done").increment(n);
    }
}

pub(crate) fn record_claim(queue: &'static str, n: usize) {
    if n > 0 {
        metrics::histogram!("conveyor_queue_claim_batch_size", "queue" => queue).record(n as f64);
    }
}
