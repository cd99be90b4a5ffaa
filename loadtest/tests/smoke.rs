//! The load test in smoke mode against a fresh stack of the shipped binaries (build them
//! first: `cargo build --workspace --bins`; `cargo xtask test` does): it must finish, write
//! its report and summary, see at least one saga through to the end, and get no 5xx.
//! Never checks a speed.

use std::path::Path;

use conveyor_launcher::{Stack, StackOptions, default_bin_dir, demo};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_run_against_a_fresh_stack() {
    let admin = conveyor_devpg::shared_admin_url().await;
    let id = Uuid::now_v7().simple().to_string();
    let id = &id[20..];
    let bin_dir = default_bin_dir();
    let target = bin_dir.parent().expect("target dir").to_path_buf();
    let log_dir = target.join("e2e-logs").join(format!("loadtest-{id}"));
    let mut opts = StackOptions::new(admin, bin_dir, log_dir.clone());
    opts.db_prefix = format!("lt_{id}_");
    let stack = Stack::start(opts, |_| {}).await.unwrap_or_else(|e| panic!("stack did not start: {e:#}"));
    eprintln!("stack logs in {}", log_dir.display());
    let seeded = demo::seed(&stack.shop()).await;

    let out = target.join("loadtest-test").join(id);
    let (summary, report) = (out.join("summary.json"), out.join("report.html"));
    let status = match &seeded {
        Ok(_) => Some(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_conveyor-loadtest"))
                .args(["--catalog", &stack.api["catalog"], "--order", &stack.api["order"], "--stock", &stack.api["stock"], "--payment", &stack.api["payment"]])
                .arg("--summary-file")
                .arg(&summary)
                .arg("--report-file")
                .arg(&report)
                .arg("--issuer")
                .arg(stack.issuer_file())
                .args(["--customers", "4", "--users", "4", "--increase-rate", "4", "--run-time", "3s", "--quiet"])
                .status()
                .await
                .expect("conveyor-loadtest runs"),
        ),
        Err(_) => None,
    };
    stack.stop().await.unwrap();
    seeded.unwrap();
    assert!(status.unwrap().success(), "conveyor-loadtest failed");

    assert!(Path::new(&report).is_file(), "no report at {}", report.display());
    let plot = std::fs::read_to_string(summary.with_extension("svg")).expect("the saga plot next to the summary");
    assert!(plot.contains("Saga latency"), "the plot has no latency chart");
    let s = conveyor_loadtest::read_summary(&summary).unwrap();
    assert!(s["sagas"]["count"].as_u64().unwrap() >= 1, "no saga finished: {}", s["sagas"]);
    assert!(s["sagas"]["confirmed"].as_u64().unwrap() >= 1, "no order confirmed: {}", s["sagas"]);
    assert_eq!(s["totals"]["status_5xx"], 0, "requests answered 5xx: {}", s["requests"]);
    assert!(s["totals"]["requests"].as_u64().unwrap() > 0);
    let ended: u64 = s["sagas"]["per_second"].as_array().unwrap().iter().map(|p| p["ended"].as_u64().unwrap()).sum();
    assert_eq!(ended, s["sagas"]["count"].as_u64().unwrap(), "the timeline must count every saga");
    for name in ["catalog /products?limit=20", "order /orders", "order /orders/{id}"] {
        let key = s["requests"].as_object().unwrap().keys().find(|k| k.ends_with(name)).cloned();
        assert!(key.is_some(), "no {name} in {}", s["requests"]);
    }
}
