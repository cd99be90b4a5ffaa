//! `axum`'s extractors, with rejections turned into problems that say what was wrong.

use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ApiError;

/// A JSON body (or response). Malformed JSON → 400, wrong types or missing fields → 422,
/// a missing `Content-Type: application/json` → 415, a body over the limit → 413.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let detail = match &r {
            JsonRejection::JsonDataError(e) => format!("the JSON body does not match the expected shape: {}", source_text(e)),
            JsonRejection::JsonSyntaxError(e) => format!("the body is not valid JSON: {}", source_text(e)),
            JsonRejection::MissingJsonContentType(_) => "expected a JSON body with `Content-Type: application/json`".to_owned(),
            _ if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => "the request body is larger than this service accepts".to_owned(),
            _ => r.body_text(),
        };
        ApiError::Status(r.status(), detail)
    }
}

/// Path parameters; a malformed id → 400.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(format!("invalid path parameter: {}", r.body_text().trim_start_matches("Invalid URL: ")))
    }
}

/// A query string; a malformed one → 400.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(format!("invalid query string: {}", r.body_text().trim_start_matches("Failed to deserialize query string: ")))
    }
}

/// The innermost message of a serde error, e.g. "missing field `name` at line 1 column 2".
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}
