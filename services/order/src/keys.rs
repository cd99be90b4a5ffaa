//! Expiry of idempotency keys: a client retries within minutes, so a key older than the
//! retention window (default a day) is deleted, in small batches, by the order worker.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Deletes up to `batch` keys older than `retention`; returns how many.
pub async fn prune_once(pool: &PgPool, retention: Duration, batch: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys WHERE key = ANY (ARRAY(
             SELECT key FROM idempotency_keys WHERE created_at < now() - $1 * interval '1 millisecond'
             ORDER BY created_at LIMIT $2))",
    )
    .bind(retention.as_millis() as i64)
    .bind(batch)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Prunes every minute until `shutdown`; a failed round is logged and tried again.
pub async fn prune_loop(pool: PgPool, retention: Duration, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        loop {
            match prune_once(&pool, retention, 1000).await {
                Ok(1000) => continue,
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(deleted = n, "expired idempotency keys pruned");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning idempotency keys failed; trying again later");
                    break;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}
