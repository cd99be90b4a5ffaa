//! The payment service: a simulated processor with real rules. Customers hold a balance
//! in one currency that can never go below zero; `stock.reserved` captures an order's
//! total at most once (`payment.captured`) or declines it (`payment.declined`); faults
//! (latency, errors, declines) can be switched on at run time for demos and chaos tests
//! (`faults`, `/admin/faults`). The orchestrated saga's commands are answered with
//! `payment.replied`: `payment.capture` captures as `stock.reserved` does, by the same
//! code; `payment.refund` gives a captured payment back to the balance, once.

pub mod faults;
pub mod handlers;
pub mod http;
mod repo;

pub use faults::FLAGS;

pub const SERVICE: &str = conveyor_contracts::service::PAYMENT;

/// This service's schema (the queue schema comes from `conveyor_queue::migrator()`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The statements of the order saga's path, named once: the repository runs them and
/// `cargo xtask bench saga` replays them.
pub mod sql {
    pub use crate::repo::{CAPTURE, LEDGER, LOCK_CUSTOMERS, PAID};
}
