//! vlm-zoo's own endpoints: `POST /v1/generate` (the CLI's `generate --json` object, or its
//! pieces as server-sent events), `POST /v1/embeddings` (SigLIP / CLIP; also OpenAI's `input`
//! form), `POST /v1/zero-shot`, `GET /health` and `GET /` (the web page, `page.html`).

use super::errors::{ApiError, ApiResult, error_json};
use super::images::{decode_image, decode_images};
use super::requests::{
    check_model_field, enqueue, event_stream, finish, json_body, reply, sampling, start_generation,
};
use super::state::AppState;
use super::worker::{Event, Job};
use crate::generate::Request;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::oneshot;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    prompt: String,
    image: Option<String>,
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<usize>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    model: Option<String>,
}

/// `POST /v1/generate`.
pub(super) async fn generate(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let b: GenerateBody = json_body(&headers, &body)?;
    check_model_field(&st, &b.model)?;
    let image = b.image.as_deref().map(|s| decode_image(s, st.max_pixels, "image")).transpose()?;
    let sampling = sampling(&st, b.max_tokens, b.temperature, b.top_p, b.top_k, b.seed)?;
    let rx = start_generation(&st, Request { prompt: b.prompt, image, sampling })?;
    if !b.stream {
        return Ok(axum::Json(finish(&st, rx).await?).into_response());
    }
    let deadline = tokio::time::Instant::now() + st.timeout;
    let stream = event_stream(rx, deadline, |ev| match ev {
        Event::Piece(p) => vec![SseEvent::default().data(serde_json::json!({"text": p}).to_string())],
        Event::Done(Ok(o)) => {
            vec![SseEvent::default().event("done").data(serde_json::to_string(&o).unwrap_or_default())]
        }
        Event::Done(Err(e)) => vec![SseEvent::default().event("error").data(error_json(&e.to_string()))],
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedBody {
    #[serde(default)]
    images: Vec<String>,
    #[serde(default)]
    texts: Vec<String>,
    /// OpenAI's form: a text or a list of texts.
    input: Option<serde_json::Value>,
    model: Option<String>,
    encoding_format: Option<String>,
}

/// Most images and texts in one embeddings or zero-shot request.
const MAX_ITEMS: usize = 256;

/// `POST /v1/embeddings`: `images` and `texts`, or OpenAI's `input` (texts only).
pub(super) async fn embeddings(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let b: EmbedBody = json_body(&headers, &body)?;
    check_model_field(&st, &b.model)?;
    if b.encoding_format.as_deref().is_some_and(|f| f != "float") {
        return Err(ApiError::bad("encoding_format: only \"float\""));
    }
    let openai = b.input.is_some();
    let texts: Vec<String> = match b.input {
        Some(serde_json::Value::String(s)) => vec![s],
        Some(serde_json::Value::Array(a)) => a
            .into_iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| ApiError::bad("input: texts only")))
            .collect::<ApiResult<_>>()?,
        Some(_) => return Err(ApiError::bad("input: a string or a list of strings")),
        None => b.texts,
    };
    if texts.is_empty() && b.images.is_empty() {
        return Err(ApiError::bad("give images and/or texts (or OpenAI's input)"));
    }
    if texts.len() + b.images.len() > MAX_ITEMS {
        return Err(ApiError::bad(format!("at most {MAX_ITEMS} images and texts per request")));
    }
    let images = decode_images(&b.images, st.max_pixels)?;
    if !st.generates {
        let (tx, rx) = oneshot::channel();
        let n_texts = texts.len();
        enqueue(&st, Job::Embed(images, texts, tx))?;
        let out = reply(&st, rx).await?;
        if openai {
            let data: Vec<serde_json::Value> = out
                .text_embeds
                .iter()
                .enumerate()
                .map(|(i, e)| serde_json::json!({"object": "embedding", "index": i, "embedding": e}))
                .collect();
            return Ok(axum::Json(serde_json::json!({"object": "list", "data": data, "model": st.model_id,
                "usage": {"prompt_tokens": 0, "total_tokens": 0}, "count": n_texts}))
            .into_response());
        }
        return Ok(axum::Json(out).into_response());
    }
    Err(ApiError::bad(format!(
        "this server's model is a {}, which does not embed (SigLIP / CLIP do)",
        st.kind
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZeroShotBody {
    images: Vec<String>,
    texts: Vec<String>,
    model: Option<String>,
}

/// `POST /v1/zero-shot`: every image scored against every text.
pub(super) async fn zero_shot(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let b: ZeroShotBody = json_body(&headers, &body)?;
    check_model_field(&st, &b.model)?;
    if st.generates {
        return Err(ApiError::bad(format!(
            "this server's model is a {}, which does not do zero-shot",
            st.kind
        )));
    }
    if b.images.is_empty() || b.texts.is_empty() || b.images.len() + b.texts.len() > MAX_ITEMS {
        return Err(ApiError::bad(format!("give 1 or more images and texts (at most {MAX_ITEMS} in all)")));
    }
    let images = decode_images(&b.images, st.max_pixels)?;
    let (tx, rx) = oneshot::channel();
    enqueue(&st, Job::ZeroShot(images, b.texts, tx))?;
    let out = reply(&st, rx).await?;
    Ok(axum::Json(out).into_response())
}

/// `GET /health`: the model and the queue.
pub(super) async fn health(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok", "model": st.model_id, "model_type": st.kind, "generates": st.generates,
        "needs_image": st.needs_image, "context": st.max_len,
        "queued": st.stats.queued.load(Ordering::Relaxed),
    }))
    .into_response()
}

/// `GET /`: the web page.
pub(super) async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

/// `GET /metrics`: the request, queue and generation counters in Prometheus' text format.
pub(super) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let text = super::metrics::render(&st.metrics, &st.stats);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
