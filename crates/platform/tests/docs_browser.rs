//! `/docs` in a real browser: headless Chromium, with every host but 127.0.0.1 made
//! unresolvable, renders the page from a running server. It must render the operations of
//! `/openapi.json`, log nothing to the console (a Content-Security-Policy violation is
//! logged there), and every request the page makes must go to the server that served it.
//!
//! Needs Chromium (`chromium`, `chromium-browser` or `$CHROMIUM`; Debian: `apt-get install
//! chromium`, which .ci/run does). Without it the test says so and passes, except in CI.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use conveyor_platform::http::{api_router, api_routes};
use serde_json::Value;

fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).flat_map(|d| ["chromium", "chromium-browser"].map(|b| d.join(b))).find(|p| p.is_file())
}

#[tokio::test]
async fn the_docs_page_renders_in_a_browser_from_its_own_server_alone() {
    let Some(browser) = chromium() else {
        assert!(std::env::var_os("CI").is_none(), "CI installs Chromium for this test (see .ci/run)");
        eprintln!("skipped: no Chromium on PATH (Debian: apt-get install chromium) and CHROMIUM not set");
        return;
    };
    let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
    let app = api_router("test", 1024, pool.clone(), api_routes("Sells lamps."), pool);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = std::env::temp_dir().join(format!("conveyor-docs-browser-{}-{}", std::process::id(), origin.rsplit(':').next().unwrap()));
    let net_log = dir.join("net-log.json");
    let run = tokio::process::Command::new(&browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-background-networking"])
        .arg("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
        .args(["--enable-logging=stderr", "--log-level=0"])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--log-net-log={}", net_log.display()))
        // Virtual time stops while a request is pending: rendering finishes however slow the machine.
        .args(["--virtual-time-budget=10000", "--dump-dom"])
        .arg(format!("{origin}/docs"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run).await.expect("Chromium did not finish within 120 s").expect("running Chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "Chromium failed ({}): {stderr}", out.status);
    let net_log: Value = serde_json::from_str(&std::fs::read_to_string(&net_log).expect("Chromium's net log")).expect("a complete net log");
    std::fs::remove_dir_all(&dir).ok();

    let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "the page logged to the console (a CSP violation, a failed script?):\n{}", console.join("\n"));

    assert!(dom.contains("<title>Conveyor test API</title>"), "{dom}");
    assert!(dom.contains("Sells lamps."), "the description from /openapi.json is not rendered: {dom}");
    assert!(dom.contains(r#"data-path="/admin/queue""#), "the operations from /openapi.json are not rendered: {dom}");

    // The browser's own background requests name no initiator; the page's name its origin.
    let types = &net_log["constants"]["logEventTypes"];
    let start_job = types["URL_REQUEST_START_JOB"].as_u64().expect("URL_REQUEST_START_JOB in the net log's constants");
    let requested: Vec<&str> = net_log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_u64() == Some(start_job) && e["params"]["initiator"] == origin.as_str())
        .filter_map(|e| e["params"]["url"].as_str())
        .collect();
    for url in &requested {
        assert!(url.starts_with(&format!("{origin}/")), "the page requested {url}");
    }
    for path in ["/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js", "/docs/init.js", "/openapi.json"] {
        assert!(requested.contains(&format!("{origin}{path}").as_str()), "{path} was not loaded: {requested:?}");
    }
}
