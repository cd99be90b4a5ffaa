//! The catalog service: products with a name, a price and the stock they start with.
//! Every change is published (`product.created`, `product.updated`) in the transaction
//! that makes it; stock and order keep their own copies from those events.

pub mod http;
mod repo;

pub use repo::ProductRow;

pub const SERVICE: &str = conveyor_contracts::service::CATALOG;

/// This service's schema (the queue schema comes from `conveyor_queue::migrator()`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
