//! The middleware around every request: the API key check on `/v1/*` and `/metrics`
//! (`--api-key`, compared in constant time), and the per-route count and latency that
//! [`super::metrics`] reports.

use super::errors::ApiError;
use super::state::AppState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Constant-time comparison (the time does not depend on where the strings differ).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// Refuses a protected path without the key (401), and records every request's route, status
/// and latency (unknown paths count as `other`).
pub(super) async fn guard(
    State(st): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path().to_string();
    let route = match path.as_str() {
        "/"
        | "/health"
        | "/metrics"
        | "/v1/chat/completions"
        | "/v1/generate"
        | "/v1/embeddings"
        | "/v1/zero-shot"
        | "/v1/models" => path.clone(),
        _ => "other".into(),
    };
    let protected = path.starts_with("/v1/") || path == "/metrics";
    if protected && let Some(key) = &st.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same_secret(given.as_bytes(), key.as_bytes()) {
            let r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key (Authorization: Bearer KEY)",
            );
            st.metrics.record(&route, 401, 0.0);
            return r.into_response();
        }
    }
    let started = Instant::now();
    st.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let r = next.run(req).await;
    st.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    st.metrics.record(&route, r.status().as_u16(), started.elapsed().as_secs_f64());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd") && !same_secret(b"abc", b"abcd") && !same_secret(b"", b"a"));
    }
}
