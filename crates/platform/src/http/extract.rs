//! `axum`'s extractors, with rejections turned into problems that say what was wrong.

use std::cell::Cell;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::ApiError;
use super::strict::{Strict, describe};

/// A JSON body (or response). Malformed JSON, or a string with a control character other
/// than tab, line feed and carriage return → 400; a body that is not a JSON object, a nested
/// object given as an array, an unknown field at any depth, wrong types or missing fields →
/// 422 (naming the field, e.g. `price.extra`); a missing `Content-Type: application/json` →
/// 415, a body over the limit → 413. The rules at depth are `strict.rs`'s.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // axum checks the content type, the size limit and the syntax; the shape is ours
        // to check, because serde's derived structs would also take an array of their
        // fields in order (`[5]` for `{"quantity": 5}`), which no client means: the top
        // level here, every level below (and unknown fields, and strings) in `Strict`.
        let axum::Json(raw) = axum::Json::<Box<RawValue>>::from_request(req, state).await?;
        if !raw.get().trim_start().starts_with('{') {
            return Err(ApiError::Status(StatusCode::UNPROCESSABLE_ENTITY, "the JSON body must be an object".into()));
        }
        let mut de = serde_json::Deserializer::from_str(raw.get());
        let control = Cell::new(false);
        serde_path_to_error::deserialize(Strict { de: &mut de, control: &control }).map(Json).map_err(|e| {
            let at = e.path().to_string();
            let inner = e.into_inner();
            let detail = if at == "." { inner.to_string() } else { format!("{at}: {inner}") };
            if control.get() {
                ApiError::BadRequest(format!("the JSON body has a string that cannot be stored: {detail}"))
            } else {
                ApiError::Status(StatusCode::UNPROCESSABLE_ENTITY, format!("the JSON body does not match the expected shape: {detail}"))
            }
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

/// Path parameters; a malformed id, or a control character in any parameter → 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // Decoded as the route sees them (`%00` is a NUL); one that does not decode is
        // left to `Path` to report.
        if let Ok(raw) = RawPathParams::from_request_parts(parts, state).await {
            for (name, value) in &raw {
                refuse_control("path parameter", name, value)?;
            }
        }
        let axum::extract::Path(value) = axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(format!("invalid path parameter: {}", r.body_text().trim_start_matches("Invalid URL: ")))
    }
}

/// A query string; a malformed one, or a control character in any name or value → 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // Decoded first (`+`, `%00`), as the handler would see the values.
        let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)?;
        for (name, value) in &pairs.0 {
            refuse_control("query parameter", name, name)?;
            refuse_control("query parameter", name, value)?;
        }
        let axum::extract::Query(value) = axum::extract::Query::<T>::try_from_uri(&parts.uri)?;
        Ok(Query(value))
    }
}

/// A `400` for a control character (any, line breaks included: no path or query value
/// needs one) in `value`, the `what` named `name`.
fn refuse_control(what: &str, name: &str, value: &str) -> Result<(), ApiError> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => {
            let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
            Err(ApiError::BadRequest(format!("{what} `{name}` contains the control character {}; control characters are not allowed here", describe(c))))
        }
        None => Ok(()),
    }
}

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
