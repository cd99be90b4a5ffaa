//! The security headers on every response of every server (the APIs and the workers' ops
//! servers), errors and panics included. JSON needs no script, style or frame, so the
//! default policy allows nothing; the docs page sends its own, wider one
//! ([`super::docs::PAGE_CSP`]), which is why every header here is set only when the route
//! has not set it.

use axum::http::{HeaderName, HeaderValue, header};
use tower_http::set_header::SetResponseHeaderLayer;

/// The Content-Security-Policy of every response that does not send its own.
pub const DEFAULT_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

type SetHeader = SetResponseHeaderLayer<HeaderValue>;

/// The headers, as one layer for `Router::layer`.
pub(super) fn layer() -> (SetHeader, SetHeader, SetHeader, SetHeader, SetHeader, SetHeader) {
    (
        set(header::CONTENT_SECURITY_POLICY, DEFAULT_CSP),
        set(header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        set(header::REFERRER_POLICY, "no-referrer"),
        set(header::X_FRAME_OPTIONS, "DENY"),
        set(HeaderName::from_static("cross-origin-opener-policy"), "same-origin"),
        // Other sites' pages cannot embed our responses (`<script src>`, `<img>`); CORS
        // requests are not affected.
        set(HeaderName::from_static("cross-origin-resource-policy"), "same-origin"),
    )
}

fn set(name: HeaderName, value: &'static str) -> SetHeader {
    SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
}
