//! What the audit reads, as plain data: filled by `load.rs` from the databases and the
//! receiver, checked by `rules.rs`, built by hand in the rules' unit tests.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

/// Everything the rules look at, read from each service's database and the receiver. A
/// part is `None` when its database (or the receiver) was not given: its rules are skipped.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub orders: Option<Orders>,
    pub stock: Option<Stock>,
    pub payment: Option<Payment>,
    pub notifications: Option<HashMap<Uuid, BTreeMap<String, i64>>>,
    pub sink: Option<Sink>,
    /// One per database read, in service order.
    pub queues: Vec<Queue>,
    pub accepted: Vec<Uuid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Placed,
    Confirmed,
    Cancelled,
}

#[derive(Debug, Clone)]
pub(crate) struct Order {
    pub status: Status,
    pub reason: Option<String>,
    pub customer: Uuid,
    pub total: i64,
    pub currency: String,
    /// Seconds since it was placed.
    pub age_secs: i64,
}

/// The order service: its orders, and the lines of each (quantity per product).
#[derive(Debug, Default)]
pub(crate) struct Orders {
    pub orders: HashMap<Uuid, Order>,
    pub lines: HashMap<Uuid, BTreeMap<Uuid, i64>>,
    /// Each order's event stream against its view in the read model.
    pub projected: HashMap<Uuid, Projected>,
}

/// An order's stream (its last version, and how long ago that was appended) and its view
/// in `order_views` (version and status), if it has one.
#[derive(Debug, Clone)]
pub(crate) struct Projected {
    pub stream_version: i32,
    pub last_age_secs: i64,
    pub view: Option<(i32, Status)>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Item {
    pub product: Uuid,
    pub available: i64,
    pub reserved: i64,
    /// Sums of the item's movements, by kind.
    pub initial: i64,
    pub restock: i64,
    pub reserve: i64,
    pub release: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct Reservation {
    /// `reserved`, `rejected` or `released`.
    pub state: String,
    /// Quantity per product; read for `reserved` reservations only.
    pub lines: BTreeMap<Uuid, i64>,
}

#[derive(Debug, Default)]
pub(crate) struct Stock {
    pub items: Vec<Item>,
    pub reservations: HashMap<Uuid, Reservation>,
}

#[derive(Debug, Clone)]
pub(crate) struct PaymentRow {
    pub order: Uuid,
    pub amount: i64,
    pub currency: String,
    /// `captured` or `declined`.
    pub status: String,
}

/// An order's entries in the ledger.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Charges {
    pub captures: i64,
    /// Σ amount of the captures (≤ 0: a capture takes money).
    pub captured: i64,
    /// Σ amount of the refunds (≥ 0), when the ledger has any.
    pub refunded: i64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Customer {
    pub id: Uuid,
    pub balance: i64,
    /// Σ of every ledger entry, then by kind (`other`: any kind not named here).
    pub ledger: i64,
    pub open: i64,
    pub top_ups: i64,
    pub captures: i64,
    pub refunds: i64,
    pub other: i64,
}

#[derive(Debug, Default)]
pub(crate) struct Payment {
    pub payments: Vec<PaymentRow>,
    pub charges: HashMap<Uuid, Charges>,
    pub customers: Vec<Customer>,
}

/// One distinct delivery the receiver lists (the first post of its `Idempotency-Key`).
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub key: Option<String>,
    pub order: Option<Uuid>,
    pub event_type: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Sink {
    pub deliveries: Vec<Delivery>,
    /// Posts that repeated a key already received (deduplicated by the receiver).
    pub repeats: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub id: Uuid,
    pub topic: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// One database's queue tables, as counts and the first rows of each kind.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub service: String,
    /// Outbox rows published more than the grace ago: a relay that does not run.
    pub outbox: i64,
    /// Outbox rows published within the grace: being relayed.
    pub relaying: i64,
    /// `message id, topic, age` of the oldest rows left in the outbox past the grace.
    pub outbox_examples: Vec<String>,
    /// Pending (or leased) inbox rows whose time came more than the grace ago.
    pub overdue: i64,
    pub overdue_examples: Vec<String>,
    /// Pending rows not yet due (a retry's backoff), or due within the grace.
    pub waiting: i64,
    pub dead: i64,
    pub dead_examples: Vec<DeadLetter>,
}
