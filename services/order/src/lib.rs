//! The order service: places orders priced from its own copy of the catalog (kept from
//! product events), publishes `order.placed`, and settles each order when stock or payment
//! answers: confirmed on `payment.captured`, cancelled on `stock.rejected` or
//! `payment.declined`, each publishing `order.confirmed` / `order.cancelled`.
//!
//! The order is event-sourced (CQRS, docs/cqrs.md): its write side is a stream of events per
//! order ([`stream`]), appended under optimistic concurrency, which every command is
//! checked against and what it publishes comes from, in the same transaction. Its read
//! side is a projection ([`projection`]): each order's view with the timeline of its saga,
//! built from the stream by the worker's projector, rebuilt while the shop runs.
//!
//! In orchestration mode (order-api `--saga-mode`, recorded on each order) it publishes
//! `saga.start` instead of `order.placed`, settles on the coordinator's `order.confirm` /
//! `order.cancel` by the same code, and answers each with `order.replied`.

pub mod domain;
pub mod handlers;
pub mod http;
pub mod keys;
pub mod projection;
mod repo;
pub mod stream;
pub mod views;

pub const SERVICE: &str = conveyor_contracts::service::ORDER;

/// This service's schema (the queue schema comes from `conveyor_queue::migrator()`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The statements of the order saga's path, named once: the repository runs them and
/// `cargo xtask bench saga` replays them.
pub mod sql {
    pub use crate::projection::{ADVANCE, NEXT_EVENTS, POSITION_SKIP_LOCKED, UPSERT_VIEWS};
    pub use crate::repo::{CUSTOMER_VIEWS, GET_VIEW, PLACE, PRODUCTS};
    pub use crate::stream::{APPEND, STREAMS};
}
