//! The relay: moves committed outbox rows into every subscriber's inbox.
//!
//! A batch is claimed with `FOR UPDATE SKIP LOCKED` (parallel relays take disjoint
//! batches) and deleted in the same statement, inside a transaction that stays open while
//! the batch is inserted into each subscriber's inbox with `ON CONFLICT DO NOTHING`; only
//! then does it commit. A relay that dies after the insert and before the commit leaves the
//! rows in the outbox (the delete rolls back); the next relay delivers them again and the
//! inboxes drop the copies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{Acquire, PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::conn::LoopConn;
use crate::floor::{Floor, sweep_interval};
use crate::trace::{self, Batch};
use crate::wake::{self, Idle, Pacer, spawn_listener, wake_cte};
use crate::{Error, Headers};

/// Which subscribers receive each topic. Declared in code (the contracts crate), so a
/// routing change is reviewed like any other change.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    by_topic: BTreeMap<String, Vec<String>>,
}

impl Routes {
    pub fn new() -> Self {
        Routes::default()
    }

    /// Sends `topic` to every one of `subscribers` (service names).
    pub fn route<S: Into<String>>(mut self, topic: &str, subscribers: impl IntoIterator<Item = S>) -> Self {
        let subs = self.by_topic.entry(topic.to_owned()).or_default();
        for s in subscribers {
            let s = s.into();
            if !subs.contains(&s) {
                subs.push(s);
            }
        }
        self
    }

    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.by_topic.keys().map(String::as_str)
    }

    pub fn subscribers(&self, topic: &str) -> &[String] {
        self.by_topic.get(topic).map(Vec::as_slice).unwrap_or_default()
    }

    fn all_subscribers(&self) -> impl Iterator<Item = &str> {
        self.by_topic.values().flatten().map(String::as_str)
    }
}

/// Parses a subscriber's database as configuration gives it: `name=postgres://…` (for a
/// clap argument such as `--subscriber stock=postgres://…`, use it as `value_parser`).
pub fn parse_subscriber(s: &str) -> Result<(String, String), String> {
    // The value is never echoed: it may carry a password.
    let (name, url) = s.split_once('=').ok_or_else(|| "expected NAME=URL (e.g. stock=postgres://…), got no '='".to_owned())?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("the name {name:?} must be letters, digits, '-' or '_'"));
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!("the database URL of {name:?} must start with postgres:// or postgresql://"));
    }
    Ok((name.to_owned(), url.to_owned()))
}

/// A pool on another service's database as configuration gives it (`name=URL`, see
/// [`parse_subscriber`]), of at most `max` connections, opened lazily: a relay's on a
/// subscriber's inbox, or a puller's on a publisher's outbox (`kind` names which, for the
/// error).
pub fn peer_pool(kind: &str, name: &str, url: &str, max: u32) -> Result<PgPool, Error> {
    let options: sqlx::postgres::PgConnectOptions = url.parse().map_err(|e| Error::Config(format!("database URL of {kind} {name:?}: {e}")))?;
    Ok(sqlx::postgres::PgPoolOptions::new().max_connections(max).test_before_acquire(false).connect_lazy_with(options))
}

/// Tuning of a [`Relay`].
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Outbox rows claimed per transaction.
    pub batch_size: i64,
    /// Relay loops running in parallel (each holds one outbox connection while it works).
    pub concurrency: usize,
    /// How often an idle relay looks without being notified.
    pub poll_interval: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions { batch_size: 100, concurrency: 1, poll_interval: Duration::from_secs(1) }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct OutboxRow {
    message_id: Uuid,
    topic: String,
    key: Option<String>,
    // Passed through as written: the relay never parses a payload.
    payload: String,
    headers: String,
    created_at: DateTime<Utc>,
}

/// `$3`: the relay's claim floor (see `floor`), the smallest id to read from.
///
/// The claim also makes its transaction's commit asynchronous (`synchronous_commit = off`,
/// for this transaction only): the commit only deletes rows every subscriber already holds
/// durably, so if a crash of the server loses it, the rows are relayed again and the
/// subscribers drop the copies (their inbox's key, and `inbox_done`). The relay then waits
/// for one WAL flush per batch (the subscriber's) instead of two.
pub const CLAIM: &str = "\
DELETE FROM conveyor.outbox AS o
USING (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
WHERE o.message_id = ANY (ARRAY(
    SELECT message_id FROM conveyor.outbox
    WHERE topic = ANY($1) AND message_id >= $3 ORDER BY message_id LIMIT $2 FOR UPDATE SKIP LOCKED))
RETURNING o.message_id, o.topic, o.key, o.payload::text, o.headers::text, o.created_at";

/// What the relay's sweeps read (see `floor`): the oldest routed row below the claim floor,
/// locked or not, on the outbox's key.
const SWEEP: crate::floor::SweepProbe = crate::floor::SweepProbe {
    table: "outbox",
    sql: "SELECT message_id FROM conveyor.outbox
          WHERE topic = ANY($1) AND message_id >= coalesce($2::uuid, '00000000-0000-0000-0000-000000000000') AND message_id < $3
          ORDER BY message_id LIMIT 1",
    positions: crate::floor::Positions::UuidV7,
};

/// The one statement a relay runs in a subscriber's database. The conflict has no target
/// (the inbox's only unique key is the message id): with `ON CONFLICT (message_id)`
/// PostgreSQL would require SELECT on that column, and the role a relay delivers with has
/// INSERT on these six columns and nothing else (see `grants`).
pub(crate) const DELIVER: &str = concat!(
    "WITH ",
    wake_cte!("conveyor_inbox", 7165066987023786497),
    "\nINSERT INTO conveyor.inbox (message_id, topic, key, payload, headers, published_at)
SELECT m.message_id, m.topic, m.key, m.payload::json, m.headers::json, m.published_at
FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
       AS m(message_id, topic, key, payload, headers, published_at)
CROSS JOIN wake
ON CONFLICT DO NOTHING"
);

/// Copies a service's outbox into its subscribers' inboxes.
#[derive(Clone)]
pub struct Relay {
    outbox: PgPool,
    routes: Arc<Routes>,
    topics: Arc<Vec<String>>,
    subscribers: Arc<HashMap<String, PgPool>>,
    opts: RelayOptions,
    /// Where claims start reading the outbox's key (see `floor`).
    floor: Arc<Floor>,
}

impl Relay {
    /// A relay for the outbox in `outbox`'s database. `subscribers` maps every subscriber
    /// named in `routes` to a pool on its database (from configuration).
    pub fn new(outbox: PgPool, routes: Routes, subscribers: HashMap<String, PgPool>) -> Result<Self, Error> {
        if let Some(missing) = routes.all_subscribers().find(|s| !subscribers.contains_key(*s)) {
            return Err(Error::Config(format!("no database configured for subscriber {missing:?}")));
        }
        for topic in routes.topics() {
            crate::publish::validate_topic(topic)?;
        }
        let topics = routes.topics().map(str::to_owned).collect();
        let floor = Arc::new(Floor::new(sweep_interval(RelayOptions::default().poll_interval)));
        Ok(Relay { outbox, routes: Arc::new(routes), topics: Arc::new(topics), subscribers: Arc::new(subscribers), opts: RelayOptions::default(), floor })
    }

    /// A relay whose subscriber pools are opened (lazily) from configuration: `urls` maps
    /// each subscriber to its database URL (see [`parse_subscriber`]).
    pub fn connect<I: IntoIterator<Item = (String, String)>>(outbox: PgPool, routes: Routes, urls: I) -> Result<Self, Error> {
        let mut pools = HashMap::new();
        for (name, url) in urls {
            let pool = peer_pool("subscriber", &name, &url, 8)?;
            pools.insert(name, pool);
        }
        Relay::new(outbox, routes, pools)
    }

    pub fn with_options(mut self, opts: RelayOptions) -> Self {
        self.floor = Arc::new(Floor::new(sweep_interval(opts.poll_interval)));
        self.opts = opts;
        self
    }

    /// Claims the next batch of routed outbox rows, or `None` when there is none.
    pub async fn claim(&self) -> Result<Option<ClaimedBatch<'_>>, Error> {
        self.floor.sweep_if_due(&mut *self.outbox.acquire().await?, &SWEEP, &self.topics).await?;
        self.claim_in(self.outbox.begin().await?).await
    }

    async fn claim_in<'a>(&'a self, mut tx: Transaction<'a, Postgres>) -> Result<Option<ClaimedBatch<'a>>, Error> {
        let started = SystemTime::now();
        let floor = self.floor.start().map_or(Uuid::nil(), crate::floor::v7_of_micros);
        let mut rows: Vec<OutboxRow> =
            sqlx::query_as(CLAIM).bind(&*self.topics).bind(self.opts.batch_size).bind(floor).fetch_all(&mut *tx).await?;
        if let Some(newest) = rows.iter().filter_map(|r| crate::floor::micros_of_v7(r.message_id)).max() {
            self.floor.claimed(newest);
        }
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(None);
        }
        rows.sort_unstable_by_key(|r| r.message_id); // publish order
        metrics::histogram!("conveyor_queue_claim_batch_size", "queue" => "outbox").record(rows.len() as f64);
        let span = Batch::start("send", started, None, rows.iter().map(|r| r.topic.as_str()));
        if span.is_recording() {
            // Headers are passed through as text; only a traced batch parses them, for links.
            rows.iter().for_each(|r| span.link(&serde_json::from_str::<Headers>(&r.headers).unwrap_or_default()));
        }
        span.statement(&trace::OUTBOX_CLAIM, started, Some(rows.len()), None);
        Ok(Some(ClaimedBatch { relay: self, tx, rows, span }))
    }

    /// Relays one batch; returns how many outbox rows it moved (0: nothing to do).
    pub async fn relay_once(&self) -> Result<usize, Error> {
        let mut conns = Conns::default();
        self.floor.sweep_if_due(conns.outbox.get(&self.outbox).await?, &SWEEP, &self.topics).await?;
        self.relay_once_on(&mut conns).await
    }

    /// [`relay_once`](Self::relay_once) on connections the caller keeps: a relay loop holds
    /// one on the outbox and one per subscriber (sqlx pings every connection handed back
    /// to its pool: one more round trip per batch and database).
    async fn relay_once_on(&self, conns: &mut Conns) -> Result<usize, Error> {
        let outbox = conns.outbox.get(&self.outbox).await?;
        let Some(batch) = self.claim_in(outbox.begin().await?).await? else { return Ok(0) };
        batch.deliver_on(&mut conns.subscribers).await?;
        batch.ack().await
    }

    /// Relays until `shutdown`, woken by `NOTIFY` from publishers and by polling. A failing
    /// delivery (a subscriber database down) is retried with backoff; nothing is deleted
    /// from the outbox before every subscriber has it.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), Error> {
        let (wake, idle) = (Arc::new(Notify::new()), Arc::new(Idle::default()));
        let listening = shutdown.child_token();
        let _stop_listening = listening.clone().drop_guard();
        let topics = self.topics.to_vec();
        spawn_listener(self.outbox.clone(), &wake::OUTBOX, topics, wake::ProbeFrom::Floor(self.floor.clone(), crate::floor::Positions::UuidV7), idle.clone(), vec![wake.clone()], listening);
        let loops = (0..self.opts.concurrency.max(1)).map(|_| self.relay_loop(&wake, &idle, &shutdown));
        let sweeps = self.floor.sweep_loop(&self.outbox, &SWEEP, &self.topics, &wake, &shutdown);
        futures::future::join(futures::future::join_all(loops), sweeps).await;
        Ok(())
    }

    async fn relay_loop(&self, wake: &Notify, idle: &Idle, shutdown: &CancellationToken) {
        let (poll, batch_size) = (self.opts.poll_interval, self.opts.batch_size);
        let mut pacer = Pacer { wake, idle, poll, batch_size, shutdown, what: "relay", failures: 0, partial_waits: false, due: None };
        let mut conns = Conns::default();
        while !shutdown.is_cancelled() {
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let relayed = self.relay_once_on(&mut conns).await;
            if relayed.as_ref().is_err_and(|e| !matches!(e, Error::Delivery { .. })) {
                conns.outbox.reset(); // it may be broken
            }
            // On failure the batch stays in the outbox and is tried again after the backoff.
            pacer.after(relayed, notified).await;
        }
    }
}

/// The connections a relay loop keeps between batches.
#[derive(Default)]
struct Conns {
    outbox: LoopConn,
    subscribers: HashMap<String, PoolConnection<Postgres>>,
}

/// Outbox rows claimed (deleted, uncommitted) by one relay transaction:
/// [`deliver`](Self::deliver) them, then [`ack`](Self::ack) to commit their deletion.
/// Dropping the batch rolls back and leaves the rows to another relay.
pub struct ClaimedBatch<'r> {
    relay: &'r Relay,
    tx: Transaction<'r, Postgres>,
    rows: Vec<OutboxRow>,
    /// The batch's `send` span (see `trace`).
    span: Batch,
}

impl ClaimedBatch<'_> {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Inserts the batch into every subscriber's inbox (committed there, idempotent).
    pub async fn deliver(&self) -> Result<(), Error> {
        self.deliver_on(&mut HashMap::new()).await
    }

    /// [`deliver`](Self::deliver) on the subscriber connections in `conns`, taking one from
    /// a subscriber's pool where there is none and dropping one whose delivery failed (it
    /// may be broken).
    async fn deliver_on(&self, conns: &mut HashMap<String, PoolConnection<Postgres>>) -> Result<(), Error> {
        let groups = self.per_subscriber();
        for sub in groups.keys() {
            if !conns.contains_key(*sub) {
                let conn = self.relay.subscribers[*sub]
                    .acquire()
                    .await
                    .map_err(|source| Error::Delivery { subscriber: (*sub).to_owned(), source })?;
                conns.insert((*sub).to_owned(), conn);
            }
        }
        let deliveries = conns.iter_mut().filter_map(|(sub, conn)| {
            groups.get(sub.as_str()).map(|rows| self.span.run_on(&trace::INBOX_DELIVER, Some(sub), deliver_to(conn, sub, rows)))
        });
        let delivered = futures::future::try_join_all(deliveries).await.map(drop);
        if let Err(e) = &delivered {
            self.span.fail(e);
        }
        if let Err(Error::Delivery { subscriber, .. }) = &delivered {
            conns.remove(subscriber);
        }
        delivered
    }

    fn per_subscriber(&self) -> HashMap<&str, Vec<&OutboxRow>> {
        let mut groups: HashMap<&str, Vec<&OutboxRow>> = HashMap::new();
        for row in &self.rows {
            for sub in self.relay.routes.subscribers(&row.topic) {
                groups.entry(sub.as_str()).or_default().push(row);
            }
        }
        groups
    }

    /// Commits the deletion of the delivered rows from the outbox; returns their count.
    pub async fn ack(self) -> Result<usize, Error> {
        let ClaimedBatch { tx, rows, span, .. } = self;
        span.run(&trace::COMMIT, tx.commit()).await?;
        Ok(rows.len())
    }
}

async fn deliver_to(conn: &mut PgConnection, sub: &str, rows: &[&OutboxRow]) -> Result<(), Error> {
    sqlx::query(DELIVER)
        .bind(rows.iter().map(|r| r.message_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.key.as_deref()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.payload.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.headers.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .execute(conn)
        .await
        .map_err(|source| Error::Delivery { subscriber: sub.to_owned(), source })?;
    let mut per_topic: BTreeMap<&str, u64> = BTreeMap::new();
    for r in rows {
        *per_topic.entry(r.topic.as_str()).or_default() += 1;
    }
    for (topic, n) in per_topic {
        metrics::counter!("conveyor_queue_relayed_total", "topic" => topic.to_owned(), "subscriber" => sub.to_owned()).increment(n);
    }
    let now = Utc::now();
    for r in rows {
        let lag = (now - r.created_at).to_std().unwrap_or_default();
        metrics::histogram!("conveyor_queue_relay_lag_seconds", "topic" => r.topic.clone()).record(lag.as_secs_f64());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_subscriber;

    #[test]
    fn subscriber_urls_parse_from_name_equals_url() {
        assert_eq!(
            parse_subscriber("stock=postgres://u@h:5432/stock?sslmode=disable"),
            Ok(("stock".to_owned(), "postgres://u@h:5432/stock?sslmode=disable".to_owned()))
        );
        assert!(parse_subscriber("postgres://u@h/stock").unwrap_err().contains("NAME=URL"));
        assert!(parse_subscriber("=postgres://h/x").is_err());
        assert!(parse_subscriber("stock=mysql://h/x").unwrap_err().contains("postgres://"));
    }
}
