//! What an API says about itself and how it is shown: `/openapi.json` names the service, and
//! `/docs` loads only what the service itself serves (checked statically: the page, every
//! file it references and every URL in those files), under a Content-Security-Policy that
//! lets the browser load nothing else; and every response of the API and of a worker's ops
//! server carries the security headers.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use conveyor_platform::http::{api_router, api_routes, ops_router};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;
use utoipa_axum::router::OpenApiRouter;

/// Hosts named in the vendored Swagger UI that the page never loads anything from: links a
/// person may click, identifiers, and example values. A new version that names another host
/// fails here; find out what it is for before adding it.
const NEVER_FETCHED: &[(&str, &str)] = &[
    ("www.w3.org", "XML and SVG namespaces"),
    ("json-schema.org", "`$schema` identifiers of JSON Schema dialects"),
    ("spec.openapis.org", "identifiers of the OpenAPI dialects"),
    ("datatracker.ietf.org", "RFC references in grammar comments"),
    ("www.rfc-editor.org", "RFC references in grammar comments"),
    ("spdx.org", "the link to the licence named in `info.license.identifier`"),
    ("swagger.io", "the base for resolving a reference when the page's own URL is not http(s)"),
    ("base", "a random base for parsing relative URLs (`https://base<digits>`)"),
    ("vladimirgorej.com", "a base for checking that a string parses as a URL"),
    ("example.com", "example values for `format: uri` and `uri-template`"),
    ("실례.com", "the example value for `format: iri`"),
    ("github.com", "links in deprecation messages and licence comments"),
    ("reactjs.org", "links in React's error messages"),
    ("redux.js.org", "links in Redux's error messages"),
    ("fb.me", "links in React's warnings"),
    ("tailwindcss.com", "the licence comment of the stylesheet's Tailwind part"),
    ("twitter.com", "link targets of Markdown @mentions and #hashtags"),
    ("www.facebook.com", "link targets of Markdown @mentions and #hashtags"),
    ("instagram.com", "link targets of Markdown @mentions and #hashtags"),
    ("www.tiktok.com", "link targets of Markdown @mentions and #hashtags"),
    ("soundcloud.com", "link targets of Markdown @mentions and #hashtags"),
    // Swagger UI's default; our start-up script turns it off (checked below).
    ("validator.swagger.io", "the online validator, disabled by `validatorUrl: null`"),
];

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or_else(|| panic!("no {name} header"))
    }
}

async fn get_from(app: &Router, uri: &str) -> Reply {
    let resp = app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    Reply { status: parts.status, headers: parts.headers, body: String::from_utf8(bytes.to_vec()).expect("UTF-8 body") }
}

/// A pool that is never connected: these routes do not touch the database.
fn pool() -> PgPool {
    PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap()
}

fn api(routes: OpenApiRouter<PgPool>) -> Router {
    api_router("test", 1024, pool(), routes, pool())
}

#[tokio::test]
async fn the_document_names_the_service_its_licence_and_a_relative_server() {
    let app = api(api_routes("Sells lamps."));
    let doc: Value = serde_json::from_str(&get_from(&app, "/openapi.json").await.body).unwrap();
    let info = &doc["info"];
    assert_eq!(info["title"], "Conveyor test API");
    assert_eq!(info["description"], "Sells lamps.");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["license"], json!({"name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0"}));
    assert!(info.get("contact").is_none(), "{info}");
    assert_eq!(doc["servers"], json!([{"url": "/"}]), "relative, so that Try it out calls the host that serves the page");

    // Routes started without a description get none, not utoipa-axum's own.
    let doc: Value = serde_json::from_str(&get_from(&api(OpenApiRouter::new()), "/openapi.json").await.body).unwrap();
    assert!(doc["info"].get("description").is_none(), "{}", doc["info"]);
    assert!(doc["info"].get("contact").is_none(), "{}", doc["info"]);
}

#[tokio::test]
async fn the_docs_page_loads_only_what_its_own_server_serves() {
    let app = api(api_routes("Sells lamps."));
    let page = get_from(&app, "/docs").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert!(page.body.contains("<title>Conveyor test API</title>"), "{}", page.body);

    // The policy lets the browser run and fetch nothing but this origin's files.
    let csp = directives(page.header("content-security-policy"));
    for (directive, sources) in [
        ("default-src", "'none'"),
        ("script-src", "'self'"),
        ("style-src", "'self'"),
        ("connect-src", "'self'"),
        ("img-src", "'self' data:"),
        ("frame-ancestors", "'none'"),
        ("base-uri", "'none'"),
    ] {
        assert_eq!(csp.iter().find(|(d, _)| d == directive).map(|(_, s)| s.as_str()), Some(sources), "{directive} in {csp:?}");
    }

    // The page: no inline script or style, and every file it names is this server's.
    let mut referenced = Vec::new();
    for (tag, attrs, inner) in elements(&page.body) {
        assert_ne!(tag, "style", "inline styles would need 'unsafe-inline'");
        assert!(!attrs.iter().any(|(a, _)| a == "style" || a.starts_with("on")), "inline style or handler on <{tag}>: {attrs:?}");
        if tag == "script" {
            assert!(inner.trim().is_empty(), "inline script: {inner}");
        }
        for (attr, url) in attrs.iter().filter(|(a, _)| a == "src" || a == "href") {
            if url == "data:," {
                continue; // the empty favicon, so that the browser asks for none
            }
            assert!(url.starts_with('/') && !url.starts_with("//"), "<{tag} {attr}={url:?}> is not a path on this server");
            referenced.push(url.clone());
        }
    }
    assert_eq!(referenced, ["/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js", "/docs/init.js"]);

    for url in &referenced {
        let file = get_from(&app, url).await;
        assert_eq!(file.status, 200, "{url}");
        let expected = if url.ends_with(".js") { "text/javascript; charset=utf-8" } else { "text/css; charset=utf-8" };
        assert_eq!(file.header("content-type"), expected, "{url}");
        if url.ends_with(".css") {
            assert!(!file.body.contains("@import"), "{url} imports another stylesheet");
            assert!(!file.body.contains("@font-face"), "{url} loads a font");
            for target in css_urls(&file.body) {
                assert!(target.starts_with("data:"), "{url} loads {target}");
            }
        }
        for host in absolute_hosts(&file.body) {
            assert!(NEVER_FETCHED.iter().any(|(h, _)| *h == host), "{url} names https://{host}/: is it fetched? See NEVER_FETCHED");
        }
        assert!(!protocol_relative(&file.body), "{url} has a protocol-relative URL (//host/…)");
    }

    // What the start-up script loads: this origin's document, and nothing from the validator.
    let init = get_from(&app, "/docs/init.js").await.body;
    assert!(init.contains(r#"url: "/openapi.json""#), "{init}");
    assert!(init.contains("validatorUrl: null"), "{init}");
    let doc = get_from(&app, "/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.header("content-type"), "application/json");
}

#[tokio::test]
async fn every_response_of_both_servers_carries_the_security_headers() {
    async fn fails() -> &'static str {
        panic!("a handler that fails")
    }
    let app = api(OpenApiRouter::new().route("/fails", get(fails)));
    let ops = ops_router(pool());
    let json_csp = "default-src 'none'; frame-ancestors 'none'";
    let cases = [
        (&app, "/docs", 200, None),
        (&app, "/docs/swagger-ui-bundle.js", 200, Some(json_csp)),
        (&app, "/openapi.json", 200, Some(json_csp)),
        (&app, "/health/live", 200, Some(json_csp)),
        (&app, "/no/such/route", 404, Some(json_csp)),
        (&app, "/fails", 500, Some(json_csp)),
        (&ops, "/health/live", 200, Some(json_csp)),
        (&ops, "/docs", 404, Some(json_csp)),
    ];
    for (router, uri, status, csp) in cases {
        let reply = get_from(router, uri).await;
        assert_eq!(reply.status.as_u16(), status, "{uri}: {}", reply.body);
        match csp {
            Some(csp) => assert_eq!(reply.header("content-security-policy"), csp, "{uri}"),
            None => assert!(reply.header("content-security-policy").contains("script-src 'self'"), "{uri}"),
        }
        assert_eq!(reply.headers.get_all("content-security-policy").iter().count(), 1, "{uri}: one policy, not two");
        assert_eq!(reply.header("x-content-type-options"), "nosniff", "{uri}");
        assert_eq!(reply.header("referrer-policy"), "no-referrer", "{uri}");
        assert_eq!(reply.header("x-frame-options"), "DENY", "{uri}");
        assert_eq!(reply.header("cross-origin-opener-policy"), "same-origin", "{uri}");
        assert_eq!(reply.header("cross-origin-resource-policy"), "same-origin", "{uri}");
    }
}

/// A policy's directives and their sources, in order.
fn directives(policy: &str) -> Vec<(String, String)> {
    policy
        .split(';')
        .filter_map(|d| {
            let mut words = d.split_whitespace();
            Some((words.next()?.to_owned(), words.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

/// An element: its name, its attributes and, for `<script>`, its text.
type Element = (String, Vec<(String, String)>, String);

/// The elements of a small, well-formed HTML page: name, attributes (lowercase names,
/// quoted values) and, for `<script>`, the text up to `</script>`.
fn elements(html: &str) -> Vec<Element> {
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        let end = rest.find('>').expect("unclosed tag");
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if tag.starts_with('/') || tag.starts_with('!') {
            continue;
        }
        let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
        let name = tag[..name_end].to_ascii_lowercase();
        let mut attrs = Vec::new();
        let mut a = &tag[name_end..];
        loop {
            a = a.trim_start();
            let Some(eq) = a.find('=') else { break };
            let key = a[..eq].trim().to_ascii_lowercase();
            let quoted = &a[eq + 1..];
            let quote = quoted.chars().next().expect("attribute value");
            assert!(quote == '"' || quote == '\'', "unquoted attribute {key} in <{tag}>");
            let close = quoted[1..].find(quote).expect("closing quote");
            attrs.push((key, quoted[1..1 + close].to_owned()));
            a = &quoted[close + 2..];
        }
        let inner = if name == "script" { rest[..rest.find("</script>").expect("</script>")].to_owned() } else { String::new() };
        found.push((name, attrs, inner));
    }
    found
}

/// The targets of a stylesheet's `url(…)`s.
fn css_urls(css: &str) -> Vec<String> {
    css.match_indices("url(").map(|(i, _)| css[i + 4..].trim_start_matches(['"', '\'']).chars().take(40).collect()).collect()
}

/// The host of every `http://` and `https://` URL in `text`; `${` for a host that is computed.
/// A scheme alone (`"https://"`, a prefix being compared or prepended) names no host.
fn absolute_hosts(text: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let mut hosts: Vec<String> = ["http://", "https://"]
        .iter()
        .flat_map(|scheme| lower.match_indices(scheme).map(|(i, s)| &lower[i + s.len()..]))
        .filter_map(|after| {
            let host: String = after.chars().take_while(|c| !c.is_whitespace() && !"/\"'`$)?#:\\<>{},;+".contains(*c)).collect();
            if !host.is_empty() {
                Some(host)
            } else {
                after.starts_with("${").then(|| "${".to_owned())
            }
        })
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// Whether a string literal starts with `//host`.
fn protocol_relative(text: &str) -> bool {
    ["\"//", "'//", "`//"].iter().any(|q| text.match_indices(q).any(|(i, _)| text[i + 3..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '$')))
}
