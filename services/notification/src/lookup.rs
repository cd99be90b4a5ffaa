//! The order lookup: what the order API knows beyond the event (product names). It is a
//! nicety: on any failure the notification is rendered from the event. The status stays the
//! event's: the event is what ended the order, while the order API answers from its read
//! model, which may not have applied that event yet (docs/cqrs.md).

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use reqwest::Url;
use serde::Deserialize;
use uuid::Uuid;

use conveyor_platform::auth::TokenFile;

use crate::breaker::Breaker;
use crate::render::{DataSource, Vars};

/// The part of the order API's `GET /orders/{id}` answer used here.
#[derive(Debug, Deserialize)]
struct OrderView {
    lines: Vec<LineView>,
}

#[derive(Debug, Deserialize)]
struct LineView {
    product_id: Uuid,
    name: Option<String>,
}

pub struct OrderLookup {
    client: reqwest::Client,
    base: Url,
    token: Option<TokenFile>,
    timeout: Duration,
    breaker: Breaker,
}

impl OrderLookup {
    pub fn new(client: reqwest::Client, base: Url, token: Option<TokenFile>, timeout: Duration, breaker: Breaker) -> Self {
        OrderLookup { client, base, token, timeout, breaker }
    }

    /// Adds what the order API says to `vars` (names; `data_source = lookup`), or
    /// leaves them as the event's and logs why.
    pub async fn enrich(&self, vars: &mut Vars) {
        match self.fetch(vars.order_id).await {
            Ok(order) => {
                for line in &mut vars.lines {
                    line.name = order.lines.iter().find(|l| l.product_id == line.product_id).and_then(|l| l.name.clone());
                }
                vars.data_source = DataSource::Lookup;
            }
            Err(e) => tracing::warn!(order_id = %vars.order_id, error = format!("{e:#}"), "order lookup failed; rendering from the event's data"),
        }
    }

    async fn fetch(&self, order_id: Uuid) -> anyhow::Result<OrderView> {
        let url = format!("{}/orders/{order_id}", self.base.as_str().trim_end_matches('/'));
        let mut request = self.client.get(&url).timeout(self.timeout);
        if let Some(token) = &self.token {
            request = request.header(reqwest::header::AUTHORIZATION, token.bearer().await?);
        }
        let permit = self.breaker.permit().map_err(|wait| anyhow!("the order API's circuit breaker is open (for {wait:?} more)"))?;
        let response = match conveyor_platform::http::client::send(request).await {
            Ok(r) => r,
            Err(e) => {
                permit.failed();
                return Err(e).with_context(|| format!("GET {url}"));
            }
        };
        let status = response.status();
        // A server error says the API is in trouble; anything else is an answer (even a
        // 404 or a body we cannot read shows the API is up).
        if status.is_server_error() {
            permit.failed();
            bail!("GET {url} answered {status}");
        }
        permit.succeeded();
        if !status.is_success() {
            bail!("GET {url} answered {status}");
        }
        // The request's timeout covers reading the body too.
        response.json::<OrderView>().await.with_context(|| format!("GET {url}: unexpected body"))
    }
}
