//! The saga benchmark's report: what was measured (JSON), what a person reads (markdown)
//! and the charts (SVG), for each saga mode that ran; with both, their figures side by side.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use conveyor_benchkit::{Chart, Machine, Series};
use conveyor_contracts::SagaMode;
use serde::Serialize;

use super::ceiling::CeilingResult;
use super::{Mode, Settings};
use super::cpu::CpuUsage;
use super::hot::{self, Hot};
use super::ramp::{Rules, Search};
use super::stack::{HalfRate, Messages, RampSeries, StackResults, Step};

/// Saga throughput must reach this share of the batched ceiling.
pub const THROUGHPUT_TARGET: f64 = 0.5;
/// p99 placed → confirmed at half the maximum rate, ms.
pub const P99_TARGET_MS: f64 = 100.0;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated_unix: u64,
    pub quick: bool,
    pub machine: Machine,
    pub postgres: String,
    pub server: String,
    pub settings: Settings,
    pub rules: Rules,
    /// The choreography's SQL replayed by pgbench: measured once, before any shop ran.
    pub ceiling: Vec<CeilingResult>,
    pub replay_differences: Vec<String>,
    /// The first saga measured (the choreography, when it ran), in the fields the report
    /// had before there were modes.
    #[serde(flatten)]
    pub shop: ShopReport,
    /// The orchestration, when both modes ran (`shop` is then the choreography).
    pub orchestration: Option<ShopReport>,
    /// Each mode's headline figures, in the order they ran.
    pub modes: Vec<ModeFigures>,
    /// When both modes ran: every headline figure side by side, with orchestration ÷
    /// choreography.
    pub comparison: Vec<Comparison>,
}

/// One saga mode's shop: what it measured and what that says.
#[derive(Debug, Clone, Serialize)]
pub struct ShopReport {
    pub mode: SagaMode,
    pub seeded_products: usize,
    pub seeded_customers: usize,
    pub steps: Vec<Step>,
    pub max_sustained_rate: Option<f64>,
    pub half_rate: Option<HalfRate>,
    /// Against the ceiling, which replays the choreography's SQL whatever the mode.
    pub ratios: Ratios,
    pub targets: Targets,
    /// CPU of the step at the highest sustained rate, and of the first failed step above it.
    pub cpu_at_max: Option<CpuUsage>,
    pub cpu_at_failure: Option<CpuUsage>,
    pub cpu_per_saga_at_max: Option<CpuPerSaga>,
    /// Orchestration: the coordinator's sagas by state once the shop was done.
    pub coordinator_sagas: Option<BTreeMap<String, u64>>,
    pub findings: Vec<String>,
    /// The hot-products phase (a flash sale), unless `--no-hot`; or why it failed to run.
    pub hot: Option<Hot>,
    pub hot_error: Option<String>,
    pub ramp_series: RampSeries,
    pub search: Search,
    pub logs: PathBuf,
}

impl Report {
    /// Every shop measured, in the order they ran.
    pub fn shops(&self) -> impl Iterator<Item = &ShopReport> {
        std::iter::once(&self.shop).chain(&self.orchestration)
    }
}

impl ShopReport {
    /// The step at the highest sustained rate.
    fn best_step(&self) -> Option<&Step> {
        self.max_sustained_rate.and_then(|m| self.steps.iter().find(|st| st.sustained && st.rate == m))
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratios {
    pub ceiling_batched_sagas_per_sec: Option<f64>,
    pub ceiling_one_per_tx_sagas_per_sec: Option<f64>,
    /// Our highest sustained rate over each ceiling.
    pub to_batched: Option<f64>,
    pub to_one_per_tx: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Targets {
    pub throughput_ratio_min: f64,
    pub throughput_met: Option<bool>,
    pub p99_ms_max: f64,
    pub p99_ms: Option<f64>,
    pub p99_met: Option<bool>,
}

/// CPU time per saga at the highest sustained rate, ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuPerSaga {
    pub rate: f64,
    pub machine: Option<f64>,
    pub postgres: Option<f64>,
    /// The stack's own processes together, and each.
    pub application: f64,
    pub by_process: BTreeMap<String, f64>,
    pub driver: f64,
    pub other: Option<f64>,
}

fn per_saga(cpu: &CpuUsage, rate: f64) -> CpuPerSaga {
    let ms = |cores: f64| cores / rate.max(1e-9) * 1000.0;
    CpuPerSaga {
        rate,
        machine: cpu.machine_busy.map(ms),
        postgres: cpu.postgres.map(ms),
        application: ms(cpu.application()),
        by_process: cpu.processes.iter().map(|(k, v)| (k.clone(), ms(*v))).collect(),
        driver: ms(cpu.driver),
        other: cpu.other.map(ms),
    }
}

/// One mode's headline figures: a column of the side-by-side table.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModeFigures {
    pub mode: SagaMode,
    /// Sagas/s.
    pub max_sustained_rate: Option<f64>,
    pub half_rate: Option<f64>,
    /// Placed → terminal at half rate, ms.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// CPU per saga at the highest sustained rate, ms: the machine, PostgreSQL, the stack's
    /// own processes.
    pub cpu_ms_per_saga: Option<f64>,
    pub postgres_cpu_ms_per_saga: Option<f64>,
    pub application_cpu_ms_per_saga: Option<f64>,
    /// Every database of the stack, at the highest sustained rate and at half rate.
    pub transactions_per_saga_at_max: Option<f64>,
    pub transactions_per_saga_at_half: Option<f64>,
    /// Every inbox (see `Messages`), at the highest sustained rate and at half rate.
    pub messages_per_saga_at_max: Option<f64>,
    pub messages_per_saga_at_half: Option<f64>,
}

fn total(t: &BTreeMap<String, f64>) -> Option<f64> {
    (!t.is_empty()).then(|| t.values().sum())
}

impl ModeFigures {
    fn of(r: &ShopReport) -> ModeFigures {
        let best = r.best_step();
        let half = r.half_rate.as_ref();
        let latency = half.and_then(|h| h.latency_ms);
        let cpu = r.cpu_per_saga_at_max.as_ref();
        ModeFigures {
            mode: r.mode,
            max_sustained_rate: r.max_sustained_rate,
            half_rate: half.map(|h| h.rate),
            p50_ms: latency.map(|l| l.p50),
            p95_ms: latency.map(|l| l.p95),
            p99_ms: latency.map(|l| l.p99),
            cpu_ms_per_saga: cpu.and_then(|c| c.machine),
            postgres_cpu_ms_per_saga: cpu.and_then(|c| c.postgres),
            application_cpu_ms_per_saga: cpu.map(|c| c.application),
            transactions_per_saga_at_max: best.and_then(|st| total(&st.transactions_per_saga)),
            transactions_per_saga_at_half: half.and_then(|h| total(&h.transactions_per_saga)),
            messages_per_saga_at_max: best.and_then(|st| st.messages.as_ref()).map(|m| m.per_saga),
            messages_per_saga_at_half: half.and_then(|h| h.messages.as_ref()).map(|m| m.per_saga),
        }
    }
}

/// The side-by-side table's rows: what, its unit, decimals shown, and where it is.
type Figure = (&'static str, &'static str, usize, fn(&ModeFigures) -> Option<f64>);
const FIGURES: [Figure; 12] = [
    ("highest sustained rate", "sagas/s", 0, |f| f.max_sustained_rate),
    ("half rate (the latency run)", "sagas/s", 0, |f| f.half_rate),
    ("placed → terminal at half rate, p50", "ms", 1, |f| f.p50_ms),
    ("placed → terminal at half rate, p95", "ms", 1, |f| f.p95_ms),
    ("placed → terminal at half rate, p99", "ms", 1, |f| f.p99_ms),
    ("CPU per saga at the highest sustained rate, machine", "ms", 2, |f| f.cpu_ms_per_saga),
    ("CPU per saga at the highest sustained rate, PostgreSQL", "ms", 2, |f| f.postgres_cpu_ms_per_saga),
    ("CPU per saga at the highest sustained rate, our processes", "ms", 2, |f| f.application_cpu_ms_per_saga),
    ("transactions per saga at the highest sustained rate", "", 1, |f| f.transactions_per_saga_at_max),
    ("transactions per saga at half rate", "", 1, |f| f.transactions_per_saga_at_half),
    ("messages per saga at the highest sustained rate", "", 1, |f| f.messages_per_saga_at_max),
    ("messages per saga at half rate", "", 1, |f| f.messages_per_saga_at_half),
];

/// One row of the side-by-side table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub figure: String,
    pub unit: String,
    pub choreography: Option<f64>,
    pub orchestration: Option<f64>,
    /// orchestration ÷ choreography.
    pub ratio: Option<f64>,
}

fn compare(choreography: &ModeFigures, orchestration: &ModeFigures) -> Vec<Comparison> {
    FIGURES
        .iter()
        .map(|&(figure, unit, _, get)| {
            let (c, o) = (get(choreography), get(orchestration));
            Comparison { figure: figure.to_owned(), unit: unit.to_owned(), choreography: c, orchestration: o, ratio: c.zip(o).filter(|(c, _)| *c > 0.0).map(|(c, o)| o / c) }
        })
        .collect()
}

/// The report of `shops`, one per mode in the order they ran (the choreography first).
pub fn build(s: &Settings, machine: Machine, postgres: String, server: String, ceiling: Vec<CeilingResult>, shops: Vec<StackResults>) -> Report {
    let cores = machine.cpus as f64;
    let mut shops = shops.into_iter().map(|shop| shop_report(&ceiling, cores, shop));
    let shop = shops.next().expect("at least one saga mode ran");
    let orchestration = shops.next();
    let modes: Vec<ModeFigures> = std::iter::once(&shop).chain(&orchestration).map(ModeFigures::of).collect();
    let comparison = match &modes[..] {
        [c, o] => compare(c, o),
        _ => Vec::new(),
    };
    Report {
        generated_unix: conveyor_benchkit::unix_now(),
        quick: s.quick,
        machine,
        postgres,
        server,
        settings: s.clone(),
        rules: Rules::default(),
        replay_differences: super::replay::DIFFERENCES.iter().map(|d| d.to_string()).collect(),
        ceiling,
        shop,
        orchestration,
        modes,
        comparison,
    }
}

fn shop_report(ceiling: &[CeilingResult], cores: f64, shop: StackResults) -> ShopReport {
    let batched = ceiling.iter().find(|c| c.batch > 1).map(|c| c.sagas_per_sec);
    let one = ceiling.iter().find(|c| c.batch == 1).map(|c| c.sagas_per_sec);
    let max = shop.search.best();
    let ratio = |c: Option<f64>| max.zip(c).filter(|(_, c)| *c > 0.0).map(|(m, c)| m / c);
    let ratios = Ratios { ceiling_batched_sagas_per_sec: batched, ceiling_one_per_tx_sagas_per_sec: one, to_batched: ratio(batched), to_one_per_tx: ratio(one) };
    let p99 = shop.half.as_ref().and_then(|h| h.latency_ms).map(|l| l.p99);
    let targets = Targets {
        throughput_ratio_min: THROUGHPUT_TARGET,
        throughput_met: ratios.to_batched.map(|r| r >= THROUGHPUT_TARGET),
        p99_ms_max: P99_TARGET_MS,
        p99_ms: p99,
        p99_met: p99.map(|p| p <= P99_TARGET_MS),
    };
    let best_step = max.and_then(|m| shop.steps.iter().find(|st| st.sustained && st.rate == m));
    let fail_step = shop.steps.iter().filter(|st| !st.sustained && max.is_none_or(|m| st.rate > m)).min_by(|a, b| a.rate.total_cmp(&b.rate));
    let cpu_per_saga_at_max = best_step.map(|st| per_saga(&st.cpu, st.placed_per_sec));
    let mut r = ShopReport {
        mode: shop.mode,
        seeded_products: shop.seeded.0,
        seeded_customers: shop.seeded.1,
        max_sustained_rate: max,
        ratios,
        targets,
        cpu_at_max: best_step.map(|st| st.cpu.clone()),
        cpu_at_failure: fail_step.map(|st| st.cpu.clone()),
        cpu_per_saga_at_max,
        coordinator_sagas: shop.coordinator_sagas,
        findings: Vec::new(),
        hot: shop.hot,
        hot_error: shop.hot_error,
        ramp_series: shop.series,
        half_rate: shop.half,
        steps: shop.steps,
        search: shop.search,
        logs: shop.log_dir,
    };
    r.findings = findings(&r, cores, ceiling);
    r
}

pub(super) fn pct(v: f64) -> String {
    format!("{:.0}%", v * 100.0)
}

pub(super) fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "n/a".into())
}

pub(super) fn met(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    }
}

/// What the numbers say, in sentences: the targets, where the time and the CPU go, and
/// what looks like the limit.
fn findings(r: &ShopReport, cores: f64, ceiling: &[CeilingResult]) -> Vec<String> {
    let mut f = Vec::new();
    let orchestrated = r.mode == SagaMode::Orchestration;
    match (r.max_sustained_rate, r.ratios.ceiling_batched_sagas_per_sec) {
        (Some(max), Some(b)) => f.push(format!(
            "The shop sustained {max:.0} sagas/s (placed → confirmed){}: {} of the batched saga-SQL ceiling ({b:.0}/s) and {} of the one-message-per-transaction ceiling ({}/s). Target ≥ {}: {}.",
            if orchestrated { " orchestrated by the coordinator; the ceiling replays the choreography's SQL" } else { "" },
            r.ratios.to_batched.map_or("n/a".into(), pct),
            r.ratios.to_one_per_tx.map_or("n/a".into(), pct),
            opt(r.ratios.ceiling_one_per_tx_sagas_per_sec, 0),
            pct(THROUGHPUT_TARGET),
            met(r.targets.throughput_met)
        )),
        (None, _) => f.push("No rate step was sustained: the shop did not keep up even at the lowest rate tried.".into()),
        _ => {}
    }
    if let Some(h) = &r.half_rate
        && let Some(l) = h.latency_ms
    {
        let slowest = h.hops.iter().max_by(|a, b| (a.relay_ms[2] + a.wait_ms[2]).total_cmp(&(b.relay_ms[2] + b.wait_ms[2])));
        f.push(format!(
            "At {:.0} sagas/s ({}) placed → confirmed took p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms (target p99 ≤ {P99_TARGET_MS:.0} ms: {}){}.",
            h.rate,
            if r.max_sustained_rate.is_some() { "half the maximum" } else { "half the lowest rate tried" },
            l.p50,
            l.p95,
            l.p99,
            met(r.targets.p99_met),
            slowest.map_or(String::new(), |s| format!(
                "; the slowest hop at p99 was {} → {} (relay {:.1} ms, wait for a consumer {:.1} ms)",
                s.topic, s.consumer, s.relay_ms[2], s.wait_ms[2]
            ))
        ));
    }
    if let Some(h) = &r.half_rate
        && let Some(l) = h.latency_ms
    {
        // The hops before the confirmation (the notification, and the order's reply to the
        // coordinator, come after it).
        let path: Vec<_> = h.hops.iter().filter(|hop| hop.on_path).collect();
        if !path.is_empty() {
            let relays: f64 = path.iter().map(|hop| hop.relay_ms[0]).sum();
            let waits: f64 = path.iter().map(|hop| hop.wait_ms[0]).sum();
            f.push(format!(
                "Where a saga's time goes at half rate (p50 per hop on the way to confirmed): {}. The relays add up to {relays:.1} ms and the waits for a consumer to {waits:.1} ms of the {:.1} ms p50 saga. A relay hop is the rest of the publishing transaction (its commit), the relay's wake-up (NOTIFY; when that is missed, its next poll), its claim and the copy.",
                path.iter().map(|hop| format!("{} → {}: relay {:.1} ms + wait {:.1} ms", hop.topic, hop.consumer, hop.relay_ms[0], hop.wait_ms[0])).collect::<Vec<_>>().join("; "),
                l.p50
            ));
        }
    }
    if let Some(h) = &r.half_rate {
        let slow: Vec<String> = h.hops.iter().filter(|hop| hop.relay_ms[1] > 100.0).map(|hop| format!("{} {:.0} ms", hop.topic, hop.relay_ms[1])).collect();
        if !slow.is_empty() {
            f.push(format!(
                "Publish → subscriber's inbox at p95: {}, at a rate far below the maximum. Delays spread up to a second are what a relay that was not woken looks like: it finds the message at its next poll (every 1 s by default).",
                slow.join(", ")
            ));
        }
    }
    if let (Some(cpu), Some(per)) = (&r.cpu_at_max, &r.cpu_per_saga_at_max) {
        let busy = cpu.machine_busy.unwrap_or(0.0);
        let saturated = busy >= 0.9 * cores;
        let top: Vec<String> = cpu.ranked().into_iter().take(4).map(|(n, c)| format!("{n} {c:.2}")).collect();
        f.push(format!(
            "At the highest sustained rate the machine was {busy:.2} of {cores:.0} cores busy ({}); the biggest users, in cores: {}.",
            if saturated { "CPU-bound: the limit is the CPU of this machine, shared by every process" } else { "not CPU-bound: the limit is elsewhere (waiting: locks, commits, wake-ups)" },
            top.join(", ")
        ));
        let mut apps: Vec<(&String, &f64)> = per.by_process.iter().collect();
        apps.sort_by(|a, b| b.1.total_cmp(a.1));
        let apps: Vec<String> = apps.iter().take(4).map(|(n, ms)| format!("{n} {ms:.2}")).collect();
        let ceiling_pg = ceiling.iter().find(|c| c.batch > 1).and_then(|c| c.postgres_cpu_ms_per_saga);
        let ceiling_machine = ceiling.iter().find(|c| c.batch > 1).and_then(|c| c.machine_cpu_ms_per_saga);
        f.push(format!(
            "CPU per saga at that rate: {} ms on the machine, of which PostgreSQL {} ms, our processes {:.2} ms (biggest: {}), the load driver {:.2} ms. The batched replay needs {} ms of PostgreSQL CPU per saga ({} ms on the whole machine, pgbench included). At {} ms per saga, {cores:.0} cores carry at most {} sagas/s.",
            opt(per.machine, 2),
            opt(per.postgres, 2),
            per.application,
            apps.join(", "),
            per.driver,
            opt(ceiling_pg, 2),
            opt(ceiling_machine, 2),
            opt(per.machine, 2),
            per.machine.filter(|m| *m > 0.0).map_or("n/a".into(), |m| format!("{:.0}", cores * 1000.0 / m)),
        ));
        if let (Some(pg_ms), Some(c_ms)) = (per.postgres, ceiling_pg)
            && c_ms > 0.0
        {
            let x = pg_ms / c_ms;
            f.push(if orchestrated {
                format!(
                    "PostgreSQL works {x:.1}× as hard per saga for the orchestrated shop as for the batched replay of the choreography's SQL: besides what the choreography's services add, the coordinator's transitions, steps and deadlines, and twice the messages."
                )
            } else if x > 1.2 {
                format!(
                    "PostgreSQL works {x:.1}× as hard per saga for the shop as for the batched replay of its SQL: the difference is what the services send beyond the replayed statements (smaller batches at this rate, the relay's separate commits, wake-up notifications and listeners, transaction statements per batch) and the cost of the stack's databases' connections."
                )
            } else if x < 0.8 {
                format!(
                    "PostgreSQL spends less CPU per saga on the shop ({pg_ms:.2} ms) than on the batched replay ({c_ms:.2} ms): the replay computes in SQL what the services compute in Rust (ids, JSON payloads, the values each handler reads from its message), so it is a conservative ceiling, not an upper bound; a ratio near or above 100% says the shop's SQL is as cheap as the replay's, not that Postgres is out of room."
                )
            } else {
                format!("PostgreSQL works about as hard per saga for the shop as for the batched replay of its SQL ({x:.1}×): the services' SQL is not where the gap is.")
            });
        }
        let ceiling_other = ceiling.iter().filter_map(|c| c.cpu.other).fold(0.0, f64::max);
        if let Some(other) = cpu.other
            && (other > 0.2 || ceiling_other > 0.2)
        {
            f.push(format!(
                "Other programs used {other:.2} cores during that step and up to {ceiling_other:.2} during the ceiling (compilers, other benchmarks): the figures are noisy; rerun on a quiet machine."
            ));
        }
        if cpu.driver > 0.25 * cores {
            f.push(format!("The load driver itself used {:.2} cores: it competes with the shop for this machine's CPU.", cpu.driver));
        }
    }
    if let Some(fail) = r.steps.iter().filter(|st| !st.sustained && r.max_sustained_rate.is_none_or(|m| st.rate > m)).min_by(|a, b| a.rate.total_cmp(&b.rate)) {
        let top: Vec<String> = fail.cpu.ranked().into_iter().take(3).map(|(n, c)| format!("{n} {c:.2}")).collect();
        f.push(format!(
            "The lowest failed rate, {:.0}/s, failed because: {}. Machine {} of {cores:.0} cores busy; biggest users: {}.",
            fail.rate,
            fail.failure.as_deref().unwrap_or("?"),
            opt(fail.cpu.machine_busy, 2),
            top.join(", ")
        ));
    }
    if let Some(st) = r.best_step()
        && let Some(at_max) = total(&st.transactions_per_saga)
    {
        let replay: Vec<String> = ceiling.iter().filter_map(|c| c.transactions_per_saga.map(|t| format!("{t:.1} with {}", c.variant))).collect();
        f.push(format!(
            "Transactions per saga (every database of the stack, from pg_stat_database): {at_max:.1} at the highest sustained rate{}; the replay{} runs {}. Every transaction is a round trip or more and, when it writes, a commit: the difference is what the engine's loops and the services add (claims that find nothing, wake-up and listener queries, the relays' separate commits, reads outside transactions).",
            r.half_rate.as_ref().and_then(|h| total(&h.transactions_per_saga)).map_or(String::new(), |t| format!(" and {t:.1} at half of it")),
            if orchestrated { " (of the choreography's SQL)" } else { "" },
            if replay.is_empty() { "n/a".to_owned() } else { replay.join(", ") }
        ));
    }
    let at_max = r.best_step().and_then(|st| st.messages.as_ref());
    let at_half = r.half_rate.as_ref().and_then(|h| h.messages.as_ref());
    if let Some(m) = at_half.or(at_max) {
        let topics: Vec<String> = m.by_topic.iter().map(|(t, n)| format!("{t} {n:.1}")).collect();
        let waiting: u64 = at_max.into_iter().chain(at_half).map(|m| m.waiting).sum();
        f.push(format!(
            "Messages per saga (every inbox, counted with the sagas that sent them): {} at the highest sustained rate and {} at half rate; by topic at {}: {}.{}",
            opt(at_max.map(|m| m.per_saga), 1),
            opt(at_half.map(|m| m.per_saga), 1),
            if at_half.is_some() { "half rate" } else { "the highest sustained rate" },
            topics.join(", "),
            if waiting > 0 { format!(" {waiting} of them were not handled yet when counted (deadlines are due only after --step-timeout).") } else { String::new() }
        ));
    }
    if orchestrated {
        f.push(
            "The coordinator's deadlines (saga.deadline, one per step it waits for) come due coordinator-worker's --step-timeout (30 s by default) after they are set: they count in the messages of the sagas that set them, but handling them (a claim that finds the step answered) falls in the CPU and transactions of whatever runs 30 s later."
                .to_owned(),
        );
    }
    if let Some(by) = &r.coordinator_sagas {
        let open: u64 = by.iter().filter(|(state, _)| !matches!(state.as_str(), "confirmed" | "cancelled")).map(|(_, n)| n).sum();
        let states = by.iter().map(|(state, n)| format!("{state} {n}")).collect::<Vec<_>>().join(", ");
        f.push(if open == 0 {
            format!("Every saga of the coordinator ended ({states}).")
        } else {
            format!("{open} of the coordinator's sagas had not ended when the shop was done ({states}): see the coordinator's log in {}.", r.logs.display())
        });
    }
    let deadlocks: u64 = r.steps.iter().flat_map(|st| st.deadlocks.values()).sum();
    if deadlocks > 0 {
        let mut by: BTreeMap<&str, u64> = BTreeMap::new();
        for st in &r.steps {
            for (db, n) in &st.deadlocks {
                *by.entry(db).or_default() += n;
            }
        }
        f.push(format!(
            "PostgreSQL detected {deadlocks} deadlocks in the shop's databases during the ramp ({}): handlers lock items and balances message by message inside a batch, so two batches can take two rows in opposite orders; each costs deadlock_timeout (1 s) and a retry.",
            by.iter().map(|(d, n)| format!("{d} {n}")).collect::<Vec<_>>().join(", ")
        ));
    }
    let replay_deadlocks: u64 = ceiling.iter().map(|c| c.deadlocks).sum();
    if replay_deadlocks > 0 {
        f.push(format!("The replay hit {replay_deadlocks} deadlocks (same per-message locking in batches); pgbench counts those script runs as failed and goes on."));
    }
    if let Some(h) = &r.hot {
        let t = &h.targets;
        let missed: Vec<&str> = [(t.rate_met != Some(true), "the rate"), (t.p99_met != Some(true), "the latency"), (!t.deadlocks_met, "no deadlock"), (!t.sold_met, "the units sold"), (!t.releases_met, "the releases")]
            .into_iter()
            .filter_map(|(missed, what)| missed.then_some(what))
            .collect();
        f.push(format!(
            "Hot products ({} products, {:.0} orders/s): {} ended/s over the second half, placed → ended p99 {} ms, {} deadlocks, {} of {} units sold, {} cancelled orders holding units: {}.",
            h.products.len(),
            h.rate,
            format_args!("{:.0}", h.ended_per_sec),
            opt(t.p99_ms, 0),
            t.deadlocks,
            h.items.iter().map(|i| i.sold).sum::<i64>(),
            h.items.iter().map(|i| i.stock).sum::<i64>(),
            h.orders.stuck_releases,
            if missed.is_empty() { "every target met".to_owned() } else { format!("NOT met: {}", missed.join(", ")) }
        ));
    }
    if let Some(e) = &r.hot_error {
        f.push(format!("The hot-products phase could not run: {e}."));
    }
    f
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Saga benchmark report\n");
    let _ = writeln!(
        s,
        "{}; {} ({}); the shop's {} build; {}; {} delivery{}.",
        r.machine.describe(),
        r.postgres,
        r.server,
        if r.settings.build == super::Build::Release { "release" } else { "debug" },
        match r.orchestration {
            None => format!("the {}", r.shop.mode),
            Some(_) => "the choreography, then the orchestration, each on a fresh stack".to_owned(),
        },
        r.settings.delivery,
        if r.quick { "; QUICK smoke run: checks the harness, the figures mean nothing" } else { "" }
    );
    match &r.orchestration {
        None => {
            s.push_str(&shop_head(&r.shop));
            s.push_str(&ceiling_section(r));
            s.push_str(&shop_rest(r, &r.shop));
        }
        Some(_) => {
            s.push_str(&side_by_side(r));
            s.push_str(&ceiling_section(r));
            for shop in r.shops() {
                let _ = writeln!(s, "\n## The {}", shop.mode);
                // Each mode's sections one level down.
                s.push_str(&(shop_head(shop) + &shop_rest(r, shop)).replace("\n## ", "\n### "));
            }
        }
    }
    let _ = writeln!(
        s,
        "\n## Settings\n\n`cargo xtask bench saga{}{}{}`: ceiling {} s × {} clients; {} s of warm-up; steps of {} s from {}/s ×{} with {} bisections (at most {}/s); {} s at half rate; {}; at most {} requests in flight. Process logs: {}. Charts: saga-report.svg; every figure: saga-report.json.",
        if r.quick { " --quick" } else { "" },
        if r.settings.mode == Mode::Choreography { String::new() } else { format!(" --mode {}", r.settings.mode.as_str()) },
        if r.settings.delivery == conveyor_launcher::Delivery::Push { String::new() } else { format!(" --delivery {}", r.settings.delivery) },
        r.settings.ceiling_secs,
        r.settings.ceiling_clients,
        r.settings.warmup_secs,
        r.settings.step_secs,
        r.settings.start_rate,
        r.settings.factor,
        r.settings.bisections,
        r.settings.max_rate,
        r.settings.latency_secs,
        if r.settings.hot {
            format!(
                "hot products: {} for {} s with {} units each, {} of the orders by customers who cannot pay",
                r.settings.hot_products,
                r.settings.hot_secs,
                r.shop.hot.as_ref().map_or_else(|| r.settings.hot_stock.map_or("default".to_owned(), |n| n.to_string()), |h| h.stock.to_string()),
                pct(r.settings.hot_decline_share)
            )
        } else {
            "no hot products (--no-hot)".to_owned()
        },
        r.settings.max_in_flight,
        r.shops().map(|shop| format!("`{}`", shop.logs.display())).collect::<Vec<_>>().join(", ")
    );
    s
}

/// Both modes' headline figures side by side.
fn side_by_side(r: &Report) -> String {
    let mut s = String::from("\n## Choreography and orchestration side by side\n\n");
    let _ = writeln!(
        s,
        "Each saga on a fresh stack with the same settings, one after the other in this run on this machine. CPU per saga at each one's own highest sustained rate; latency at each one's half rate; transactions (pg_stat_database, every database of the stack) and messages (every inbox) per saga placed. The orchestration's deadlines count in its messages; handling them falls in later windows' CPU and transactions (see its findings).\n"
    );
    let _ = writeln!(s, "| | choreography | orchestration | orchestration ÷ choreography |\n|---|---:|---:|---:|");
    for (c, &(_, _, digits, _)) in r.comparison.iter().zip(&FIGURES) {
        let unit = if c.unit.is_empty() { String::new() } else { format!(", {}", c.unit) };
        let _ = writeln!(s, "| {}{unit} | {} | {} | {} |", c.figure, opt(c.choreography, digits), opt(c.orchestration, digits), c.ratio.map_or("n/a".to_owned(), |x| format!("{x:.2}×")));
    }
    s
}

/// A shop's result table and findings.
fn shop_head(r: &ShopReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## Result\n");
    let _ = writeln!(s, "| | measured | target | |\n|---|---:|---:|---|");
    let _ = writeln!(s, "| highest sustained rate, placed → confirmed | {} sagas/s | | |", opt(r.max_sustained_rate, 0));
    let sql = if r.mode == SagaMode::Orchestration { "the choreography's saga SQL" } else { "saga SQL" };
    let _ = writeln!(s, "| ceiling: {sql}, consumers claiming 50 at a time | {} sagas/s | | |", opt(r.ratios.ceiling_batched_sagas_per_sec, 0));
    let _ = writeln!(s, "| ceiling: {sql}, one message per transaction | {} sagas/s | | |", opt(r.ratios.ceiling_one_per_tx_sagas_per_sec, 0));
    let _ = writeln!(s, "| shop / batched ceiling | {} | ≥ {} | {} |", r.ratios.to_batched.map_or("n/a".into(), pct), pct(THROUGHPUT_TARGET), met(r.targets.throughput_met));
    let _ = writeln!(s, "| shop / one-per-transaction ceiling | {} | | |", r.ratios.to_one_per_tx.map_or("n/a".into(), pct));
    if let Some(h) = &r.half_rate {
        let l = h.latency_ms;
        let _ = writeln!(
            s,
            "| saga latency at {:.0}/s: p50 / p95 / p99 / max | {} / {} / {} / {} ms | p99 ≤ {P99_TARGET_MS:.0} ms | {} |",
            h.rate,
            opt(l.map(|l| l.p50), 1),
            opt(l.map(|l| l.p95), 1),
            opt(l.map(|l| l.p99), 1),
            opt(l.map(|l| l.max), 1),
            met(r.targets.p99_met)
        );
    }
    let messages = |m: Option<&Messages>| opt(m.map(|m| m.per_saga), 1);
    let _ = writeln!(
        s,
        "| messages per saga (every inbox): at the highest sustained rate / at half rate | {} / {} | | |",
        messages(r.best_step().and_then(|st| st.messages.as_ref())),
        messages(r.half_rate.as_ref().and_then(|h| h.messages.as_ref()))
    );
    if let Some(by) = &r.coordinator_sagas {
        let open: u64 = by.iter().filter(|(state, _)| !matches!(state.as_str(), "confirmed" | "cancelled")).map(|(_, n)| n).sum();
        let states = by.iter().map(|(state, n)| format!("{state} {n}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(s, "| the coordinator's sagas when the shop was done | {} | every one ended | {} |", if states.is_empty() { "none".to_owned() } else { states }, met(Some(open == 0)));
    }
    if let Some(h) = &r.hot {
        let _ = writeln!(
            s,
            "| hot products ({} products, 1–{} lines × 1–{} units): rate ÷ spread rate, p99, deadlocks, units, releases | {}, {} ms, {}, {}, {} stuck | ≥ {}, ≤ {:.0} ms, 0, ≤ stock, 0 | {} |",
            h.products.len(),
            h.max_lines,
            h.max_quantity,
            h.targets.rate_ratio.map_or("n/a".into(), pct),
            opt(h.targets.p99_ms, 0),
            h.targets.deadlocks,
            if h.targets.sold_met { "exact" } else { "WRONG" },
            h.orders.stuck_releases,
            pct(h.targets.rate_ratio_min),
            h.targets.p99_ms_max,
            if h.targets.all_met { "met" } else { "NOT met" }
        );
    }
    let _ = writeln!(s, "\n## What the numbers say\n");
    for f in &r.findings {
        let _ = writeln!(s, "- {f}");
    }
    s
}

/// The ceiling's section (once, whatever the modes).
fn ceiling_section(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## The ceiling: the saga's SQL replayed by pgbench\n");
    let _ = writeln!(
        s,
        "Measured first, with nothing else running, in a scratch database on the same PostgreSQL: pgbench -M prepared, {} clients, {} s per variant, {} products and {} customers chosen uniformly. Sagas are counted in the database (a saga is complete when its notification is recorded).{}\n",
        r.settings.ceiling_clients,
        r.settings.ceiling_secs,
        r.settings.products,
        r.settings.customers,
        if r.shops().any(|shop| shop.mode == SagaMode::Orchestration) {
            " The replay is the choreography's SQL, measured once: the orchestration's ratios to it compare the orchestrated shop with the choreography's statements (there is no replay of the coordinator's)."
        } else {
            ""
        }
    );
    let _ = writeln!(s, "| variant | orders per run / claim batch | relay batch | sagas/s | confirmed/s | left in queues | deadlocks | PostgreSQL CPU ms/saga | machine CPU ms/saga | other programs, cores |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in &r.ceiling {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
            c.variant,
            c.batch,
            c.relay_batch,
            c.sagas_per_sec,
            c.confirmed_per_sec,
            c.left_in_queues,
            c.deadlocks,
            opt(c.postgres_cpu_ms_per_saga, 3),
            opt(c.machine_cpu_ms_per_saga, 3),
            opt(c.cpu.other, 2)
        );
    }
    let _ = writeln!(
        s,
        "\nEach script run is, per saga, the transactions the shop runs (scripts: {}):\n\n\
         1. **order-api, `POST /orders`** (no transaction around them): read the product copy (the API keeps what it read and reads again only when a product's version changed: here before every order); then, in one statement, check that the product still has the version read, insert the idempotency key with the response to replay, append the `placed` event to the order's stream and publish `order.placed` into the outbox.\n\
         2. **relay** of order-worker: claim-and-delete outbox rows, insert them into stock's inbox.\n\
         3. **stock-worker, `order.placed`** (a batch handler): claim a batch; for the whole batch at once: the orders handled already, lock the items, then in one statement insert the reservations, move the units, insert the movements and publish the `stock.reserved` events; commit.\n\
         4. **relay** of stock-worker → payment's and order's inboxes.\n\
         5. **order-worker, `stock.reserved`** (a batch handler): claim a batch; lock its orders; for the whole batch at once: read the orders' streams, append every `stock_reserved`; commit.\n\
         6. **payment-worker, `stock.reserved`** (a batch handler): claim a batch; for the whole batch at once: the orders paid already, lock the customers, then in one statement insert the payments, debit the balances, insert the ledger entries and publish the `payment.captured` events; commit.\n\
         7. **relay** of payment-worker → order's inbox.\n\
         8. **order-worker, `payment.captured`** (a batch handler): claim a batch; lock its orders; for the whole batch at once: read the orders' streams, append every `payment_captured` and `confirmed`, publish the `order.confirmed` events; commit.\n\
         9. **relay** of order-worker → notification's inbox.\n\
         10. **notification-worker, `order.confirmed`** (lease mode, a batch handler): claim a batch (commits); for the whole batch at once: notified already? and the template (one statement); per message: the order API's read for the lookup (the order's view; its stream if the view is not there yet); for the whole batch at once: record the notifications and publish their `notification.sent` (one statement, its own transaction); settle the batch.\n\
         11. **relay** of notification-worker → order's inbox.\n\
         12. **order-worker, `notification.sent`** (a batch handler): claim a batch; lock its orders; for the whole batch at once: read the orders' streams, append every `notified`; commit.\n\n\
         Beside the script's clients, one more pgbench client runs the order worker's **projector** in a loop (`saga-ceiling-projector.sql`): lock the projection's position (skipped while held), read up to 500 events after it, read the whole streams of their orders, write their views, move the position; commit; wait 10 ms unless the batch was full.\n\n\
         The statements are the services' own, from their `sql` modules (`conveyor_order::sql`, …), and the engine's own for the queue's claim, publish, relay and settle (`conveyor_queue::sql`). Where the replay cannot be the same:\n",
        r.ceiling.iter().map(|c| format!("`{}`", c.script.display())).collect::<Vec<_>>().join(", ")
    );
    for d in &r.replay_differences {
        let _ = writeln!(s, "- {d}");
    }
    s
}

/// A shop's rate steps, latency, hot products, CPU, transactions and messages.
fn shop_rest(rep: &Report, r: &ShopReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## The shop: rate steps\n");
    let _ = writeln!(
        s,
        "{} s per step, open loop (each order sent on schedule whatever the earlier answers), `POST /orders` with a unique Idempotency-Key, one line of quantity 1; {} products and {} customers with ample stock and balances. A step is sustained when every order was sent and accepted, the confirmed rate over its second half is ≥ {} of the offered rate, and the backlog (placed, not yet terminal; from the order database) at its end is ≤ {} s worth (at least {}) and grew by ≤ {} s worth over the second half. After each step the harness waits until every saga has ended.\n",
        rep.settings.step_secs,
        r.seeded_products,
        r.seeded_customers,
        pct(rep.rules.min_confirmed_share),
        rep.rules.max_backlog_secs,
        rep.rules.backlog_floor,
        rep.rules.max_growth_secs
    );
    let _ = writeln!(s, "| # | offered/s | placed/s | confirmed/s | backlog end (mid) | POST /orders p50 / p99 ms | drain s | machine CPU | PostgreSQL CPU | driver CPU | verdict |");
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (i, st) in r.steps.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.0} | {} ({}) | {} / {} | {:.1} | {} | {} | {:.2} | {} |",
            i + 1,
            st.rate,
            st.placed_per_sec,
            st.confirmed_per_sec,
            st.outcome.backlog_end,
            st.outcome.backlog_mid,
            opt(st.drive.response_ms.map(|p| p.p50), 1),
            opt(st.drive.response_ms.map(|p| p.p99), 1),
            st.drain_s,
            opt(st.cpu.machine_busy, 2),
            opt(st.cpu.postgres, 2),
            st.cpu.driver,
            match &st.failure {
                None => "sustained".to_owned(),
                Some(f) => format!("failed: {f}"),
            }
        );
    }

    if let Some(h) = &r.half_rate {
        let _ = writeln!(s, "\n## Saga latency at half the maximum rate\n");
        let _ = writeln!(
            s,
            "{:.0} orders/s for {:.0} s; latency per order from the order database: the placing transaction's `now()` (orders.created_at) to the confirming transaction's `now()` (its `confirmed` history entry), so the driver's polling adds nothing.{}\n",
            h.rate,
            h.drive.seconds,
            h.failure.as_ref().map(|f| format!(" This run was NOT sustained: {f}.")).unwrap_or_default()
        );
        if let Some(l) = h.latency_ms {
            let _ = writeln!(s, "| orders | p50 | p95 | p99 | max | mean |\n|---:|---:|---:|---:|---:|---:|");
            let _ = writeln!(s, "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |", l.count, l.p50, l.p95, l.p99, l.max, l.mean);
        }
        if h.unconfirmed > 0 {
            let _ = writeln!(s, "\n{} orders of the run were not confirmed when it was read.", h.unconfirmed);
        }
        if let Some(p) = h.drive.response_ms {
            let _ = writeln!(s, "\n`POST /orders` as the driver saw it: p50 {:.1} ms, p99 {:.1} ms.", p.p50, p.p99);
        }
        if !h.hops.is_empty() {
            let _ = writeln!(
                s,
                "\nPer hop, from each inbox's timestamps (ms, p50 / p95 / p99). *relay*: the publishing transaction's start (`published_at`) to the copy in the subscriber's inbox (`received_at`), so it includes the rest of the publishing transaction; *wait*: `received_at` to the consumer's claim (`done_at`, its transaction's start; in lease mode the settling, after the handler).\n"
            );
            let _ = writeln!(s, "| message | consumer | messages | relay | wait |\n|---|---|---:|---:|---:|");
            for hop in &h.hops {
                let t = |v: [f64; 3]| format!("{:.1} / {:.1} / {:.1}", v[0], v[1], v[2]);
                let after = if hop.on_path { "" } else { " (after the confirmation)" };
                let _ = writeln!(s, "| {}{after} | {} | {} | {} | {} |", hop.topic, hop.consumer, hop.messages, t(hop.relay_ms), t(hop.wait_ms));
            }
        }
    }

    if let Some(h) = &r.hot {
        s.push_str(&hot::report::markdown(h, r.seeded_products));
    }

    if r.cpu_at_max.is_some() || r.cpu_at_failure.is_some() {
        let _ = writeln!(s, "\n## CPU per process\n");
        let max_rate = r.max_sustained_rate.unwrap_or(0.0);
        let fail_rate = r.steps.iter().filter(|st| !st.sustained && st.rate > max_rate).map(|st| st.rate).fold(f64::INFINITY, f64::min);
        let _ = writeln!(
            s,
            "Cores used (1.0 = one core all the time), from /proc/<pid>/stat, over the step at the highest sustained rate ({}) and over the lowest failed step above it ({}). PostgreSQL is the postmaster with every backend, split below by database.\n",
            r.max_sustained_rate.map_or("none was sustained".to_owned(), |m| format!("{m:.0}/s")),
            if fail_rate.is_finite() { format!("{fail_rate:.0}/s") } else { "none".into() }
        );
        let _ = writeln!(s, "| process | cores at max | CPU ms per saga at max | cores at the failed step |\n|---|---:|---:|---:|");
        let mut names: Vec<String> = r.cpu_at_max.iter().chain(&r.cpu_at_failure).flat_map(|c| c.ranked().into_iter().map(|(n, _)| n)).collect();
        names.dedup();
        let mut seen = std::collections::BTreeSet::new();
        names.retain(|n| seen.insert(n.clone()));
        let get = |c: &Option<CpuUsage>, n: &str| c.as_ref().and_then(|c| c.ranked().into_iter().find(|(x, _)| x == n).map(|(_, v)| v));
        for n in &names {
            let at_max = get(&r.cpu_at_max, n);
            if at_max.unwrap_or(0.0) < 0.005 && get(&r.cpu_at_failure, n).unwrap_or(0.0) < 0.005 {
                continue; // idle (the APIs the saga does not call)
            }
            let _ = writeln!(
                s,
                "| {n} | {} | {} | {} |",
                opt(at_max, 2),
                opt(at_max.filter(|_| max_rate > 0.0).map(|c| c / max_rate * 1000.0), 3),
                opt(get(&r.cpu_at_failure, n), 2)
            );
        }
        let machine = |c: &Option<CpuUsage>| c.as_ref().and_then(|c| c.machine_busy);
        let _ = writeln!(s, "| **machine (of {})** | {} | {} | {} |", rep.machine.cpus, opt(machine(&r.cpu_at_max), 2), opt(machine(&r.cpu_at_max).filter(|_| max_rate > 0.0).map(|c| c / max_rate * 1000.0), 3), opt(machine(&r.cpu_at_failure), 2));
        let _ = writeln!(s, "\n| PostgreSQL by database | cores at max | cores at the failed step |\n|---|---:|---:|");
        let mut dbs: Vec<String> = r.cpu_at_max.iter().chain(&r.cpu_at_failure).flat_map(|c| c.postgres_by.keys().cloned()).collect();
        dbs.sort();
        dbs.dedup();
        for d in dbs {
            let g = |c: &Option<CpuUsage>| c.as_ref().and_then(|c| c.postgres_by.get(&d).copied());
            if g(&r.cpu_at_max).unwrap_or(0.0) < 0.005 && g(&r.cpu_at_failure).unwrap_or(0.0) < 0.005 {
                continue;
            }
            let _ = writeln!(s, "| {d} | {} | {} |", opt(g(&r.cpu_at_max), 2), opt(g(&r.cpu_at_failure), 2));
        }
    }
    let best = r.max_sustained_rate.and_then(|m| r.steps.iter().find(|st| st.sustained && st.rate == m));
    let tx_max = best.map(|st| &st.transactions_per_saga).filter(|t| !t.is_empty());
    let tx_half = r.half_rate.as_ref().map(|h| &h.transactions_per_saga).filter(|t| !t.is_empty());
    if tx_max.is_some() || tx_half.is_some() {
        let _ = writeln!(s, "\n## Transactions per saga\n\nFrom pg_stat_database (committed and rolled back, read-only ones included; the counters lag by about a second), per order placed.\n");
        let _ = writeln!(s, "| database | at the highest sustained rate | at half rate |\n|---|---:|---:|");
        let mut dbs: Vec<&String> = tx_max.into_iter().chain(tx_half).flat_map(|t| t.keys()).collect();
        dbs.sort();
        dbs.dedup();
        for db in dbs {
            let g = |t: Option<&BTreeMap<String, f64>>| t.and_then(|t| t.get(db).copied());
            let _ = writeln!(s, "| {db} | {} | {} |", opt(g(tx_max), 1), opt(g(tx_half), 1));
        }
        let total = |t: Option<&BTreeMap<String, f64>>| t.map(|t| t.values().sum::<f64>());
        let _ = writeln!(s, "| **all** | {} | {} |", opt(total(tx_max), 1), opt(total(tx_half), 1));
        for c in &rep.ceiling {
            let _ = writeln!(s, "| *replay, {}* | {} | |", c.variant, opt(c.transactions_per_saga, 1));
        }
    }
    let msg_max = r.best_step().and_then(|st| st.messages.as_ref());
    let msg_half = r.half_rate.as_ref().and_then(|h| h.messages.as_ref());
    if msg_max.is_some() || msg_half.is_some() {
        let _ = writeln!(
            s,
            "\n## Messages per saga\n\nEvery message sent from the start of the step (or run) that reached a service's inbox, handled or still waiting, per order placed in it, by topic; a message routed to two services counts twice. Counted once every outbox was empty, by message id (UUID v7, minted when sent), so a message counts with the sagas that sent it even when it is handled later{}.\n",
            if r.mode == SagaMode::Orchestration { ": the coordinator's deadlines wait in its inbox until they are due" } else { "" }
        );
        let _ = writeln!(s, "| topic | at the highest sustained rate | at half rate |\n|---|---:|---:|");
        let mut topics: Vec<&String> = msg_max.into_iter().chain(msg_half).flat_map(|m| m.by_topic.keys()).collect();
        topics.sort();
        topics.dedup();
        for topic in topics {
            let g = |m: Option<&Messages>| m.and_then(|m| m.by_topic.get(topic).copied());
            let _ = writeln!(s, "| {topic} | {} | {} |", opt(g(msg_max), 2), opt(g(msg_half), 2));
        }
        let _ = writeln!(s, "| **all** | {} | {} |", opt(msg_max.map(|m| m.per_saga), 2), opt(msg_half.map(|m| m.per_saga), 2));
        let count = |m: Option<&Messages>, f: fn(&Messages) -> u64| m.map_or("n/a".to_owned(), |m| f(m).to_string());
        let _ = writeln!(s, "| *not handled yet when counted (messages)* | {} | {} |", count(msg_max, |m| m.waiting), count(msg_half, |m| m.waiting));
        if msg_max.into_iter().chain(msg_half).any(|m| m.unrelayed > 0) {
            let _ = writeln!(s, "| *still in an outbox, not counted (messages)* | {} | {} |", count(msg_max, |m| m.unrelayed), count(msg_half, |m| m.unrelayed));
        }
    }
    s
}

/// Every shop's charts; with both modes, each title says which.
pub fn charts(r: &Report) -> Vec<Chart> {
    let both = r.orchestration.is_some();
    let mut out = Vec::new();
    for shop in r.shops() {
        for mut chart in shop_charts(shop) {
            if both {
                chart.title = format!("{}: {}", shop.mode, chart.title);
            }
            out.push(chart);
        }
    }
    out
}

fn shop_charts(r: &ShopReport) -> Vec<Chart> {
    let z = &r.ramp_series;
    let pts = |ys: &[f64]| z.t.iter().copied().zip(ys.iter().copied()).collect::<Vec<_>>();
    let mut out = vec![
        Chart::new("Ramp: offered vs confirmed rate", "seconds since the ramp began", "orders/s")
            .line(Series::new("offered", pts(&z.offered)))
            .line(Series::new("placed (committed)", pts(&z.placed)))
            .line(Series::new("confirmed", pts(&z.confirmed))),
        Chart::new("Backlog: placed, not yet confirmed", "seconds since the ramp began", "orders").line(Series::new("backlog", pts(&z.backlog))),
    ];
    if let Some(h) = &r.half_rate {
        out.push(
            Chart::new(format!("Saga latency at {:.0} orders/s (per second of confirmation)", h.rate), "seconds", "ms")
                .line(Series::new("p50", h.timeline.iter().map(|p| (p.t, p.p50))))
                .line(Series::new("p99", h.timeline.iter().map(|p| (p.t, p.p99)))),
        );
    }
    let mut cpu = Chart::new("CPU by offered rate (ramp steps)", "offered orders/s", "cores");
    let mut steps: Vec<&Step> = r.steps.iter().collect();
    steps.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let mut names: Vec<String> = r.cpu_at_max.iter().chain(&r.cpu_at_failure).flat_map(|c| c.ranked().into_iter().take(5).map(|(n, _)| n)).collect();
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    cpu = cpu.line(Series::new("machine", steps.iter().filter_map(|st| st.cpu.machine_busy.map(|m| (st.rate, m)))));
    for n in names {
        let series = steps.iter().filter_map(|st| st.cpu.ranked().into_iter().find(|(x, _)| *x == n).map(|(_, v)| (st.rate, v)));
        cpu = cpu.line(Series::new(n.clone(), series));
    }
    out.push(cpu);
    if let Some(h) = &r.hot {
        out.push(hot::report::chart(h));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::ramp::{Drive, Outcome};
    use super::super::Build;
    use super::super::stack::Hop;
    use conveyor_benchkit::Percentiles;

    fn usage(machine: f64, order_api: f64, pg: f64) -> CpuUsage {
        CpuUsage {
            seconds: 10.0,
            processes: [("order-api".to_owned(), order_api), ("stock-worker".to_owned(), 0.1)].into(),
            driver: 0.2,
            postgres: Some(pg),
            postgres_by: [("orders".to_owned(), pg * 0.6), ("stock".to_owned(), pg * 0.4)].into(),
            machine_busy: Some(machine),
            other: Some(0.05),
        }
    }

    fn step(rate: f64, sustained: bool, cpu: CpuUsage) -> Step {
        Step {
            rate,
            start_s: 0.0,
            drive: Drive { rate, seconds: 10.0, scheduled: rate as u64 * 10, sent: rate as u64 * 10, accepted: rate as u64 * 10, ..Drive::default() },
            outcome: Outcome { placed: rate as u64 * 10, confirmed_second_half: rate as u64 * 5, ..Outcome::default() },
            confirmed_per_sec: rate,
            placed_per_sec: rate,
            sustained,
            failure: (!sustained).then(|| "backlog growing".to_owned()),
            drain_s: 0.5,
            cpu,
            deadlocks: BTreeMap::new(),
            transactions_per_saga: [("orders".to_owned(), 6.0), ("stock".to_owned(), 4.0)].into(),
            messages: Some(messages(&[("order.placed", 1.0), ("stock.reserved", 1.0), ("payment.captured", 1.0), ("order.confirmed", 1.0)], 0)),
        }
    }

    fn messages(by_topic: &[(&str, f64)], waiting: u64) -> Messages {
        Messages { per_saga: by_topic.iter().map(|(_, n)| n).sum(), by_topic: by_topic.iter().map(|(t, n)| (t.to_string(), *n)).collect(), waiting, unrelayed: 0 }
    }

    fn hop(topic: &str, consumer: &str, on_path: bool, relay_ms: [f64; 3], wait_ms: [f64; 3]) -> Hop {
        Hop { topic: topic.into(), consumer: consumer.into(), on_path, messages: 3, relay_ms, wait_ms }
    }

    fn ceiling(batch: usize, rate: f64) -> CeilingResult {
        CeilingResult {
            variant: format!("b{batch}"),
            batch,
            relay_batch: batch,
            clients: 8,
            seconds: 20,
            sagas: (rate * 20.0) as u64,
            sagas_per_sec: rate,
            placed: (rate * 20.0) as u64,
            confirmed: (rate * 20.0) as u64,
            confirmed_per_sec: rate,
            left_in_queues: 3,
            unprojected: 0,
            pgbench_tps: rate / batch as f64,
            pgbench_latency_ms: Some(5.0),
            deadlocks: 0,
            transactions_per_saga: Some(13.0),
            cpu: usage(2.0, 0.0, 1.5),
            postgres_cpu_ms_per_saga: Some(0.5),
            machine_cpu_ms_per_saga: Some(0.8),
            script: PathBuf::from("saga.sql"),
        }
    }

    fn settings(mode: Mode) -> Settings {
        Settings {
            quick: false,
            mode,
            delivery: conveyor_launcher::Delivery::Push,
            build: Build::Release,
            ceiling_secs: 20,
            ceiling_clients: 8,
            step_secs: 10.0,
            start_rate: 300.0,
            factor: 1.5,
            bisections: 0,
            max_rate: 1e9,
            latency_secs: 30.0,
            warmup_secs: 5.0,
            products: 1000,
            customers: 1000,
            max_in_flight: 1024,
            drain_secs: 60.0,
            hot: true,
            hot_products: 5,
            hot_stock: None,
            hot_secs: 30.0,
            hot_decline_share: 0.1,
        }
    }

    /// The choreography sustains 400/s; the orchestration 300/s, with more of everything.
    fn shop(mode: SagaMode) -> StackResults {
        let orchestrated = mode == SagaMode::Orchestration;
        let hops = if orchestrated {
            vec![
                hop("saga.start", "coordinator", true, [5.0, 10.0, 15.0], [1.0, 2.0, 3.0]),
                hop("stock.reserve", "stock", true, [6.0, 10.0, 15.0], [1.0, 2.0, 3.0]),
                hop("order.replied", "coordinator", false, [50.0, 150.0, 300.0], [9.0, 9.0, 9.0]),
            ]
        } else {
            vec![hop("order.placed", "stock", true, [10.0, 20.0, 30.0], [2.0, 3.0, 4.0]), hop("order.confirmed", "notification", false, [50.0, 150.0, 300.0], [9.0, 9.0, 9.0])]
        };
        let topics: &[(&str, f64)] = if orchestrated {
            &[("saga.start", 1.0), ("stock.reserve", 1.0), ("stock.replied", 1.0), ("payment.capture", 1.0), ("payment.replied", 1.0), ("order.confirm", 1.0), ("order.replied", 1.0), ("order.confirmed", 1.0), ("saga.deadline", 2.0)]
        } else {
            &[("order.placed", 1.0), ("stock.reserved", 1.0), ("payment.captured", 1.0), ("order.confirmed", 1.0)]
        };
        let half = HalfRate {
            rate: if orchestrated { 150.0 } else { 200.0 },
            drive: Drive { rate: 200.0, seconds: 30.0, response_ms: Percentiles::of(&[2.0, 3.0]), ..Drive::default() },
            outcome: Outcome::default(),
            sustained: true,
            failure: None,
            latency_ms: Percentiles::of(&if orchestrated { [40.0, 60.0, 300.0] } else { [20.0, 30.0, 150.0] }),
            unconfirmed: 0,
            timeline: vec![super::super::stack::LatencyPoint { t: 1.0, p50: 20.0, p99: 150.0, count: 3 }],
            hops,
            cpu: usage(1.0, 0.2, 0.4),
            transactions_per_saga: [("orders".to_owned(), if orchestrated { 18.0 } else { 9.0 })].into(),
            messages: Some(messages(topics, if orchestrated { 300 } else { 0 })),
        };
        let mut steps = vec![step(300.0, true, usage(1.5, 0.4, 0.6)), step(400.0, !orchestrated, usage(1.9, 0.5, 0.8)), step(600.0, false, usage(2.0, 0.6, 0.9))];
        if orchestrated {
            steps[0].messages = Some(messages(topics, 600));
            steps[0].transactions_per_saga.insert("coordinator".to_owned(), 10.0);
        }
        let tried = steps.iter().map(|st| (st.rate, st.sustained)).collect();
        StackResults {
            mode,
            steps,
            series: RampSeries { t: vec![1.0, 2.0], offered: vec![300.0, 300.0], placed: vec![299.0, 301.0], confirmed: vec![290.0, 300.0], backlog: vec![10.0, 9.0] },
            search: Search { start: 300.0, factor: 1.5, precision: 0.1, max_bisections: 0, max_rate: 1e9, tried },
            half: Some(half),
            hot: Some(super::super::hot::sample()),
            hot_error: None,
            seeded: (1000, 1000),
            coordinator_sagas: orchestrated.then(|| [("confirmed".to_owned(), 9000), ("paying".to_owned(), 2)].into()),
            log_dir: PathBuf::from(format!("logs/{mode}")),
        }
    }

    fn report_of(mode: Mode) -> Report {
        let shops = mode.saga_modes().into_iter().map(shop).collect();
        build(&settings(mode), Machine::detect(), "PostgreSQL 15".into(), "private durable cluster".into(), vec![ceiling(1, 1000.0), ceiling(50, 1000.0)], shops)
    }

    #[test]
    fn the_report_has_ratios_targets_and_findings() {
        let full = report_of(Mode::Choreography);
        let r = &full.shop;
        assert!(full.orchestration.is_none() && full.comparison.is_empty() && full.modes.len() == 1);
        assert_eq!(r.max_sustained_rate, Some(400.0));
        assert_eq!(r.ratios.to_batched, Some(0.4));
        assert_eq!(r.targets.throughput_met, Some(false));
        assert_eq!(r.targets.p99_met, Some(false));
        assert_eq!(r.cpu_at_max.as_ref().unwrap().machine_busy, Some(1.9));
        assert_eq!(r.cpu_at_failure.as_ref().unwrap().machine_busy, Some(2.0));
        let per = r.cpu_per_saga_at_max.as_ref().unwrap();
        assert!((per.machine.unwrap() - 1.9 / 400.0 * 1000.0).abs() < 1e-9);
        assert!(r.findings[0].contains("400 sagas/s") && r.findings[0].contains("40%") && r.findings[0].contains("NOT met"), "{:?}", r.findings);
        assert!(r.findings.iter().any(|f| f.contains("600/s, failed because: backlog growing")), "{:?}", r.findings);
        // The notification hop comes after the confirmation: not on the saga's path.
        assert!(r.findings.iter().any(|f| f.contains("relays add up to 10.0 ms and the waits for a consumer to 2.0 ms")), "{:?}", r.findings);
        assert!(r.findings.iter().any(|f| f.contains("order.confirmed 150 ms")), "{:?}", r.findings);
        assert!(r.findings.iter().any(|f| f.contains("10.0 at the highest sustained rate and 9.0 at half of it; the replay runs 13.0 with b1, 13.0 with b50")), "{:?}", r.findings);
        assert!(r.findings.iter().any(|f| f.contains("Messages per saga (every inbox, counted with the sagas that sent them): 4.0 at the highest sustained rate and 4.0 at half rate")), "{:?}", r.findings);
        let md = markdown(&full);
        for text in [
            "the shop's release build; the choreography; push delivery.",
            "| shop / batched ceiling | 40% | ≥ 50% | NOT met |",
            "p99 ≤ 100 ms",
            "## CPU per process",
            "| order-api | 0.50 |",
            "failed: backlog growing",
            "| **all** | 10.0 | 9.0 |",
            "| *replay, b50* | 13.0 | |",
            "| messages per saga (every inbox): at the highest sustained rate / at half rate | 4.0 / 4.0 | | |",
            "## Messages per saga",
            "| payment.captured | 1.00 | 1.00 |",
            "| order.confirmed (after the confirmation) | notification |",
            "Process logs: `logs/choreography`.",
        ] {
            assert!(md.contains(text), "{text} missing from:\n{md}");
        }
        for text in [
            "## Hot products (a flash sale)",
            "| hot rate ÷ spread rate | 100% (sustained at the spread rate, 20/s; no higher rate is tried) | ≥ 80% | met |",
            "p50 80.0 / p99 420.0 / max 420.0 ms | p99 ≤ 1000 ms | met |",
            "500 units sold of 500 in stock (950 asked); every item adds up",
            "30 payments declined, 30 released; 0 cancelled orders still hold units; 0 releases waiting in stock's inbox, 0 dead; declined → released p50 40.0 / p99 45.0 / max 45.0 ms",
            "| **all** | | | **met** |",
            "placed 14.5 s into the phase",
            "| 100%, 420 ms, 0, exact, 0 stuck | ≥ 80%, ≤ 1000 ms, 0, ≤ stock, 0 | met |",
            "hot products: 5 for 30 s with 100 units each, 10% of the orders",
        ] {
            assert!(md.contains(text), "{text} missing from:\n{md}");
        }
        assert!(!md.contains("side by side") && !md.contains("coordinator"), "{md}");
        assert!(r.findings.iter().any(|f| f.contains("Hot products (5 products, 20 orders/s): 20 ended/s") && f.contains("every target met")), "{:?}", r.findings);
        let charts = charts(&full);
        assert_eq!(charts.len(), 5);
        assert!(charts[3].series.iter().any(|s| s.name == "order-api" && s.points.len() == 3));
        // The fields older readers know stay where they were.
        let json = serde_json::to_value(&full).unwrap();
        assert_eq!((json["max_sustained_rate"].as_f64(), json["mode"].as_str(), json["settings"]["mode"].as_str()), (Some(400.0), Some("choreography"), Some("choreography")));
        assert!(json["half_rate"]["latency_ms"]["p99"].is_number() && json["orchestration"].is_null());
    }

    #[test]
    fn both_modes_are_reported_side_by_side() {
        let full = report_of(Mode::Both);
        let o = full.orchestration.as_ref().expect("the orchestration");
        assert_eq!((full.shop.mode, o.mode, o.max_sustained_rate), (SagaMode::Choreography, SagaMode::Orchestration, Some(300.0)));
        assert_eq!(full.modes.iter().map(|m| m.mode).collect::<Vec<_>>(), SagaMode::ALL);
        let row = |figure: &str| full.comparison.iter().find(|c| c.figure == figure).unwrap_or_else(|| panic!("no {figure}"));
        assert_eq!((row("highest sustained rate").choreography, row("highest sustained rate").orchestration, row("highest sustained rate").ratio), (Some(400.0), Some(300.0), Some(0.75)));
        // 9 confirmed at half rate; the orchestration's step at 300/s is its best, with 10 more transactions in the coordinator.
        assert_eq!((row("transactions per saga at half rate").ratio, row("transactions per saga at the highest sustained rate").orchestration), (Some(2.0), Some(20.0)));
        assert_eq!((row("messages per saga at half rate").choreography, row("messages per saga at half rate").orchestration, row("messages per saga at half rate").ratio), (Some(4.0), Some(10.0), Some(2.5)));
        assert!(o.findings.iter().any(|f| f.contains("orchestrated by the coordinator; the ceiling replays the choreography's SQL")), "{:?}", o.findings);
        assert!(o.findings.iter().any(|f| f.contains("2 of the coordinator's sagas had not ended") && f.contains("logs/orchestration")), "{:?}", o.findings);
        assert!(o.findings.iter().any(|f| f.contains("600 of them were not handled yet") || f.contains("900 of them were not handled yet")), "{:?}", o.findings);
        // On the way to confirmed: the start and the reservation, not the order's reply.
        assert!(o.findings.iter().any(|f| f.contains("relays add up to 11.0 ms and the waits for a consumer to 2.0 ms")), "{:?}", o.findings);
        let md = markdown(&full);
        for text in [
            "the choreography, then the orchestration, each on a fresh stack",
            "## Choreography and orchestration side by side",
            "| | choreography | orchestration | orchestration ÷ choreography |",
            "| highest sustained rate, sagas/s | 400 | 300 | 0.75× |",
            "| messages per saga at half rate | 4.0 | 10.0 | 2.50× |",
            "| placed → terminal at half rate, p99, ms |",
            "The replay is the choreography's SQL, measured once",
            "## The choreography\n\n### Result",
            "## The orchestration\n\n### Result",
            "| ceiling: the choreography's saga SQL, consumers claiming 50 at a time |",
            "| the coordinator's sagas when the shop was done | confirmed 9000, paying 2 | every one ended | NOT met |",
            "### Hot products (a flash sale)",
            "| saga.deadline | 2.00 | 2.00 |",
            "| order.replied (after the confirmation) | coordinator |",
            "`cargo xtask bench saga --mode both`",
            "Process logs: `logs/choreography`, `logs/orchestration`.",
        ] {
            assert!(md.contains(text), "{text} missing from:\n{md}");
        }
        assert_eq!(md.matches("## The ceiling").count(), 1, "{md}");
        let charts = charts(&full);
        assert_eq!(charts.len(), 10);
        assert!(charts[0].title.starts_with("choreography: Ramp") && charts[5].title.starts_with("orchestration: Ramp"), "{:?}", charts.iter().map(|c| &c.title).collect::<Vec<_>>());
        let json = serde_json::to_value(&full).unwrap();
        assert_eq!((json["max_sustained_rate"].as_f64(), json["orchestration"]["max_sustained_rate"].as_f64()), (Some(400.0), Some(300.0)));
        assert_eq!(json["comparison"].as_array().map(Vec::len), Some(FIGURES.len()));
    }
}
