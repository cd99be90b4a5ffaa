//! Delivery: one JSON POST per notification to the configured webhook, behind a timeout
//! and a circuit breaker (and the `receiver_down` fault flag, see `faults`).

use std::time::Duration;

use conveyor_platform::faults::Faults;
use reqwest::Url;
use serde::Serialize;
use uuid::Uuid;

use crate::EventType;
use crate::breaker::{Breaker, Permit};

/// What the receiver gets.
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    pub notification_id: Uuid,
    pub order_id: Uuid,
    pub event_type: EventType,
    pub customer_id: Uuid,
    pub subject: &'a str,
    pub body: &'a str,
}

pub struct Webhook {
    client: reqwest::Client,
    url: Url,
    timeout: Duration,
    breaker: Breaker,
    faults: Faults,
}

impl Webhook {
    pub fn new(client: reqwest::Client, url: Url, timeout: Duration, breaker: Breaker, faults: Faults) -> Self {
        Webhook { client, url, timeout, breaker, faults }
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// The breaker's leave to post; asked before the work of preparing a notification, so
    /// an outage costs no lookups and no rendering.
    /// When the breaker is open: how long until it lets a call through.
    pub fn permit(&self) -> Result<Permit<'_>, Duration> {
        self.breaker.permit()
    }

    /// How much longer the breaker stays open (zero when it would let a call through).
    pub fn open_for(&self) -> Duration {
        self.breaker.open_for()
    }

    /// POSTs `payload` with `Idempotency-Key: key`; `Ok` on a 2xx answer.
    pub async fn deliver(&self, permit: Permit<'_>, key: &str, payload: &Payload<'_>) -> anyhow::Result<()> {
        if self.faults.get("receiver_down") >= 1.0 {
            // The path a refused connection takes, without the call.
            permit.failed();
            return Err(anyhow::anyhow!("POST {} failed: {}", self.url, crate::faults::REFUSED));
        }
        let request = self.client.post(self.url.clone()).header("Idempotency-Key", key).json(payload).timeout(self.timeout);
        // In a client span whose trace context goes along in `traceparent`.
        let sent = conveyor_platform::http::client::send(request).await;
        let failure = match sent {
            Ok(r) if r.status().is_success() => {
                permit.succeeded();
                return Ok(());
            }
            Ok(r) => format!("POST {} answered {}", self.url, r.status()),
            Err(e) => format!("POST {} failed: {}", self.url, error_chain(&e)),
        };
        permit.failed();
        Err(anyhow::anyhow!(failure))
    }
}

/// reqwest's own message ("error sending request") hides the cause (refused, timed out).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
