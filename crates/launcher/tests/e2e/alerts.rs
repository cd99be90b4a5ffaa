//! Every alert of `prometheus/rules/alerts.yml` seen to fire against a live stack scraped by
//! a real Prometheus, each on a fault of its own (a killed worker, a poison message, a
//! database that refuses its service, a fault flag), with the labels it should name, and
//! seen to resolve (neither firing nor pending) once the fault is removed. Orders arrive at
//! a steady rate all along, as in a shop that runs.
//!
//! **Time scaling.** The rules wait minutes (`for: 10m`, `[5m]` windows, a message older
//! than 120 s) before they fire; this test loads a copy of `prometheus/rules/*.yml` made
//! faster by [`SPEEDUP`] through one mechanical transformation (`alerts/timescale.rs`): every
//! `for:` duration, every range-vector duration (`[5m]`, and both parts of a subquery's
//! `[5m:1m]`) and the evaluation interval are divided by it, and so is the number an
//! `*_age_seconds*` series is compared with (an age is a wait that grows with the clock: a
//! stuck message crosses 120 s after 120 s). Nothing else changes: no expression, label or
//! other threshold is edited by hand (the saga's 2 s objective is a latency of each saga,
//! not a time the alert waits, so it stays 2 s). The promtool unit tests
//! (`prometheus/tests/alerts.yml`) keep testing the real rules at their real durations.
//!
//! **Timeline.** Scenarios run together when they cannot disturb one another; the comments
//! of each phase say why they do not. One alert, `ConveyorSagasOverdue`, has a stack of its
//! own ([`sagas_overdue_fires_while_order_worker_is_stopped_and_resolves`]): its orders run
//! the orchestrated saga with a 2 s step timeout, shorter than the waits the other faults
//! make.
//!
//! Needs the `prometheus` binary, like `prometheus.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use conveyor_contracts::SagaMode;
use conveyor_launcher::{Shop, Stack, Terminal};
use futures::StreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::prometheus::{
    Prometheus, SHIPPED_EVALUATION_INTERVAL, alert_quantities, collect_panels, config_for_stack, dashboard_files, prometheus_binary, workspace_root,
};
use crate::{Fixture, SAGA, start_with};

mod timescale;
use timescale::{scale_duration, time_scaled};

/// How many times faster than the shipped rules the test's copy runs: `for: 10m` becomes
/// 60 s, `[5m]` 30 s, the 120 s age threshold 12 s, the 5 s evaluation interval 500 ms.
/// (10, not more: a queue loop that keeps failing backs off up to 12.8 s between
/// attempts, and the loop-failure alert's scaled `rate(…[30s])` must still see one in
/// each window.)
const SPEEDUP: u64 = 10;

/// How often Prometheus scrapes each process (and its timeout): 2 s, not the other
/// test's 1 s, so that a busy process's slower answer is not a gap in every series.
const SCRAPE_INTERVAL: &str = "2s";

/// Orders placed per second throughout (debug builds on two cores handle far more).
const ORDERS_PER_SECOND: u32 = 8;

/// The stock worker's pause before each claim in the slowdown scenario; with its one loop
/// of 10 (see the stack's options) it then takes 2.5 of the 8 order.placed a second, and
/// it resumes within this much once the flag is cleared.
const STOCK_SLOWDOWN_MS: u64 = 4000;

/// The scenario of each alert; the test fails when an alert has none.
const SCENARIOS: &[(&str, &str)] = &[
    ("ConveyorTargetDown", "catalog-worker is SIGKILLed, then started again"),
    ("ConveyorHttpErrorRatioHigh", "catalog's database refuses catalog's role while clients read GET /products"),
    ("ConveyorQueueLoopFailing", "the same outage: catalog-worker's relay cannot claim its outbox"),
    ("ConveyorSagaLatencyHigh", "payment latency_ms = 3000, then cleared"),
    ("ConveyorDeadLetters", "an undecodable product.created in order's inbox, repaired and replayed through /admin/dead-letters"),
    ("ConveyorNotificationBreakerOpen", "notification receiver_down = 1, then cleared"),
    ("ConveyorQueueBacklogGrowing", "stock slowdown_ms under the steady order rate, then cleared"),
    ("ConveyorQueueOldestMessageTooOld", "the same slowdown: order.placed waits in stock's inbox"),
    ("ConveyorSagasOverdue", "(a stack of its own, orchestration) order-worker stopped while a saga waits for payment, started again"),
    ("ConveyorProjectionLagging", "a writing transaction held open in the order database while orders keep coming, then rolled back"),
];

#[tokio::test]
async fn every_alert_fires_on_its_fault_and_resolves_once_it_is_removed() {
    let binary = prometheus_binary();
    let mut f = start_with("alerts", |mut o| {
        // One stock claim loop of 10 messages: slowed down to a claim every
        // STOCK_SLOWDOWN_MS, it takes 2.5 messages a second, fewer than arrive (unslowed,
        // hundreds).
        o = o.arg("stock-worker", &["--concurrency", "1", "--batch-size", "10"]);
        // The breaker's shipped cooldown (10 s), not the other tests' 1 s: a snoozed
        // notification comes back when the cooldown ends, so with 1 s the worker re-claims
        // every waiting notification each second, and under that churn its /metrics
        // answered too late for some scrapes (each such gap restarts the alert's `for`).
        o.extra_args.insert("notification-worker".into(), vec!["--breaker-failures".into(), "3".into()]);
        o
    })
    .await;
    let root = workspace_root();
    let mut prom = time_scaled_prometheus(&f, &binary).await;
    let rules = alert_rules(&prom).await;
    let covered: Vec<&str> = SCENARIOS.iter().map(|(a, _)| *a).collect();
    let missing: Vec<&String> = rules.keys().filter(|a| !covered.contains(&a.as_str())).collect();
    assert!(missing.is_empty(), "alerts without a scenario in this test: {missing:?}");
    assert_eq!(rules.len(), SCENARIOS.len(), "scenarios for alerts that are not in prometheus/rules/alerts.yml: {covered:?} vs {:?}", rules.keys());
    check_runbooks(&root, &rules);
    for (alert, scenario) in SCENARIOS {
        eprintln!("alerts: {alert}: {scenario}");
    }

    // The shop at work: orders at a steady rate until the end.
    let product = f.product(100, conveyor_contracts::limits::MAX_STOCK).await;
    let customer = f.customer(1_000_000_000_000).await;
    let orders = Orders::start(f.shop.clone(), customer, product);
    let alerts = Alerts { prom: &prom, rules: &rules };
    alerts.baseline().await;

    // Phase 1. Only the payment latency slows sagas down: the poison message waits in a
    // topic no saga uses, the receiver outage comes after each saga's end, and catalog
    // (its database, its API) is not on the saga's path at all (order keeps its own copy
    // of the products). So the saga latency alert answers to its flag alone. (The receiver
    // outage also makes ConveyorQueueOldestMessageTooOld fire for notification, whose
    // snoozed notifications wait: true, and not what this phase asserts.)
    let shop = f.shop.clone();
    let catalog_role = f.stack.roles["catalog"].roles.runtime.clone();
    tokio::join!(
        saga_latency(&shop, alerts),
        dead_letters(&shop, &f.stack.databases["order"], alerts),
        breaker_open(&shop, alerts),
        database_refuses_its_service(&f.stack.api["catalog"], &f.stack.databases["catalog"], &catalog_role, alerts),
    );

    // Phase 2. The stock slowdown makes every saga slow (the saga latency alert fires
    // again: not asserted); killing catalog-worker touches nothing stock does; the held
    // transaction stops only the order service's projector (the queues do not wait for
    // old transactions), and no other alert looks at the read model.
    let catalog_worker = f.stack.worker["catalog"].trim_start_matches("http://").to_owned();
    let order_db = f.stack.databases["order"].clone();
    tokio::join!(
        stock_slowdown(&shop, alerts),
        target_down(&mut f.stack, &catalog_worker, alerts),
        projection_held_back(&order_db, alerts),
    );

    let placed = orders.stop().await;
    eprintln!("alerts: {} orders placed; waiting for every saga to end", placed.len());
    let endings: Vec<Terminal> =
        futures::stream::iter(&placed).map(|o| shop.wait_terminal(*o, SAGA)).buffer_unordered(8).map(|r| r.unwrap()).collect().await;
    assert!(endings.iter().all(|t| *t == Terminal::Confirmed), "every order confirmed, none lost: {endings:?}");
    conveyor_launcher::wait_for("one notification per order", SAGA, || async { Ok(shop.received().await?.0.len() == placed.len()) }).await.unwrap();
    prom.check_running();
    f.stack.check_running().unwrap();
    prom.stop().await;
    f.stop().await;
}

/// ConveyorSagasOverdue, on a stack whose orders run the orchestrated saga with a 2 s step
/// timeout (a saga is overdue once it has not moved for 4 s). Order-worker is stopped while
/// an order's saga waits for payment; the saga then reaches `confirming`, the one wait
/// without a deadline (or, had payment answered after the timeout, `cancelling`: the same
/// wait for order-worker), and stays there. Order-worker started again answers, the saga
/// ends and the alert resolves. A stack of its own: the other scenarios' payment latency
/// and stock slowdown are longer than this step timeout and would time its sagas out.
#[tokio::test]
async fn sagas_overdue_fires_while_order_worker_is_stopped_and_resolves() {
    let binary = prometheus_binary();
    let mut f = start_with("alerts-overdue", |mut o| {
        o.saga_mode = SagaMode::Orchestration;
        o.arg("coordinator-worker", &["--step-timeout", "2s"])
    })
    .await;
    let mut prom = time_scaled_prometheus(&f, &binary).await;
    let rules = alert_rules(&prom).await;
    let alerts = Alerts { prom: &prom, rules: &rules };
    let alert = "ConveyorSagasOverdue";
    let shop = f.shop.clone();
    let product = f.product(100, 1000).await;
    let customer = f.customer(1_000_000).await;

    // One orchestrated saga end to end, and the coordinator's gauges scraped: the alert's
    // quantity has data, and nothing is overdue.
    let first = shop.order_placed(customer, &[(product, 1)]).await.unwrap();
    assert_eq!(shop.wait_terminal(first, SAGA).await.unwrap(), Terminal::Confirmed);
    for quantity in alert_quantities(rules[alert]["query"].as_str().unwrap()).unwrap() {
        alerts.has_data(&quantity).await;
    }
    alerts.quiet(alert, &[("service", "coordinator")]).await;

    // Payment answers each capture 1 s after it was sent (within the 2 s step timeout), so
    // the saga waits in `paying` long enough for order-worker to be stopped first.
    set_faults(&shop, "payment", json!({"latency_ms": 1000})).await;
    fault_flag_applied(&f.stack.worker["payment"], "latency_ms", 1000).await;
    let order = shop.order_placed(customer, &[(product, 1)]).await.unwrap();
    let coordinator = f.db("coordinator").await;
    let saga_state = || async {
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM sagas WHERE order_id = $1").bind(order).fetch_optional(&coordinator).await?;
        anyhow::Ok(state.unwrap_or_default())
    };
    conveyor_launcher::wait_for("the saga to wait for payment", SAGA, || async { Ok(saga_state().await? == "paying") }).await.unwrap();
    let t = Instant::now();
    f.stack.stop_process("order-worker").await.unwrap();
    clear_faults(&shop, "payment").await;
    conveyor_launcher::wait_for("payment's answer to move the saga on", SAGA, || async {
        Ok(!["reserving", "paying"].contains(&saga_state().await?.as_str()))
    })
    .await
    .unwrap();
    let state = saga_state().await.unwrap();
    assert!(["confirming", "cancelling"].contains(&state.as_str()), "the saga should wait for order-worker, stopped; it is {state:?}");
    let labels = [("service", "coordinator"), ("state", state.as_str())];
    alerts.firing(alert, &labels, t, Duration::from_secs(90)).await;

    let t = Instant::now();
    f.stack.start_process("order-worker").await.unwrap();
    alerts.resolved(alert, &labels, t, Duration::from_secs(60)).await;
    let ending = shop.wait_terminal(order, SAGA).await.unwrap();
    let expected = if state == "confirming" { Terminal::Confirmed } else { Terminal::Cancelled("timeout".into()) };
    assert_eq!(ending, expected, "the saga was {state} when order-worker came back");
    prom.check_running();
    f.stack.check_running().unwrap();
    prom.stop().await;
    f.stop().await;
}

/// A real Prometheus scraping `f`'s stack every [`SCRAPE_INTERVAL`], with a copy of
/// `prometheus/rules/*.yml` made [`SPEEDUP`] times faster (its evaluation interval too).
async fn time_scaled_prometheus(f: &Fixture, binary: &std::path::Path) -> Prometheus {
    let root = workspace_root();
    let dir = f.stack.opts.log_dir.join("prometheus");
    let rules_dir = dir.join("rules");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::create_dir_all(&rules_dir).unwrap();
    for file in ["recording.yml", "alerts.yml"] {
        let shipped = std::fs::read_to_string(root.join("prometheus/rules").join(file)).unwrap();
        let (scaled, _) = time_scaled(&shipped, SPEEDUP).unwrap_or_else(|e| panic!("prometheus/rules/{file}: {e}"));
        std::fs::write(rules_dir.join(file), scaled).unwrap();
    }
    let shipped_eval = SHIPPED_EVALUATION_INTERVAL.trim_start_matches("evaluation_interval:").trim();
    let evaluation = scale_duration(shipped_eval, SPEEDUP).unwrap();
    let config = dir.join("prometheus.yml");
    let rules_glob = rules_dir.join("*.yml").display().to_string();
    std::fs::write(&config, config_for_stack(&root, &f.stack.api, &f.stack.worker, &rules_glob, SCRAPE_INTERVAL, &evaluation)).unwrap();
    let prom = Prometheus::start(binary, &config, &dir).await;
    eprintln!("alerts: prometheus {} (rules {SPEEDUP}x faster in {}, log {})", prom.url, rules_dir.display(), prom.log.display());
    prom
}

/// Waits until the process at `base_url` reports fault flag `flag` at `value` on its
/// /metrics (processes read the flags once a second).
async fn fault_flag_applied(base_url: &str, flag: &str, value: u64) {
    let metrics_url = format!("{base_url}/metrics");
    let (label, end) = (format!("flag=\"{flag}\""), format!(" {value}"));
    conveyor_launcher::wait_for(&format!("{metrics_url} to report {flag} = {value}"), SAGA, || async {
        let text = reqwest::get(&metrics_url).await?.text().await?;
        Ok(text.lines().any(|l| l.starts_with("conveyor_fault_flag") && l.contains(&label) && l.ends_with(&end)))
    })
    .await
    .unwrap();
}

/// Alert rules by name, as Prometheus loaded them (name, query, labels, annotations).
async fn alert_rules(prom: &Prometheus) -> BTreeMap<String, Value> {
    let body = prom.get("/api/v1/rules", &[("type", "alert")]).await.expect("GET /api/v1/rules");
    let mut rules = BTreeMap::new();
    for group in body["data"]["groups"].as_array().expect("rule groups") {
        for rule in group["rules"].as_array().expect("rules") {
            rules.insert(rule["name"].as_str().unwrap().to_owned(), rule.clone());
        }
    }
    assert!(!rules.is_empty(), "no alert rule loaded");
    rules
}

/// Each alert's runbook names a dashboard and a panel that exist, and what to run.
fn check_runbooks(root: &std::path::Path, rules: &BTreeMap<String, Value>) {
    let mut panels: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for path in dashboard_files(root) {
        let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut all = Vec::new();
        collect_panels(&dash["panels"], &mut all);
        let titles = all.iter().filter(|p| p["type"] != "row").filter_map(|p| p["title"].as_str().map(str::to_owned)).collect();
        panels.insert(dash["title"].as_str().unwrap_or_default().to_owned(), titles);
    }
    let mut problems = Vec::new();
    for (name, rule) in rules {
        let a = &rule["annotations"];
        let (dashboard, panel) = (a["dashboard"].as_str().unwrap_or_default(), a["panel"].as_str().unwrap_or_default());
        match panels.get(dashboard) {
            None => problems.push(format!(
                "{name}: annotation `dashboard` {dashboard:?} is not the title of a dashboard in grafana/dashboards ({:?})",
                panels.keys()
            )),
            Some(titles) if !titles.iter().any(|t| t == panel) => {
                problems.push(format!("{name}: annotation `panel` {panel:?} is not a panel of {dashboard:?} ({titles:?})"))
            }
            Some(_) => {}
        }
        if a["runbook"].as_str().is_none_or(|r| !r.contains('`')) {
            problems.push(format!("{name}: annotation `runbook` should name the commands that help, in `backquotes`"));
        }
    }
    assert!(problems.is_empty(), "runbook annotations of prometheus/rules/alerts.yml:\n  - {}", problems.join("\n  - "));
}

/// Watches `/api/v1/alerts`.
#[derive(Clone, Copy)]
struct Alerts<'a> {
    prom: &'a Prometheus,
    rules: &'a BTreeMap<String, Value>,
}

impl Alerts<'_> {
    async fn active(&self) -> Vec<Value> {
        let body = self.prom.get("/api/v1/alerts", &[]).await.expect("GET /api/v1/alerts");
        body["data"]["alerts"].as_array().cloned().unwrap_or_default()
    }

    /// The active alerts named `alert` with `labels` and the rule's own labels (severity).
    fn matching(&self, active: &[Value], alert: &str, labels: &[(&str, &str)]) -> Vec<Value> {
        let own = self.rules[alert]["labels"].as_object().cloned().unwrap_or_default();
        active
            .iter()
            .filter(|a| {
                let l = &a["labels"];
                l["alertname"] == alert && labels.iter().all(|(k, v)| l[*k] == *v) && own.iter().all(|(k, v)| l[k] == *v)
            })
            .cloned()
            .collect()
    }

    /// Before any fault: the rules have data (sagas recorded) and no alert is pending or
    /// firing, so what fires later is the faults' doing.
    async fn baseline(&self) {
        let started = Instant::now();
        self.has_data("service:conveyor_saga_duration_seconds:p99_rate5m").await;
        let active = self.active().await;
        assert!(active.is_empty(), "alerts active before any fault (a rule that fires on a healthy shop?): {active:#?}");
        eprintln!("alerts: baseline after {:.1?}: sagas recorded, no alert active", started.elapsed());
    }

    /// Waits until `query` returns data (its series scraped, or recorded).
    async fn has_data(&self, query: &str) {
        conveyor_launcher::wait_for(&format!("`{query}` to have data"), Duration::from_secs(60), || async {
            let body = self.prom.get("/api/v1/query", &[("query", query)]).await.map_err(anyhow::Error::msg)?;
            Ok(body["data"]["result"].as_array().is_some_and(|r| !r.is_empty()))
        })
        .await
        .unwrap();
    }

    /// Waits until `alert` fires with `labels`; checks its annotations rendered.
    async fn firing(&self, alert: &str, labels: &[(&str, &str)], since: Instant, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let active = self.active().await;
            if let Some(a) = self.matching(&active, alert, labels).into_iter().find(|a| a["state"] == "firing") {
                for (k, v) in a["annotations"].as_object().cloned().unwrap_or_default() {
                    let v = v.as_str().unwrap_or_default();
                    assert!(
                        !v.is_empty() && !v.contains("<no value>") && !v.contains("error expanding"),
                        "{alert}: annotation {k} did not render: {v:?}"
                    );
                }
                eprintln!("alerts: {alert} {labels:?} firing {:.1?} after its fault (value {})", since.elapsed(), a["value"]);
                return;
            }
            if Instant::now() > deadline {
                panic!("{alert} {labels:?} did not fire within {limit:?} of its fault.\n{}", self.explain(alert, &active).await);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until `alert` with `labels` is neither firing nor pending.
    async fn resolved(&self, alert: &str, labels: &[(&str, &str)], since: Instant, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let active = self.active().await;
            if self.matching(&active, alert, labels).is_empty() {
                eprintln!("alerts: {alert} {labels:?} resolved {:.1?} after its fault was removed", since.elapsed());
                return;
            }
            if Instant::now() > deadline {
                panic!("{alert} {labels:?} still active {limit:?} after its fault was removed.\n{}", self.explain(alert, &active).await);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Asserts that `alert` with `labels` is not active (before its fault).
    async fn quiet(&self, alert: &str, labels: &[(&str, &str)]) {
        let active = self.active().await;
        assert!(
            self.matching(&active, alert, labels).is_empty(),
            "{alert} {labels:?} active before its fault.\n{}",
            self.explain(alert, &active).await
        );
    }

    /// What a failure message needs: the active alerts, and the alert's quantities now.
    async fn explain(&self, alert: &str, active: &[Value]) -> String {
        let query = self.rules[alert]["query"].as_str().unwrap_or_default();
        let mut out = format!("rule: {query}\nactive alerts: {}\n", serde_json::to_string_pretty(active).unwrap());
        for q in alert_quantities(query).unwrap_or_default() {
            let now = self.prom.get("/api/v1/query", &[("query", &q)]).await.map(|b| b["data"]["result"].to_string());
            out.push_str(&format!("{q} = {now:?}\n"));
        }
        out
    }
}

/// `POST /orders` every 1/[`ORDERS_PER_SECOND`] s, each on its own task so that a slow
/// answer does not slow the rate.
struct Orders {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Result<Uuid, String>>>,
}

impl Orders {
    fn start(shop: Shop, customer: Uuid, product: Uuid) -> Orders {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / ORDERS_PER_SECOND);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut placing = tokio::task::JoinSet::new();
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                let shop = shop.clone();
                placing.spawn(async move { shop.order_placed(customer, &[(product, 1)]).await.map_err(|e| format!("{e:#}")) });
            }
            placing.join_all().await
        });
        Orders { stop, task }
    }

    /// Stops placing; every order placed (each must have been accepted).
    async fn stop(self) -> Vec<Uuid> {
        self.stop.store(true, Ordering::Relaxed);
        let results = self.task.await.unwrap();
        let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            failed.is_empty(),
            "{} of {} orders were not accepted (order-api is never faulted here): {:?}",
            failed.len(),
            results.len(),
            &failed[..failed.len().min(5)]
        );
        results.into_iter().map(Result::unwrap).collect()
    }
}

/// Sets fault flags of `service` and checks they took (`cargo xtask fault set` does the same).
async fn set_faults(shop: &Shop, service: &str, flags: Value) {
    let after = shop.set_faults(service, &flags).await.unwrap();
    for (flag, value) in flags.as_object().unwrap() {
        assert_eq!(after[flag].as_f64(), value.as_f64(), "{service}.{flag} after PATCH /admin/faults: {after}");
    }
}

async fn clear_faults(shop: &Shop, service: &str) {
    shop.clear_faults(service).await.unwrap();
}

/// ConveyorSagaLatencyHigh: the payment processor answers 3 s late, over the 2 s objective.
async fn saga_latency(shop: &Shop, alerts: Alerts<'_>) {
    let (alert, labels) = ("ConveyorSagaLatencyHigh", [("service", "order")]);
    alerts.quiet(alert, &labels).await;
    let t = Instant::now();
    set_faults(shop, "payment", json!({"latency_ms": 3000})).await;
    alerts.firing(alert, &labels, t, Duration::from_secs(150)).await;
    let t = Instant::now();
    clear_faults(shop, "payment").await;
    alerts.resolved(alert, &labels, t, Duration::from_secs(120)).await;
}

/// ConveyorDeadLetters: a `product.created` whose payload does not decode (a publisher's
/// bug) dies in order's inbox at once. The operator finds it through
/// `GET /admin/dead-letters`, repairs the payload (here in the database, standing in for
/// the fixed publisher) and replays it through `POST /admin/dead-letters/{id}/replay`.
async fn dead_letters(shop: &Shop, order_db: &str, alerts: Alerts<'_>) {
    let (alert, labels) = ("ConveyorDeadLetters", [("service", "order"), ("topic", "product.created")]);
    alerts.quiet(alert, &labels).await;
    let db = sqlx::PgPool::connect(order_db).await.unwrap();
    let product = Uuid::now_v7();
    let t = Instant::now();
    sqlx::query("INSERT INTO conveyor.inbox (message_id, topic, key, payload, published_at) VALUES (gen_random_uuid(), 'product.created', $1, $2::json, now())")
        .bind(product.to_string())
        .bind(json!({"product": {"id": product, "name": "half a product"}}).to_string())
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("SELECT pg_notify('conveyor_inbox', '')").execute(&db).await.unwrap();
    alerts.firing(alert, &labels, t, Duration::from_secs(60)).await;

    let dead = shop.get("order", "/admin/dead-letters?topic=product.created").await.unwrap().unwrap();
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 1, "GET /admin/dead-letters lists the poison message: {dead:?}");
    let id = dead[0]["message_id"].as_str().unwrap().to_owned();
    let repaired = json!({"product": {
        "id": product, "name": "a whole product", "price": {"amount_minor": 250, "currency": "EUR"},
        "initial_stock": 1, "version": 1, "updated_at": "2026-01-01T00:00:00Z"
    }});
    serde_json::from_value::<conveyor_contracts::ProductCreated>(repaired.clone()).expect("the repaired payload is a product.created");
    sqlx::query("UPDATE conveyor.inbox SET payload = $2::json WHERE message_id = $1::uuid")
        .bind(&id)
        .bind(repaired.to_string())
        .execute(&db)
        .await
        .unwrap();
    let t = Instant::now();
    let (status, body) = shop.post("order", &format!("/admin/dead-letters/{id}/replay"), &[], &Value::Null).await.unwrap();
    assert_eq!((status, body["replayed"].as_u64()), (200, Some(1)), "replay: {body}");
    conveyor_launcher::wait_for("the replayed product.created to be handled", SAGA, || async {
        Ok(shop.get("order", &format!("/products/{product}")).await?.is_some())
    })
    .await
    .unwrap();
    alerts.resolved(alert, &labels, t, Duration::from_secs(60)).await;
}

/// ConveyorProjectionLagging: a writing transaction left open in the order database (a
/// batch job, a session someone forgot) while orders keep coming. The projector applies only
/// events of transactions older than every one still running, so the oldest event it has
/// not applied ages; rolled back, the projector catches up by itself.
async fn projection_held_back(order_db: &str, alerts: Alerts<'_>) {
    use sqlx::Connection;
    let (alert, labels) = ("ConveyorProjectionLagging", [("service", "order"), ("projection", "order_views")]);
    alerts.quiet(alert, &labels).await;
    let mut session = sqlx::PgConnection::connect(order_db).await.unwrap();
    let t = Instant::now();
    sqlx::raw_sql("BEGIN; SELECT pg_current_xact_id();").execute(&mut session).await.unwrap();
    alerts.firing(alert, &labels, t, Duration::from_secs(90)).await;
    let t = Instant::now();
    sqlx::raw_sql("ROLLBACK").execute(&mut session).await.unwrap();
    alerts.resolved(alert, &labels, t, Duration::from_secs(60)).await;
}

/// ConveyorNotificationBreakerOpen: the webhook receiver is down (fault flag); confirmed
/// orders keep coming, so notification-worker's circuit opens and stays open.
async fn breaker_open(shop: &Shop, alerts: Alerts<'_>) {
    let (alert, labels) = ("ConveyorNotificationBreakerOpen", [("service", "notification"), ("target", "webhook")]);
    alerts.quiet(alert, &labels).await;
    let t = Instant::now();
    set_faults(shop, "notification", json!({"receiver_down": 1})).await;
    alerts.firing(alert, &labels, t, Duration::from_secs(90)).await;
    let t = Instant::now();
    clear_faults(shop, "notification").await;
    alerts.resolved(alert, &labels, t, Duration::from_secs(60)).await;
}

/// ConveyorHttpErrorRatioHigh and ConveyorQueueLoopFailing: catalog's database stops
/// letting catalog's role in (`ALTER ROLE … NOLOGIN`, its sessions ended), the outage a
/// client cannot cause, while clients read the catalog. Both processes stay up and
/// scrapeable; catalog-api answers 5xx, catalog-worker's relay fails every cycle.
async fn database_refuses_its_service(catalog_api: &str, catalog_db: &str, role: &str, alerts: Alerts<'_>) {
    let errors = ("ConveyorHttpErrorRatioHigh", [("service", "catalog")]);
    let loop_failing = ("ConveyorQueueLoopFailing", [("service", "catalog"), ("loop", "relay")]);
    let readers = Readers::start(format!("{catalog_api}/products?limit=5"));
    alerts.quiet(errors.0, &errors.1).await;
    alerts.quiet(loop_failing.0, &loop_failing.1).await;
    let admin = sqlx::PgPool::connect(catalog_db).await.unwrap();
    let t = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER ROLE \"{role}\" NOLOGIN"))).execute(&admin).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1").bind(role).execute(&admin).await.unwrap();
    tokio::join!(
        alerts.firing(errors.0, &errors.1, t, Duration::from_secs(120)),
        alerts.firing(loop_failing.0, &loop_failing.1, t, Duration::from_secs(120)),
    );
    let t = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER ROLE \"{role}\" LOGIN"))).execute(&admin).await.unwrap();
    tokio::join!(
        alerts.resolved(errors.0, &errors.1, t, Duration::from_secs(120)),
        alerts.resolved(loop_failing.0, &loop_failing.1, t, Duration::from_secs(120)),
    );
    let statuses = readers.stop().await;
    assert!(statuses.server_errors > 0 && statuses.last_ok, "GET /products during and after the outage: {statuses:?}");
}

/// Clients reading one URL ten times a second until stopped.
struct Readers {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Statuses>,
}

#[derive(Debug, Default)]
struct Statuses {
    ok: u64,
    server_errors: u64,
    /// 4xx, or no answer.
    other: u64,
    /// The last answer was a success.
    last_ok: bool,
}

impl Readers {
    fn start(url: String) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut seen = Statuses::default();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                let status = http.get(&url).timeout(Duration::from_secs(5)).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                seen.last_ok = (200..300).contains(&status);
                match status {
                    200..=299 => seen.ok += 1,
                    500..=599 => seen.server_errors += 1,
                    _ => seen.other += 1,
                }
            }
            seen
        });
        Readers { stop, task }
    }

    async fn stop(self) -> Statuses {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// ConveyorQueueBacklogGrowing and ConveyorQueueOldestMessageTooOld: the stock worker
/// pauses before each claim of its inbox, so order.placed arrives faster than it is taken.
async fn stock_slowdown(shop: &Shop, alerts: Alerts<'_>) {
    let backlog = ("ConveyorQueueBacklogGrowing", [("service", "stock"), ("queue", "inbox")]);
    let too_old = ("ConveyorQueueOldestMessageTooOld", [("service", "stock")]);
    alerts.quiet(backlog.0, &backlog.1).await;
    alerts.quiet(too_old.0, &too_old.1).await;
    let t = Instant::now();
    set_faults(shop, "stock", json!({"slowdown_ms": STOCK_SLOWDOWN_MS})).await;
    tokio::join!(
        alerts.firing(backlog.0, &backlog.1, t, Duration::from_secs(180)),
        alerts.firing(too_old.0, &too_old.1, t, Duration::from_secs(180))
    );
    let t = Instant::now();
    clear_faults(shop, "stock").await;
    tokio::join!(
        alerts.resolved(backlog.0, &backlog.1, t, Duration::from_secs(120)),
        alerts.resolved(too_old.0, &too_old.1, t, Duration::from_secs(120))
    );
}

/// ConveyorTargetDown: a worker killed (SIGKILL, a crash), then started again.
async fn target_down(stack: &mut Stack, instance: &str, alerts: Alerts<'_>) {
    let (alert, labels) = ("ConveyorTargetDown", [("service", "catalog"), ("role", "worker"), ("instance", instance), ("job", "conveyor")]);
    alerts.quiet(alert, &labels).await;
    let t = Instant::now();
    stack.kill("catalog-worker").await.unwrap();
    alerts.firing(alert, &labels, t, Duration::from_secs(60)).await;
    let t = Instant::now();
    stack.start_process("catalog-worker").await.unwrap();
    alerts.resolved(alert, &labels, t, Duration::from_secs(60)).await;
}
