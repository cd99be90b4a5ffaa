//! What an API says about itself: the `info` and `servers` of `/openapi.json`, and the page
//! at `/docs` that renders them. The page is Swagger UI, vendored from npm into
//! `assets/swagger-ui/` (version and licence in its README) and served from the binary, so
//! it loads nothing from another host: it works offline and under its strict
//! Content-Security-Policy, and no third-party script runs on our origin.

use axum::Router;
use axum::http::header;
use axum::routing::get;
use utoipa::openapi::info::{InfoBuilder, LicenseBuilder};
use utoipa::openapi::{OpenApi, OpenApiBuilder, Server};
use utoipa_axum::router::OpenApiRouter;

/// The docs page's policy: scripts, styles and requests from this origin only; images may
/// also be `data:` URLs (the stylesheet's icons). No inline script or style is needed.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                            base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const PAGE: &str = include_str!("../../assets/docs.html");
const INIT: &str = include_str!("../../assets/docs-init.js");
const BUNDLE: &str = include_str!("../../assets/swagger-ui/swagger-ui-bundle.js");
const STYLES: &str = include_str!("../../assets/swagger-ui/swagger-ui.css");

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// Where a service's documented routes start: `description` heads its `/openapi.json` and
/// `/docs`; the rest of `info` is set by the server.
pub fn api_routes<S>(description: &str) -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    let info = InfoBuilder::new().description(Some(description)).build();
    OpenApiRouter::with_openapi(OpenApiBuilder::new().info(info).build())
}

/// Makes `doc` name the service: its title, the description its routes started with (never
/// the one utoipa-axum gives a router made with `OpenApiRouter::new`), the workspace's
/// version and licence, no contact, and one relative server, so that "Try it out" calls
/// whichever host serves the page.
pub(super) fn describe(service: &str, doc: &mut OpenApi) {
    let stock = OpenApiRouter::<()>::new().into_openapi().info.description;
    let description = doc.info.description.take().filter(|d| Some(d) != stock.as_ref());
    let license = env!("CARGO_PKG_LICENSE");
    doc.info = InfoBuilder::new()
        .title(format!("Conveyor {service} API"))
        .version(env!("CARGO_PKG_VERSION"))
        .description(description)
        .license(Some(LicenseBuilder::new().name(license).identifier(Some(license)).build()))
        .build();
    doc.servers = Some(vec![Server::new("/")]);
}

/// `/docs` and the files it loads, all under `/docs/`.
pub(super) fn router(service: &str) -> Router {
    let page = PAGE.replace("{service}", service);
    Router::new()
        .route("/docs", get(move || async move { ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CONTENT_SECURITY_POLICY, PAGE_CSP)], page) }))
        .route("/docs/init.js", get(|| async { ([(header::CONTENT_TYPE, JAVASCRIPT)], INIT) }))
        .route("/docs/swagger-ui-bundle.js", get(|| async { ([(header::CONTENT_TYPE, JAVASCRIPT)], BUNDLE) }))
        .route("/docs/swagger-ui.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLES) }))
}
