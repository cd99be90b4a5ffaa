//! The stock tables: items (levels), reservations (one per order) and the movements ledger.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use conveyor_queue::Outgoing;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use sqlx::types::Json;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ItemRow {
    pub product_id: Uuid,
    pub available: i64,
    pub reserved: i64,
    pub updated_at: DateTime<Utc>,
}

/// Units of one product held (or asked for) by an order: its lines for that product summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReservedLine {
    pub product_id: Uuid,
    pub quantity: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReservationRow {
    pub order_id: Uuid,
    pub state: String,
    pub lines: Json<Vec<ReservedLine>>,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Why a level changed (the `movements.kind` column).
#[derive(Debug, Clone, Copy)]
enum Movement {
    Initial,
    Reserve,
    Release,
    Restock,
}

impl Movement {
    fn as_str(self) -> &'static str {
        match self {
            Movement::Initial => "initial",
            Movement::Reserve => "reserve",
            Movement::Release => "release",
            Movement::Restock => "restock",
        }
    }
}

/// Creates the item unless it exists (a later or repeated product event never resets
/// levels); true when it was created.
pub async fn create_item(conn: &mut PgConnection, product_id: Uuid, initial: i64) -> sqlx::Result<bool> {
    let created: Option<Uuid> =
        sqlx::query_scalar("INSERT INTO items (product_id, available) VALUES ($1, $2) ON CONFLICT (product_id) DO NOTHING RETURNING product_id")
            .bind(product_id)
            .bind(initial)
            .fetch_optional(&mut *conn)
            .await?;
    if created.is_some() {
        record(conn, Movement::Initial, &[(None, ReservedLine { product_id, quantity: initial })]).await?;
    }
    Ok(created.is_some())
}

pub async fn get_item(conn: &mut PgConnection, product_id: Uuid) -> sqlx::Result<Option<ItemRow>> {
    sqlx::query_as("SELECT product_id, available, reserved, updated_at FROM items WHERE product_id = $1").bind(product_id).fetch_optional(conn).await
}

/// Items in product id order, after `after`.
pub async fn list_items(conn: &mut PgConnection, after: Option<Uuid>, limit: i64) -> sqlx::Result<Vec<ItemRow>> {
    sqlx::query_as(
        "SELECT product_id, available, reserved, updated_at FROM items WHERE $1::uuid IS NULL OR product_id > $1 ORDER BY product_id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The lock key of an item (see `conveyor_queue::LockKeys`): every handler that locks an
/// item names it, so one batch locks all of its items up front, in one order.
pub fn item_key(product_id: Uuid) -> String {
    format!("item:{product_id}")
}

/// The products the `reserved` reservations of `order_ids` hold (what releasing them locks).
pub async fn reserved_products(conn: &mut PgConnection, order_ids: &[Uuid]) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT DISTINCT (l->>'product_id')::uuid FROM reservations AS r, jsonb_array_elements(r.lines) AS l
         WHERE r.order_id = ANY($1) AND r.state = 'reserved'",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await
}

pub const LOCK_ITEMS: &str = "SELECT product_id, available, reserved, updated_at FROM items WHERE product_id = ANY($1) ORDER BY product_id FOR UPDATE";

/// Locks the items named, always in product id order: two transactions locking
/// overlapping sets then queue behind each other instead of deadlocking.
#[tracing::instrument(level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "SELECT", db.collection.name = "items"))]
pub async fn lock_items(conn: &mut PgConnection, product_ids: &[Uuid]) -> sqlx::Result<Vec<ItemRow>> {
    sqlx::query_as(LOCK_ITEMS)
        .bind(product_ids)
        .fetch_all(conn)
        .await
}

/// `SHIFT_ALL` with the parameters its caller numbers: items and quantities, as arrays.
macro_rules! shift_all {
    ($ids:literal, $quantities:literal) => {
        concat!(
            "UPDATE items AS i SET available = i.available - l.q, reserved = i.reserved + l.q, updated_at = now()
         FROM (SELECT product_id, sum(q) AS q FROM UNNEST(", $ids, "::uuid[], ", $quantities, "::bigint[]) AS u(product_id, q) GROUP BY product_id) AS l
         WHERE i.product_id = l.product_id"
        )
    };
}

/// Moves units from available to reserved (negative quantities: back), summed per item.
pub const SHIFT_ALL: &str = shift_all!("$1", "$2");

/// Moves an order's `lines` from reserved back to available and records the movements: two
/// statements (`SHIFT_ALL`, `MOVEMENTS`). The caller holds the items' locks; the table's
/// CHECKs stop anything that would go negative.
#[tracing::instrument(level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE", db.collection.name = "items"))]
pub async fn release(conn: &mut PgConnection, order_id: Uuid, lines: &[ReservedLine]) -> sqlx::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let (ids, quantities): (Vec<Uuid>, Vec<i64>) = lines.iter().map(|l| (l.product_id, -l.quantity)).unzip();
    // Summed per item first: an UPDATE changes a row once, however many lines join it.
    sqlx::query(SHIFT_ALL).bind(ids).bind(quantities).execute(&mut *conn).await?;
    let recorded: Vec<(Option<Uuid>, ReservedLine)> = lines.iter().map(|l| (Some(order_id), *l)).collect();
    record(conn, Movement::Release, &recorded).await
}

/// Adds `quantity` to an item's available units; the caller holds its lock.
pub async fn restock(conn: &mut PgConnection, product_id: Uuid, quantity: i64) -> sqlx::Result<ItemRow> {
    let row = sqlx::query_as(
        "UPDATE items SET available = available + $2, updated_at = now() WHERE product_id = $1
         RETURNING product_id, available, reserved, updated_at",
    )
    .bind(product_id)
    .bind(quantity)
    .fetch_one(&mut *conn)
    .await?;
    record(conn, Movement::Restock, &[(None, ReservedLine { product_id, quantity })]).await?;
    Ok(row)
}

/// `MOVEMENTS` with the parameters its caller numbers: the kind, then products, orders
/// and quantities, as arrays.
macro_rules! movements {
    ($kind:literal, $ids:literal, $orders:literal, $quantities:literal) => {
        concat!(
            "INSERT INTO movements (product_id, order_id, kind, quantity) SELECT l.p, l.o, ", $kind, ", l.q FROM UNNEST(",
            $ids, "::uuid[], ", $orders, "::uuid[], ", $quantities, "::bigint[]) AS l(p, o, q)"
        )
    };
}

pub const MOVEMENTS: &str = movements!("$1", "$2", "$3", "$4");

/// Records movements of one kind: (order, line) pairs, in one statement.
async fn record(conn: &mut PgConnection, kind: Movement, moves: &[(Option<Uuid>, ReservedLine)]) -> sqlx::Result<()> {
    let (mut orders, mut ids, mut quantities) = (Vec::with_capacity(moves.len()), Vec::with_capacity(moves.len()), Vec::with_capacity(moves.len()));
    for (order, line) in moves {
        orders.push(*order);
        ids.push(line.product_id);
        quantities.push(line.quantity);
    }
    sqlx::query(MOVEMENTS).bind(kind.as_str()).bind(ids).bind(orders).bind(quantities).execute(conn).await?;
    Ok(())
}

/// An order's recorded outcome, as [`handled`] reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Handled {
    pub order_id: Uuid,
    /// `reserved`, `rejected` or `released`.
    pub state: String,
    /// Why it was rejected.
    pub reason: Option<String>,
}

pub const HANDLED: &str = "SELECT order_id, state, reason FROM reservations WHERE order_id = ANY($1)";

/// Which of `order_ids` have an outcome recorded already (reserved, rejected or released),
/// and what it is (a repeated `stock.reserve` is answered with it).
pub async fn handled(conn: &mut PgConnection, order_ids: &[Uuid]) -> sqlx::Result<Vec<Handled>> {
    sqlx::query_as(HANDLED).bind(order_ids).fetch_all(conn).await
}

/// An outcome to record for an order: reserved (no reason) or rejected (why).
#[derive(Debug, Clone)]
pub struct NewReservation {
    pub order_id: Uuid,
    pub lines: Vec<ReservedLine>,
    pub reason: Option<String>,
}

/// A batch's reservations decided (see `handlers::reserve`), written in one statement, a
/// publish with the batch's writes before it (`conveyor_queue::statement_with`): each
/// order's outcome unless it has one (`$6` to `$8`: orders, lines as JSON, reasons), the
/// reserved units moved (`$9`, `$10`: items and quantities, as `SHIFT_ALL`) and their
/// movements (as `MOVEMENTS`: the kind `$11`, the same items and quantities, their orders
/// `$12`); the messages (`$1` to `$5`) only if every outcome was recorded.
pub static RESERVE: LazyLock<String> = LazyLock::new(|| {
    conveyor_queue::statement_with(
        concat!(
            "r AS (INSERT INTO reservations (order_id, state, lines, reason)
         SELECT r.o, CASE WHEN r.reason IS NULL THEN 'reserved' ELSE 'rejected' END, r.lines::jsonb, r.reason
         FROM UNNEST($6::uuid[], $7::text[], $8::text[]) AS r(o, lines, reason)
         ON CONFLICT (order_id) DO NOTHING RETURNING order_id),\n",
            "s AS (",
            shift_all!("$9", "$10"),
            "),\n",
            "m AS (",
            movements!("$11", "$9", "$12", "$10"),
            ")"
        ),
        "(SELECT count(*) FROM r) = cardinality($6::uuid[])",
    )
});

/// Writes a batch's decisions and publishes its `messages` ([`RESERVE`]): the outcomes in
/// `new`, and for each reserved one its lines moved from available to reserved. False when
/// an order of `new` had an outcome already: nothing is published, and the caller must
/// fail its transaction (the rest was written). Every outcome in `new` has a message.
#[tracing::instrument(level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "INSERT", db.collection.name = "reservations"))]
pub async fn reserve_all(conn: &mut PgConnection, new: &[NewReservation], messages: &[Outgoing]) -> Result<bool, conveyor_queue::Error> {
    if messages.is_empty() {
        debug_assert!(new.is_empty(), "every outcome has a message");
        return Ok(true);
    }
    let lines: Vec<String> = new.iter().map(|r| serde_json::to_string(&r.lines).expect("lines serialise")).collect();
    let moves: Vec<(Uuid, ReservedLine)> = new.iter().filter(|r| r.reason.is_none()).flat_map(|r| r.lines.iter().map(|l| (r.order_id, *l))).collect();
    let inserted = conveyor_queue::publish_with(conn, RESERVE.as_str(), messages, |q| {
        q.bind(new.iter().map(|r| r.order_id).collect::<Vec<_>>())
            .bind(lines)
            .bind(new.iter().map(|r| r.reason.as_deref()).collect::<Vec<_>>())
            .bind(moves.iter().map(|(_, l)| l.product_id).collect::<Vec<_>>())
            .bind(moves.iter().map(|(_, l)| l.quantity).collect::<Vec<_>>())
            .bind(Movement::Reserve.as_str())
            .bind(moves.iter().map(|(o, _)| *o).collect::<Vec<_>>())
    })
    .await?;
    Ok(inserted as usize == messages.len())
}

/// Marks a `reserved` reservation `released` and returns its lines; `None` when there is
/// no reservation or it is not `reserved` (rejected, or released already).
#[tracing::instrument(level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE", db.collection.name = "reservations"))]
pub async fn release_reservation(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Option<Vec<ReservedLine>>> {
    let lines: Option<Json<Vec<ReservedLine>>> = sqlx::query_scalar(
        "UPDATE reservations SET state = 'released', updated_at = now() WHERE order_id = $1 AND state = 'reserved' RETURNING lines",
    )
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    Ok(lines.map(|l| l.0))
}

/// Records the order released with no lines, unless it has a reservation: a release that
/// came before its reservation (`stock.release` after the coordinator gave up waiting), so
/// that the reservation, if it still comes, finds the order handled and reserves nothing.
/// True when recorded; false when the order has a row (committed, or committed meanwhile
/// by a transaction this one waited for).
pub async fn insert_tombstone(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<bool> {
    let recorded: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO reservations (order_id, state, lines) VALUES ($1, 'released', '[]') ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
    )
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    Ok(recorded.is_some())
}

pub async fn get_reservation(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Option<ReservationRow>> {
    sqlx::query_as("SELECT order_id, state, lines, reason, created_at, updated_at FROM reservations WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(conn)
        .await
}
