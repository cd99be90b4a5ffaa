//! Templates: the variables a notification is rendered from, the checks a template must
//! pass before it is stored, and rendering itself (minijinja).

use chrono::{DateTime, SecondsFormat, Utc};
use conveyor_contracts::{CancelReason, Currency, Money, OrderLine, OrderSummary};
use minijinja::value::{Serde, Value};
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use uuid::Uuid;

use crate::EventType;

/// A printed variable that does not exist is an error, not an empty string: a typo in a
/// template is caught when it is stored (see [`check`]) instead of sending "Dear ,".
/// Testing an absent variable in `{% if %}` stays allowed.
const UNDEFINED: UndefinedBehavior = UndefinedBehavior::SemiStrict;

/// Instructions one rendering may run: plenty for any notification, but a stored template
/// that loops without end fails instead of stalling the worker.
const FUEL: u64 = 200_000;

/// Where the order data came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// The order API answered.
    Lookup,
    /// The lookup failed; only the event's data was used.
    Event,
}

impl DataSource {
    pub fn as_str(&self) -> &'static str {
        match self {
            DataSource::Lookup => "lookup",
            DataSource::Event => "event",
        }
    }
}

/// The variables every template may use.
#[derive(Debug, Clone, Serialize)]
pub struct Vars {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub event_type: EventType,
    /// The order's status: the order API's when the lookup worked, else the event's.
    pub status: String,
    /// Why it was cancelled (`out_of_stock`, `payment_declined`); null when confirmed.
    pub reason: Option<CancelReason>,
    /// The upstream explanation of a cancellation; null when confirmed.
    pub detail: Option<String>,
    /// Formatted, e.g. "25.99 EUR".
    pub total: String,
    pub lines: Vec<LineVars>,
    /// RFC 3339, UTC.
    pub placed_at: String,
    pub data_source: DataSource,
}

#[derive(Debug, Clone, Serialize)]
pub struct LineVars {
    pub product_id: Uuid,
    /// The product's name from the order API; null when only the event was available.
    pub name: Option<String>,
    pub quantity: i32,
    /// Formatted, e.g. "12.50 EUR".
    pub unit_price: String,
}

impl Vars {
    /// The variables from the event alone (no names; status from the event type). The
    /// lookup, when it works, fills in names and status.
    pub fn from_event(event_type: EventType, order: &OrderSummary, reason: Option<CancelReason>, detail: Option<String>) -> Self {
        Vars {
            order_id: order.order_id,
            customer_id: order.customer_id,
            event_type,
            status: event_type.status().to_owned(),
            reason,
            detail,
            total: order.total.to_string(),
            lines: order.lines.iter().map(|l| LineVars { product_id: l.product_id, name: None, quantity: l.quantity, unit_price: l.unit_price.to_string() }).collect(),
            placed_at: timestamp(order.placed_at),
            data_source: DataSource::Event,
        }
    }
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UNDEFINED);
    env.set_fuel(Some(FUEL));
    env
}

/// Renders `source` with `vars`; the error says what failed and where.
pub fn render(source: &str, vars: &Vars) -> Result<String, minijinja::Error> {
    environment().render_str(source, Value::from(Serde(vars)))
}

/// Why `source` cannot be stored as the `what` (subject, body) template of `event_type`:
/// it does not parse, or it fails on a sample event of that type (an unknown variable, a
/// bad filter). `None` when it is fine.
pub fn check(what: &str, source: &str, event_type: EventType) -> Option<String> {
    let env = environment();
    if let Err(e) = env.template_from_str(source) {
        return Some(format!("{what} is not a valid template: {e}"));
    }
    render(source, &sample(event_type)).err().map(|e| format!("{what} does not render for a sample {event_type} event: {e}"))
}

/// A plausible event of `event_type`, with every variable set, to try templates on.
fn sample(event_type: EventType) -> Vars {
    let eur: Currency = "EUR".parse().expect("a known currency");
    let line = OrderLine { product_id: Uuid::nil(), quantity: 2, unit_price: Money { amount_minor: 1250, currency: eur } };
    let order = OrderSummary { order_id: Uuid::nil(), customer_id: Uuid::nil(), lines: vec![line], total: Money { amount_minor: 2500, currency: eur }, placed_at: Utc::now() };
    let (reason, detail) = match event_type {
        EventType::Confirmed => (None, None),
        EventType::Cancelled => (Some(CancelReason::PaymentDeclined), Some("balance too low".to_owned())),
    };
    let mut vars = Vars::from_event(event_type, &order, reason, detail);
    vars.lines[0].name = Some("Desk lamp".to_owned());
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_render_with_formatted_money_and_missing_names() {
        let mut vars = sample(EventType::Cancelled);
        vars.lines.push(LineVars { product_id: Uuid::max(), name: None, quantity: 1, unit_price: "0.99 EUR".into() });
        let out = render("{{ total }}|{{ reason }}|{% for l in lines %}{{ l.name or l.product_id }};{% endfor %}{{ data_source }}", &vars).unwrap();
        assert_eq!(out, "25.00 EUR|payment_declined|Desk lamp;ffffffff-ffff-ffff-ffff-ffffffffffff;event");
    }

    #[test]
    fn checks_catch_syntax_unknown_variables_and_endless_loops() {
        assert_eq!(check("body", "Hi {{ order_id }}{% if reason %} ({{ detail }}){% endif %}", EventType::Confirmed), None);
        let syntax = check("subject", "Hi {{ order_id", EventType::Confirmed).unwrap();
        assert!(syntax.starts_with("subject is not a valid template: syntax error"), "{syntax}");
        let unknown = check("body", "Hi {{ customer_name }}", EventType::Confirmed).unwrap();
        assert!(unknown.contains("undefined value"), "{unknown}");
        let endless = check("body", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", EventType::Cancelled).unwrap();
        assert!(endless.contains("fuel"), "{endless}");
    }
}
