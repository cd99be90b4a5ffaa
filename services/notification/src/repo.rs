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
pub struct NewNotification {
    pub id: Uuid,
    pub order_id: Uuid,
    pub event_type: EventType,
    pub customer_id: Uuid,
    pub subject: String,
    pub body: String,
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

/// What deliveries need to know first, for a whole batch in one round trip: for each
/// (`$1[i]`, `$2[i]`), an order and an event type, whether it was notified already and, if
/// it was not, the template to render (none if it was deleted); a row per pair, in their
/// order.
// One index probe per key (LATERAL … LIMIT 1 cannot become a join or a hashed subplan,
// which an `EXISTS` here became: a scan of the whole table at every call).
pub const TO_NOTIFY: &str = "SELECT n.id IS NOT NULL AS notified, t.subject, t.body
     FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS k(order_id, event_type, i)
     LEFT JOIN LATERAL (SELECT n.id FROM notifications AS n WHERE n.order_id = k.order_id AND n.event_type = k.event_type LIMIT 1) AS n ON true
     LEFT JOIN templates AS t ON t.event_type = k.event_type AND n.id IS NULL
     ORDER BY k.i";

/// An answer of [`TO_NOTIFY`].
#[derive(Debug, sqlx::FromRow)]
pub struct ToNotify {
    pub notified: bool,
    pub subject: Option<String>,
    pub body: Option<String>,
}

/// [`TO_NOTIFY`] for `keys`: an answer per key, in their order.
///
/// Planned at each call: the worker runs it on pooled connections, whose cached plans are
/// never dropped, and a plan cached while `notifications` was nearly empty (a worker's
/// first batches) read the whole table at every call once it had grown (an earlier form,
/// with `EXISTS`, hashed it: 15 ms a call with 28,000 rows, at 500 sagas/s), where an index
/// probe per key takes microseconds.
pub async fn to_notify(conn: &mut PgConnection, keys: &[(Uuid, EventType)]) -> sqlx::Result<Vec<ToNotify>> {
    let (orders, types): (Vec<Uuid>, Vec<&str>) = keys.iter().map(|(o, t)| (*o, t.as_str())).unzip();
    sqlx::query_as(TO_NOTIFY).persistent(false).bind(orders).bind(types).fetch_all(conn).await
}

/// Deliveries recorded and announced in one statement, a transaction of its own (a publish
/// with the insert before it, `conveyor_queue::statement_with`): `$6` to `$14` the rows, as
/// arrays, `$1` to `$5` their `notification.sent`, and `$15` which message announces which
/// row (`$15[i]` the message of row `$6[i]`): a message is published only if its row is
/// new.
pub static RECORD: LazyLock<String> = LazyLock::new(|| {
    conveyor_queue::statement_with(
        "n AS (INSERT INTO notifications (id, order_id, event_type, customer_id, subject, body, data_source, attempts, delivered_at)
         SELECT * FROM unnest($6::uuid[], $7::uuid[], $8::text[], $9::uuid[], $10::text[], $11::text[], $12::text[], $13::int[], $14::timestamptz[])
         ON CONFLICT DO NOTHING RETURNING id)",
        "m.message_id IN (SELECT s.message_id FROM unnest($6::uuid[], $15::uuid[]) AS s(id, message_id) JOIN n USING (id))",
    )
});

/// Records deliveries, each with its `notification.sent` (`sent[i]` announces
/// `records[i]`), and publishes the messages of the new rows ([`RECORD`]); a row already
/// there (another worker delivered the same key, which the receiver deduplicated by its
/// idempotency key) is kept as it is and its message is not published: only a new row is
/// announced, by the statement that wrote it. Returns how many rows were new.
#[tracing::instrument(level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "INSERT", db.collection.name = "notifications"))]
pub async fn record_notifications(conn: &mut PgConnection, records: &[NewNotification], sent: &[Outgoing]) -> Result<u64, conveyor_queue::Error> {
    assert_eq!(records.len(), sent.len(), "one notification.sent per record");
    conveyor_queue::publish_with(conn, RECORD.as_str(), sent, |q| {
        q.bind(records.iter().map(|n| n.id).collect::<Vec<_>>())
            .bind(records.iter().map(|n| n.order_id).collect::<Vec<_>>())
            .bind(records.iter().map(|n| n.event_type.as_str()).collect::<Vec<_>>())
            .bind(records.iter().map(|n| n.customer_id).collect::<Vec<_>>())
            .bind(records.iter().map(|n| n.subject.as_str()).collect::<Vec<_>>())
            .bind(records.iter().map(|n| n.body.as_str()).collect::<Vec<_>>())
            .bind(records.iter().map(|n| n.data_source.as_str()).collect::<Vec<_>>())
            .bind(records.iter().map(|n| n.attempts).collect::<Vec<_>>())
            .bind(records.iter().map(|n| n.delivered_at).collect::<Vec<_>>())
            .bind(sent.iter().map(|m| m.id).collect::<Vec<Uuid>>())
    })
    .await
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

#[cfg(test)]
mod tests {
    use conveyor_contracts::NotificationSent;
    use conveyor_platform::testing::{migrated_db, outbox};

    use super::*;

    fn delivery(order_id: Uuid) -> (NewNotification, Outgoing) {
        let id = Uuid::now_v7();
        let record = NewNotification {
            id,
            order_id,
            event_type: EventType::Confirmed,
            customer_id: Uuid::now_v7(),
            subject: format!("Your order {order_id}"),
            body: "Hello".into(),
            data_source: DataSource::Event,
            attempts: 1,
            delivered_at: Utc::now(),
        };
        let sent = NotificationSent { order_id, notification_id: id, event_type: "order.confirmed".into(), subject: record.subject.clone(), delivered_at: record.delivered_at };
        (record, Outgoing::event(&sent).unwrap())
    }

    #[tokio::test]
    async fn a_batch_is_checked_in_order_and_only_its_new_rows_are_announced() {
        let pool = migrated_db(&crate::MIGRATOR).await;
        let mut conn = pool.acquire().await.unwrap();
        let orders: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        // The second order was recorded already (by another worker, with another id).
        let (earlier, earlier_sent) = delivery(orders[1]);
        assert_eq!(record_notifications(&mut conn, std::slice::from_ref(&earlier), std::slice::from_ref(&earlier_sent)).await.unwrap(), 1);

        let keys: Vec<(Uuid, EventType)> = orders.iter().map(|o| (*o, EventType::Confirmed)).chain([(orders[1], EventType::Cancelled)]).collect();
        let found = to_notify(&mut conn, &keys).await.unwrap();
        let notified: Vec<bool> = found.iter().map(|f| f.notified).collect();
        assert_eq!(notified, [false, true, false, false], "an answer per key, in their order");
        assert!(found[0].subject.is_some() && found[1].subject.is_none() && found[3].body.is_some(), "templates only for what is to notify");

        let (records, sent): (Vec<_>, Vec<_>) = orders.iter().map(|o| delivery(*o)).unzip();
        assert_eq!(record_notifications(&mut conn, &records, &sent).await.unwrap(), 2);
        let announced: Vec<Uuid> = outbox(&pool).await.iter().map(|(_, p)| p["notification_id"].as_str().unwrap().parse().unwrap()).collect();
        assert_eq!(announced, [earlier.id, records[0].id, records[2].id], "the row already there is not announced again");
        let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM notifications ORDER BY order_id").fetch_all(&pool).await.unwrap();
        assert_eq!(ids, [records[0].id, earlier.id, records[2].id]);
    }
}
