//! Provisioning a service's database with least privilege, as an admin does it once per
//! deployment (docs/databases.md has the same steps as SQL): three login roles per service
//! and the database owned by the first.
//!
//! - the **migrator** role owns the database, and so the schemas and tables its migrations
//!   create; it runs the migrations and then grants the others their privileges;
//! - the **runtime** role is what the service's APIs and workers connect as;
//! - the **relay** role is what other services' relays deliver into this database's inbox
//!   with (only for a service that receives messages);
//! - the **puller** role is what other services' workers read this database's outbox with
//!   under pull delivery (only for a service that publishes to others).
//!
//! The roles get no attribute beyond LOGIN (no superuser, CREATEDB, CREATEROLE,
//! replication); what they may do in the database is granted by the migrator
//! (`conveyor_platform::grants`), which also closes the database to everyone else.

use anyhow::{Context, Result, bail};
use rand::Rng;

use crate::{connect_admin, create_database};

/// The login roles of one service's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseRoles {
    pub migrator: String,
    pub runtime: String,
    /// `None` for a database nobody delivers messages to.
    pub relay: Option<String>,
    /// `None` for a database whose outbox nobody reads.
    pub puller: Option<String>,
}

impl DatabaseRoles {
    /// `{prefix}{service}_migrator`, `…_runtime`, (when `relay`: it receives messages)
    /// `…_relay` and (when `puller`: it publishes to others) `…_puller`.
    pub fn for_service(prefix: &str, service: &str, relay: bool, puller: bool) -> Self {
        DatabaseRoles {
            migrator: format!("{prefix}{service}_migrator"),
            runtime: format!("{prefix}{service}_runtime"),
            relay: relay.then(|| format!("{prefix}{service}_relay")),
            puller: puller.then(|| format!("{prefix}{service}_puller")),
        }
    }
}

/// A provisioned database: its URL for each role (each with the role's password).
#[derive(Debug, Clone)]
pub struct ProvisionedDatabase {
    pub roles: DatabaseRoles,
    /// The admin's URL of this database (for checks and inspection, never for a service).
    pub admin: String,
    pub migrator: String,
    pub runtime: String,
    pub relay: Option<String>,
    pub puller: Option<String>,
}

/// Creates (or updates) the roles in `roles` — each gets LOGIN, a fresh random password and
/// no other attribute — and `database` owned by the migrator role, on the server behind
/// `admin_url`. A database that exists already is handed to the migrator role with its
/// schemas and tables (as created by an earlier, single-role setup), so its migrator can go
/// on migrating it and granting on it. Returns every role's URL of the database.
pub async fn provision_database(admin_url: &str, database: &str, roles: &DatabaseRoles) -> Result<ProvisionedDatabase> {
    use sqlx::Connection;
    let names = [Some(&roles.migrator), Some(&roles.runtime), roles.relay.as_ref(), roles.puller.as_ref()];
    let names: Vec<&String> = names.into_iter().flatten().collect();
    for name in &names {
        check_role_name(name)?;
    }
    let mut passwords = Vec::new();
    let mut conn = connect_admin(admin_url).await?;
    for name in &names {
        let password = random_password();
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = $1").bind(name.as_str()).fetch_optional(&mut conn).await?;
        let verb = if exists.is_some() { "ALTER" } else { "CREATE" };
        let sql = format!("{verb} ROLE \"{name}\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD '{password}'");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.with_context(|| format!("{verb} ROLE {name} failed on {admin_url}"))?;
        passwords.push(password);
    }
    let admin = create_database(admin_url, database).await?;
    let owner: String = sqlx::query_scalar("SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1")
        .bind(database)
        .fetch_one(&mut conn)
        .await?;
    if owner != roles.migrator {
        let sql = format!("ALTER DATABASE \"{}\" OWNER TO \"{}\"", database.replace('"', "\"\""), roles.migrator);
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.with_context(|| format!("handing {database} to {}", roles.migrator))?;
        adopt(&admin, &roles.migrator).await?;
    }
    let _ = conn.close().await;
    let url = |name: &String| {
        let i = names.iter().position(|n| *n == name).expect("a role provisioned above");
        with_user(&admin, names[i], &passwords[i])
    };
    Ok(ProvisionedDatabase {
        roles: roles.clone(),
        admin: admin.clone(),
        migrator: url(&roles.migrator),
        runtime: url(&roles.runtime),
        relay: roles.relay.as_ref().map(url),
        puller: roles.puller.as_ref().map(url),
    })
}

/// Hands the `conveyor` schema and every table, view and free-standing sequence of `public`
/// and `conveyor` in the database at `admin_db_url` to `owner` (a table's own sequences and
/// indexes follow it); on PostgreSQL before 15, `public` itself too.
async fn adopt(admin_db_url: &str, owner: &str) -> Result<()> {
    use sqlx::Connection;
    let sql = format!(
        r#"DO $adopt$
DECLARE r record;
BEGIN
  FOR r IN SELECT nspname FROM pg_namespace
           WHERE (nspname = 'conveyor' OR (nspname = 'public' AND nspowner <> 'pg_database_owner'::regrole))
             AND nspowner <> '"{owner}"'::regrole LOOP
    EXECUTE format('ALTER SCHEMA %I OWNER TO "{owner}"', r.nspname);
  END LOOP;
  FOR r IN SELECT c.oid::regclass AS name, CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                  WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END AS kind
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname IN ('public', 'conveyor') AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
             AND c.relowner <> '"{owner}"'::regrole
             AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')) LOOP
    EXECUTE format('ALTER %s %s OWNER TO "{owner}"', r.kind, r.name);
  END LOOP;
END
$adopt$"#
    );
    let mut conn = connect_admin(admin_db_url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.with_context(|| format!("handing the objects of {admin_db_url} to {owner}"))?;
    let _ = conn.close().await;
    Ok(())
}

/// Role names go into SQL and URLs unquoted-safe: lower-case letters, digits, `_`.
fn check_role_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !ok {
        bail!("role name {name:?}: use 1 to 63 lower-case letters, digits and '_', not starting with a digit");
    }
    Ok(())
}

/// 32 letters and digits: safe in SQL literals and URLs as they are.
fn random_password() -> String {
    rand::rng().sample_iter(rand::distr::Alphanumeric).take(32).map(char::from).collect()
}

/// `url` with `user:password` as its user information.
pub fn with_user(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host = match rest[..authority_end].rsplit_once('@') {
        Some((_, host)) => host,
        None => &rest[..authority_end],
    };
    format!("{scheme}://{user}:{password}@{host}{}", &rest[authority_end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_the_role_and_its_password() {
        assert_eq!(with_user("postgres://postgres@127.0.0.1:5/x", "a_runtime", "pw"), "postgres://a_runtime:pw@127.0.0.1:5/x");
        assert_eq!(with_user("postgres://u:old@h/x?sslmode=disable", "r", "p"), "postgres://r:p@h/x?sslmode=disable");
        assert_eq!(with_user("postgresql://h:5432", "r", "p"), "postgresql://r:p@h:5432");
    }

    #[test]
    fn role_names_are_checked() {
        assert!(check_role_name("e2e_0a1b_stock_relay").is_ok());
        for bad in ["", "Stock", "a-b", "a\"b", "1a", &"x".repeat(64)] {
            assert!(check_role_name(bad).is_err(), "{bad:?}");
        }
        let roles = DatabaseRoles::for_service("t_", "order", false, true);
        assert_eq!((roles.migrator.as_str(), roles.runtime.as_str(), roles.relay), ("t_order_migrator", "t_order_runtime", None));
        assert_eq!(roles.puller.as_deref(), Some("t_order_puller"));
    }

    async fn connect(url: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
        use sqlx::Connection;
        sqlx::PgConnection::connect(url).await
    }

    async fn one<T>(conn: &mut sqlx::PgConnection, sql: &'static str) -> T
    where
        T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        sqlx::query_scalar(sql).fetch_one(conn).await.unwrap()
    }

    fn prefix() -> String {
        format!("p{}_", &uuid::Uuid::now_v7().simple().to_string()[22..])
    }

    #[tokio::test]
    async fn each_role_logs_in_with_its_password_and_the_migrator_owns_the_database() {
        let admin = crate::shared_admin_url().await;
        let prefix = prefix();
        let roles = DatabaseRoles::for_service(&prefix, "stock", true, true);
        let db = provision_database(&admin, &format!("{prefix}stock"), &roles).await.unwrap();
        let relay = (db.relay.as_deref().unwrap(), roles.relay.as_deref().unwrap());
        let puller = (db.puller.as_deref().unwrap(), roles.puller.as_deref().unwrap());
        for (url, role) in [(db.migrator.as_str(), roles.migrator.as_str()), (db.runtime.as_str(), roles.runtime.as_str()), relay, puller] {
            let mut conn = connect(url).await.unwrap_or_else(|e| panic!("{role}: {e}"));
            assert_eq!(one::<String>(&mut conn, "SELECT current_user::text").await, role);
            let attributes: bool = one(&mut conn, "SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication FROM pg_roles WHERE rolname = current_user").await;
            assert!(!attributes, "{role} has no attribute beyond LOGIN");
        }
        let mut admin_conn = connect(&db.admin).await.unwrap();
        assert_eq!(one::<String>(&mut admin_conn, "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = current_database()").await, roles.migrator);

        // Provisioning again gives new passwords; the old ones stop working where the server
        // checks passwords (a private cluster does; a DATABASE_URL server may trust everyone).
        let again = provision_database(&admin, &format!("{prefix}stock"), &roles).await.unwrap();
        assert_ne!(again.runtime, db.runtime);
        connect(&again.runtime).await.unwrap();
        let trusting: bool = one(&mut admin_conn, "SELECT EXISTS (SELECT 1 FROM pg_hba_file_rules WHERE auth_method = 'trust' AND 'all' = ANY (user_name))").await;
        if !trusting {
            let refused = connect(&db.runtime).await.unwrap_err().to_string();
            assert!(refused.contains("password authentication failed"), "{refused}");
        }
    }

    #[tokio::test]
    async fn a_database_made_by_a_single_role_setup_is_handed_to_the_migrator() {
        let admin = crate::shared_admin_url().await;
        let prefix = prefix();
        let name = format!("{prefix}orders");
        let url = create_database(&admin, &name).await.unwrap();
        let mut conn = connect(&url).await.unwrap();
        sqlx::raw_sql(
            "CREATE SCHEMA conveyor; CREATE TABLE conveyor.inbox (id bigserial PRIMARY KEY);
             CREATE TABLE orders (id bigserial PRIMARY KEY); CREATE SEQUENCE free_standing;",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let roles = DatabaseRoles::for_service(&prefix, "order", true, true);
        provision_database(&admin, &name, &roles).await.unwrap();
        let owners: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT pg_get_userbyid(relowner)::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname IN ('public', 'conveyor')
             UNION SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = 'conveyor'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(owners, vec![roles.migrator.clone()], "tables, their sequences and indexes, the free sequence, the schema");
    }
}
