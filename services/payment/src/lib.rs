//! The payment service (skeleton: being written).

pub const SERVICE: &str = conveyor_contracts::service::PAYMENT;

/// This service's schema (the queue schema comes from `conveyor_queue::migrator()`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
