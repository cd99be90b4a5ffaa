//! The notification service: when an order is confirmed or cancelled, it renders the
//! template stored for that event (minijinja), enriched with what the order API knows
//! (falling back to the event's data when that call fails), and delivers it once by webhook,
//! behind timeouts and circuit breakers; each delivery it records, it publishes as
//! `notification.sent` (for the order's timeline). Its API lists what was sent and edits
//! templates.

mod breaker;
pub mod config;
pub mod faults;
pub mod http;
mod lookup;
mod notifier;
mod render;
mod repo;
mod webhook;

use std::fmt;

use conveyor_contracts::{Event, OrderCancelled, OrderConfirmed};
use serde::{Deserialize, Serialize};

pub use config::NotifierArgs;
pub use faults::FLAGS;
pub use notifier::Notifier;

pub const SERVICE: &str = conveyor_contracts::service::NOTIFICATION;

/// This service's schema (the queue schema comes from `conveyor_queue::migrator()`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The statements of the order saga's path, named once: the repository runs them and
/// `cargo xtask bench saga` replays them.
pub mod sql {
    pub use crate::repo::{RECORD, TO_NOTIFY};
}

/// The events notified about; each names its template and its notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EventType {
    #[serde(rename = "order.confirmed")]
    Confirmed,
    #[serde(rename = "order.cancelled")]
    Cancelled,
}

impl EventType {
    pub const ALL: [EventType; 2] = [EventType::Confirmed, EventType::Cancelled];

    /// The event's topic, which is also its template's key.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::Confirmed => OrderConfirmed::TOPIC,
            EventType::Cancelled => OrderCancelled::TOPIC,
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The order's status the event announces.
    pub fn status(&self) -> &'static str {
        match self {
            EventType::Confirmed => "confirmed",
            EventType::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_serialise_as_their_topics() {
        for t in EventType::ALL {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("order.placed"), None);
    }
}
