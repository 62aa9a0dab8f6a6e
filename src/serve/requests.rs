//! What every endpoint does with a request, between its handler and the model thread
//! ([`super::worker`]): parse the JSON body, check the `model` field and the sampling options,
//! queue the job (503 when the queue is full), then await its answer or stream its events as
//! server-sent events, within the request timeout (504).

use super::errors::{ApiError, ApiResult, error_json};
use super::state::AppState;
use super::worker::{Event, Job};
use crate::generate::{GenerationOutput, Request};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::Event as SseEvent;
use std::sync::atomic::Ordering;
use tokio::sync::{mpsc, oneshot};
use zoo_nn::Sampling;

/// Parses a JSON body, insisting on the content type.
pub(super) fn json_body<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> ApiResult<T> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type '{ct}': expected application/json"),
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

/// Puts `job` on the model thread's queue: 503 with Retry-After when it is full.
pub(super) fn enqueue(st: &AppState, job: Job) -> ApiResult<()> {
    match st.tx.try_send(job) {
        Ok(()) => {
            st.stats.queued.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            st.metrics.rejected_full.fetch_add(1, Ordering::Relaxed);
            let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the queue is full; retry shortly");
            e.retry_after = Some(1);
            Err(e)
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"))
        }
    }
}

/// A request's `model` field: absent, `default`, or (the end of) the id this server serves;
/// anything else is 404.
pub(super) fn check_model_field(st: &AppState, model: &Option<String>) -> ApiResult<()> {
    match model {
        Some(m) if m != &st.model_id && m != "default" && !st.model_id.ends_with(m.as_str()) => {
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("model '{m}' is not served here; this server serves '{}'", st.model_id),
            ))
        }
        _ => Ok(()),
    }
}

/// Sampling from a request's fields, checked against the model's context.
pub(super) fn sampling(
    st: &AppState,
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<usize>,
    seed: Option<u64>,
) -> ApiResult<Sampling> {
    // First: a model that does not generate has no context to check max_tokens against.
    if !st.generates {
        return Err(ApiError::bad(format!(
            "this server's model is a {}, which does not generate text",
            st.kind
        )));
    }
    let max = max_tokens.unwrap_or(Sampling::default().max_new_tokens as i64);
    if max < 1 {
        return Err(ApiError::bad(format!("max_tokens {max}: expected at least 1")));
    }
    if max as u64 > st.max_len as u64 {
        return Err(ApiError::bad(format!(
            "max_tokens {max} exceeds the model's context of {} tokens",
            st.max_len
        )));
    }
    let s = Sampling {
        temperature,
        top_p,
        top_k,
        repetition_penalty: None,
        seed: seed.unwrap_or(Sampling::default().seed),
        max_new_tokens: max as usize,
    };
    s.validate().map_err(|e| ApiError::bad(e.to_string()))?;
    Ok(s)
}

/// Queues a generation and returns its event stream.
pub(super) fn start_generation(st: &AppState, req: Request) -> ApiResult<mpsc::UnboundedReceiver<Event>> {
    if !st.generates {
        return Err(ApiError::bad(format!(
            "this server's model is a {}, which does not generate text",
            st.kind
        )));
    }
    if st.needs_image && req.image.is_none() {
        return Err(ApiError::bad("PaliGemma needs an image with the prompt"));
    }
    if req.prompt.is_empty() {
        return Err(ApiError::bad("empty prompt"));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    enqueue(st, Job::Generate(req, tx))?;
    Ok(rx)
}

/// Waits for a generation's whole output, within the request timeout (then 504).
pub(super) async fn finish(
    st: &AppState,
    mut rx: mpsc::UnboundedReceiver<Event>,
) -> ApiResult<GenerationOutput> {
    let wait = async {
        while let Some(ev) = rx.recv().await {
            if let Event::Done(out) = ev {
                return out.map_err(ApiError::from);
            }
        }
        Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the model thread stopped"))
    };
    tokio::time::timeout(st.timeout, wait).await.unwrap_or_else(|_| {
        Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("no answer within {} s", st.timeout.as_secs()),
        ))
    })
}

/// Server-sent events from a generation: `map` turns each event into SSE events; the stream
/// ends after `Done` or at `deadline` (an error event). Dropping it (the client left) drops the
/// receiver, which stops the row in the model thread.
pub(super) fn event_stream(
    mut rx: mpsc::UnboundedReceiver<Event>,
    deadline: tokio::time::Instant,
    map: impl Fn(Event) -> Vec<SseEvent> + Send + 'static,
) -> impl tokio_stream::Stream<Item = std::result::Result<SseEvent, std::convert::Infallible>> {
    let (tx, out) = mpsc::channel::<std::result::Result<SseEvent, std::convert::Infallible>>(16);
    tokio::spawn(async move {
        loop {
            let ev = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(ev)) => ev,
                Ok(None) => return,
                Err(_) => {
                    let _ =
                        tx.send(Ok(SseEvent::default().event("error").data(error_json("timed out")))).await;
                    return;
                }
            };
            let done = matches!(ev, Event::Done(_));
            for e in map(ev) {
                if tx.send(Ok(e)).await.is_err() {
                    return; // the client left: dropping rx stops the row
                }
            }
            if done {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(out)
}

/// The model thread's answer to a queued job, within the request timeout.
pub(super) async fn reply<T>(st: &AppState, rx: oneshot::Receiver<zoo_nn::Result<T>>) -> ApiResult<T> {
    tokio::time::timeout(st.timeout, rx)
        .await
        .map_err(|_| {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, format!("no answer within {} s", st.timeout.as_secs()))
        })?
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the model thread stopped"))?
        .map_err(ApiError::from)
}
