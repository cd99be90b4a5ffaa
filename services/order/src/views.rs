//! What the API answers: orders with their lines and history, and the local product copy.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use conveyor_contracts::{CancelReason, Money, SagaMode};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{OrderStatus, Priced, reason_from_db};
use crate::repo::{self, OrderRow, ProductRow};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderView {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub status: OrderStatus,
    /// Why it was cancelled; absent unless cancelled.
    pub reason: Option<CancelReason>,
    /// The upstream explanation of the cancellation (which product, which balance).
    pub reason_detail: Option<String>,
    pub lines: Vec<LineView>,
    pub total: Money,
    /// How its saga runs: chosen by the shop's mode when it was placed, kept until it ends.
    pub saga_mode: SagaMode,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Every status the order went through, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// A line as it was priced when the order was placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LineView {
    pub product_id: Uuid,
    pub name: String,
    pub quantity: i32,
    pub unit_price: Money,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntry {
    pub status: OrderStatus,
    pub reason: Option<CancelReason>,
    pub at: DateTime<Utc>,
}

impl OrderView {
    /// The view of an order just placed at `now`, without reading it back.
    pub fn placed(id: Uuid, customer_id: Uuid, priced: &Priced, saga_mode: SagaMode, now: DateTime<Utc>) -> OrderView {
        let lines = priced
            .lines
            .iter()
            .map(|l| LineView { product_id: l.product_id, name: l.name.clone(), quantity: l.quantity, unit_price: l.unit_price })
            .collect();
        OrderView {
            id,
            customer_id,
            status: OrderStatus::Placed,
            reason: None,
            reason_detail: None,
            lines,
            total: priced.total,
            saga_mode,
            created_at: now,
            updated_at: now,
            history: vec![HistoryEntry { status: OrderStatus::Placed, reason: None, at: now }],
        }
    }
}

/// Views of `orders` (in their order), with lines and history read in two statements
/// for the whole set.
pub async fn load(conn: &mut PgConnection, orders: Vec<OrderRow>) -> sqlx::Result<Vec<OrderView>> {
    if orders.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
    let currencies: HashMap<Uuid, String> = orders.iter().map(|o| (o.id, o.currency.clone())).collect();
    let mut lines: HashMap<Uuid, Vec<LineView>> = HashMap::new();
    for l in repo::lines_of(conn, &ids).await? {
        let p = l.priced(&currencies[&l.order_id]);
        lines.entry(l.order_id).or_default().push(LineView { product_id: p.product_id, name: p.name, quantity: p.quantity, unit_price: p.unit_price });
    }
    let mut history: HashMap<Uuid, Vec<HistoryEntry>> = HashMap::new();
    for h in repo::history_of(conn, &ids).await? {
        let entry = HistoryEntry { status: OrderStatus::from_db(&h.status), reason: h.reason.as_deref().map(reason_from_db), at: h.at };
        history.entry(h.order_id).or_default().push(entry);
    }
    Ok(orders
        .into_iter()
        .map(|o| OrderView {
            id: o.id,
            customer_id: o.customer_id,
            status: OrderStatus::from_db(&o.status),
            reason: o.reason.as_deref().map(reason_from_db),
            total: o.total(),
            saga_mode: o.saga_mode(),
            lines: lines.remove(&o.id).unwrap_or_default(),
            history: history.remove(&o.id).unwrap_or_default(),
            reason_detail: o.reason_detail,
            created_at: o.created_at,
            updated_at: o.updated_at,
        })
        .collect())
}

/// The order service's copy of a catalog product.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProductView {
    pub id: Uuid,
    pub name: String,
    pub price: Money,
    /// The catalog's version this copy has.
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

impl From<ProductRow> for ProductView {
    fn from(r: ProductRow) -> Self {
        ProductView { id: r.id, price: r.price(), name: r.name, version: r.version, updated_at: r.updated_at }
    }
}
