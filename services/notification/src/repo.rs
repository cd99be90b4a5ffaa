use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use conveyor_queue::Outgoing;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::EventType;
use crate::render::DataSource;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TemplateRow {
    pub event_type: String,
    pub subject: String,
    pub body: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NotificationRow {
    pub id: Uuid,
    pub order_id: Uuid,
    pub event_type: String,
    pub customer_id: Uuid,
    pub subject: String,
    pub body: String,
    pub data_source: String,
    pub attempts: i32,
    pub delivered_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// A delivered notification, to record.
pub struct NewNotification<'a> {
    pub id: Uuid,
    pub order_id: Uuid,
    pub event_type: EventType,
    pub customer_id: Uuid,
    pub subject: &'a str,
    pub body: &'a str,
    pub data_source: DataSource,
    pub attempts: i32,
    pub delivered_at: DateTime<Utc>,
}

pub async fn templates(conn: &mut PgConnection) -> sqlx::Result<Vec<TemplateRow>> {
    sqlx::query_as("SELECT event_type, subject, body, updated_at FROM templates ORDER BY event_type").fetch_all(conn).await
}

pub const TEMPLATE: &str = "SELECT event_type, subject, body, updated_at FROM templates WHERE event_type = $1";

pub async fn template(conn: &mut PgConnection, event_type: EventType) -> sqlx::Result<Option<TemplateRow>> {
    sqlx::query_as(TEMPLATE)
        .bind(event_type.as_str())
        .fetch_optional(conn)
        .await
}

/// Replaces the template of `event_type` (every known type has a row from the migration;
/// the upsert keeps a database whose row was deleted by hand working).
pub async fn put_template(conn: &mut PgConnection, event_type: EventType, subject: &str, body: &str) -> sqlx::Result<TemplateRow> {
    sqlx::query_as(
        "INSERT INTO templates (event_type, subject, body) VALUES ($1, $2, $3)
         ON CONFLICT (event_type) DO UPDATE SET subject = excluded.subject, body = excluded.body, updated_at = now()
         RETURNING event_type, subject, body, updated_at",
    )
    .bind(event_type.as_str())
    .bind(subject)
    .bind(body)
    .fetch_one(conn)
    .await
}

/// What a delivery needs to know first, in one round trip: whether `$1`'s `$2` was
/// notified already and, if it was not, the template to render (none if it was deleted).
pub const TO_NOTIFY: &str = "SELECT n.notified, t.subject, t.body
     FROM (SELECT EXISTS (SELECT 1 FROM notifications WHERE order_id = $1 AND event_type = $2) AS notified) AS n
     LEFT JOIN templates AS t ON t.event_type = $2 AND NOT n.notified";

/// The answer of [`TO_NOTIFY`].
#[derive(Debug, sqlx::FromRow)]
pub struct ToNotify {
    pub notified: bool,
    pub subject: Option<String>,
    pub body: Option<String>,
}

pub async fn to_notify(conn: &mut PgConnection, order_id: Uuid, event_type: EventType) -> sqlx::Result<ToNotify> {
    sqlx::query_as(TO_NOTIFY).bind(order_id).bind(event_type.as_str()).fetch_one(conn).await
}

/// A delivery recorded and announced in one statement, a transaction of its own (a publish
/// with the insert before it, `conveyor_queue::statement_with`): `$6` to `$14` the row,
/// `$1` to `$5` its `notification.sent`, published only if the row is new.
pub static RECORD: LazyLock<String> = LazyLock::new(|| {
    conveyor_queue::statement_with(
        "n AS (INSERT INTO notifications (id, order_id, event_type, customer_id, subject, body, data_source, attempts, delivered_at)
         VALUES ($6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT DO NOTHING RETURNING true)",
        "EXISTS (SELECT FROM n)",
    )
});

/// Records a delivery and publishes `sent` ([`RECORD`]); a row already there (another
/// worker delivered the same key, which the receiver deduplicated by its idempotency key)
/// is kept as it is, and nothing is published: only a new row is announced, by the
/// statement that wrote it. Whether the row is new.
#[tracing::instrument(level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "INSERT", db.collection.name = "notifications"))]
pub async fn record_notification(conn: &mut PgConnection, n: &NewNotification<'_>, sent: Outgoing) -> Result<bool, conveyor_queue::Error> {
    let published = conveyor_queue::publish_with(conn, RECORD.as_str(), std::slice::from_ref(&sent), |q| {
        q.bind(n.id)
            .bind(n.order_id)
            .bind(n.event_type.as_str())
            .bind(n.customer_id)
            .bind(n.subject)
            .bind(n.body)
            .bind(n.data_source.as_str())
            .bind(n.attempts)
            .bind(n.delivered_at)
    })
    .await?;
    Ok(published == 1)
}

pub async fn notifications_of(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Vec<NotificationRow>> {
    sqlx::query_as(
        "SELECT id, order_id, event_type, customer_id, subject, body, data_source, attempts, delivered_at, created_at
         FROM notifications WHERE order_id = $1 ORDER BY created_at, event_type",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await
}
