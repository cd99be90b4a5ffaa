//! Templates: the variables a notification is rendered from, the checks a template must
//! pass before it is stored, and rendering itself (minijinja, in the [`sandbox`]).

mod sandbox;

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use conveyor_contracts::limits::{MAX_LINES, MAX_NAME_CHARS, MAX_PRICE_MINOR, MAX_QUANTITY};
use conveyor_contracts::{CancelReason, Currency, Money, OrderLine, OrderSummary};
use minijinja::ErrorKind;
use minijinja::value::{Serde, Value};
use serde::Serialize;
use uuid::Uuid;

use crate::EventType;
use sandbox::{Budget, FUEL, Refusal};

/// Characters a rendered subject may have.
pub const MAX_SUBJECT_OUTPUT_CHARS: usize = 1_000;
/// Characters a rendered body may have: ten times the longest template, and about eight
/// times what the seeded body makes of the largest order.
pub const MAX_BODY_OUTPUT_CHARS: usize = 100_000;


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
    /// The order's status, as the event says (`confirmed` or `cancelled`).
    pub status: String,
    /// Why it was cancelled (`out_of_stock`, `payment_declined`, `timeout`); null when confirmed.
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
    /// lookup, when it works, fills in the names.
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

/// The two parts of a notification, each with its own output limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Subject,
    Body,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Subject => "subject",
            Part::Body => "body",
        }
    }

    pub fn max_output_chars(self) -> usize {
        match self {
            Part::Subject => MAX_SUBJECT_OUTPUT_CHARS,
            Part::Body => MAX_BODY_OUTPUT_CHARS,
        }
    }
}

/// Why a template did not render.
#[derive(Debug)]
pub enum RenderError {
    /// It does not parse.
    Syntax(minijinja::Error),
    /// It uses something outside the sandbox (the message says what, and where).
    NotAllowed(String),
    /// It ran out of fuel: too much work, a loop too long or nested too deep.
    OutOfFuel { line: Option<usize> },
    /// Its output went past the part's limit.
    TooLong { max_chars: usize },
    /// Anything else minijinja reports (an undefined variable, a filter's error, …).
    Failed(minijinja::Error),
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::Syntax(e) | RenderError::Failed(e) => write!(f, "{e}"),
            RenderError::NotAllowed(why) => f.write_str(why),
            RenderError::OutOfFuel { line } => {
                write!(f, "it ran out of fuel: it needs more than {FUEL} steps of work (a loop too long or nested too deep?)")?;
                line.map_or(Ok(()), |line| write!(f, ", stopped at line {line}"))
            }
            RenderError::TooLong { max_chars } => write!(f, "its output is longer than {max_chars} characters, the limit"),
        }
    }
}

impl std::error::Error for RenderError {}

/// Renders `source` as the `part` of a notification: it must be within the sandbox, and
/// stops at the first character past the part's output limit.
pub fn render_part(part: Part, source: &str, vars: &Vars) -> Result<String, RenderError> {
    sandbox::allowed(source).map_err(|refusal| match refusal {
        Refusal::Syntax(e) => RenderError::Syntax(e),
        Refusal::Outside(why) => RenderError::NotAllowed(why),
    })?;
    let env = sandbox::environment();
    let template = env.template_from_str(source).map_err(RenderError::Syntax)?;
    let mut out = Budget::new(part.max_output_chars());
    match template.render_captured_to(Value::from(Serde(vars)), &mut out) {
        Ok(_) => Ok(out.into_string()),
        Err(_) if out.exceeded() => Err(RenderError::TooLong { max_chars: part.max_output_chars() }),
        Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(RenderError::OutOfFuel { line: e.line() }),
        Err(e) => Err(RenderError::Failed(e)),
    }
}

/// Why `source` cannot be stored as the `part` of `event_type`'s template: it does not
/// parse, uses something outside the sandbox, or fails on one of the [`samples`] of that
/// event (an unknown variable, a bad filter, too much work or output). `None` when it is
/// fine. The samples include the largest order the contracts allow, so a template that
/// passes here does not run out of fuel or output on a bigger order at send time (only a
/// branch on data the samples do not have can still fail then, and fails cleanly).
pub fn check(part: Part, source: &str, event_type: EventType) -> Option<String> {
    let what = part.name();
    for (sample, vars) in samples(event_type) {
        match render_part(part, source, &vars) {
            Ok(_) => {}
            Err(RenderError::Syntax(e)) => return Some(format!("{what} is not a valid template: {e}")),
            Err(RenderError::NotAllowed(why)) => return Some(format!("{what} is not allowed: {why}")),
            Err(e) => return Some(format!("{what} does not render for {sample}: {e}")),
        }
    }
    None
}

/// The events a template is tried on before it is stored, each with a description for
/// error messages: for each reason the event type may have, the largest order the
/// contracts allow (with the order API's names, and without: the fallback), then a
/// small, plausible one.
fn samples(event_type: EventType) -> Vec<(String, Vars)> {
    let reasons = match event_type {
        EventType::Confirmed => vec![None],
        EventType::Cancelled => CancelReason::ALL.into_iter().map(Some).collect(),
    };
    let mut samples = Vec::new();
    for reason in reasons {
        let of = |size: &str| match reason {
            None => format!("a {size} {event_type} event"),
            Some(r) => format!("a {size} {event_type} event ({})", r.as_str()),
        };
        let mut largest = largest(event_type, reason);
        samples.push((of(&format!("sample {MAX_LINES}-line")), largest.clone()));
        largest.data_source = DataSource::Event;
        largest.lines.iter_mut().for_each(|l| l.name = None);
        samples.push((of(&format!("sample {MAX_LINES}-line (without product names)")), largest));
        samples.push((of("sample"), small(event_type, reason)));
    }
    samples
}

/// A character of four bytes (the most UTF-8 takes): the limits on output count characters,
/// the one on filters' work counts bytes, and the largest sample is the worst case for both.
const WIDE: &str = "\u{1F4E6}";

/// The largest event the contracts allow: the most lines, the longest names and detail (of
/// the widest characters), the highest quantities and prices.
fn largest(event_type: EventType, reason: Option<CancelReason>) -> Vars {
    let eur: Currency = "EUR".parse().expect("a known currency");
    let line = OrderLine { product_id: Uuid::max(), quantity: MAX_QUANTITY, unit_price: Money { amount_minor: MAX_PRICE_MINOR, currency: eur } };
    let total = Money { amount_minor: MAX_PRICE_MINOR * i64::from(MAX_QUANTITY) * MAX_LINES as i64, currency: eur };
    let order = OrderSummary { order_id: Uuid::max(), customer_id: Uuid::max(), lines: vec![line; MAX_LINES], total, placed_at: Utc::now() };
    let detail = reason.map(|_| WIDE.repeat(conveyor_contracts::limits::MAX_DETAIL_CHARS));
    let mut vars = Vars::from_event(event_type, &order, reason, detail);
    vars.lines.iter_mut().for_each(|l| l.name = Some(WIDE.repeat(MAX_NAME_CHARS)));
    vars.data_source = DataSource::Lookup;
    vars
}

/// A plausible event of `event_type`, with every variable set.
fn small(event_type: EventType, reason: Option<CancelReason>) -> Vars {
    let eur: Currency = "EUR".parse().expect("a known currency");
    let line = OrderLine { product_id: Uuid::nil(), quantity: 2, unit_price: Money { amount_minor: 1250, currency: eur } };
    let order = OrderSummary { order_id: Uuid::nil(), customer_id: Uuid::nil(), lines: vec![line], total: Money { amount_minor: 2500, currency: eur }, placed_at: Utc::now() };
    let detail = reason.map(|r| match r {
        CancelReason::OutOfStock => "product 00000000-0000-0000-0000-000000000000 is out of stock".to_owned(),
        CancelReason::PaymentDeclined => "balance too low".to_owned(),
        CancelReason::Timeout => "payment did not answer within 30s".to_owned(),
    });
    let mut vars = Vars::from_event(event_type, &order, reason, detail);
    vars.lines[0].name = Some("Desk lamp".to_owned());
    vars.data_source = DataSource::Lookup;
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = include_str!("../migrations/0001_notifications.sql");
    const TIMEOUT_WORDING: &str = include_str!("../migrations/0002_timeout_wording.sql");

    /// The seeded templates, (event type, subject, body), read from the migration's
    /// `INSERT` (its string literals have no quotes inside), with the cancellation body
    /// reworded as the later migration's `replace(body, old, new)` does.
    fn seeded() -> Vec<(EventType, String, String)> {
        let insert = &SEED[SEED.find("INSERT INTO templates").unwrap()..];
        let literals: Vec<&str> = insert.split('\'').skip(1).step_by(2).collect();
        assert_eq!(literals.len(), 6, "two templates of three strings each");
        let update = &TIMEOUT_WORDING[TIMEOUT_WORDING.find("UPDATE templates").unwrap()..];
        let (old, new) = match update.split('\'').skip(1).step_by(2).collect::<Vec<_>>()[..] {
            [old, new, "order.cancelled", also_old] if also_old == old => (old, new),
            ref other => panic!("not the expected rewording: {other:?}"),
        };
        let reword = |event_type, body: &str| match event_type {
            EventType::Cancelled => {
                assert!(body.contains(old), "{body}");
                body.replace(old, new)
            }
            EventType::Confirmed => body.to_owned(),
        };
        literals
            .chunks(3)
            .map(|t| {
                let event_type = EventType::parse(t[0]).unwrap();
                (event_type, t[1].to_owned(), reword(event_type, t[2]))
            })
            .collect()
    }

    #[test]
    fn variables_render_with_formatted_money_and_missing_names() {
        let mut vars = small(EventType::Cancelled, Some(CancelReason::PaymentDeclined));
        vars.lines.push(LineVars { product_id: Uuid::max(), name: None, quantity: 1, unit_price: "0.99 EUR".into() });
        let out = render_part(Part::Body, "{{ total }}|{{ reason }}|{% for l in lines %}{{ l.name or l.product_id }};{% endfor %}{{ data_source }}", &vars).unwrap();
        assert_eq!(out, "25.00 EUR|payment_declined|Desk lamp;ffffffff-ffff-ffff-ffff-ffffffffffff;lookup");
    }

    #[test]
    fn the_seeded_templates_pass_and_render_as_they_did_before_the_sandbox() {
        let mut before = minijinja::Environment::new();
        before.set_undefined_behavior(minijinja::UndefinedBehavior::SemiStrict);
        for (event_type, subject, body) in seeded() {
            for (part, source) in [(Part::Subject, &subject), (Part::Body, &body)] {
                assert_eq!(check(part, source, event_type), None, "{event_type} {}", part.name());
                for (sample, vars) in samples(event_type) {
                    let old = before.render_str(source, Value::from(Serde(&vars))).unwrap();
                    assert_eq!(render_part(part, source, &vars).unwrap(), old, "{event_type} {} on {sample}", part.name());
                }
            }
        }
    }

    #[test]
    fn the_seeded_cancellation_words_each_reason_its_own_way() {
        let (_, _, body) = seeded().into_iter().find(|t| t.0 == EventType::Cancelled).unwrap();
        // One detail for all: only the wording of the reason may tell them apart.
        let render = |reason| render_part(Part::Body, &body, &Vars { detail: Some("why".into()), ..small(EventType::Cancelled, Some(reason)) }).unwrap();
        let worded: std::collections::HashSet<String> = CancelReason::ALL.into_iter().map(render).collect();
        assert_eq!(worded.len(), CancelReason::ALL.len(), "{worded:#?}");
        let timeout = render_part(Part::Body, &body, &small(EventType::Cancelled, Some(CancelReason::Timeout))).unwrap();
        assert!(timeout.contains("because it could not be completed in time\n(payment did not answer within 30s)."), "{timeout}");
    }

    #[test]
    fn checks_catch_syntax_unknown_variables_and_the_sandbox() {
        assert_eq!(check(Part::Body, "Hi {{ order_id }}{% if reason %} ({{ detail }}){% endif %}", EventType::Confirmed), None);
        let syntax = check(Part::Subject, "Hi {{ order_id", EventType::Confirmed).unwrap();
        assert!(syntax.starts_with("subject is not a valid template: syntax error"), "{syntax}");
        let unknown = check(Part::Body, "Hi {{ customer_name }}", EventType::Confirmed).unwrap();
        assert!(unknown.contains("undefined value"), "{unknown}");
        let debug = check(Part::Body, "{{ debug() }}", EventType::Confirmed).unwrap();
        assert_eq!(debug, "body is not allowed: line 1: calling `debug()` is not available in notification templates (they have no functions; filters are applied with `|`)");
        // A reason the samples do not all have is still checked: each reason is tried.
        let branch = check(Part::Body, "{% if reason == \"out_of_stock\" %}{{ sku }}{% endif %}", EventType::Cancelled).unwrap();
        assert!(branch.contains("(out_of_stock)") && branch.contains("undefined value"), "{branch}");
        // So is the fallback without names.
        let names = check(Part::Body, "{{ lines[0].name[0] }}", EventType::Confirmed).unwrap();
        assert!(names.contains("without product names"), "{names}");
    }

    #[test]
    fn work_and_output_are_limited_against_the_largest_order() {
        // Passes with the small sample, not with fifty lines: refused when stored.
        let cubic = "{% for a in lines %}{% for b in lines %}{% for c in lines %}{% if c.quantity < 0 %}-{% endif %}{% endfor %}{% endfor %}{% endfor %}";
        assert!(render_part(Part::Body, cubic, &small(EventType::Confirmed, None)).is_ok());
        let fuel = check(Part::Body, cubic, EventType::Confirmed).unwrap();
        assert!(fuel.starts_with("body does not render for a sample 50-line order.confirmed event: it ran out of fuel"), "{fuel}");
        let square = "{% for a in lines %}{% for b in lines %}{{ b.name }}{% endfor %}{% endfor %}";
        let long = check(Part::Body, square, EventType::Confirmed).unwrap();
        assert!(long.ends_with("its output is longer than 100000 characters, the limit"), "{long}");
        let subject = check(Part::Subject, "{% for l in lines %}{{ l.name }}{% endfor %}", EventType::Confirmed).unwrap();
        assert!(subject.ends_with("longer than 1000 characters, the limit"), "{subject}");
        // The same limits hold when the worker renders: it fails, quickly.
        let largest = largest(EventType::Confirmed, None);
        let started = std::time::Instant::now();
        assert!(matches!(render_part(Part::Body, cubic, &largest), Err(RenderError::OutOfFuel { line: Some(1) })));
        assert!(matches!(render_part(Part::Body, square, &largest), Err(RenderError::TooLong { max_chars: MAX_BODY_OUTPUT_CHARS })));
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
        // Exactly at the limit is fine.
        let vars = small(EventType::Confirmed, None);
        let at_limit = "x".repeat(MAX_SUBJECT_OUTPUT_CHARS - 1) + "é";
        assert_eq!(render_part(Part::Subject, &at_limit, &vars).unwrap(), at_limit);
        assert!(matches!(render_part(Part::Subject, &(at_limit + "y"), &vars), Err(RenderError::TooLong { max_chars: MAX_SUBJECT_OUTPUT_CHARS })));
    }
}
