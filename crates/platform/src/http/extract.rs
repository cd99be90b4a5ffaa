//! `axum`'s extractors, with rejections turned into problems that say what was wrong.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::ApiError;

/// A JSON body (or response). Malformed JSON → 400, a body that is not a JSON object, wrong
/// types or missing fields → 422 (naming the field), a missing `Content-Type:
/// application/json` → 415, a body over the limit → 413.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // axum checks the content type, the size limit and the syntax; the shape is ours
        // to check, because serde's derived structs would also take an array of their
        // fields in order (`[5]` for `{"quantity": 5}`), which no client means.
        let axum::Json(raw) = axum::Json::<Box<RawValue>>::from_request(req, state).await?;
        if !raw.get().trim_start().starts_with('{') {
            return Err(ApiError::Status(StatusCode::UNPROCESSABLE_ENTITY, "the JSON body must be an object".into()));
        }
        let mut de = serde_json::Deserializer::from_str(raw.get());
        serde_path_to_error::deserialize(&mut de).map(Json).map_err(|e| {
            let at = e.path().to_string();
            let inner = e.into_inner();
            let detail = if at == "." { inner.to_string() } else { format!("{at}: {inner}") };
            ApiError::Status(StatusCode::UNPROCESSABLE_ENTITY, format!("the JSON body does not match the expected shape: {detail}"))
        })
    }
}

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
