//! The monitoring we ship, against a live stack and a real Prometheus: the scrape config
//! (`prometheus/prometheus.yml`, with this stack's ports), the recording and alert rules
//! (`prometheus/rules/*.yml`) and every PromQL expression of every Grafana dashboard
//! (`grafana/dashboards/*.json`). After a few dozen orders (confirmed, out of stock, payment
//! declined) in each saga mode (choreography, then orchestration: the coordinator's panels
//! need sagas of their own) and one poison message, each expression must parse and return
//! data.
//!
//! Needs the `prometheus` binary (Debian: `apt-get install prometheus`); fails without it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use conveyor_contracts::SagaMode;
use conveyor_launcher::{Shop, Terminal, tail, wait_for};
use futures::StreamExt;
use serde_json::Value;

use crate::{SAGA, start};

/// How long Prometheus gets to scrape and evaluate everything once the orders are done.
const SETTLE: Duration = Duration::from_secs(120);

/// The rule evaluation interval of prometheus/prometheus.yml, as written there.
pub(crate) const SHIPPED_EVALUATION_INTERVAL: &str = "evaluation_interval: 5s";

#[tokio::test]
async fn every_dashboard_query_and_every_rule_returns_data_from_a_live_stack() {
    let binary = prometheus_binary();
    let mut f = start("prometheus").await;
    let root = workspace_root();
    let dir = f.stack.opts.log_dir.join("prometheus");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = dir.join("prometheus.yml");
    let rules = root.join("prometheus/rules/*.yml").display().to_string();
    std::fs::write(&config, config_for_stack(&root, &f.stack.api, &f.stack.worker, &rules, "1s", "1s")).unwrap();
    let mut prom = Prometheus::start(&binary, &config, &dir).await;
    eprintln!("prometheus: {} (config {}, log {})", prom.url, config.display(), prom.log.display());

    // The workload: sagas of all three endings in each mode, and one message that can only die.
    let plenty = f.product(1000, 1_000_000).await;
    let scarce = f.product(500, 2).await;
    let rich = f.customer(100_000_000).await;
    let poor = f.customer(100).await;
    sagas_of_every_ending(&f.shop, rich, poor, plenty, scarce).await;
    f.stack.switch_saga_mode(SagaMode::Orchestration).await.unwrap();
    sagas_of_every_ending(&f.shop, rich, poor, plenty, scarce).await;
    let sagas: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas").fetch_one(&f.db("coordinator").await).await.unwrap();
    assert_eq!(sagas, 36, "the second round's orders ran the orchestrated saga, the first round's did not");
    let payment = f.db("payment").await;
    sqlx::query(
        "INSERT INTO conveyor.inbox (message_id, topic, key, payload, published_at) \
         VALUES (gen_random_uuid(), 'stock.reserved', 'poison', '{\"nope\":1}', now())",
    )
    .execute(&payment)
    .await
    .unwrap();
    sqlx::query("SELECT pg_notify('conveyor_inbox', '')").execute(&payment).await.unwrap();
    wait_for("the poison message to be dead", SAGA, || async {
        let state: String = sqlx::query_scalar("SELECT state FROM conveyor.inbox WHERE key = 'poison'").fetch_one(&payment).await?;
        Ok(state == "dead")
    })
    .await
    .unwrap();

    // Everything to evaluate: dashboards (panel targets and variable queries), recording
    // rules (their expressions and their output), alert rules (their quantities).
    let mut checks = Vec::new();
    let mut problems = Vec::new();
    for path in dashboard_files(&root) {
        dashboard_checks(&path, &mut checks, &mut problems);
    }
    let rules = prom.get("/api/v1/rules", &[]).await.expect("GET /api/v1/rules");
    let mut rule_names = Vec::new();
    for group in rules["data"]["groups"].as_array().expect("rule groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let (name, query) = (rule["name"].as_str().unwrap().to_owned(), rule["query"].as_str().unwrap().to_owned());
            rule_names.push((group["name"].as_str().unwrap().to_owned(), name.clone()));
            if rule["type"] == "recording" {
                checks.push(Check { what: format!("recording rule {name}"), expr: query });
                checks.push(Check { what: format!("recording rule {name} (its recorded series)"), expr: name });
            } else {
                match alert_quantities(&query) {
                    Ok(quantities) => checks.extend(quantities.into_iter().map(|q| Check { what: format!("alert {name} (quantity of `{query}`)"), expr: q })),
                    Err(e) => problems.push(format!("alert {name}: {e}")),
                }
            }
        }
    }
    assert!(rule_names.iter().any(|(_, n)| n.starts_with("Conveyor")), "no alert rule loaded from prometheus/rules/*.yml: {rule_names:?}");
    let expected_targets = 2 * f.stack.api.len();

    // Poll until every check passes (scrapes and rule evaluations every second), or the
    // deadline passes; then report every failure.
    let deadline = Instant::now() + SETTLE;
    let failures = loop {
        let mut failures = problems.clone();
        for c in &checks {
            if let Err(e) = prom.evaluate(&c.expr).await {
                failures.push(format!("{}\n      {}\n      -> {e}", c.what, c.expr));
            }
        }
        failures.extend(prom.target_problems(expected_targets).await);
        failures.extend(prom.rule_health_problems().await);
        if failures.is_empty() || Instant::now() > deadline {
            break failures;
        }
        prom.check_running();
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let dashboards = checks.iter().filter(|c| c.what.starts_with("dashboard")).count();
    eprintln!(
        "prometheus: evaluated {} expressions ({dashboards} from dashboards, {} from rules); {} failed",
        checks.len(),
        checks.len() - dashboards,
        failures.len()
    );
    let log = prom.log.clone();
    prom.stop().await;
    f.stop().await;
    assert!(
        failures.is_empty(),
        "{} of the monitoring checks failed after {SETTLE:?} (Prometheus log: {}):\n  - {}",
        failures.len(),
        log.display(),
        failures.join("\n  - ")
    );
}

struct Check {
    what: String,
    expr: String,
}

/// Orders in the shop's current saga mode: 24 confirmed, 6 out of stock (`scarce` has 2
/// left, each order wants 5), 6 declined (`poor` cannot pay); each ends as expected.
async fn sagas_of_every_ending(shop: &Shop, rich: uuid::Uuid, poor: uuid::Uuid, plenty: uuid::Uuid, scarce: uuid::Uuid) {
    let mut plan = Vec::new();
    plan.extend((0..24).map(|_| (rich, plenty, 1, Terminal::Confirmed)));
    plan.extend((0..6).map(|_| (rich, scarce, 5, Terminal::Cancelled("out_of_stock".into()))));
    plan.extend((0..6).map(|_| (poor, plenty, 1, Terminal::Cancelled("payment_declined".into()))));
    let endings: Vec<(Terminal, Terminal)> = futures::stream::iter(plan)
        .map(|(customer, product, quantity, expected)| {
            let shop = shop.clone();
            async move {
                let order = shop.order_placed(customer, &[(product, quantity)]).await.unwrap();
                (shop.wait_terminal(order, SAGA).await.unwrap(), expected)
            }
        })
        .buffer_unordered(6)
        .collect()
        .await;
    for (got, expected) in &endings {
        assert_eq!(got, expected);
    }
}

/// `prometheus` on PATH or in /usr/bin; a clear failure (not a skip) when it is missing.
pub(crate) fn prometheus_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the `prometheus` binary is not on PATH nor in /usr/bin: this test runs a real Prometheus \
                 against the stack. Install it (Debian/Ubuntu: `apt-get install prometheus`; .ci/run does) \
                 and run the test again"
            )
        })
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

pub(crate) fn dashboard_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("grafana/dashboards"))
        .expect("grafana/dashboards")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in grafana/dashboards");
    files
}

/// prometheus/prometheus.yml with this stack's ports instead of `cargo xtask up`'s, a scrape
/// every `scrape_interval` (which is also its timeout), rules evaluated every
/// `evaluation_interval`, and the rule files `rules` (an absolute path or glob). Every
/// replaced text must be there, so a change to the shipped file cannot make this test
/// quietly check something else.
pub(crate) fn config_for_stack(
    root: &Path,
    api: &BTreeMap<String, String>,
    worker: &BTreeMap<String, String>,
    rules: &str,
    scrape_interval: &str,
    evaluation_interval: &str,
) -> String {
    let shipped = std::fs::read_to_string(root.join("prometheus/prometheus.yml")).expect("prometheus/prometheus.yml");
    let mut text = shipped.clone();
    let mut swaps = vec![
        ("scrape_interval: 5s".to_owned(), format!("scrape_interval: {scrape_interval}")),
        ("scrape_timeout: 4s".to_owned(), format!("scrape_timeout: {scrape_interval}")),
        (SHIPPED_EVALUATION_INTERVAL.to_owned(), format!("evaluation_interval: {evaluation_interval}")),
        ("- rules/*.yml".to_owned(), format!("- {rules}")),
    ];
    for (i, svc) in conveyor_contracts::service::ALL.iter().enumerate() {
        let host = |url: &str| url.trim_start_matches("http://").to_owned();
        swaps.push((format!("\"127.0.0.1:{}\"", 8081 + i), format!("\"{}\"", host(&api[*svc]))));
        swaps.push((format!("\"127.0.0.1:{}\"", 8181 + i), format!("\"{}\"", host(&worker[*svc]))));
    }
    for (from, to) in swaps {
        assert_eq!(shipped.matches(&from).count(), 1, "prometheus/prometheus.yml should contain `{from}` exactly once");
        text = text.replace(&from, &to);
    }
    text
}

/// The expressions of one dashboard, with Grafana's variables substituted, plus what is
/// wrong with its structure (a panel not on the `datasource` variable, a multi-value
/// variable matched with `=`).
fn dashboard_checks(path: &Path, checks: &mut Vec<Check>, problems: &mut Vec<String>) {
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let vars = dash["templating"]["list"].as_array().cloned().unwrap_or_default();
    if !vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus") {
        problems.push(format!("{file}: no `datasource` template variable of type datasource (query prometheus)"));
    }
    let mut values: BTreeMap<String, String> = [
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__interval_ms", "15000"),
        ("__range", "5m"),
        ("__range_s", "300"),
        ("__range_ms", "300000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut multi = Vec::new();
    for v in &vars {
        let name = v["name"].as_str().unwrap_or_default().to_owned();
        if v["type"] == "datasource" {
            continue;
        }
        if v["multi"] == true || v["includeAll"] == true {
            multi.push(name.clone());
        }
        values.insert(name.clone(), ".*".to_owned());
        if v["type"] == "query" {
            let query = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or_default();
            match label_values_as_promql(query) {
                Some(expr) => checks.push(Check { what: format!("dashboard {file}: variable ${name} ({query})"), expr }),
                None => problems.push(format!("{file}: variable ${name}: cannot check query `{query}`")),
            }
            if v["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("{file}: variable ${name} does not use the ${{datasource}} variable"));
            }
        }
    }
    let mut panels = Vec::new();
    collect_panels(&dash["panels"], &mut panels);
    let mut targets = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        if panel["type"] == "row" {
            continue;
        }
        if title.trim().is_empty() || panel["description"].as_str().is_none_or(|d| d.trim().is_empty()) {
            problems.push(format!("{file}: panel {title:?} needs a title and a description"));
        }
        if panel["datasource"]["uid"] != "${datasource}" {
            problems.push(format!("{file}: panel {title:?} does not use the ${{datasource}} variable"));
        }
        for target in panel["targets"].as_array().cloned().unwrap_or_default() {
            targets += 1;
            let what = format!("dashboard {file}: panel {title:?} target {}", target["refId"].as_str().unwrap_or("?"));
            if target["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("{what}: does not use the ${{datasource}} variable"));
            }
            let Some(expr) = target["expr"].as_str() else {
                problems.push(format!("{what}: no PromQL expression"));
                continue;
            };
            match substitute(expr, &values, &multi) {
                Ok(expr) => checks.push(Check { what, expr }),
                Err(e) => problems.push(format!("{what}: {e}\n      {expr}")),
            }
        }
    }
    if targets == 0 {
        problems.push(format!("{file}: no panel targets"));
    }
}

pub(crate) fn collect_panels(panels: &Value, out: &mut Vec<Value>) {
    for p in panels.as_array().cloned().unwrap_or_default() {
        collect_panels(&p["panels"], out);
        out.push(p);
    }
}

/// Replaces `$name`, `${name}` and `${name:format}` with the variable's test value; a
/// multi-value variable must be matched with `=~` (Grafana puts `a|b` or `.*` there).
fn substitute(expr: &str, values: &BTreeMap<String, String>, multi: &[String]) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').ok_or("unclosed ${")?;
            (braced[..end].split(':').next().unwrap_or_default(), end + 2)
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&after[..end], end)
        };
        let value = values.get(name).ok_or_else(|| format!("unknown variable ${name}"))?;
        if multi.iter().any(|m| m == name) && !out.trim_end_matches('"').ends_with("=~") {
            return Err(format!("multi-value variable ${name} must be matched with =~"));
        }
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Grafana's `label_values(selector, label)` as the PromQL that has the same answer.
fn label_values_as_promql(query: &str) -> Option<String> {
    let inner = query.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some(format!("count by ({}) ({})", label.trim(), selector.trim()))
}

/// The quantities an alert compares: `a > 1 and b < 2` gives `a` and `b`. The convention
/// of prometheus/rules/alerts.yml: every alert is such thresholds on quantities that have
/// data whenever the stack runs (so the test can tell a typo from "not firing").
pub(crate) fn alert_quantities(query: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in split_top_level(query, &["and", "or", "unless"]) {
        let (lhs, rhs) = last_comparison(&part).ok_or_else(|| format!("`{part}` is not `<quantity> <comparison> <number>`"))?;
        let rhs = rhs.trim().trim_start_matches("bool").trim();
        if rhs.parse::<f64>().is_err() {
            return Err(format!("`{part}` compares with `{rhs}`, not a number"));
        }
        out.push(lhs.trim().to_owned());
    }
    Ok(out)
}

/// Walks an expression outside parentheses, brackets, braces and strings.
fn top_level_positions(expr: &str) -> Vec<usize> {
    let (mut depth, mut quote, mut escaped, mut out) = (0i32, None::<char>, false, Vec::new());
    for (i, c) in expr.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ if depth == 0 => out.push(i),
            _ => {}
        }
    }
    out
}

fn split_top_level(expr: &str, words: &[&str]) -> Vec<String> {
    let top = top_level_positions(expr);
    let mut parts = Vec::new();
    let mut start = 0;
    for &i in &top {
        if i < start || !expr[..i].ends_with(char::is_whitespace) {
            continue;
        }
        for w in words {
            let end = i + w.len();
            if expr[i..].starts_with(w) && expr[end..].starts_with(char::is_whitespace) {
                parts.push(expr[start..i].to_owned());
                start = end;
            }
        }
    }
    parts.push(expr[start..].to_owned());
    parts
}

fn last_comparison(expr: &str) -> Option<(String, String)> {
    let top = top_level_positions(expr);
    let bytes = expr.as_bytes();
    for &i in top.iter().rev() {
        let two = expr.get(i..i + 2).unwrap_or_default();
        if ["==", "!=", ">=", "<="].contains(&two) {
            return Some((expr[..i].to_owned(), expr[i + 2..].to_owned()));
        }
        if (bytes[i] == b'>' || bytes[i] == b'<') && !(i > 0 && [b'<', b'>', b'=', b'!'].contains(&bytes[i - 1])) {
            return Some((expr[..i].to_owned(), expr[i + 1..].to_owned()));
        }
    }
    None
}

/// A `prometheus` child process with its own data directory and port.
pub(crate) struct Prometheus {
    pub(crate) url: String,
    pub(crate) log: PathBuf,
    child: tokio::process::Child,
    http: reqwest::Client,
}

impl Prometheus {
    pub(crate) async fn start(binary: &Path, config: &Path, dir: &Path) -> Prometheus {
        let port = free_port();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut prom = Prometheus { url: format!("http://127.0.0.1:{port}"), log, child, http: reqwest::Client::new() };
        let ready = format!("{}/-/ready", prom.url);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            prom.check_running();
            if let Ok(r) = prom.http.get(&ready).timeout(Duration::from_secs(1)).send().await
                && r.status().is_success()
            {
                return prom;
            }
            assert!(Instant::now() < deadline, "prometheus was not ready at {ready} within 60 s:\n{}", tail(&prom.log, 20));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn check_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("prometheus exited ({status}):\n{}", tail(&self.log, 20));
        }
    }

    pub(crate) async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let resp = self.http.get(format!("{}{path}", self.url)).query(query).timeout(Duration::from_secs(10)).send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| format!("HTTP {status}, body is not JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("{} ({})", body["error"].as_str().unwrap_or("no error message"), body["errorType"].as_str().unwrap_or("?")));
        }
        Ok(body)
    }

    /// An instant query that must succeed and return at least one sample.
    async fn evaluate(&self, expr: &str) -> Result<(), String> {
        let body = self.get("/api/v1/query", &[("query", expr)]).await?;
        let data = &body["data"];
        match data["resultType"].as_str() {
            Some("scalar") | Some("string") => Ok(()),
            _ if data["result"].as_array().is_some_and(|r| !r.is_empty()) => Ok(()),
            _ => Err("no data (empty result)".into()),
        }
    }

    /// Every target up, labelled with service and role, and no series whose own `service`
    /// label was renamed (`exported_service`: `honor_labels` missing).
    async fn target_problems(&self, expected: usize) -> Vec<String> {
        let mut problems = Vec::new();
        match self.get("/api/v1/query", &[("query", "up")]).await {
            Ok(body) => {
                let result = body["data"]["result"].as_array().cloned().unwrap_or_default();
                if result.len() != expected {
                    problems.push(format!("expected {expected} scrape targets, `up` has {} series", result.len()));
                }
                for s in result {
                    let m = &s["metric"];
                    if s["value"][1] != "1" || m["service"].is_null() || !["api", "worker"].contains(&m["role"].as_str().unwrap_or_default()) {
                        problems.push(format!("target not up or missing its service/role label: {s}"));
                    }
                }
            }
            Err(e) => problems.push(format!("`up`: {e}")),
        }
        if let Ok(body) = self.get("/api/v1/query", &[("query", "count by (__name__) ({exported_service!=\"\"})")]).await
            && body["data"]["result"].as_array().is_some_and(|r| !r.is_empty())
        {
            problems.push(format!("series with `exported_service` (the scrape overrides the processes' own labels): {}", body["data"]["result"]));
        }
        problems
    }

    /// Every rule evaluated without error.
    async fn rule_health_problems(&self) -> Vec<String> {
        let Ok(body) = self.get("/api/v1/rules", &[]).await else { return vec!["GET /api/v1/rules failed".into()] };
        let mut problems = Vec::new();
        for group in body["data"]["groups"].as_array().cloned().unwrap_or_default() {
            for rule in group["rules"].as_array().cloned().unwrap_or_default() {
                if rule["health"] != "ok" {
                    problems.push(format!("rule {} is {}: {}", rule["name"], rule["health"], rule["lastError"]));
                }
            }
        }
        problems
    }

    pub(crate) async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.is_err() {
            self.child.kill().await.ok();
        }
    }
}

/// A port free right now, below the ephemeral range (as the launcher picks its own).
fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..100)
        .map(|_| rng.random_range(20_000..32_000))
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port between 20000 and 32000")
}

#[test]
fn alert_quantities_split_thresholds_off() {
    assert_eq!(alert_quantities(r#"up{job="conveyor"} == 0"#).unwrap(), [r#"up{job="conveyor"}"#]);
    assert_eq!(
        alert_quantities("a:b:c > 100 and deriv(a:b:c[10m]) > 0").unwrap(),
        ["a:b:c", "deriv(a:b:c[10m])"]
    );
    assert_eq!(alert_quantities(r#"max by (x) (m{l=~"a|b", k!="v>1"}) >= bool 0.5"#).unwrap(), [r#"max by (x) (m{l=~"a|b", k!="v>1"})"#]);
    assert!(alert_quantities("a > b").is_err());
    assert_eq!(
        substitute(r#"rate(x{service=~"$service"}[$__rate_interval])"#, &[("service".into(), ".*".into()), ("__rate_interval".into(), "1m".into())].into(), &["service".into()]).unwrap(),
        r#"rate(x{service=~".*"}[1m])"#
    );
    assert!(substitute(r#"x{service="$service"}"#, &[("service".into(), ".*".into())].into(), &["service".into()]).is_err());
}
