//! Bounds in time and count on what a client can hold, so slow, stuck or hostile clients cannot
//! keep the server busy or stop it from shutting down:
//!
//! - a request's headers (and, on a kept-alive connection, the next request's) must arrive within
//!   `--header-timeout-s`, else the connection is closed;
//! - its body within `--body-timeout-s`, else 408 ([`body_deadline`]);
//! - at most `--max-connections` connections are open; one more is answered 503 at once and closed;
//! - on SIGTERM / Ctrl-C the server stops accepting, lets requests in flight finish for up to
//!   `--shutdown-timeout-s`, then closes what remains and returns.
//!
//! Each limit counts its triggers in `metrics::LimitCounters`, which `/metrics` reports.

use super::errors::ApiError;
use super::state::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// The limits `vlm-zoo serve` was given.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) header_timeout: Duration,
    pub(super) max_connections: usize,
    pub(super) shutdown_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, within `limits`; see the module doc.
pub(super) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    // Out of descriptors (or a connection reset before it was accepted): wait a
                    // little instead of spinning.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    state.metrics.limits.refused.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(refuse(stream));
                    continue;
                };
                let (svc, mut stop, st) = (TowerToHyperService::new(app.clone()), stop_rx.clone(), state.clone());
                connections.spawn(async move {
                    let _permit = permit;
                    st.metrics.limits.open.fetch_add(1, Ordering::Relaxed);
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
                    let conn = http.serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    let ended = tokio::select! {
                        ended = conn.as_mut() => ended,
                        _ = async { let _ = stop.wait_for(|stopping| *stopping).await; } => {
                            // Finish the request in flight, if any, then close.
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if ended.is_err_and(|e| e.is_timeout()) {
                        st.metrics.limits.header_timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    st.metrics.limits.open.fetch_sub(1, Ordering::Relaxed);
                });
                // Reap finished connections so the set stays as small as the open ones.
                while connections.try_join_next().is_some() {}
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        state.metrics.limits.closed_at_shutdown.fetch_add(connections.len() as u64, Ordering::Relaxed);
        connections.abort_all();
    }
}

/// A connection over the limit: 503 and close, without reading it (bounded in time).
async fn refuse(mut stream: tokio::net::TcpStream) {
    let reply = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: 80\r\n\r\n{\"error\":{\"message\":\"too many open connections (--max-connections)\",\"code\":503}}";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply)).await;
}

/// Reads a request's whole body within `--body-timeout-s` before any handler sees it: a body that
/// does not arrive in time is 408. At most `--max-body-mb` (+1 byte) is read, so a larger body
/// still gets the handlers' 413.
pub(super) async fn body_deadline(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let read = async {
        use http_body_util::BodyExt;
        let mut body = body;
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else { continue };
            bytes.extend_from_slice(&data);
            if bytes.len() > st.max_body {
                break;
            }
        }
        Ok::<_, axum::Error>(bytes)
    };
    match tokio::time::timeout(st.body_timeout, read).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(e)) => ApiError::bad(format!("the request body could not be read: {e}")).into_response(),
        Err(_) => {
            st.metrics.limits.body_timeouts.fetch_add(1, Ordering::Relaxed);
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s (--body-timeout-s)",
                    st.body_timeout.as_secs()
                ),
            )
            .into_response()
        }
    }
}
