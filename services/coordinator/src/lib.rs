//! The saga coordinator (ARCHITECTURE §3b): the order saga of every order placed in
//! orchestration mode, driven from one place. It keeps one saga per order in its own
//! database, sends stock, payment and order their commands (`stock.reserve`,
//! `payment.capture`, `order.confirm`, …) through its outbox, moves the saga on their
//! replies, gives each step a deadline (a delayed message in its own inbox), and runs the
//! compensations itself: a release when payment declines or a step times out, a refund
//! when a capture comes after its saga timed out.

pub mod http;
mod repo;
pub mod saga;

pub use saga::{Settings, State, Step};

pub const SERVICE: &str = conveyor_contracts::service::COORDINATOR;

/// This service's schema (the queue schema comes from `conveyor_queue::migrator()`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Publishes the in-flight gauges every `every` until `stop`: sagas not over by state
/// (`conveyor_sagas_in_flight`) and how many of them have not moved for `overdue`
/// (`conveyor_sagas_overdue`: a deadline moves a waiting saga on, so one that stays put
/// that long means replies or the coordinator itself are not getting through).
pub async fn watch_in_flight(pool: sqlx::PgPool, every: std::time::Duration, overdue: std::time::Duration, stop: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    loop {
        match pool.acquire().await {
            Ok(mut conn) => match repo::in_flight(&mut conn, overdue.as_secs_f64()).await {
                Ok(rows) => {
                    for state in State::ALL.iter().filter(|s| !s.is_terminal()) {
                        let (n, late) = rows.iter().find(|r| r.0 == state.as_str()).map_or((0, 0), |r| (r.1, r.2));
                        metrics::gauge!("conveyor_sagas_in_flight", "state" => state.as_str()).set(n as f64);
                        metrics::gauge!("conveyor_sagas_overdue", "state" => state.as_str()).set(late as f64);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "counting sagas in flight failed"),
            },
            Err(e) => tracing::warn!(error = %e, "counting sagas in flight: no connection"),
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}
