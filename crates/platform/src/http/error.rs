use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// The error type of every handler. Client errors carry a `detail` written for the
/// client; server errors are logged in full and answered without internals.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be read (syntax, a malformed id, a bad query string).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no bearer token, or one that is not valid (`invalid`: a token was presented).
    #[error("{detail}")]
    Unauthorized { detail: String, invalid: bool },
    /// 403: a valid token without the right to do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: the thing named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the state (an idempotency key reused with another body).
    #[error("{0}")]
    Conflict(String),
    /// 422: the request is well-formed but breaks a rule (a quantity ≤ 0, an unknown currency).
    #[error("{0}")]
    Unprocessable(String),
    /// Any status with its detail, for rejections that bring their own (413, 415, 405).
    #[error("{1}")]
    Status(StatusCode, String),
    /// 503: the database is unreachable or saturated; the client may retry.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// 500: our fault.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => ApiError::Unavailable(e.to_string()),
            e => ApiError::Internal(e.into()),
        }
    }
}

impl From<conveyor_queue::Error> for ApiError {
    fn from(e: conveyor_queue::Error) -> Self {
        match e {
            conveyor_queue::Error::Database(e) => e.into(),
            e => ApiError::Internal(e.into()),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Status(s, _) => *s,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// RFC 9457 problem details.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What was wrong with this request, for a person to read.
    pub detail: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                "an internal error occurred; it has been logged".to_owned()
            }
            ApiError::Unavailable(e) => {
                tracing::warn!(error = %e, "service unavailable");
                "the service cannot reach its database right now; retry later".to_owned()
            }
            ApiError::Unauthorized { detail, invalid } => {
                // RFC 6750 §3: the challenge, and why a presented token was refused.
                let challenge = if *invalid {
                    format!("Bearer realm=\"conveyor\", error=\"invalid_token\", error_description=\"{}\"", detail.replace(['"', '\\'], "'"))
                } else {
                    "Bearer realm=\"conveyor\"".to_owned()
                };
                let mut resp = problem(status, detail.clone());
                if let Ok(value) = header::HeaderValue::from_str(&challenge) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
                }
                return resp;
            }
            other => other.to_string(),
        };
        problem(status, detail)
    }
}

pub(crate) fn problem(status: StatusCode, detail: String) -> Response {
    let body = Problem { kind: "about:blank".into(), title: status.canonical_reason().unwrap_or("Error").into(), status: status.as_u16(), detail };
    let json = serde_json::to_vec(&body).expect("a problem serialises");
    (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], json).into_response()
}
