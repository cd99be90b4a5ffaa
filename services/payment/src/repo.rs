//! The payment tables: customers (balances), payments (one per order) and the ledger.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use conveyor_contracts::{Currency, Money};
use conveyor_queue::Outgoing;
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CustomerRow {
    pub id: Uuid,
    pub name: String,
    pub currency: String,
    pub balance_minor: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PaymentRow {
    pub id: Uuid,
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    pub status: String,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl PaymentRow {
    pub fn amount(&self) -> Money {
        Money { amount_minor: self.amount_minor, currency: self.currency.parse::<Currency>().expect("stored currencies were validated") }
    }
}

macro_rules! customer_columns {
    () => {
        "id, name, currency, balance_minor, created_at, updated_at"
    };
}

/// Creates a customer with its opening balance; `None` when the id is taken.
pub async fn insert_customer(conn: &mut PgConnection, id: Uuid, name: &str, currency: Currency, balance: i64) -> sqlx::Result<Option<CustomerRow>> {
    let row: Option<CustomerRow> = sqlx::query_as(concat!(
        "INSERT INTO customers (id, name, currency, balance_minor) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING RETURNING ",
        customer_columns!()
    ))
    .bind(id)
    .bind(name)
    .bind(currency.as_str())
    .bind(balance)
    .fetch_optional(&mut *conn)
    .await?;
    if row.is_some() {
        record(conn, "open", &[(id, balance, None)]).await?;
    }
    Ok(row)
}

pub async fn get_customer(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<CustomerRow>> {
    sqlx::query_as(concat!("SELECT ", customer_columns!(), " FROM customers WHERE id = $1")).bind(id).fetch_optional(conn).await
}

/// The customer, locked until the transaction ends (for a read-check-write of its balance).
pub async fn lock_customer(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<CustomerRow>> {
    Ok(lock_customers(conn, &[id]).await?.pop())
}

pub const LOCK_CUSTOMERS: &str = concat!("SELECT ", customer_columns!(), " FROM customers WHERE id = ANY($1) ORDER BY id FOR UPDATE");

/// The customers named that exist, locked until the transaction ends, in id order.
#[tracing::instrument(level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "SELECT", db.collection.name = "customers"))]
pub async fn lock_customers(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<CustomerRow>> {
    sqlx::query_as(LOCK_CUSTOMERS).bind(ids).fetch_all(conn).await
}

/// Adds `amount` to a balance the caller has locked and checked.
pub async fn top_up(conn: &mut PgConnection, id: Uuid, amount: i64) -> sqlx::Result<CustomerRow> {
    let row = sqlx::query_as(concat!(
        "UPDATE customers SET balance_minor = balance_minor + $2, updated_at = now() WHERE id = $1 RETURNING ",
        customer_columns!()
    ))
    .bind(id)
    .bind(amount)
    .fetch_one(&mut *conn)
    .await?;
    record(conn, "top_up", &[(id, amount, None)]).await?;
    Ok(row)
}

/// `LEDGER` with the parameters its caller numbers: the kind, then customers, amounts and
/// orders, as arrays.
macro_rules! ledger {
    ($kind:literal, $customers:literal, $amounts:literal, $orders:literal) => {
        concat!(
            "INSERT INTO ledger (customer_id, kind, amount_minor, order_id) SELECT l.c, ", $kind, ", l.a, l.o FROM UNNEST(",
            $customers, "::uuid[], ", $amounts, "::bigint[], ", $orders, "::uuid[]) AS l(c, a, o)"
        )
    };
}

pub const LEDGER: &str = ledger!("$1", "$2", "$3", "$4");

/// Ledger entries of one kind: (customer, amount, order), in one statement.
async fn record(conn: &mut PgConnection, kind: &str, entries: &[(Uuid, i64, Option<Uuid>)]) -> sqlx::Result<()> {
    sqlx::query(LEDGER)
        .bind(kind)
        .bind(entries.iter().map(|e| e.0).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.1).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.2).collect::<Vec<_>>())
        .execute(conn)
        .await?;
    Ok(())
}

/// An order's payment as [`paid`] reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Paid {
    pub order_id: Uuid,
    pub id: Uuid,
    /// `captured`, `declined` or `refunded`.
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: Option<String>,
}

pub const PAID: &str = "SELECT order_id, id, status, amount_minor, currency, reason FROM payments WHERE order_id = ANY($1)";

/// Which of `order_ids` have a payment (captured, declined or refunded), and what it is (a
/// repeated `payment.capture` is answered with it).
pub async fn paid(conn: &mut PgConnection, order_ids: &[Uuid]) -> sqlx::Result<Vec<Paid>> {
    sqlx::query_as(PAID).bind(order_ids).fetch_all(conn).await
}

/// A payment to record: captured, or declined with its reason.
#[derive(Debug, Clone)]
pub struct NewPayment {
    pub id: Uuid,
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub amount: Money,
    /// Why it was declined; `None`: captured.
    pub declined: Option<String>,
}

/// A batch's payments decided (see `handlers::capture`), written in one statement, a
/// publish with the batch's writes before it (`conveyor_queue::statement_with`):
/// - the payments (`$6` to `$11`: ids, orders, customers, amounts, currencies, reasons),
///   a plain INSERT: if a concurrent copy of a message got there first, the unique order
///   id fails the statement and the caller's transaction, and the retry finds the payment;
/// - the captures taken from their customers' balances (`$12`, `$13`: customers and
///   amounts, summed per customer), each only if the balance covers it;
/// - their ledger entries (as `LEDGER`: the kind `$14`, the same customers, the amounts
///   taken `$15`, the orders `$16`);
/// - the messages (`$1` to `$5`), only if every customer's balance was debited.
pub static CAPTURE: LazyLock<String> = LazyLock::new(|| {
    conveyor_queue::statement_with(
        concat!(
            "p AS (INSERT INTO payments (id, order_id, customer_id, amount_minor, currency, status, reason)
         SELECT p.id, p.o, p.c, p.a, p.cur, CASE WHEN p.reason IS NULL THEN 'captured' ELSE 'declined' END, p.reason
         FROM UNNEST($6::uuid[], $7::uuid[], $8::uuid[], $9::bigint[], $10::text[], $11::text[]) AS p(id, o, c, a, cur, reason)),
d AS (UPDATE customers AS c SET balance_minor = c.balance_minor - d.total, updated_at = now()
         FROM (SELECT id, sum(a) AS total FROM UNNEST($12::uuid[], $13::bigint[]) AS u(id, a) GROUP BY id) AS d
         WHERE c.id = d.id AND c.balance_minor >= d.total RETURNING c.id),\n",
            "l AS (",
            ledger!("$14", "$12", "$15", "$16"),
            ")"
        ),
        "(SELECT count(*) FROM d) = (SELECT count(DISTINCT id) FROM unnest($12::uuid[]) AS id)",
    )
});

/// Writes a batch's payments, debits its captures and publishes its `messages` ([`CAPTURE`]).
/// False when a balance fell short of what the batch's checks saw (the caller holds the
/// customers' locks and has checked them): nothing is published, and the caller must fail
/// its transaction (the rest was written). Every payment in `new` has a message.
#[tracing::instrument(level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "INSERT", db.collection.name = "payments"))]
pub async fn capture_all(conn: &mut PgConnection, new: &[NewPayment], messages: &[Outgoing]) -> Result<bool, conveyor_queue::Error> {
    if messages.is_empty() {
        debug_assert!(new.is_empty(), "every payment has a message");
        return Ok(true);
    }
    let captures: Vec<&NewPayment> = new.iter().filter(|p| p.declined.is_none()).collect();
    let inserted = conveyor_queue::publish_with(conn, CAPTURE.as_str(), messages, |q| {
        q.bind(new.iter().map(|p| p.id).collect::<Vec<_>>())
            .bind(new.iter().map(|p| p.order_id).collect::<Vec<_>>())
            .bind(new.iter().map(|p| p.customer_id).collect::<Vec<_>>())
            .bind(new.iter().map(|p| p.amount.amount_minor).collect::<Vec<_>>())
            .bind(new.iter().map(|p| p.amount.currency.as_str()).collect::<Vec<_>>())
            .bind(new.iter().map(|p| p.declined.as_deref()).collect::<Vec<_>>())
            .bind(captures.iter().map(|p| p.customer_id).collect::<Vec<_>>())
            .bind(captures.iter().map(|p| p.amount.amount_minor).collect::<Vec<_>>())
            .bind("capture")
            .bind(captures.iter().map(|p| -p.amount.amount_minor).collect::<Vec<_>>())
            .bind(captures.iter().map(|p| Some(p.order_id)).collect::<Vec<_>>())
    })
    .await?;
    Ok(inserted as usize == messages.len())
}

/// The lock key of a customer's balance (see `conveyor_queue::LockKeys`): every handler that
/// changes a balance names it, so one batch locks all of its customers up front, in one order.
pub fn customer_key(customer_id: Uuid) -> String {
    format!("customer:{customer_id}")
}

/// The customers whose `captured` payments for `order_ids` a refund would credit (what
/// refunding them locks).
pub async fn captured_customers(conn: &mut PgConnection, order_ids: &[Uuid]) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar("SELECT DISTINCT customer_id FROM payments WHERE order_id = ANY($1) AND status = 'captured'").bind(order_ids).fetch_all(conn).await
}

/// Marks the order's `captured` payment `refunded` and returns it; `None` when there is no
/// payment or it is not `captured` (declined, or refunded already). The row stays locked
/// until the transaction ends, so a copy of the refund waits, then finds it refunded.
#[tracing::instrument(level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE", db.collection.name = "payments"))]
pub async fn refund_payment(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Option<PaymentRow>> {
    sqlx::query_as(
        "UPDATE payments SET status = 'refunded' WHERE order_id = $1 AND status = 'captured'
         RETURNING id, order_id, customer_id, amount_minor, currency, status, reason, created_at",
    )
    .bind(order_id)
    .fetch_optional(conn)
    .await
}

/// Gives `amount` back to a balance the caller has locked and checked, for `order`, and
/// records it in the ledger (kind `refund`).
pub async fn credit_refund(conn: &mut PgConnection, customer: Uuid, order: Uuid, amount: i64) -> sqlx::Result<CustomerRow> {
    let row = sqlx::query_as(concat!(
        "UPDATE customers SET balance_minor = balance_minor + $2, updated_at = now() WHERE id = $1 RETURNING ",
        customer_columns!()
    ))
    .bind(customer)
    .bind(amount)
    .fetch_one(&mut *conn)
    .await?;
    record(conn, "refund", &[(customer, amount, Some(order))]).await?;
    Ok(row)
}

pub async fn payments_of_order(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Vec<PaymentRow>> {
    sqlx::query_as(
        "SELECT id, order_id, customer_id, amount_minor, currency, status, reason, created_at FROM payments WHERE order_id = $1 ORDER BY id",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await
}
