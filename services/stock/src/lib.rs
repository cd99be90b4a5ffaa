//! The stock service: an item per product (levels created from `product.created`), a
//! reservation per order (`order.placed` → `stock.reserved` or `stock.rejected`, all lines
//! or none), released again on `payment.declined`; every change of a level is a movement.
//! The orchestrated saga's commands do the same by the same code and are answered with
//! `stock.replied`: `stock.reserve` reserves, `stock.release` releases (and records an
//! order it has not seen released, so that its reservation, if it still comes, reserves
//! nothing). The worker can be slowed down at run time for demos and chaos runs (`faults`).

pub mod faults;
pub mod handlers;
pub mod http;
mod repo;

pub use faults::FLAGS;
pub use repo::{ItemRow, ReservedLine};

pub const SERVICE: &str = conveyor_contracts::service::STOCK;

/// This service's schema (the queue schema comes from `conveyor_queue::migrator()`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The statements of the order saga's path, named once: the repository runs them and
/// `cargo xtask bench saga` replays them.
pub mod sql {
    pub use crate::repo::{HANDLED, LOCK_ITEMS, RESERVE, SHIFT_ALL, MOVEMENTS};
}
