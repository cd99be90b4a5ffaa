//! The payment tables: customers (balances), payments (one per order) and the ledger.

use chrono::{DateTime, Utc};
use conveyor_contracts::{Currency, Money};
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

/// What a payment decided, and why when it declined.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    Captured,
    Declined(&'a str),
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
        record(conn, id, "open", balance, None).await?;
    }
    Ok(row)
}

pub async fn get_customer(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<CustomerRow>> {
    sqlx::query_as(concat!("SELECT ", customer_columns!(), " FROM customers WHERE id = $1")).bind(id).fetch_optional(conn).await
}

/// The customer, locked until the transaction ends (for a read-check-write of its balance).
#[tracing::instrument(level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "SELECT", db.collection.name = "customers"))]
pub async fn lock_customer(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<CustomerRow>> {
    sqlx::query_as(concat!("SELECT ", customer_columns!(), " FROM customers WHERE id = $1 FOR UPDATE")).bind(id).fetch_optional(conn).await
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
    record(conn, id, "top_up", amount, None).await?;
    Ok(row)
}

/// Takes `amount` from the balance if it covers it, in one guarded statement (concurrent
/// captures queue on the row and each sees the balance the previous one left). Returns the
/// new balance, or `None` when the balance is short.
#[tracing::instrument(level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE", db.collection.name = "customers"))]
pub async fn debit(conn: &mut PgConnection, id: Uuid, order_id: Uuid, amount: i64) -> sqlx::Result<Option<i64>> {
    let balance: Option<i64> = sqlx::query_scalar(
        "UPDATE customers SET balance_minor = balance_minor - $2, updated_at = now()
         WHERE id = $1 AND balance_minor >= $2 RETURNING balance_minor",
    )
    .bind(id)
    .bind(amount)
    .fetch_optional(&mut *conn)
    .await?;
    if balance.is_some() {
        record(conn, id, "capture", -amount, Some(order_id)).await?;
    }
    Ok(balance)
}

async fn record(conn: &mut PgConnection, customer_id: Uuid, kind: &str, amount: i64, order_id: Option<Uuid>) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO ledger (customer_id, kind, amount_minor, order_id) VALUES ($1, $2, $3, $4)")
        .bind(customer_id)
        .bind(kind)
        .bind(amount)
        .bind(order_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn payment_exists(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM payments WHERE order_id = $1)").bind(order_id).fetch_one(conn).await
}

/// Records the payment of an order. A plain INSERT: if a concurrent copy of the message got
/// there first, the unique order id fails this transaction (debit included) and the retry
/// finds the payment.
#[tracing::instrument(level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "INSERT", db.collection.name = "payments"))]
pub async fn insert_payment(conn: &mut PgConnection, order_id: Uuid, customer_id: Uuid, amount: Money, outcome: Outcome<'_>) -> sqlx::Result<Uuid> {
    let (status, reason) = match outcome {
        Outcome::Captured => ("captured", None),
        Outcome::Declined(reason) => ("declined", Some(reason)),
    };
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO payments (id, order_id, customer_id, amount_minor, currency, status, reason) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(id)
        .bind(order_id)
        .bind(customer_id)
        .bind(amount.amount_minor)
        .bind(amount.currency.as_str())
        .bind(status)
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(id)
}

pub async fn payments_of_order(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Vec<PaymentRow>> {
    sqlx::query_as(
        "SELECT id, order_id, customer_id, amount_minor, currency, status, reason, created_at FROM payments WHERE order_id = $1 ORDER BY id",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await
}
