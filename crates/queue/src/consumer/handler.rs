//! Handler traits, their type-erased forms, and the error a handler returns.

use std::any::type_name;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::PgConnection;
use tracing::Instrument;

use crate::message::InboxRow;
use crate::{Delivery, Event, trace};

/// A handler run in the transaction that marks its message done: everything it writes
/// through `conn` commits together with the completion, or not at all. Exactly-once effect.
pub trait Handler<E: Event>: Send + Sync + 'static {
    fn handle(&self, conn: &mut PgConnection, msg: Delivery<E>) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Closures work as handlers when they box their future:
/// `|conn, msg| Box::pin(async move { … })`.
impl<E, F> Handler<E> for F
where
    E: Event,
    F: for<'c> Fn(&'c mut PgConnection, Delivery<E>) -> BoxFuture<'c, Result<(), HandlerError>> + Send + Sync + 'static,
{
    fn handle(&self, conn: &mut PgConnection, msg: Delivery<E>) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self(conn, msg)
    }
}

/// Makes a closure a transaction-mode handler: `handler_fn(|conn, msg: Delivery<E>| async
/// move { … }.boxed())`. (A plain closure passed where `impl Handler` is expected cannot
/// have its borrow of `conn` inferred; this function gives the compiler the signature.)
pub fn handler_fn<E, F>(f: F) -> F
where
    E: Event,
    F: for<'c> Fn(&'c mut PgConnection, Delivery<E>) -> BoxFuture<'c, Result<(), HandlerError>> + Send + Sync + 'static,
{
    f
}

/// A transaction-mode handler that takes many messages of its topic in one call, for
/// set-based work: a few statements for a whole batch instead of a few per message.
///
/// The consumer calls it with each run of consecutive messages of its topic in a claimed
/// batch, in publish order, in the transaction that marks them done. An error fails the
/// call: that transaction rolls back, and the batch runs again message by message, each
/// under its own savepoint and in a call of its own, so the failure is recorded against
/// the message that causes it and every other message still completes. (A payload that
/// does not decode fails the call the same way.) The handler must therefore give each
/// message the same effect whether it comes alone or with others, and what it publishes
/// for a message should name it ([`Outgoing::caused_by`](crate::Outgoing::caused_by)) so
/// that the message's trace goes on. Copies of one message can come in one call, as they
/// can in two calls of a [`Handler`].
pub trait BatchHandler<E: Event>: Send + Sync + 'static {
    fn handle<'c>(&'c self, conn: &'c mut PgConnection, msgs: Vec<Delivery<E>>) -> BoxFuture<'c, Result<(), HandlerError>>;
}

impl<E, F> BatchHandler<E> for F
where
    E: Event,
    F: for<'c> Fn(&'c mut PgConnection, Vec<Delivery<E>>) -> BoxFuture<'c, Result<(), HandlerError>> + Send + Sync + 'static,
{
    fn handle<'c>(&'c self, conn: &'c mut PgConnection, msgs: Vec<Delivery<E>>) -> BoxFuture<'c, Result<(), HandlerError>> {
        self(conn, msgs)
    }
}

/// Gives a closure the signature of [`BatchHandler`] (as [`handler_fn`] does for handlers).
pub fn batch_handler_fn<E, F>(f: F) -> F
where
    E: Event,
    F: for<'c> Fn(&'c mut PgConnection, Vec<Delivery<E>>) -> BoxFuture<'c, Result<(), HandlerError>> + Send + Sync + 'static,
{
    f
}

/// Names the rows a topic's handlers lock that handlers of other messages lock too (a
/// product's stock level, a customer's balance), as keys, for a whole claimed batch at once.
/// The consumer locks every key of the batch (transaction-scoped advisory locks, taken in
/// one global order in one statement) before the batch's first handler runs: two batches
/// that touch the same hot rows then queue behind each other instead of deadlocking, however
/// their messages are ordered. Keys are strings (`"item:<uuid>"`); only equality matters.
/// `conn` is the batch's transaction, for keys that must be looked up (what an order
/// reserved); the events may include copies of one message.
pub trait LockKeys<E: Event>: Send + Sync + 'static {
    fn keys<'c>(&'c self, conn: &'c mut PgConnection, events: &'c [&'c E]) -> BoxFuture<'c, Result<Vec<String>, HandlerError>>;
}

impl<E, F> LockKeys<E> for F
where
    E: Event,
    F: for<'c> Fn(&'c mut PgConnection, &'c [&'c E]) -> BoxFuture<'c, Result<Vec<String>, HandlerError>> + Send + Sync + 'static,
{
    fn keys<'c>(&'c self, conn: &'c mut PgConnection, events: &'c [&'c E]) -> BoxFuture<'c, Result<Vec<String>, HandlerError>> {
        self(conn, events)
    }
}

/// Gives a closure the signature of [`LockKeys`] (as [`handler_fn`] does for handlers).
pub fn lock_keys_fn<E, F>(f: F) -> F
where
    E: Event,
    F: for<'c> Fn(&'c mut PgConnection, &'c [&'c E]) -> BoxFuture<'c, Result<Vec<String>, HandlerError>> + Send + Sync + 'static,
{
    f
}

/// A handler that calls the outside world (email, HTTP): it runs outside any transaction
/// under a lease. If the worker dies, the lease expires and the message runs again, so the
/// handler must be idempotent (use [`Delivery::id`] as the idempotency key).
pub trait LeaseHandler<E: Event>: Send + Sync + 'static {
    fn handle(&self, msg: Delivery<E>) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<E, F, Fut> LeaseHandler<E> for F
where
    E: Event,
    F: Fn(Delivery<E>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(&self, msg: Delivery<E>) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self(msg)
    }
}

/// A lease-mode handler that takes many messages of its topic in one call, for work that
/// is cheaper done for a batch at once (one read and one write for all, the calls to the
/// outside world still one per message).
///
/// The consumer calls it once per claimed batch with that batch's messages of its topic,
/// outside any transaction, under the batch's lease, and settles each message by the
/// outcome at its position in the returned `Vec`: one per message, in the order given. (A
/// `Vec` of another length fails every message of the call, to be tried again; so does a
/// panic, or the call outliving the lease.) Each message's outcome is its own: one failure
/// retries, snoozes or kills only its message. A payload that does not decode fails its
/// message for good and never reaches the handler. As for a [`LeaseHandler`], a message
/// may run again after a crash, so the handler must be idempotent.
pub trait LeaseBatchHandler<E: Event>: Send + Sync + 'static {
    fn handle(&self, msgs: Vec<Delivery<E>>) -> BoxFuture<'_, Vec<Result<(), HandlerError>>>;
}

impl<E, F, Fut> LeaseBatchHandler<E> for F
where
    E: Event,
    F: Fn(Vec<Delivery<E>>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Result<(), HandlerError>>> + Send + 'static,
{
    fn handle(&self, msgs: Vec<Delivery<E>>) -> BoxFuture<'_, Vec<Result<(), HandlerError>>> {
        self(msgs).boxed()
    }
}

/// Why a handler failed, and whether trying again can help.
pub struct HandlerError {
    permanent: bool,
    snooze: Option<std::time::Duration>,
    error: anyhow::Error,
}

impl HandlerError {
    /// A failure worth retrying (a lock timeout, a peer down): the message comes back after
    /// its backoff, until its attempts run out.
    pub fn retry(error: impl Into<anyhow::Error>) -> Self {
        HandlerError { permanent: false, snooze: None, error: error.into() }
    }

    /// A failure no retry can fix (a payload that breaks a rule): the message is dead at once.
    pub fn permanent(error: impl Into<anyhow::Error>) -> Self {
        HandlerError { permanent: true, snooze: None, error: error.into() }
    }

    /// Not now, and not the message's fault (a circuit breaker is open, a peer asked us to
    /// back off): the message comes back after `delay` and the attempt is not counted, so
    /// waiting out an outage never uses up its retries or kills it.
    pub fn snooze(delay: std::time::Duration, reason: impl Into<anyhow::Error>) -> Self {
        HandlerError { permanent: false, snooze: Some(delay), error: reason.into() }
    }

    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The delay of a snooze, `None` for a failure.
    pub fn snoozed_for(&self) -> Option<std::time::Duration> {
        self.snooze
    }
}

/// `?` on any error makes a retryable failure.
impl<E: Into<anyhow::Error>> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::retry(e)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError").field("permanent", &self.permanent).field("snooze", &self.snooze).field("error", &self.error).finish()
    }
}

/// Decodes the payload for `E` and runs `run` on it, in a `process {topic}` span (kind
/// CONSUMER) whose parent is the trace context the message carries; a payload that does not
/// decode is a permanent failure (retrying cannot make it decode), and a panic is a
/// retryable one. Failures mark the span `ERROR`.
async fn decode_and_run<'a, E: Event, Fut>(row: &'a InboxRow, attempt: i32, group: &'a str, run: impl FnOnce(Delivery<E>) -> Fut) -> Result<(), HandlerError>
where
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'a,
{
    let span = trace::process_span(row, attempt, group);
    let result = async {
        let msg = decode::<E>(row, attempt, &span)?;
        catch_panic(run(msg)).await
    }
    .instrument(span.clone())
    .await;
    record_outcome(&span, &result);
    result
}

/// Decodes a row's payload for `E`; one that does not decode is a permanent failure.
fn decode<E: Event>(row: &InboxRow, attempt: i32, span: &tracing::Span) -> Result<Delivery<E>, HandlerError> {
    let mut msg = row.decode::<E>(attempt).map_err(|e| {
        HandlerError::permanent(anyhow::anyhow!("payload of message {} does not decode as {}: {e}", row.message_id, type_name::<E>()))
    })?;
    msg.span = span.clone();
    Ok(msg)
}

/// Marks `span` with a failed or snoozed outcome.
fn record_outcome(span: &tracing::Span, result: &Result<(), HandlerError>) {
    if let Err(e) = result {
        match e.snoozed_for() {
            Some(delay) => {
                span.record("messaging.conveyor.snoozed_ms", delay.as_millis() as u64);
            }
            None => trace::record_error(span, if e.is_permanent() { "permanent" } else { "retry" }, e),
        }
    }
}

/// Runs a handler's future; a panic is a retryable failure.
async fn catch_panic(run: impl Future<Output = Result<(), HandlerError>>) -> Result<(), HandlerError> {
    AssertUnwindSafe(run).catch_unwind().await.unwrap_or_else(|panic| Err(panicked(panic)))
}

/// What a handler's panic becomes: a retryable failure saying what it said.
fn panicked(panic: Box<dyn std::any::Any + Send>) -> HandlerError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into());
    HandlerError::retry(anyhow::anyhow!("handler panicked: {what}"))
}

pub(crate) trait TxDispatch: Send + Sync {
    /// Handles `rows`, consecutive messages of the handler's topic in publish order, each
    /// as its next attempt: one call of a batch handler, or a call per message, stopping
    /// at the first failure.
    fn call<'a>(&'a self, conn: &'a mut PgConnection, rows: &'a [&'a InboxRow], group: &'a str) -> BoxFuture<'a, Result<(), HandlerError>>;
}

pub(crate) trait KeysDispatch: Send + Sync {
    /// The lock keys of `rows`; a row whose payload does not decode has none (its handler
    /// will fail it).
    fn keys<'a>(&'a self, conn: &'a mut PgConnection, rows: &'a [&'a InboxRow]) -> BoxFuture<'a, Result<Vec<String>, HandlerError>>;
}

/// Where a lease dispatcher reports each message's outcome, as soon as it is known.
pub(crate) type Outcomes<'a, 'r> = dyn Fn(&'r InboxRow, Result<(), HandlerError>) + Send + Sync + 'a;

pub(crate) trait LeaseDispatch: Send + Sync {
    /// Runs the handler on `rows` (messages of its topic, each as the attempt its claim
    /// counted), abandoning it (a retryable failure) when it outlives `lease`, and reports
    /// every row's outcome to `done` once: a handler of one message per message as it
    /// finishes, a batch handler for all of them when its call ends.
    fn call<'a, 'r: 'a>(&'a self, rows: &'a [&'r InboxRow], group: &'a str, lease: Duration, done: &'a Outcomes<'a, 'r>) -> BoxFuture<'a, ()>;
}

/// How long a lease handler may run: never past the lease, after which another worker may
/// hold the message.
fn lease_budget(lease: Duration) -> Duration {
    lease.saturating_sub(Duration::from_millis(50))
}

fn outlived(lease: Duration) -> HandlerError {
    HandlerError::retry(anyhow::anyhow!("handler did not finish within its lease of {lease:?}"))
}

/// Records how long a handler took for a message (a batch's call is shared among its
/// messages, as in transaction mode).
fn record_duration(topic: &str, per_message: Duration, messages: usize) {
    let histogram = metrics::histogram!("conveyor_queue_handler_duration_seconds", "topic" => topic.to_owned());
    (0..messages).for_each(|_| histogram.record(per_message.as_secs_f64()));
}

pub(crate) struct Typed<E, H> {
    pub handler: H,
    pub _event: std::marker::PhantomData<fn() -> E>,
}

impl<E: Event, H: Handler<E>> TxDispatch for Typed<E, H> {
    fn call<'a>(&'a self, conn: &'a mut PgConnection, rows: &'a [&'a InboxRow], group: &'a str) -> BoxFuture<'a, Result<(), HandlerError>> {
        async move {
            for row in rows {
                decode_and_run(row, row.attempts + 1, group, |msg| self.handler.handle(&mut *conn, msg)).await?;
            }
            Ok(())
        }
        .boxed()
    }
}

/// A [`BatchHandler`], type-erased.
pub(crate) struct Batched<E, H> {
    pub handler: H,
    pub _event: std::marker::PhantomData<fn() -> E>,
}

impl<E: Event, H: BatchHandler<E>> TxDispatch for Batched<E, H> {
    /// One `process {topic}` span per message, as for a handler of one; the call runs in
    /// the first message's, and a failure marks them all.
    fn call<'a>(&'a self, conn: &'a mut PgConnection, rows: &'a [&'a InboxRow], group: &'a str) -> BoxFuture<'a, Result<(), HandlerError>> {
        async move {
            let spans: Vec<tracing::Span> = rows.iter().map(|r| trace::process_span(r, r.attempts + 1, group)).collect();
            let Some(first) = spans.first() else { return Ok(()) };
            let result = async {
                let msgs = rows.iter().zip(&spans).map(|(r, s)| decode::<E>(r, r.attempts + 1, s)).collect::<Result<Vec<_>, _>>()?;
                catch_panic(self.handler.handle(conn, msgs)).await
            }
            .instrument(first.clone())
            .await;
            spans.iter().for_each(|s| record_outcome(s, &result));
            result
        }
        .boxed()
    }
}

impl<E: Event, K: LockKeys<E>> KeysDispatch for Typed<E, K> {
    fn keys<'a>(&'a self, conn: &'a mut PgConnection, rows: &'a [&'a InboxRow]) -> BoxFuture<'a, Result<Vec<String>, HandlerError>> {
        async move {
            let events: Vec<E> = rows.iter().filter_map(|r| serde_json::from_str(r.payload.get()).ok()).collect();
            let refs: Vec<&E> = events.iter().collect();
            self.handler.keys(conn, &refs).await
        }
        .boxed()
    }
}

impl<E: Event, H: LeaseHandler<E>> LeaseDispatch for Typed<E, H> {
    /// Every message in a call of its own, all at once.
    fn call<'a, 'r: 'a>(&'a self, rows: &'a [&'r InboxRow], group: &'a str, lease: Duration, done: &'a Outcomes<'a, 'r>) -> BoxFuture<'a, ()> {
        let budget = lease_budget(lease);
        let each = rows.iter().map(move |row| async move {
            let started = Instant::now();
            let result = decode_and_run(row, row.attempts, group, move |msg| async move {
                tokio::time::timeout(budget, self.handler.handle(msg)).await.unwrap_or_else(|_| Err(outlived(lease)))
            })
            .await;
            record_duration(&row.topic, started.elapsed(), 1);
            done(row, result);
        });
        futures::future::join_all(each).map(drop).boxed()
    }
}

/// A [`LeaseBatchHandler`], type-erased.
pub(crate) struct LeaseBatched<E, H> {
    pub handler: H,
    pub _event: std::marker::PhantomData<fn() -> E>,
}

impl<E: Event, H: LeaseBatchHandler<E>> LeaseDispatch for LeaseBatched<E, H> {
    /// One `process {topic}` span per message; the call runs in the first one's.
    fn call<'a, 'r: 'a>(&'a self, rows: &'a [&'r InboxRow], group: &'a str, lease: Duration, done: &'a Outcomes<'a, 'r>) -> BoxFuture<'a, ()> {
        async move {
            let started = Instant::now();
            let (mut msgs, mut handled) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
            for row in rows {
                let span = trace::process_span(row, row.attempts, group);
                match decode::<E>(row, row.attempts, &span) {
                    Ok(msg) => {
                        msgs.push(msg);
                        handled.push((*row, span));
                    }
                    Err(e) => {
                        let result = Err(e);
                        record_outcome(&span, &result);
                        done(row, result);
                    }
                }
            }
            let Some((first_row, first)) = handled.first().map(|(r, s)| (*r, s.clone())) else { return };
            let n = msgs.len();
            let call = AssertUnwindSafe(self.handler.handle(msgs)).catch_unwind();
            let results: Vec<Result<(), HandlerError>> = match tokio::time::timeout(lease_budget(lease), call).instrument(first).await {
                Ok(Ok(results)) if results.len() == n => results,
                Ok(Ok(results)) => {
                    let got = results.len();
                    (0..n).map(|_| Err(HandlerError::retry(anyhow::anyhow!("the batch handler answered {got} outcomes for {n} messages")))).collect()
                }
                Ok(Err(panic)) => {
                    let e = panicked(panic).to_string();
                    (0..n).map(|_| Err(HandlerError::retry(anyhow::anyhow!("{e}")))).collect()
                }
                Err(_) => (0..n).map(|_| Err(outlived(lease))).collect(),
            };
            record_duration(&first_row.topic, started.elapsed() / n as u32, n);
            for ((row, span), result) in handled.into_iter().zip(results) {
                record_outcome(&span, &result);
                done(row, result);
            }
        }
        .boxed()
    }
}
