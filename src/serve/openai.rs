//! The OpenAI-compatible endpoints: `POST /v1/chat/completions` (its request and response
//! schemas, plain and streamed) and `GET /v1/models`. A conversation becomes a prompt through
//! [`crate::chat::conversation_prompt`], as `vlm-zoo generate --chat` does: Gemma's chat format
//! ([`zoo_gemma::chat`]), or PaliGemma's last user turn with its one image.

use super::errors::{ApiError, ApiResult, error_json};
use super::images::decode_image;
use super::requests::{check_model_field, event_stream, finish, json_body, sampling, start_generation};
use super::state::AppState;
use super::worker::Event;
use crate::generate::Request;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;
use zoo_gemma::chat::{ChatError, Role};
use zoo_nn::StopReason;

/// A chat-completions request (fields OpenAI clients send that change nothing here, such as
/// `stream_options`, are accepted and ignored).
#[derive(Deserialize)]
struct ChatBody {
    model: Option<String>,
    messages: Vec<ChatMessage>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    n: Option<u32>,
}

/// One message: its text, or parts of text and images.
#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: ChatContent,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChatContent {
    Text(String),
    Parts(Vec<ChatPart>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ChatPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Deserialize)]
struct ImageUrl {
    url: String,
}

/// OpenAI's `finish_reason`.
fn finish_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::Eos => "stop",
        _ => "length",
    }
}

/// Seconds since the Unix epoch (`created`).
fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `POST /v1/chat/completions`, plain or streamed (`chat.completion.chunk` events, then
/// `[DONE]`).
pub(super) async fn chat(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let b: ChatBody = json_body(&headers, &body)?;
    check_model_field(&st, &b.model)?;
    if b.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad("n: only 1 choice per request"));
    }
    if b.messages.is_empty() {
        return Err(ApiError::bad("messages: at least one message"));
    }
    // The turns' text, and the images of their parts.
    let mut turns = Vec::new();
    let mut images = Vec::new();
    for (i, m) in b.messages.iter().enumerate() {
        let text = match &m.content {
            ChatContent::Text(t) => t.clone(),
            ChatContent::Parts(parts) => {
                let mut t = Vec::new();
                for p in parts {
                    match p {
                        ChatPart::Text { text } => t.push(text.clone()),
                        ChatPart::ImageUrl { image_url } => images.push(decode_image(
                            &image_url.url,
                            st.max_pixels,
                            &format!("messages[{i}] image"),
                        )?),
                    }
                }
                t.join("\n")
            }
        };
        if Role::parse(&m.role).is_none() {
            return Err(ApiError::bad(ChatError::UnknownRole { index: i, role: m.role.clone() }.to_string()));
        }
        turns.push(zoo_gemma::ChatMessage::new(m.role.clone(), text));
    }
    if st.needs_image && images.len() != 1 {
        return Err(ApiError::bad(format!(
            "PaliGemma answers about one image: send exactly one image_url part (got {})",
            images.len()
        )));
    }
    // Gemma's chat format, or PaliGemma's last user turn: as `vlm-zoo generate --chat` does.
    let prompt = crate::chat::conversation_prompt(&turns, st.chat_template && !st.needs_image)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let sampling =
        sampling(&st, b.max_completion_tokens.or(b.max_tokens), b.temperature, b.top_p, None, b.seed)?;
    let rx = start_generation(&st, Request { prompt, image: images.into_iter().next(), sampling })?;
    let id = format!("chatcmpl-{:x}{:x}", now_secs(), st.started.elapsed().as_nanos() & 0xffff_ffff);
    let model = st.model_id.clone();
    if !b.stream {
        let o = finish(&st, rx).await?;
        let body = serde_json::json!({
            "id": id, "object": "chat.completion", "created": now_secs(), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": o.text},
                         "finish_reason": finish_reason(o.stop_reason), "logprobs": null}],
            "usage": {"prompt_tokens": o.prompt_token_ids.len(), "completion_tokens": o.token_ids.len(),
                      "total_tokens": o.prompt_token_ids.len() + o.token_ids.len()},
        });
        return Ok(axum::Json(body).into_response());
    }
    let created = now_secs();
    let chunk = move |delta: serde_json::Value, finish: Option<&str>| {
        serde_json::json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    let first = chunk(serde_json::json!({"role": "assistant", "content": ""}), None);
    let deadline = tokio::time::Instant::now() + st.timeout;
    let stream = event_stream(rx, deadline, move |ev| match ev {
        Event::Piece(p) => vec![SseEvent::default().data(chunk(serde_json::json!({"content": p}), None))],
        Event::Done(Ok(o)) => vec![
            SseEvent::default().data(chunk(serde_json::json!({}), Some(finish_reason(o.stop_reason)))),
            SseEvent::default().data("[DONE]"),
        ],
        Event::Done(Err(e)) => {
            vec![SseEvent::default().data(error_json(&e.to_string())), SseEvent::default().data("[DONE]")]
        }
    });
    use tokio_stream::StreamExt;
    let opening = tokio_stream::once(Ok(SseEvent::default().data(first)));
    Ok(Sse::new(opening.chain(stream)).keep_alive(KeepAlive::default()).into_response())
}

/// `GET /v1/models`: the one model served.
pub(super) async fn models(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({"object": "list", "data": [
        {"id": st.model_id, "object": "model", "created": 0, "owned_by": "vlm-zoo"}]}))
    .into_response()
}
