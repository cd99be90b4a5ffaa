use chrono::{DateTime, Utc};
use conveyor_contracts::{Currency, Money, Product};
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProductRow {
    pub id: Uuid,
    pub name: String,
    pub price_minor: i64,
    pub currency: String,
    pub initial_stock: i64,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ProductRow {
    pub fn to_contract(&self) -> Product {
        Product {
            id: self.id,
            name: self.name.clone(),
            price: Money { amount_minor: self.price_minor, currency: self.currency.parse::<Currency>().expect("stored currencies were validated") },
            initial_stock: self.initial_stock,
            version: self.version,
            updated_at: self.updated_at,
        }
    }
}

macro_rules! columns {
    () => {
        "id, name, price_minor, currency, initial_stock, version, created_at, updated_at"
    };
}

pub async fn insert(conn: &mut PgConnection, id: Uuid, name: &str, price: Money, initial_stock: i64) -> sqlx::Result<ProductRow> {
    sqlx::query_as(concat!(
        "INSERT INTO products (id, name, price_minor, currency, initial_stock) VALUES ($1, $2, $3, $4, $5) RETURNING ",
        columns!()
    ))
    .bind(id)
    .bind(name)
    .bind(price.amount_minor)
    .bind(price.currency.as_str())
    .bind(initial_stock)
    .fetch_one(conn)
    .await
}

pub async fn update(conn: &mut PgConnection, id: Uuid, name: Option<&str>, price: Option<Money>) -> sqlx::Result<Option<ProductRow>> {
    sqlx::query_as(concat!(
        "UPDATE products SET name = coalesce($2, name), price_minor = coalesce($3, price_minor), currency = coalesce($4, currency),
                version = version + 1, updated_at = now()
         WHERE id = $1 RETURNING ",
        columns!()
    ))
    .bind(id)
    .bind(name)
    .bind(price.map(|p| p.amount_minor))
    .bind(price.map(|p| p.currency.as_str().to_owned()))
    .fetch_optional(conn)
    .await
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<ProductRow>> {
    sqlx::query_as(concat!("SELECT ", columns!(), " FROM products WHERE id = $1")).bind(id).fetch_optional(conn).await
}

/// Products in id order (ids are UUID v7: creation order), after `after`.
pub async fn list(conn: &mut PgConnection, after: Option<Uuid>, limit: i64) -> sqlx::Result<Vec<ProductRow>> {
    sqlx::query_as(concat!("SELECT ", columns!(), " FROM products WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2"))
        .bind(after)
        .bind(limit)
        .fetch_all(conn)
        .await
}
