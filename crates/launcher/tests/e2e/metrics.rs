//! `/metrics` of every binary: the families the catalog (docs/metrics.md) promises are
//! there, and no label carries an unbounded value (an id, an email, a raw path).

use std::collections::{BTreeMap, BTreeSet};

use conveyor_launcher::{Terminal, wait_for};

use conveyor_contracts::SagaMode;

use crate::{SAGA, in_both_modes, start_in};

in_both_modes!(every_binary_exports_the_catalogued_families_without_unbounded_labels);

/// Every family each process must export once a few sagas ran through it in `mode`.
fn expected(process: &str, mode: SagaMode) -> Vec<&'static str> {
    let mut names = vec![
        "db_pool_connections",
        "db_pool_max_connections",
        "db_pool_acquire_duration_seconds_bucket",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "conveyor_queue_oldest_pending_age_seconds",
    ];
    let (svc, role) = process.rsplit_once('-').expect("svc-role");
    // The coordinator handles and relays only orchestrated sagas.
    let idle = svc == "catalog" || (svc == "coordinator" && mode == SagaMode::Choreography);
    if role == "api" {
        names.extend(["http_server_requests_total", "http_server_request_duration_seconds_bucket", "http_server_requests_in_flight"]);
    } else {
        if !idle {
            names.extend([
                "conveyor_queue_consumed_total",
                "conveyor_queue_handler_duration_seconds_bucket",
                "conveyor_queue_message_latency_seconds_bucket",
                "conveyor_queue_claim_batch_size_bucket",
                "conveyor_queue_depth",
            ]);
        }
        if !(svc == "coordinator" && mode == SagaMode::Choreography) {
            names.extend(["conveyor_queue_relayed_total", "conveyor_queue_relay_lag_seconds_bucket"]);
        }
    }
    names.extend(match process {
        "catalog-api" | "order-api" => vec!["conveyor_queue_published_total"],
        "stock-worker" => vec!["conveyor_queue_published_total"],
        "order-worker" => vec!["conveyor_queue_published_total", "conveyor_orders_completed_total", "conveyor_saga_duration_seconds_bucket"],
        "payment-worker" => vec!["conveyor_queue_published_total", "conveyor_payments_total"],
        "notification-worker" => vec!["conveyor_queue_published_total", "conveyor_notifications_sent_total", "conveyor_notification_breaker_open"],
        "coordinator-worker" => vec!["conveyor_saga_commands_total", "conveyor_sagas_in_flight", "conveyor_sagas_overdue", "conveyor_saga_timeouts_total"],
        _ => vec![],
    });
    if process == "order-api" {
        names.push("conveyor_orders_placed_total");
    }
    // Each fault flag's value (docs/faults.md), from the API and the worker of the services
    // that have flags, 0 while off.
    if ["payment", "stock", "notification"].contains(&svc) {
        names.push("conveyor_fault_flag");
    }
    names
}

/// A label value that names one thing among unboundedly many.
fn unbounded(value: &str) -> bool {
    value.contains('@')
        || value.len() > 80
        || value.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).any(|t| uuid::Uuid::parse_str(t).is_ok() || (t.len() > 6 && t.bytes().all(|b| b.is_ascii_digit())))
}

/// (family, labels) of every sample line.
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (name, rest) = line.split_at(line.find(['{', ' ']).unwrap_or(line.len()));
            let mut labels = BTreeMap::new();
            if let Some(inner) = rest.strip_prefix('{').and_then(|r| r.rsplit_once('}')).map(|(i, _)| i) {
                for pair in inner.split("\",").map(|p| p.trim_start_matches(',')) {
                    if let Some((k, v)) = pair.split_once("=\"") {
                        labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                    }
                }
            }
            (name.to_owned(), labels)
        })
        .collect()
}

async fn every_binary_exports_the_catalogued_families_without_unbounded_labels(mode: SagaMode) {
    let f = start_in("metrics", mode).await;
    let product = f.product(700, 3).await;
    let rich = f.customer(1_000_000).await;
    let poor = f.customer(1).await;
    for (customer, qty, outcome) in [(rich, 1, "confirmed"), (poor, 1, "payment_declined"), (rich, 9, "out_of_stock")] {
        let order = f.shop.order_placed(customer, &[(product, qty)]).await.unwrap();
        let got = f.shop.wait_terminal(order, SAGA).await.unwrap();
        assert_eq!(got == Terminal::Confirmed, outcome == "confirmed", "{got:?}");
    }
    wait_for("the notifications", SAGA, || async { Ok(f.shop.received().await?.0.len() == 3) }).await.unwrap();
    // Recorded (the receiver answered first), and relayed as notification.sent.
    let notification = f.db("notification").await;
    wait_for("the notifications recorded and relayed", SAGA, || async {
        Ok(sqlx::query_scalar("SELECT (SELECT count(*) FROM notifications) = 3 AND NOT EXISTS (SELECT 1 FROM conveyor.outbox)").fetch_one(&notification).await?)
    })
    .await
    .unwrap();
    // Some bad requests too, so that 4xx and unmatched routes are counted.
    let _ = f.shop.get("order", "/orders/not-an-id").await;
    let _ = f.shop.get("catalog", "/no/such/thing/0190f0e2-7c3f-7d4e-8f00-000000000000").await;

    assert!(unbounded("/orders/0190f0e2-7c3f-7d4e-8f00-000000000000") && unbounded("a@b.c") && !unbounded("/orders/{id}"), "the check itself");
    let http = reqwest::Client::new();
    let mut problems = Vec::new();
    for svc in conveyor_contracts::service::ALL {
        for (role, base) in [("api", &f.stack.api[svc]), ("worker", &f.stack.worker[svc])] {
            let process = format!("{svc}-{role}");
            let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
            let samples = samples(&text);
            let families: BTreeSet<&str> = samples.iter().map(|(n, _)| n.as_str()).collect();
            for want in expected(&process, mode) {
                if !families.contains(want) {
                    problems.push(format!("{process}: no {want}"));
                }
            }
            let mut values: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
            for (name, labels) in &samples {
                if labels.get("service").map(String::as_str) != Some(svc) || labels.get("process") != Some(&process) {
                    problems.push(format!("{process}: {name} lacks service/process labels: {labels:?}"));
                }
                for (k, v) in labels {
                    if unbounded(v) {
                        problems.push(format!("{process}: {name}{{{k}={v:?}}} is unbounded"));
                    }
                    if k != "le" && k != "quantile" {
                        values.entry((name.clone(), k.clone())).or_default().insert(v.clone());
                    }
                }
            }
            for ((name, k), vs) in values {
                if vs.len() > 40 {
                    problems.push(format!("{process}: {name} has {} values of {k}", vs.len()));
                }
            }
            if role == "api" {
                let routes: BTreeSet<&str> = samples.iter().filter(|(n, _)| n == "http_server_requests_total").filter_map(|(_, l)| l.get("route").map(String::as_str)).collect();
                assert!(routes.iter().all(|r| r.starts_with('/') || *r == "unmatched"), "{process}: {routes:?}");
            }
        }
    }
    assert!(problems.is_empty(), "metrics problems:\n{}", problems.join("\n"));
    f.stop().await;
}
