//! Pools, the migrated-schema check every API and worker runs at start, and the body of
//! every `<svc>-migrator`.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail};
pub use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::{DbArgs, GrantArgs};

/// A pool on the service's database. Connections are not pinged when handed out (sqlx
/// would spend a round trip per checkout); a broken one fails its query and is replaced.
pub async fn connect(db: &DbArgs) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = db.database_url.parse().with_context(|| format!("invalid database URL {}", redact(&db.database_url)))?;
    PgPoolOptions::new()
        .max_connections(db.db_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to the database at {}", redact(&db.database_url)))
}

/// The URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match url.split_once("://").and_then(|(scheme, rest)| rest.rsplit_once('@').map(|(cred, host)| (scheme, cred, host))) {
        Some((scheme, cred, host)) => {
            let user = cred.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_owned(),
    }
}

static PLATFORM_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The platform's own tables (`conveyor.fault_flags`, see [`crate::faults`]) as a migrator,
/// run by every service's migrator after the queue schema. It records what it applied in
/// `conveyor._platform_migrations`, apart from the queue's and the service's histories.
pub fn platform_migrator() -> Migrator {
    let mut m = Migrator::with_migrations(PLATFORM_MIGRATIONS.iter().cloned().collect());
    m.dangerous_set_table_name("conveyor._platform_migrations");
    m
}

/// Applies the queue schema, then the platform's tables (see [`platform_migrator`]).
pub async fn migrate_shared(pool: &PgPool) -> anyhow::Result<()> {
    conveyor_queue::migrate(pool).await.context("applying the queue schema")?;
    platform_migrator().run(pool).await.context("applying the platform's tables")?;
    Ok(())
}

/// Refuses to go on unless the queue schema, the platform's tables and the service's own
/// migrations are applied: APIs and workers never migrate, and must not run against an old
/// schema.
pub async fn require_migrated(pool: &PgPool, service: &str, migrator: &Migrator) -> anyhow::Result<()> {
    let missing_queue = missing(pool, "conveyor._sqlx_migrations", &conveyor_queue::migrator()).await?;
    let missing_platform = missing(pool, "conveyor._platform_migrations", &platform_migrator()).await?;
    let missing_own = missing(pool, "public._sqlx_migrations", migrator).await?;
    if missing_queue.is_empty() && missing_platform.is_empty() && missing_own.is_empty() {
        return Ok(());
    }
    let mut what = Vec::new();
    if !missing_own.is_empty() {
        what.push(format!("{service} migrations {missing_own:?}"));
    }
    if !missing_queue.is_empty() {
        what.push(format!("queue schema migrations {missing_queue:?}"));
    }
    if !missing_platform.is_empty() {
        what.push(format!("platform migrations {missing_platform:?}"));
    }
    bail!(
        "the {service} database is not migrated (not applied: {}); run `{service}-migrator` against it first",
        what.join(", ")
    )
}

async fn missing(pool: &PgPool, table: &str, migrator: &Migrator) -> anyhow::Result<Vec<i64>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(table).fetch_one(pool).await.context("reading the migration history")?;
    let applied: BTreeSet<i64> = if exists {
        let sql = match table {
            "conveyor._sqlx_migrations" => "SELECT version FROM conveyor._sqlx_migrations WHERE success",
            "conveyor._platform_migrations" => "SELECT version FROM conveyor._platform_migrations WHERE success",
            _ => "SELECT version FROM public._sqlx_migrations WHERE success",
        };
        sqlx::query_scalar(sql)
            .fetch_all(pool)
            .await
            .context("reading the migration history")?
            .into_iter()
            .collect()
    } else {
        BTreeSet::new()
    };
    Ok(migrator.iter().filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version)).map(|m| m.version).collect())
}

/// What a `<svc>-migrator` does: apply the queue schema, the platform's tables and the
/// service's migrations to its database, grant the roles in `grants` their privileges (see [`crate::grants`]), then
/// return. Safe to run again (applied migrations are skipped, grants repeated) and by
/// several processes at once (sqlx takes an advisory lock, and so do the grants).
pub async fn migrate(db: &DbArgs, grants: &GrantArgs, service: &str, migrator: &Migrator) -> anyhow::Result<()> {
    let pool = connect(db).await?;
    migrate_shared(&pool).await?;
    migrator.run(&pool).await.with_context(|| format!("applying the {service} migrations"))?;
    require_migrated(&pool, service, migrator).await?;
    crate::grants::apply(&pool, grants).await?;
    if grants.runtime_role.is_some() || !grants.relay_roles.is_empty() || !grants.puller_roles.is_empty() {
        tracing::info!(service, runtime = ?grants.runtime_role, relay = ?grants.relay_roles, puller = ?grants.puller_roles, "privileges granted");
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM public._sqlx_migrations WHERE success").fetch_one(&pool).await?;
    tracing::info!(service, applied, database = redact(&db.database_url), "database is migrated");
    pool.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
