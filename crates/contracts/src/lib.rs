//! The contract between Conveyor's services: every event with its topic (ARCHITECTURE §3),
//! the orchestrated saga's commands and replies (§3b), who receives what ([`routes`]), and
//! the shared value types (money, currencies, limits).
//! Services depend on this crate and on no other service's crate.
//!
//! Events are versioned by their topic's shape: a field may be added (consumers ignore
//! what they do not know), never removed or changed in meaning; an incompatible change
//! gets a new topic.

/// `impl Event` for a message type: its topic, and its key (the id the message is about).
macro_rules! event {
    ($ty:ty, $topic:literal, |$e:ident| $key:expr) => {
        impl Event for $ty {
            const TOPIC: &'static str = $topic;
            fn key(&self) -> Option<String> {
                let $e = self;
                Some($key.to_string())
            }
        }
    };
}

mod commands;
mod events;
mod money;

pub use commands::*;
pub use events::*;
pub use money::{Currency, Money, MoneyError};

use conveyor_queue::Routes;

/// The services, by the name each one's inbox is known under in relay configuration
/// (`--subscriber order=postgres://…`).
pub mod service {
    pub const CATALOG: &str = "catalog";
    pub const ORDER: &str = "order";
    pub const STOCK: &str = "stock";
    pub const PAYMENT: &str = "payment";
    pub const NOTIFICATION: &str = "notification";
    pub const COORDINATOR: &str = "coordinator";
    pub const ALL: [&str; 6] = [CATALOG, ORDER, STOCK, PAYMENT, NOTIFICATION, COORDINATOR];
}

/// Who receives what `publisher` publishes: the event table of ARCHITECTURE §3, and the
/// commands and replies of the orchestrated saga (§3b). (The coordinator's deadlines go
/// straight into its own inbox: `conveyor_queue::schedule`.)
pub fn routes(publisher: &str) -> Routes {
    use service::*;
    match publisher {
        CATALOG => Routes::new().route(ProductCreated::TOPIC, [STOCK, ORDER]).route(ProductUpdated::TOPIC, [STOCK, ORDER]),
        ORDER => Routes::new()
            .route(OrderPlaced::TOPIC, [STOCK])
            .route(OrderConfirmed::TOPIC, [NOTIFICATION])
            .route(OrderCancelled::TOPIC, [NOTIFICATION])
            .route(StartSaga::TOPIC, [COORDINATOR])
            .route(OrderReplied::TOPIC, [COORDINATOR]),
        // The order service hears every fact of its orders, for the order's event stream and
        // the customer's timeline (reservations, payments, refunds, notifications).
        STOCK => Routes::new()
            .route(StockReserved::TOPIC, [PAYMENT, ORDER])
            .route(StockRejected::TOPIC, [ORDER])
            .route(StockReplied::TOPIC, [COORDINATOR, ORDER]),
        PAYMENT => Routes::new()
            .route(PaymentCaptured::TOPIC, [ORDER])
            .route(PaymentDeclined::TOPIC, [ORDER, STOCK])
            .route(PaymentReplied::TOPIC, [COORDINATOR, ORDER]),
        NOTIFICATION => Routes::new().route(NotificationSent::TOPIC, [ORDER]),
        COORDINATOR => Routes::new()
            .route(ReserveStock::TOPIC, [STOCK])
            .route(ReleaseStock::TOPIC, [STOCK])
            .route(CapturePayment::TOPIC, [PAYMENT])
            .route(RefundPayment::TOPIC, [PAYMENT])
            .route(ConfirmOrder::TOPIC, [ORDER])
            .route(CancelOrder::TOPIC, [ORDER]),
        _ => Routes::new(),
    }
}

/// Which services a publisher's relay delivers to (the subscriber URLs it needs).
pub fn subscribers_of(publisher: &str) -> Vec<&'static str> {
    let routes = routes(publisher);
    service::ALL.into_iter().filter(|s| routes.topics().any(|t| routes.subscribers(t).iter().any(|x| x == s))).collect()
}

/// Which services `subscriber` receives messages from (the publishers whose outboxes it
/// reads with pull delivery).
pub fn publishers_to(subscriber: &str) -> Vec<&'static str> {
    service::ALL.into_iter().filter(|p| subscribers_of(p).contains(&subscriber)).collect()
}

/// Limits every service enforces on what clients send.
pub mod limits {
    /// Lines in one order.
    pub const MAX_LINES: usize = 50;
    /// Units of one product in one line.
    pub const MAX_QUANTITY: i32 = 10_000;
    /// A unit price, in minor units (10 billion in major units): with the limits above,
    /// no order total can overflow an `i64`.
    pub const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;
    /// Units of stock one item can hold, and one restock can add.
    pub const MAX_STOCK: i64 = 1_000_000_000;
    /// A customer balance, in minor units.
    pub const MAX_BALANCE_MINOR: i64 = 1_000_000_000_000_000;
    /// Characters of a product name.
    pub const MAX_NAME_CHARS: usize = 200;
    /// Characters of a cancellation's detail: the order service clips what other services
    /// say to this, so one bad message cannot bloat every row and event that carries it.
    pub const MAX_DETAIL_CHARS: usize = 1_000;
    /// Items per page of any list.
    pub const MAX_PAGE: i64 = 100;
}

pub use conveyor_queue::Event;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_routed_subscriber_is_a_service_and_no_service_hears_itself() {
        for publisher in service::ALL {
            let routes = routes(publisher);
            for topic in routes.topics() {
                for sub in routes.subscribers(topic) {
                    assert!(service::ALL.contains(&sub.as_str()));
                    assert_ne!(sub, publisher, "{topic}");
                }
            }
        }
        assert_eq!(subscribers_of(service::PAYMENT), vec![service::ORDER, service::STOCK, service::COORDINATOR]);
        assert_eq!(subscribers_of(service::COORDINATOR), vec![service::ORDER, service::STOCK, service::PAYMENT]);
        assert_eq!(subscribers_of(service::NOTIFICATION), vec![service::ORDER]);
        assert_eq!(publishers_to(service::NOTIFICATION), vec![service::ORDER]);
        assert_eq!(publishers_to(service::STOCK), vec![service::CATALOG, service::ORDER, service::PAYMENT, service::COORDINATOR]);
        assert!(publishers_to(service::CATALOG).is_empty());
    }

    #[test]
    fn events_decode_with_fields_they_do_not_know_at_any_depth() {
        let payload = r#"{"product": {"id": "0190f0e2-7c3f-7d4e-8f00-000000000000", "name": "Lamp",
            "price": {"amount_minor": 2599, "currency": "EUR", "added_later": true}, "initial_stock": 7,
            "version": 1, "updated_at": "2026-01-01T00:00:00Z", "colour": "red"}, "source": "catalog"}"#;
        let event: ProductCreated = serde_json::from_str(payload).unwrap();
        assert_eq!((event.product.price.amount_minor, event.product.version), (2599, 1));
    }
}
