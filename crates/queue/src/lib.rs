//! Conveyor's messaging engine: Postgres queues claimed with `FOR UPDATE SKIP LOCKED`.
//!
//! The path of a message (see `README.md` of this crate for the whole story):
//! 1. [`publish`] inserts it into the service's own `conveyor.outbox` inside the caller's
//!    transaction, so a rolled-back change publishes nothing and a committed one is kept.
//! 2. A [`Relay`] claims outbox rows in batches and copies them into the `conveyor.inbox` of
//!    every subscriber ([`Routes`]), idempotently, then deletes them.
//! 3. A [`Consumer`] claims inbox rows and runs the handler registered for the topic, either
//!    in the transaction that marks the message done (exactly-once effect) or under a lease
//!    (for handlers that call the network), with retries, backoff and dead letters.
//!
//! The engine knows topics and JSON payloads, nothing of the business that uses it.

mod admin;
mod conn;
mod consumer;
mod error;
mod floor;
mod grants;
mod message;
mod prune;
mod publish;
pub mod pull;
mod relay;
mod retry;
pub mod trace;
mod wake;

pub use admin::{Depth, DeadLetter, QueueTable, depth, dead_letters, oldest_pending_age, replay, replay_all};
pub use consumer::{
    BatchHandler, Consumer, ConsumerOptions, Handler, HandlerError, LeaseBatchHandler, LeaseHandler, LeaseOptions, LockKeys, batch_handler_fn, handler_fn,
    lock_keys_fn,
};
pub use error::Error;
pub use grants::{DELIVERY_COLUMNS, puller_grants, quote_ident, relay_grants};
pub use message::{Delivery, Event, Headers, MessageId, Outgoing};
pub use prune::{Pruner, prune_once};
pub use publish::{publish, publish_all, publish_event, publish_with, schedule, statement_with};
pub use relay::{ClaimedBatch, Relay, RelayOptions, Routes, parse_subscriber, peer_pool};
pub use retry::RetryPolicy;

/// The engine's hot statements, for plan tests (every one must use its index under a
/// generic plan, since sqlx prepares them) and for the saga bench's replay.
#[doc(hidden)]
pub mod sql {
    pub use crate::consumer::{LEASE_CLAIM, LEASE_DONE, LOCK_KEYS, TX_CLAIM};
    pub use crate::floor::MARGIN as CLAIM_FLOOR_MARGIN;
    pub use crate::admin::{DEPTH, OLDEST, OUTBOX_WAITING};
    pub use crate::prune::{PRUNE, v7_floor};
    pub use crate::publish::INSERT_ROWS as PUBLISH_INSERT;
    pub use crate::relay::CLAIM as RELAY_CLAIM;
}

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The queue schema (`conveyor.outbox`, `conveyor.inbox`) as a migrator, for every service's
/// migrator to run beside the service's own. It records what it applied in
/// `conveyor._sqlx_migrations`, so the service's migrations keep sqlx's default table and
/// the two histories never collide, whatever versions either side uses.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate::Migrator::with_migrations(MIGRATIONS.iter().cloned().collect());
    m.create_schema("conveyor");
    m.dangerous_set_table_name("conveyor._sqlx_migrations");
    m
}

/// Applies the queue schema to `pool`'s database (see [`migrator`]).
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrator().run(pool).await
}

/// Notification channel a relay listens on for new outbox rows.
pub const OUTBOX_CHANNEL: &str = "conveyor_outbox";
/// Notification channel consumers listen on for new inbox rows.
pub const INBOX_CHANNEL: &str = "conveyor_inbox";
/// Advisory lock an idle relay holds so that publishers know to notify it.
pub const OUTBOX_WAKE_LOCK: i64 = 0x636f_6e76_6f75_7401;
/// Advisory lock an idle consumer holds so that relays know to notify it.
pub const INBOX_WAKE_LOCK: i64 = 0x636f_6e76_696e_6201;
