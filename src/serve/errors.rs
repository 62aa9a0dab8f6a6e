//! The server's errors: every failure is a status and a JSON body
//! `{"error": {"message", "type", "code"}}` ([`ApiError`]); a streamed answer carries
//! [`error_json`] in an event instead.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use zoo_nn::NnError;

/// A JSON error: `{"error": {"message", "type", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) message: String,
    /// Seconds for a `Retry-After` header (a full queue).
    pub(super) retry_after: Option<u64>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), retry_after: None }
    }
    pub(super) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<NnError> for ApiError {
    fn from(e: NnError) -> Self {
        // Library errors on a request are about its content (a prompt too long, a bad image).
        Self::bad(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status.as_u16() {
            400 | 404 | 413 | 415 | 422 => "invalid_request_error",
            401 => "authentication_error",
            503 => "overloaded_error",
            504 => "timeout_error",
            _ => "server_error",
        };
        let code = self.status.canonical_reason().unwrap_or("error").to_lowercase().replace(' ', "_");
        let body = serde_json::json!({"error": {"message": self.message, "type": kind, "code": code}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// A handler's result.
pub(super) type ApiResult<T> = std::result::Result<T, ApiError>;

/// The error object of a server-sent event (the status line has gone out already).
pub(super) fn error_json(message: &str) -> String {
    serde_json::json!({"error": {"message": message, "type": "invalid_request_error"}}).to_string()
}

/// Any path the router does not know.
pub(super) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint (see GET / for the page, /health, /v1/*)")
}
