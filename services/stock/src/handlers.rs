//! The stock worker's handlers, each run in the transaction that marks its message done.
//! Beyond the inbox's dedupe (which a message republished under a new id escapes), every
//! effect is keyed: items by product id, reservations and their movements by order id.

use std::collections::BTreeMap;
use std::time::Duration;

use conveyor_contracts::{OrderPlaced, OrderSummary, PaymentDeclined, Product, ProductCreated, ProductUpdated, StockRejected, StockReserved, limits};
use conveyor_queue::{Consumer, Delivery, HandlerError, RetryPolicy, handler_fn, lock_keys_fn};
use futures::FutureExt;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::repo::{self, ReservedLine, Shift};

/// `order.placed` waits for items whose `product.created` has not arrived yet: about two
/// minutes of retries (0.5 s doubling to 30 s) before the order is rejected instead, so
/// that it still ends (cancelled) rather than sitting dead in the inbox.
pub const ORDER_PLACED_RETRY: RetryPolicy =
    RetryPolicy { max_attempts: 10, base: Duration::from_millis(500), max: Duration::from_secs(30), jitter: 0.25 };

/// `payment.declined` can fail only on a transient error (a deadlock between batches):
/// retried long enough that a release is never lost to one.
pub const RELEASE_RETRY: RetryPolicy = ORDER_PLACED_RETRY;

/// Adds the stock service's handlers to `consumer`.
///
/// Every handler that locks items names them (`lock_keys`), so the consumer locks all the
/// items of a claimed batch at once, in one order, before its first handler runs: batches
/// of orders for the same few products (a flash sale) queue behind each other instead of
/// deadlocking, and a release never waits a deadlock timeout behind reservations.
pub fn subscribe(consumer: Consumer) -> Consumer {
    consumer
        .subscribe(handler_fn(|conn, msg: Delivery<ProductCreated>| create_item(conn, msg.payload.product).boxed()))
        .subscribe(handler_fn(|conn, msg: Delivery<ProductUpdated>| create_item(conn, msg.payload.product).boxed()))
        .subscribe_with(handler_fn(|conn, msg: Delivery<OrderPlaced>| reserve(conn, msg.payload.order, msg.attempt).boxed()), ORDER_PLACED_RETRY)
        .subscribe_with(handler_fn(|conn, msg: Delivery<PaymentDeclined>| release(conn, msg.payload.order_id).boxed()), RELEASE_RETRY)
        .lock_keys(lock_keys_fn(|_, events: &[&ProductCreated]| {
            let keys = events.iter().map(|e| repo::item_key(e.product.id)).collect();
            async move { Ok(keys) }.boxed()
        }))
        .lock_keys(lock_keys_fn(|_, events: &[&ProductUpdated]| {
            let keys = events.iter().map(|e| repo::item_key(e.product.id)).collect();
            async move { Ok(keys) }.boxed()
        }))
        .lock_keys(lock_keys_fn(|_, events: &[&OrderPlaced]| {
            let keys = events.iter().flat_map(|e| &e.order.lines).map(|l| repo::item_key(l.product_id)).collect();
            async move { Ok(keys) }.boxed()
        }))
        .lock_keys(lock_keys_fn(|conn, events: &[&PaymentDeclined]| {
            let orders: Vec<Uuid> = events.iter().map(|e| e.order_id).collect();
            async move { Ok(repo::reserved_products(conn, &orders).await?.into_iter().map(repo::item_key).collect()) }.boxed()
        }))
}

/// `product.created` / `product.updated`: the item starts with the product's initial stock
/// the first time either arrives (they may come in any order); later ones change nothing.
async fn create_item(conn: &mut PgConnection, product: Product) -> Result<(), HandlerError> {
    if !(0..=limits::MAX_STOCK).contains(&product.initial_stock) {
        return Err(HandlerError::permanent(anyhow::anyhow!(
            "product {}: initial_stock {} is outside 0..={}",
            product.id,
            product.initial_stock,
            limits::MAX_STOCK
        )));
    }
    if repo::create_item(conn, product.id, product.initial_stock).await? {
        tracing::info!(product_id = %product.id, initial_stock = product.initial_stock, "item created");
    }
    Ok(())
}

/// `order.placed`: reserve every line or none of them, once per order.
async fn reserve(conn: &mut PgConnection, order: OrderSummary, attempt: i32) -> Result<(), HandlerError> {
    let order_id = order.order_id;
    if repo::reservation_exists(conn, order_id).await? {
        tracing::info!(%order_id, "order already handled; nothing to reserve");
        return Ok(());
    }
    let (lines, invalid) = requested(&order);
    if let Some(reason) = invalid {
        return reject(conn, order_id, &lines, reason).await;
    }
    let ids: Vec<Uuid> = lines.iter().map(|l| l.product_id).collect();
    let items: BTreeMap<Uuid, i64> = repo::lock_items(conn, &ids).await?.into_iter().map(|i| (i.product_id, i.available)).collect();
    let unknown: Vec<String> = ids.iter().filter(|id| !items.contains_key(id)).map(Uuid::to_string).collect();
    if !unknown.is_empty() {
        let unknown = unknown.join(", ");
        if attempt < ORDER_PLACED_RETRY.max_attempts {
            return Err(HandlerError::retry(anyhow::anyhow!("product {unknown} not stocked yet; waiting for its product.created")));
        }
        return reject(conn, order_id, &lines, format!("product {unknown} is not stocked")).await;
    }
    let short: Vec<String> = lines
        .iter()
        .filter(|l| items[&l.product_id] < l.quantity)
        .map(|l| format!("product {}: {} requested, {} available", l.product_id, l.quantity, items[&l.product_id]))
        .collect();
    if !short.is_empty() {
        return reject(conn, order_id, &lines, short.join("; ")).await;
    }
    // The reservation row goes in first: a copy of this message handled concurrently waits
    // on the item locks above, then finds the row and stops here.
    if !repo::insert_reservation(conn, order_id, &lines, None).await? {
        return Ok(());
    }
    repo::shift(conn, order_id, Shift::Reserve, &lines).await?;
    conveyor_queue::publish_event(conn, &StockReserved { order }).await?;
    tracing::info!(%order_id, products = lines.len(), "stock reserved");
    Ok(())
}

/// The order's lines summed per product, in product id order, and what makes the order
/// impossible to reserve whatever the stock (no lines, a quantity that is not positive).
fn requested(order: &OrderSummary) -> (Vec<ReservedLine>, Option<String>) {
    let mut per_product: BTreeMap<Uuid, i64> = BTreeMap::new();
    let mut invalid = order.lines.is_empty().then(|| "the order has no lines".to_owned());
    for line in &order.lines {
        if line.quantity <= 0 {
            invalid.get_or_insert_with(|| format!("product {}: quantity must be positive, not {}", line.product_id, line.quantity));
        }
        // i32 quantities, at most a few thousand lines: an i64 sum cannot overflow.
        *per_product.entry(line.product_id).or_default() += i64::from(line.quantity);
    }
    let lines = per_product.into_iter().map(|(product_id, quantity)| ReservedLine { product_id, quantity }).collect();
    (lines, invalid)
}

/// Records the rejection (moving no stock) and tells the order service, once per order.
async fn reject(conn: &mut PgConnection, order_id: Uuid, lines: &[ReservedLine], reason: String) -> Result<(), HandlerError> {
    if repo::insert_reservation(conn, order_id, lines, Some(&reason)).await? {
        conveyor_queue::publish_event(conn, &StockRejected { order_id, reason: reason.clone() }).await?;
        tracing::info!(%order_id, reason, "stock rejected");
    }
    Ok(())
}

/// `payment.declined`: a `reserved` reservation gives its units back, once. Anything else
/// (no reservation, rejected, released already) has nothing to give back.
async fn release(conn: &mut PgConnection, order_id: Uuid) -> Result<(), HandlerError> {
    let Some(lines) = repo::release_reservation(conn, order_id).await? else {
        let state = repo::get_reservation(conn, order_id).await?.map(|r| r.state);
        tracing::info!(%order_id, state = state.as_deref().unwrap_or("none"), "nothing to release");
        return Ok(());
    };
    let ids: Vec<Uuid> = lines.iter().map(|l| l.product_id).collect();
    repo::lock_items(conn, &ids).await?;
    repo::shift(conn, order_id, Shift::Release, &lines).await?;
    tracing::info!(%order_id, products = lines.len(), "reservation released");
    Ok(())
}
