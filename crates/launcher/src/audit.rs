//! The shop's invariants, checked on any running shop from its databases and its webhook
//! receiver (issue 15; `cargo xtask audit`, `cargo xtask chaos` and the e2e tests use it).
//!
//! Each service's database is read with a connection of its own, in one read-only
//! repeatable-read transaction (a consistent picture of that database), and the rules join
//! the pictures in memory by order, product and customer id: memory grows with the number
//! of orders (a few hundred bytes each), never with the history of the queues. The rules
//! and their exact formulas are in `rules.rs` and `docs/audit.md`. Run it on a quiet shop:
//! an order in flight is reported as not terminal.

mod load;
mod rules;
mod snapshot;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use uuid::Uuid;

pub use conveyor_platform::config::parse_duration;

use crate::{Stack, StackInfo};

/// Where the shop's state is.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// Service name (`catalog`, `order`, `stock`, `payment`, `notification`) → a URL of its
    /// database that can read every table (the owner's). A service left out is not read and
    /// the rules that need it are reported skipped.
    pub databases: BTreeMap<String, String>,
    /// The webhook receiver's base URL (`GET {sink}/notifications`); empty: not checked.
    pub sink: String,
    /// Orders the client was told were accepted (201); may be empty.
    pub accepted: Vec<Uuid>,
}

impl Targets {
    /// A stack started by this launcher, with no accepted ids.
    pub fn from_stack(stack: &Stack) -> Targets {
        Targets::from_info(&stack.info())
    }

    /// A stack described by its `stack.json`.
    pub fn from_info(info: &StackInfo) -> Targets {
        Targets { databases: info.databases.clone(), sink: info.sink.clone(), accepted: Vec::new() }
    }
}

/// How strict to be.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// An inbox message whose time (`visible_at`) is more than this in the past is overdue.
    #[serde(serialize_with = "as_secs")]
    pub grace: Duration,
    /// Dead letters are listed but are no violation.
    pub allow_dead: bool,
    /// Examples kept per rule.
    pub examples: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { grace: Duration::from_secs(60), allow_dead: false, examples: 10 }
    }
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The rules, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    OrdersTerminal,
    AcceptedExist,
    ReadModel,
    StockLevels,
    StockReservations,
    Captures,
    Balances,
    Notifications,
    OutboxesEmpty,
    InboxesDrained,
    DeadLetters,
}

impl Rule {
    pub const ALL: [Rule; 11] = [
        Rule::OrdersTerminal,
        Rule::AcceptedExist,
        Rule::ReadModel,
        Rule::StockLevels,
        Rule::StockReservations,
        Rule::Captures,
        Rule::Balances,
        Rule::Notifications,
        Rule::OutboxesEmpty,
        Rule::InboxesDrained,
        Rule::DeadLetters,
    ];

    /// The rule's name in reports and JSON.
    pub fn id(self) -> &'static str {
        match self {
            Rule::OrdersTerminal => "orders_terminal",
            Rule::AcceptedExist => "accepted_orders_exist",
            Rule::ReadModel => "read_model",
            Rule::StockLevels => "stock_levels",
            Rule::StockReservations => "stock_reservations",
            Rule::Captures => "captures",
            Rule::Balances => "balances",
            Rule::Notifications => "notifications",
            Rule::OutboxesEmpty => "outboxes_empty",
            Rule::InboxesDrained => "inboxes_drained",
            Rule::DeadLetters => "dead_letters",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Rule::OrdersTerminal => "every order is confirmed or cancelled",
            Rule::AcceptedExist => "every order the client was told was accepted exists",
            Rule::ReadModel => "every order's view (the read model) says what its event stream says",
            Rule::StockLevels => "stock never below zero; levels equal the sum of their movements",
            Rule::StockReservations => "reserved stock equals what confirmed (and in-flight) orders hold",
            Rule::Captures => "at most one capture per order, one for each confirmed order, none kept for a cancelled one",
            Rule::Balances => "balances equal opening balance + top-ups − captures + refunds",
            Rule::Notifications => "exactly one notification per terminal order, recorded and received",
            Rule::OutboxesEmpty => "nothing left in any outbox (past the grace)",
            Rule::InboxesDrained => "nothing pending past its time (plus the grace) in any inbox",
            Rule::DeadLetters => "dead letters (listed; a violation unless allowed)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// Its database was not given.
    Skipped,
}

/// One rule's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    pub id: &'static str,
    pub title: &'static str,
    pub verdict: Verdict,
    /// How many things (orders, items, customers, databases) the rule looked at.
    pub checked: u64,
    pub violations: u64,
    /// The first violations, each a sentence naming the ids involved.
    pub examples: Vec<String>,
    /// What is worth knowing but no violation (dead letters allowed, repeats deduplicated).
    pub notes: Vec<String>,
}

/// The audit's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// No rule failed (skipped rules do not fail).
    pub passed: bool,
    pub options: Options,
    /// The services whose databases were read, and whether the receiver was.
    pub databases: Vec<String>,
    pub sink: Option<String>,
    pub duration_ms: u64,
    pub rules: Vec<RuleReport>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.passed
    }

    /// A rule's verdict by id (`"captures"`, …).
    pub fn rule(&self, id: &str) -> Option<&RuleReport> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// The ids of the rules that failed.
    pub fn failed(&self) -> Vec<&'static str> {
        self.rules.iter().filter(|r| r.verdict == Verdict::Fail).map(|r| r.id).collect()
    }

    /// A table of every rule, then each failed rule's examples and every note.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        let _ = writeln!(md, "# Audit: {verdict}\n");
        let _ = writeln!(
            md,
            "Databases read: {}. Webhook receiver: {}. Grace for inbox messages: {} s. Dead letters {}. {} ms.\n",
            self.databases.join(", "),
            self.sink.as_deref().unwrap_or("not checked"),
            self.options.grace.as_secs_f64(),
            if self.options.allow_dead { "allowed" } else { "are violations" },
            self.duration_ms
        );
        let _ = writeln!(md, "| rule | verdict | checked | violations | what it means |\n| --- | --- | ---: | ---: | --- |");
        for r in &self.rules {
            let _ = writeln!(md, "| `{}` | {} | {} | {} | {} |", r.id, mark(r.verdict), r.checked, r.violations, r.title);
        }
        for r in self.rules.iter().filter(|r| !r.examples.is_empty() || !r.notes.is_empty()) {
            let _ = writeln!(md, "\n## `{}`: {}\n", r.id, mark(r.verdict));
            if r.violations > r.examples.len() as u64 {
                let _ = writeln!(md, "{} violations; the first {}:\n", r.violations, r.examples.len());
            }
            for e in &r.examples {
                let _ = writeln!(md, "- {e}");
            }
            for n in &r.notes {
                let _ = writeln!(md, "- note: {n}");
            }
        }
        md
    }

    /// One line per rule, then its examples and notes indented: for a terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for r in &self.rules {
            let sign = match r.verdict {
                Verdict::Pass => "✓",
                Verdict::Fail => "✗",
                Verdict::Skipped => "-",
            };
            let count = if r.violations > 0 { format!("{} violations in {} checked", r.violations, r.checked) } else { format!("{} checked", r.checked) };
            let _ = writeln!(out, "  {sign} {:<22} {} ({count})", r.id, r.title);
            for e in &r.examples {
                let _ = writeln!(out, "      {e}");
            }
            if r.violations > r.examples.len() as u64 {
                let _ = writeln!(out, "      … and {} more", r.violations - r.examples.len() as u64);
            }
            for n in &r.notes {
                let _ = writeln!(out, "      note: {n}");
            }
        }
        let _ = writeln!(out, "audit {}", if self.passed { "PASSED".to_owned() } else { format!("FAILED: {}", self.failed().join(", ")) });
        out
    }
}

fn mark(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Fail => "**FAIL**",
        Verdict::Skipped => "skipped",
    }
}

/// Audits with the default options (60 s grace, dead letters are violations, 10 examples).
pub async fn run(targets: &Targets) -> Result<Report> {
    run_with(targets, &Options::default()).await
}

/// Reads every database and the receiver, then checks every rule. An error means the audit
/// could not run (a database or the receiver unreachable, a schema it does not know): it
/// names which.
pub async fn run_with(targets: &Targets, options: &Options) -> Result<Report> {
    let started = Instant::now();
    let snapshot = load::snapshot(targets, options).await?;
    let rules = rules::check_all(&snapshot, options);
    Ok(Report {
        passed: rules.iter().all(|r| r.verdict != Verdict::Fail),
        options: options.clone(),
        databases: targets.databases.keys().cloned().collect(),
        sink: (!targets.sink.is_empty()).then(|| targets.sink.clone()),
        duration_ms: started.elapsed().as_millis() as u64,
        rules,
    })
}
