//! Wake-ups: `LISTEN` on a channel and wake one idle loop per notification; polling is the
//! fallback when a notification is lost (listener reconnecting) or never sent (backoff).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Spawns a task that listens on `channel` and calls `notify_one` on each of `wakes` for every
/// notification, until `shutdown`. Errors (a dropped connection) wake everybody: whatever
/// was notified in the gap is found by the loops' next claim.
pub(crate) fn spawn_listener(pool: PgPool, channel: &'static str, wakes: Vec<Arc<Notify>>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, channel, "cannot connect the notification listener; polling only until it can");
                    if sleep_or_cancel(Duration::from_secs(1), &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            if let Err(e) = listener.listen(channel).await {
                tracing::warn!(error = %e, channel, "LISTEN failed; retrying");
                if sleep_or_cancel(Duration::from_secs(1), &shutdown).await {
                    return;
                }
                continue;
            }
            // Something may have been published while we were not listening.
            wakes.iter().for_each(|w| w.notify_waiters());
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = listener.try_recv() => match n {
                        Ok(Some(_)) => wakes.iter().for_each(|w| w.notify_one()),
                        // The connection was lost; PgListener reconnects on the next call.
                        Ok(None) => wakes.iter().for_each(|w| w.notify_waiters()),
                        Err(e) => {
                            tracing::warn!(error = %e, channel, "notification listener failed; reconnecting");
                            wakes.iter().for_each(|w| w.notify_waiters());
                            break;
                        }
                    }
                }
            }
        }
    });
}

/// Sleeps for `d`; returns true when `shutdown` fired first.
pub(crate) async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Waits until woken, the poll interval passes, or shutdown. `notified` must have been
/// enabled before the claim that came back empty, so a wake-up in between is not lost.
pub(crate) async fn idle(notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>, poll: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = notified => {}
        _ = tokio::time::sleep(poll) => {}
    }
}
