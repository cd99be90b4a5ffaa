//! The stock worker's handlers, each run in the transaction that marks its message done.
//! Beyond the inbox's dedupe (which a message republished under a new id escapes), every
//! effect is keyed: items by product id, reservations and their movements by order id.
//!
//! The choreography's events and the coordinator's commands (ARCHITECTURE §3b) share their
//! effects: `stock.reserve` is `order.placed`'s batch reservation and `stock.release` is
//! `payment.declined`'s release, by the same code; only what each publishes differs. A
//! command is answered with `stock.replied` every time it comes, repeats included (with
//! what is recorded); an event publishes once, when it decides the order's outcome.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use conveyor_contracts::{
    OrderPlaced, OrderSummary, PaymentDeclined, Product, ProductCreated, ProductUpdated, ReleaseStock, ReserveStock, StockOutcome, StockRejected, StockReplied,
    StockReserved, limits,
};
use conveyor_queue::{Consumer, Delivery, Event, HandlerError, Outgoing, RetryPolicy, batch_handler_fn, handler_fn, lock_keys_fn};
use futures::FutureExt;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::repo::{self, Handled, NewReservation, ReservedLine};

/// `order.placed` (and `stock.reserve`) waits for items whose `product.created` has not
/// arrived yet: about two minutes of retries (0.5 s doubling to 30 s) before the order is
/// rejected instead, so that it still ends (cancelled) rather than sitting dead in the inbox.
pub const ORDER_PLACED_RETRY: RetryPolicy =
    RetryPolicy { max_attempts: 10, base: Duration::from_millis(500), max: Duration::from_secs(30), jitter: 0.25 };

/// `payment.declined` and `stock.release` can fail only on a transient error (a deadlock
/// between batches, a reservation recorded meanwhile): retried long enough that a release
/// is never lost to one.
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
        .subscribe_batch(batch_handler_fn(|conn, msgs: Vec<Delivery<OrderPlaced>>| reserve(conn, msgs).boxed()), ORDER_PLACED_RETRY)
        .subscribe_batch(batch_handler_fn(|conn, msgs: Vec<Delivery<ReserveStock>>| reserve(conn, msgs).boxed()), ORDER_PLACED_RETRY)
        .subscribe_with(handler_fn(|conn, msg: Delivery<PaymentDeclined>| release(conn, msg.payload.order_id, false).boxed()), RELEASE_RETRY)
        .subscribe_with(handler_fn(|conn, msg: Delivery<ReleaseStock>| release_command(conn, msg.payload.order_id).boxed()), RELEASE_RETRY)
        .lock_keys(lock_keys_fn(|_, events: &[&ProductCreated]| {
            let keys = events.iter().map(|e| repo::item_key(e.product.id)).collect();
            async move { Ok(keys) }.boxed()
        }))
        .lock_keys(lock_keys_fn(|_, events: &[&ProductUpdated]| {
            let keys = events.iter().map(|e| repo::item_key(e.product.id)).collect();
            async move { Ok(keys) }.boxed()
        }))
        .lock_keys(lock_keys_fn(|_, events: &[&OrderPlaced]| {
            let keys = ordered_items(events);
            async move { Ok(keys) }.boxed()
        }))
        .lock_keys(lock_keys_fn(|_, commands: &[&ReserveStock]| {
            let keys = ordered_items(commands);
            async move { Ok(keys) }.boxed()
        }))
        .lock_keys(lock_keys_fn(|conn, events: &[&PaymentDeclined]| {
            let orders: Vec<Uuid> = events.iter().map(|e| e.order_id).collect();
            async move { Ok(repo::reserved_products(conn, &orders).await?.into_iter().map(repo::item_key).collect()) }.boxed()
        }))
        .lock_keys(lock_keys_fn(|conn, commands: &[&ReleaseStock]| {
            let orders: Vec<Uuid> = commands.iter().map(|c| c.order_id).collect();
            async move { Ok(repo::reserved_products(conn, &orders).await?.into_iter().map(repo::item_key).collect()) }.boxed()
        }))
}

/// The lock keys of a reservation: the items its order's lines name.
fn ordered_items<M: ReserveRequest>(msgs: &[&M]) -> Vec<String> {
    msgs.iter().flat_map(|m| &m.order().lines).map(|l| repo::item_key(l.product_id)).collect()
}

/// What stock has recorded for an order.
#[derive(Debug)]
enum Outcome {
    Reserved,
    /// Why.
    Rejected(String),
    /// Given back, or released before anything was reserved (no lines).
    Released,
}

impl Outcome {
    /// What a reservation just decided: reserved (`None`) or rejected (why).
    fn decided(rejected: Option<&str>) -> Outcome {
        rejected.map_or(Outcome::Reserved, |reason| Outcome::Rejected(reason.to_owned()))
    }

    fn recorded(r: Handled) -> Outcome {
        match (r.state.as_str(), r.reason) {
            ("reserved", _) => Outcome::Reserved,
            ("rejected", reason) => Outcome::Rejected(reason.unwrap_or_default()),
            _ => Outcome::Released,
        }
    }

    fn as_str(&self) -> &'static str {
        match self {
            Outcome::Reserved => "reserved",
            Outcome::Rejected(_) => "rejected",
            Outcome::Released => "released",
        }
    }

    /// The command's answer: this outcome, for `order_id`.
    fn replied(&self, order_id: Uuid) -> StockReplied {
        let (outcome, reason) = match self {
            Outcome::Reserved => (StockOutcome::Reserved, String::new()),
            Outcome::Rejected(reason) => (StockOutcome::Rejected, reason.clone()),
            Outcome::Released => (StockOutcome::Released, String::new()),
        };
        StockReplied { order_id, outcome, reason }
    }
}

/// A message that asks for an order's reservation (`order.placed`, `stock.reserve`): what
/// [`reserve`] needs of it, and what it publishes for it.
trait ReserveRequest: Event {
    fn order(&self) -> &OrderSummary;
    /// What to publish when this message has just decided the order's outcome: reserved
    /// (`rejected` is `None`) or rejected (why).
    fn answer(&self, rejected: Option<&str>) -> Result<Outgoing, serde_json::Error>;
    /// What to publish when the order had an outcome already (recorded, or decided by a
    /// copy of this message earlier in the batch): nothing, unless the message says.
    fn answer_again(&self, _recorded: &Outcome) -> Option<Result<Outgoing, serde_json::Error>> {
        None
    }
}

/// The choreography: the outcome's own event, once.
impl ReserveRequest for OrderPlaced {
    fn order(&self) -> &OrderSummary {
        &self.order
    }

    fn answer(&self, rejected: Option<&str>) -> Result<Outgoing, serde_json::Error> {
        match rejected {
            None => Outgoing::event(&StockReserved { order: self.order.clone() }),
            Some(reason) => Outgoing::event(&StockRejected { order_id: self.order.order_id, reason: reason.to_owned() }),
        }
    }
}

/// The coordinator's command: a reply every time, so that a repeated command (the
/// coordinator's retry after a lost reply) learns the outcome too.
impl ReserveRequest for ReserveStock {
    fn order(&self) -> &OrderSummary {
        &self.order
    }

    fn answer(&self, rejected: Option<&str>) -> Result<Outgoing, serde_json::Error> {
        Outgoing::event(&Outcome::decided(rejected).replied(self.order.order_id))
    }

    fn answer_again(&self, recorded: &Outcome) -> Option<Result<Outgoing, serde_json::Error>> {
        Some(Outgoing::event(&recorded.replied(self.order.order_id)))
    }
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

/// `order.placed` or `stock.reserve`, for a batch of orders at once: each order reserves
/// every line or none, once, in publish order, against the levels the orders before it in
/// the batch left. Three statements however many orders (which of them have an outcome
/// already, the items' locks and levels, then the outcomes, levels, movements and messages
/// in one), where one order at a time took six per order: the stock worker of a flash
/// sale, whose batches queue behind each other on the same few items, now holds those
/// items a few round trips per batch instead of a few per order.
///
/// An order that names a product not stocked yet fails the call (to be retried): the batch
/// then runs again one order per call, so that only that order waits.
async fn reserve<M: ReserveRequest>(conn: &mut PgConnection, msgs: Vec<Delivery<M>>) -> Result<(), HandlerError> {
    let order_ids: Vec<Uuid> = msgs.iter().map(|m| m.payload.order().order_id).collect();
    let mut known: HashMap<Uuid, Outcome> = repo::handled(conn, &order_ids).await?.into_iter().map(|r| (r.order_id, Outcome::recorded(r))).collect();
    let products: BTreeSet<Uuid> = msgs.iter().flat_map(|m| &m.payload.order().lines).map(|l| l.product_id).collect();
    let products: Vec<Uuid> = products.into_iter().collect();
    let mut available: BTreeMap<Uuid, i64> = repo::lock_items(conn, &products).await?.into_iter().map(|i| (i.product_id, i.available)).collect();

    // The outcomes, and beside each the message it answers; what to publish, in the
    // messages' order (answers to repeats included).
    let (mut new, mut causes, mut messages) = (Vec::with_capacity(msgs.len()), Vec::with_capacity(msgs.len()), Vec::with_capacity(msgs.len()));
    for msg in &msgs {
        let order = msg.payload.order();
        if let Some(outcome) = known.get(&order.order_id) {
            msg.span.in_scope(|| tracing::info!(order_id = %order.order_id, state = outcome.as_str(), "order already handled; nothing to reserve"));
            if let Some(again) = msg.payload.answer_again(outcome) {
                messages.push(again?.caused_by(msg));
            }
            continue;
        }
        let (lines, reason) = decide(order, msg.attempt, &mut available)?;
        messages.push(msg.payload.answer(reason.as_deref())?.caused_by(msg));
        known.insert(order.order_id, Outcome::decided(reason.as_deref()));
        new.push(NewReservation { order_id: order.order_id, lines, reason });
        causes.push(msg);
    }
    if !repo::reserve_all(conn, &new, &messages).await? {
        // Only what locks no item can race this batch: a copy of an order with no lines, or
        // a `stock.release` that came first and recorded the order released.
        return Err(HandlerError::retry(anyhow::anyhow!("an order of the batch was handled meanwhile by another message; handling the batch one order at a time")));
    }
    for (r, msg) in new.iter().zip(&causes) {
        // Each line in its message's span, so that it carries that message's trace.
        msg.span.in_scope(|| match &r.reason {
            None => tracing::info!(order_id = %r.order_id, products = r.lines.len(), "stock reserved"),
            Some(reason) => tracing::info!(order_id = %r.order_id, reason, "stock rejected"),
        });
    }
    Ok(())
}

/// One order's outcome against the levels in `available`, which a reservation lowers: its
/// lines summed per product, and why it is rejected (`None`: reserved). A product not
/// stocked yet is a retry while attempts remain.
fn decide(order: &OrderSummary, attempt: i32, available: &mut BTreeMap<Uuid, i64>) -> Result<(Vec<ReservedLine>, Option<String>), HandlerError> {
    let (lines, invalid) = requested(order);
    if invalid.is_some() {
        return Ok((lines, invalid));
    }
    let unknown: Vec<String> = lines.iter().filter(|l| !available.contains_key(&l.product_id)).map(|l| l.product_id.to_string()).collect();
    if !unknown.is_empty() {
        let unknown = unknown.join(", ");
        if attempt < ORDER_PLACED_RETRY.max_attempts {
            return Err(HandlerError::retry(anyhow::anyhow!("product {unknown} not stocked yet; waiting for its product.created")));
        }
        return Ok((lines, Some(format!("product {unknown} is not stocked"))));
    }
    let short: Vec<String> = lines
        .iter()
        .filter(|l| available[&l.product_id] < l.quantity)
        .map(|l| format!("product {}: {} requested, {} available", l.product_id, l.quantity, available[&l.product_id]))
        .collect();
    if !short.is_empty() {
        return Ok((lines, Some(short.join("; "))));
    }
    for l in &lines {
        *available.get_mut(&l.product_id).expect("checked above") -= l.quantity;
    }
    Ok((lines, None))
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

/// `payment.declined` and `stock.release`: a `reserved` reservation gives its units back,
/// once. Anything else (rejected, released already) has nothing to give back. An order
/// with no reservation at all is recorded released (no lines) when `tombstone` says: the
/// coordinator may release an order whose `stock.reserve` is still on its way, which must
/// then reserve nothing. (`payment.declined` needs none: in the choreography it follows
/// its reservation, so it leaves an unknown order alone as it always did.)
async fn release(conn: &mut PgConnection, order_id: Uuid, tombstone: bool) -> Result<(), HandlerError> {
    // First, so that a reservation committed meanwhile is found by the update below
    // (the insert waits for it, then does nothing).
    if tombstone && repo::insert_tombstone(conn, order_id).await? {
        tracing::info!(%order_id, "no reservation to release; the order is recorded released, so that it reserves nothing later");
        return Ok(());
    }
    let Some(lines) = repo::release_reservation(conn, order_id).await? else {
        let state = repo::get_reservation(conn, order_id).await?.map(|r| r.state);
        tracing::info!(%order_id, state = state.as_deref().unwrap_or("none"), "nothing to release");
        return Ok(());
    };
    let ids: Vec<Uuid> = lines.iter().map(|l| l.product_id).collect();
    repo::lock_items(conn, &ids).await?;
    repo::release(conn, order_id, &lines).await?;
    tracing::info!(%order_id, products = lines.len(), "reservation released");
    Ok(())
}

/// `stock.release`: the release, then `stock.replied` (released) whatever there was to give
/// back, every time the command comes.
async fn release_command(conn: &mut PgConnection, order_id: Uuid) -> Result<(), HandlerError> {
    release(conn, order_id, true).await?;
    conveyor_queue::publish(conn, Outgoing::event(&Outcome::Released.replied(order_id))?).await?;
    Ok(())
}
