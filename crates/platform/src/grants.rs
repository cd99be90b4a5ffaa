//! The privileges of a service's database, given by its migrator after the migrations (it
//! owns the database, its schemas and their objects; docs/databases.md says how the roles
//! and the database are provisioned).
//!
//! - The **runtime** role (APIs and workers): CONNECT; USAGE on `public` and `conveyor`;
//!   SELECT, INSERT, UPDATE, DELETE on their tables (the migration histories read-only; the
//!   APIs write `conveyor.fault_flags`, the workers read it — one role serves both);
//!   USAGE and SELECT on their sequences; EXECUTE on their functions; the same on whatever
//!   the migrator creates later (default privileges). No DDL, no TEMP, no ownership.
//! - Each **relay** role (other services' relays delivering here): CONNECT, and what
//!   `conveyor_queue::relay_grants` gives: INSERT on the inbox's delivery columns, no more.
//! - Each **puller** role (other services' workers pulling this outbox): CONNECT, and what
//!   `conveyor_queue::puller_grants` gives: SELECT on the outbox, and their position
//!   reports in `conveyor.pull_positions`, no more.
//! - PUBLIC: nothing (no CONNECT, no TEMP, no use of `public`), so no other service's role
//!   can even connect.
//!
//! The grants run in one transaction under an advisory lock (concurrent GRANTs on the same
//! object fail), and again on every migrator run, so they follow new tables and a changed
//! configuration (a relay role's rights are first revoked, then granted exactly).

use anyhow::{Context, bail};
use conveyor_queue::quote_ident;
use sqlx::{PgConnection, PgPool};

use crate::config::GrantArgs;

/// Serialises the grant steps of migrators running at once (`b"convgrnt"`).
const GRANT_LOCK: i64 = 0x636f_6e76_6772_6e74;

/// The schemas of a service's database and the migration history each one holds.
const SCHEMAS: [(&str, &str); 2] = [("public", "public._sqlx_migrations"), ("conveyor", "conveyor._sqlx_migrations")];

/// Gives the roles named in `roles` their privileges on `pool`'s database (nothing when none
/// is named). Refuses roles that would make the grants meaningless: a superuser, the
/// migrator's own role, one that owns objects here, or one role for both parts.
pub async fn apply(pool: &PgPool, roles: &GrantArgs) -> anyhow::Result<()> {
    if roles.runtime_role.is_none() && roles.relay_roles.is_empty() && roles.puller_roles.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(GRANT_LOCK).execute(&mut *tx).await?;
    let (me, owns_database): (String, bool) = sqlx::query_as(
        "SELECT current_user::text, pg_has_role(current_user, d.datdba, 'USAGE') FROM pg_database d WHERE d.datname = current_database()",
    )
    .fetch_one(&mut *tx)
    .await?;
    if !owns_database {
        bail!("the migrator's role {me:?} does not own this database, so it cannot say who may connect: ALTER DATABASE … OWNER TO {}", quote_ident(&me));
    }
    let named = roles.runtime_role.iter().chain(&roles.relay_roles).chain(&roles.puller_roles);
    for role in named.clone() {
        check_role(&mut tx, role, &me).await?;
    }
    if let Some(runtime) = &roles.runtime_role
        && roles.relay_roles.contains(runtime)
    {
        bail!("{runtime:?} is named as both the runtime role and a relay role; each needs a role of its own");
    }
    if let Some(both) = roles.puller_roles.iter().find(|p| roles.relay_roles.contains(p) || roles.runtime_role.as_ref() == Some(*p)) {
        bail!("{both:?} is named as a puller role and as the runtime or a relay role; each needs a role of its own");
    }
    let database: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&mut *tx).await?;
    let database = quote_ident(&database);
    let mut statements = vec![format!("REVOKE ALL ON DATABASE {database} FROM PUBLIC"), "REVOKE ALL ON SCHEMA public FROM PUBLIC".to_owned()];
    // Functions the migrator creates from now on are not callable by everybody.
    statements.push("ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC".to_owned());
    for role in named {
        statements.push(format!("REVOKE ALL ON DATABASE {database} FROM {}", quote_ident(role)));
        statements.push(format!("GRANT CONNECT ON DATABASE {database} TO {}", quote_ident(role)));
    }
    if let Some(runtime) = &roles.runtime_role {
        statements.extend(runtime_grants(runtime));
    }
    for (role, queue_grants) in roles.relay_roles.iter().map(|r| (r, conveyor_queue::relay_grants(r))).chain(roles.puller_roles.iter().map(|r| (r, conveyor_queue::puller_grants(r)))) {
        let ident = quote_ident(role);
        statements.push(format!("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ident}"));
        statements.push(format!("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {ident}"));
        statements.push(format!("REVOKE ALL ON SCHEMA public FROM {ident}"));
        statements.extend(queue_grants);
    }
    for statement in &statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.as_str()))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("granting privileges: {statement}"))?;
    }
    tx.commit().await?;
    Ok(())
}

/// The runtime role's statements: DML on every table of both schemas, the histories
/// read-only, sequences, functions, and the same for objects created later.
fn runtime_grants(runtime: &str) -> Vec<String> {
    let role = quote_ident(runtime);
    let mut statements = Vec::new();
    for (schema, history) in SCHEMAS {
        statements.extend([
            format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}"),
            format!("REVOKE INSERT, UPDATE, DELETE ON {history} FROM {role}"),
            format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"),
            format!("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {role}"),
            format!("ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}"),
            format!("ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE, SELECT ON SEQUENCES TO {role}"),
            format!("ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT EXECUTE ON FUNCTIONS TO {role}"),
        ]);
    }
    // The platform's history (`db::platform_migrator`) is read-only too.
    statements.push(format!("REVOKE INSERT, UPDATE, DELETE ON conveyor._platform_migrations FROM {role}"));
    statements
}

/// Fails unless `role` exists and holds no more than its grants could give it.
async fn check_role(conn: &mut PgConnection, role: &str, migrator: &str) -> anyhow::Result<()> {
    let found: Option<(bool, bool, i64)> = sqlx::query_as(
        "SELECT r.rolsuper, r.rolname = current_user,
                (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relowner = r.oid AND n.nspname IN ('public', 'conveyor'))
              + (SELECT count(*) FROM pg_namespace n WHERE n.nspowner = r.oid AND n.nspname IN ('public', 'conveyor'))
              + (SELECT count(*) FROM pg_database d WHERE d.datdba = r.oid AND d.datname = current_database())
         FROM pg_roles r WHERE r.rolname = $1",
    )
    .bind(role)
    .fetch_optional(&mut *conn)
    .await?;
    match found {
        None => bail!("role {role:?} does not exist: whoever provisions the databases creates it first (docs/databases.md)"),
        Some((true, _, _)) => bail!("role {role:?} is a superuser: grants cannot limit it; give it a role of its own"),
        Some((_, true, _)) => bail!("role {role:?} is the role this migrator runs as; APIs, workers and relays need roles of their own"),
        Some((_, _, owned)) if owned > 0 => bail!(
            "role {role:?} owns {owned} object(s) of this database (an owner keeps every right); hand them to the migrator's role first: REASSIGN OWNED BY {} TO {}",
            quote_ident(role),
            quote_ident(migrator)
        ),
        Some(_) => Ok(()),
    }
}
