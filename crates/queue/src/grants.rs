//! What a relay's role may do in a subscriber's database, as statements for that database's
//! migrator to run (it owns the queue's tables; role names are deployment settings, so they
//! are not written into the migrations).
//!
//! (And what a puller's role may do in a publisher's database: [`puller_grants`].)
//!
//! A relay runs exactly one statement there, `relay::DELIVER`: an INSERT of the
//! [`DELIVERY_COLUMNS`] of `conveyor.inbox`, `ON CONFLICT DO NOTHING` without a conflict
//! target (a target would need SELECT on its column), plus the wake-up's
//! `pg_try_advisory_xact_lock_shared` and `pg_notify`, which need no privilege. Its role gets
//! that and nothing more: it cannot read the inbox (not even its message ids), update or
//! delete a row, choose a message's state, attempts or visibility (those columns take their
//! defaults), or touch any other table.

/// The columns of `conveyor.inbox` a delivery writes, in the order `relay::DELIVER` lists them.
pub const DELIVERY_COLUMNS: [&str; 6] = ["message_id", "topic", "key", "payload", "headers", "published_at"];

/// `name` as a quoted SQL identifier (role names come from configuration).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Statements that leave `role` with exactly a relay's rights in the queue schema: whatever
/// it held on the schema and its tables, sequences and functions is revoked, then USAGE on
/// the schema and INSERT on the inbox's delivery columns are granted. Run by the owner of the
/// schema, in one transaction. (CONNECT on the database, and nothing in the service's own
/// schema, is the migrator's part: `conveyor_platform::grants`.)
pub fn relay_grants(role: &str) -> Vec<String> {
    exactly(role, &[format!("INSERT ({}) ON conveyor.inbox", DELIVERY_COLUMNS.join(", "))])
}

/// Revokes whatever `role` held on the queue schema and its tables, sequences and
/// functions, then grants USAGE on the schema and each of `privileges` (`PRIVILEGE ON table`).
fn exactly(role: &str, privileges: &[String]) -> Vec<String> {
    let role = quote_ident(role);
    let mut statements = vec![
        format!("REVOKE ALL ON ALL TABLES IN SCHEMA conveyor FROM {role}"),
        format!("REVOKE ALL ON ALL SEQUENCES IN SCHEMA conveyor FROM {role}"),
        format!("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA conveyor FROM {role}"),
        format!("REVOKE ALL ON SCHEMA conveyor FROM {role}"),
        format!("GRANT USAGE ON SCHEMA conveyor TO {role}"),
    ];
    statements.extend(privileges.iter().map(|p| format!("GRANT {p} TO {role}")));
    statements
}

/// Statements that leave `role` with exactly a puller's rights in the queue schema of a
/// publisher's database (`crate::pull`): reading the outbox as a log (SELECT), and its
/// position reports (`pull::REPORT`: INSERT … ON CONFLICT DO UPDATE, which needs SELECT and
/// UPDATE too) into `conveyor.pull_positions`. It cannot write or delete a message, or read
/// or touch any other table. Revoked first, like [`relay_grants`].
pub fn puller_grants(role: &str) -> Vec<String> {
    exactly(role, &["SELECT ON conveyor.outbox".to_owned(), "SELECT, INSERT, UPDATE ON conveyor.pull_positions".to_owned()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grant_covers_exactly_the_columns_a_delivery_writes() {
        let insert = format!("INSERT INTO conveyor.inbox ({})", DELIVERY_COLUMNS.join(", "));
        assert!(crate::relay::DELIVER.contains(&insert), "{}", crate::relay::DELIVER);
        assert!(crate::relay::DELIVER.ends_with("ON CONFLICT DO NOTHING"), "no conflict target: it would need SELECT");
        assert!(!crate::relay::DELIVER.contains("RETURNING"), "RETURNING would need SELECT");
    }

    #[test]
    fn role_names_are_quoted() {
        assert_eq!(quote_ident("stock_relay"), "\"stock_relay\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert!(relay_grants("x\"; DROP TABLE y; --").iter().all(|s| s.contains("\"x\"\"; DROP TABLE y; --\"")));
    }
}
