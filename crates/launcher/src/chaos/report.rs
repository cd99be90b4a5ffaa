//! What a chaos run did and found: the plan and the timeline of each round, the counts,
//! whether the shop settled, the audit; as JSON (`Serialize`), Markdown and terminal text.

use std::fmt::Write as _;

use serde::Serialize;

use super::Step;
use super::inject::Injected;
use super::orders::{Outcomes, Shelf};
use crate::audit;

/// One thing that happened, at `t_s` seconds after the first round began.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    /// `None`: while restoring after the last round.
    pub round: Option<u32>,
    pub t_s: f64,
    pub what: String,
    pub took_ms: u64,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// One round: its plan and what the order driver saw.
#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    pub round: u32,
    pub plan: Vec<Step>,
    pub scheduled: u64,
    pub accepted: u64,
    pub retried: u64,
    pub unanswered: u64,
    pub refused: u64,
    pub unsent: u64,
    /// The first few problems the driver met (each also counted above).
    pub problems: Vec<String>,
}

/// The run in numbers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Orders the API answered 201 for.
    pub accepted: u64,
    /// How those ended.
    pub outcomes: Outcomes,
    /// Orders that needed more than one request (same key) for their 201.
    pub retried: u64,
    /// Orders that never got a 201 within the retry bound.
    pub unanswered: u64,
    pub injected: Injected,
}

/// Whether every accepted order became terminal and every queue emptied in time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Settled {
    pub settled: bool,
    pub took_s: f64,
    /// What was still pending when the bound ran out (or why restoring failed).
    pub pending: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    /// The command that repeats this run.
    pub command: String,
    pub rounds: Vec<RoundReport>,
    pub shelf: Shelf,
    pub timeline: Vec<TimelineEntry>,
    pub counts: Counts,
    pub settle: Settled,
    pub audit: Option<audit::Report>,
    /// Why the audit could not run, when it could not.
    pub audit_error: Option<String>,
    pub duration_s: f64,
}

impl ChaosReport {
    /// The shop settled and the audit ran and passed.
    pub fn passed(&self) -> bool {
        self.settle.settled && self.audit.as_ref().is_some_and(|a| a.passed())
    }

    /// Why the run failed, in one line; `None` when it passed.
    pub fn failure(&self) -> Option<String> {
        let mut why = Vec::new();
        if !self.settle.settled {
            why.push(format!(
                "the shop did not settle ({})",
                self.settle.pending.join("; ")
            ));
        }
        match (&self.audit, &self.audit_error) {
            (Some(a), _) if !a.passed() => {
                why.push(format!("the audit failed: {}", a.failed().join(", ")))
            }
            (None, Some(e)) => why.push(format!("the audit could not run: {e}")),
            (None, None) => why.push("the audit did not run".into()),
            _ => {}
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// The counts, a few lines for a terminal.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        let o = &c.outcomes;
        let i = &c.injected;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "orders: {} accepted ({} after retries with the same key), {} unanswered",
            c.accepted, c.retried, c.unanswered
        );
        let _ = writeln!(
            s,
            "        {} confirmed, {} cancelled out of stock, {} cancelled payment declined, {} still placed, {} missing",
            o.confirmed,
            o.cancelled_out_of_stock,
            o.cancelled_payment_declined,
            o.placed,
            o.missing
        );
        let _ = writeln!(
            s,
            "faults: {} kills, {} restarts, {} PostgreSQL crash-restarts, {} flag switches, {} unexpected exits, {} failed actions",
            i.kills, i.restarts, i.pg_restarts, i.flag_switches, i.unexpected_exits, i.failed
        );
        let settle = if self.settle.settled {
            format!("settled in {:.1} s", self.settle.took_s)
        } else {
            format!("did NOT settle: {}", self.settle.pending.join("; "))
        };
        let _ = writeln!(s, "settle: {settle}");
        s
    }

    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        let _ = writeln!(md, "# Chaos run: {verdict}\n");
        let _ = writeln!(
            md,
            "Seed {}; repeat with `{}`. {:.0} s in all.\n",
            self.seed, self.command, self.duration_s
        );
        if let Some(why) = self.failure() {
            let _ = writeln!(md, "**{why}**\n");
        }
        let _ = writeln!(md, "{}.\n", self.shelf.describe());
        let _ = writeln!(md, "## Counts\n\n```\n{}```\n", self.summary());
        let _ = writeln!(
            md,
            "| round | scheduled | accepted | retried | unanswered | refused | unsent | steps planned |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for r in &self.rounds {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.round + 1,
                r.scheduled,
                r.accepted,
                r.retried,
                r.unanswered,
                r.refused,
                r.unsent,
                r.plan.len()
            );
        }
        let _ = writeln!(
            md,
            "\n## Timeline\n\n| t (s) | round | what | took (ms) | error |\n| ---: | --- | --- | ---: | --- |"
        );
        for e in &self.timeline {
            let round = e
                .round
                .map(|r| (r + 1).to_string())
                .unwrap_or_else(|| "restore".into());
            let _ = writeln!(
                md,
                "| {:.3} | {round} | {} | {} | {} |",
                e.t_s,
                cell(&e.what),
                e.took_ms,
                cell(e.error.as_deref().map(first_line).unwrap_or(""))
            );
        }
        md.push('\n');
        match (&self.audit, &self.audit_error) {
            // The audit's own headings ("# Audit: PASSED", …), one level down.
            (Some(a), _) => md.push_str(
                &a.to_markdown()
                    .lines()
                    .map(|l| {
                        if l.starts_with('#') {
                            format!("#{l}\n")
                        } else {
                            format!("{l}\n")
                        }
                    })
                    .collect::<String>(),
            ),
            (None, e) => {
                let _ = writeln!(
                    md,
                    "## Audit: not run\n\n{}",
                    e.as_deref().unwrap_or("the run stopped before it")
                );
            }
        }
        md
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Text for a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}
