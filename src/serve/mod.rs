//! `vlm-zoo serve`: one model behind an HTTP API (axum on tokio).
//!
//! - `POST /v1/chat/completions` (OpenAI-compatible, `stream` as server-sent events),
//!   `POST /v1/generate` (the CLI's `generate --json` object), `POST /v1/embeddings`,
//!   `POST /v1/zero-shot`; `GET /health`, `GET /metrics` (Prometheus), `GET /` (the web page).
//! - The model runs on its own thread ([`worker`]); handlers queue jobs on a bounded queue (a full
//!   queue answers 503 with Retry-After) and requests that arrive within `--batch-window-ms` run
//!   as one batch. Images come in the body (base64 or data URLs; the server never reads a path or
//!   fetches a URL), their pixel count checked from the header before decoding.
//! - Every error is a JSON body `{"error": {"message", "type", "code"}}` with a status that says
//!   what went wrong; nothing a client sends ends the process. SIGTERM / Ctrl-C stop accepting,
//!   let in-flight requests finish, then exit.

pub mod worker;

use crate::args::{ComputeArgs, ModelSource};
use crate::generate::{GenerationOutput, Request};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use worker::{Event, Job, Loaded, WorkerStats};
use zoo_nn::{NnError, Sampling, StopReason};

/// `vlm-zoo serve`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// The model folder or hub id (any model kind the CLI runs).
    #[arg(long)]
    pub model: ModelSource,
    /// Address to bind (127.0.0.1: this machine only; 0.0.0.0 to accept remote clients).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Device and dtype.
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Most requests run as one batch.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// How long an idle model thread waits for more requests to start a batch with, in ms
    /// (later requests join the running batch at its next step).
    #[arg(long, default_value_t = 5)]
    pub batch_window_ms: u64,
    /// Most requests waiting; beyond it requests get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Require `Authorization: Bearer KEY` on /v1/* and /metrics (compared in constant time)
    /// [default: $VLM_ZOO_API_KEY, which keeps the key out of the process list].
    #[arg(long)]
    pub api_key: Option<String>,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 32)]
    pub max_body_mb: usize,
    /// Largest image, in megapixels (checked from the header before decoding).
    #[arg(long, default_value_t = 25.0)]
    pub max_image_mp: f64,
    /// Longest a request may take, in seconds (then 504).
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
    /// PaliGemma `segment` prompts: big_vision's vae-oid.npz [default: next to the model, else
    /// the HF cache].
    #[arg(long)]
    pub seg_model: Option<std::path::PathBuf>,
}

/// What the handlers share.
struct AppState {
    tx: mpsc::Sender<Job>,
    stats: Arc<WorkerStats>,
    metrics: Metrics,
    model_id: String,
    kind: String,
    generates: bool,
    needs_image: bool,
    chat_template: bool,
    max_len: usize,
    api_key: Option<String>,
    max_pixels: u64,
    timeout: Duration,
    started: Instant,
}

/// A JSON error: `{"error": {"message", "type", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), retry_after: None }
    }
    fn bad(message: impl Into<String>) -> Self {
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

type ApiResult<T> = std::result::Result<T, ApiError>;

/// Count, summed seconds and histogram buckets of one route and status.
type Latency = (u64, f64, [u64; 11]);

/// Request counts and latency histograms per endpoint and status, for /metrics.
#[derive(Default)]
struct Metrics {
    by_route: Mutex<BTreeMap<(String, u16), Latency>>,
    in_flight: AtomicUsize,
    rejected_full: AtomicU64,
}

const BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

impl Metrics {
    fn record(&self, route: &str, status: u16, seconds: f64) {
        let mut m = self.by_route.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry((route.to_string(), status)).or_insert((0, 0.0, [0; 11]));
        e.0 += 1;
        e.1 += seconds;
        let i = BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(10);
        e.2[i] += 1;
    }
}

/// Constant-time comparison (the time does not depend on where the strings differ).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

async fn guard(
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

/// Parses a JSON body, insisting on the content type.
fn json_body<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> ApiResult<T> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type '{ct}': expected application/json"),
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

/// An image from a data URL (`data:image/png;base64,...`) or bare base64; never a path or URL.
fn decode_image(s: &str, max_pixels: u64, what: &str) -> ApiResult<image::DynamicImage> {
    let b64 = if let Some(rest) = s.strip_prefix("data:") {
        rest.split_once(";base64,").map(|(_, b)| b).ok_or_else(|| {
            ApiError::bad(format!("{what}: a data URL must be base64 (data:image/...;base64,...)"))
        })?
    } else if s.starts_with("http://") || s.starts_with("https://") || s.starts_with("file:") {
        return Err(ApiError::bad(format!(
            "{what}: this server does not fetch URLs; send the image as a data URL or base64"
        )));
    } else {
        s
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| ApiError::bad(format!("{what}: not valid base64: {e}")))?;
    let reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::bad(format!("{what}: {e}")))?;
    let (w, h) = reader.into_dimensions().map_err(|e| ApiError::bad(format!("{what}: not an image: {e}")))?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what}: {w}x{h} pixels is over this server's limit of {max_pixels} (--max-image-mp)"),
        ));
    }
    zoo_nn::data::image::decode_image(&bytes).map_err(|e| ApiError::bad(format!("{what}: not an image: {e}")))
}

fn enqueue(st: &AppState, job: Job) -> ApiResult<()> {
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

fn check_model_field(st: &AppState, model: &Option<String>) -> ApiResult<()> {
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
fn sampling(
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
fn start_generation(st: &AppState, req: Request) -> ApiResult<mpsc::UnboundedReceiver<Event>> {
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

async fn finish(st: &AppState, mut rx: mpsc::UnboundedReceiver<Event>) -> ApiResult<GenerationOutput> {
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

async fn generate(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
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

fn error_json(message: &str) -> String {
    serde_json::json!({"error": {"message": message, "type": "invalid_request_error"}}).to_string()
}

/// Server-sent events from a generation: `map` turns each event into SSE events; the stream
/// ends after `Done` or at `deadline` (an error event). Dropping it (the client left) drops the
/// receiver, which stops the row in the model thread.
fn event_stream(
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

fn finish_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::Eos => "stop",
        _ => "length",
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn chat(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
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
        if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "developer") {
            return Err(ApiError::bad(format!(
                "messages[{i}].role '{}': expected system, user or assistant",
                m.role
            )));
        }
        turns.push((m.role.clone(), text));
    }
    if st.needs_image && images.len() != 1 {
        return Err(ApiError::bad(format!(
            "PaliGemma answers about one image: send exactly one image_url part (got {})",
            images.len()
        )));
    }
    let prompt = if st.needs_image || !st.chat_template {
        // PaliGemma has no chat format: its prompt is the last user turn ("caption en", ...).
        turns.iter().rev().find(|(r, _)| r == "user").map(|(_, t)| t.clone()).unwrap_or_default()
    } else {
        // Gemma's turns; a system message opens the first user turn.
        let mut p = String::new();
        let mut system = String::new();
        for (role, text) in &turns {
            match role.as_str() {
                "system" | "developer" => system.push_str(&format!("{text}\n\n")),
                "assistant" => p.push_str(&format!("<start_of_turn>model\n{text}<end_of_turn>\n")),
                _ => {
                    p.push_str(&format!(
                        "<start_of_turn>user\n{}{text}<end_of_turn>\n",
                        std::mem::take(&mut system)
                    ));
                }
            }
        }
        p + "<start_of_turn>model\n"
    };
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

const MAX_ITEMS: usize = 256;

fn decode_images(images: &[String], max_pixels: u64) -> ApiResult<Vec<image::DynamicImage>> {
    images.iter().enumerate().map(|(i, s)| decode_image(s, max_pixels, &format!("images[{i}]"))).collect()
}

/// The model thread's answer to a queued job, within the request timeout.
async fn reply<T>(st: &AppState, rx: oneshot::Receiver<zoo_nn::Result<T>>) -> ApiResult<T> {
    tokio::time::timeout(st.timeout, rx)
        .await
        .map_err(|_| {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, format!("no answer within {} s", st.timeout.as_secs()))
        })?
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the model thread stopped"))?
        .map_err(ApiError::from)
}

async fn embeddings(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
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

async fn zero_shot(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
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

async fn health(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok", "model": st.model_id, "model_type": st.kind, "generates": st.generates,
        "needs_image": st.needs_image, "context": st.max_len,
        "queued": st.stats.queued.load(Ordering::Relaxed),
    }))
    .into_response()
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({"object": "list", "data": [
        {"id": st.model_id, "object": "model", "created": 0, "owned_by": "vlm-zoo"}]}))
    .into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let mut s = String::new();
    s.push_str("# HELP vlm_zoo_requests_total Requests by route and status.\n# TYPE vlm_zoo_requests_total counter\n");
    let m = st.metrics.by_route.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for ((route, status), (n, _, _)) in &m {
        s.push_str(&format!("vlm_zoo_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}\n"));
    }
    s.push_str("# HELP vlm_zoo_request_seconds Request latency.\n# TYPE vlm_zoo_request_seconds histogram\n");
    let mut per_route: BTreeMap<&str, Latency> = BTreeMap::new();
    for ((route, _), (n, sum, b)) in &m {
        let e = per_route.entry(route.as_str()).or_insert((0, 0.0, [0; 11]));
        e.0 += n;
        e.1 += sum;
        for i in 0..11 {
            e.2[i] += b[i];
        }
    }
    for (route, (n, sum, b)) in per_route {
        let mut acc = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            acc += b[i];
            s.push_str(&format!("vlm_zoo_request_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {acc}\n"));
        }
        s.push_str(&format!("vlm_zoo_request_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {n}\n"));
        s.push_str(&format!("vlm_zoo_request_seconds_sum{{route=\"{route}\"}} {sum}\n"));
        s.push_str(&format!("vlm_zoo_request_seconds_count{{route=\"{route}\"}} {n}\n"));
    }
    let ws = &st.stats;
    s.push_str(
        "# HELP vlm_zoo_queue_depth Requests waiting for the model.\n# TYPE vlm_zoo_queue_depth gauge\n",
    );
    s.push_str(&format!("vlm_zoo_queue_depth {}\n", ws.queued.load(Ordering::Relaxed)));
    s.push_str("# HELP vlm_zoo_in_flight Requests being answered.\n# TYPE vlm_zoo_in_flight gauge\n");
    s.push_str(&format!("vlm_zoo_in_flight {}\n", st.metrics.in_flight.load(Ordering::Relaxed)));
    s.push_str("# HELP vlm_zoo_rejected_total Requests refused with 503 (queue full).\n# TYPE vlm_zoo_rejected_total counter\n");
    s.push_str(&format!("vlm_zoo_rejected_total {}\n", st.metrics.rejected_full.load(Ordering::Relaxed)));
    s.push_str("# HELP vlm_zoo_batches_total Batches run, by size.\n# TYPE vlm_zoo_batches_total counter\n");
    for (label, c) in ["1", "2-4", "5-8", "9-16", "17+"].iter().zip(&ws.batch_sizes) {
        s.push_str(&format!("vlm_zoo_batches_total{{size=\"{label}\"}} {}\n", c.load(Ordering::Relaxed)));
    }
    s.push_str("# HELP vlm_zoo_joined_total Requests that joined a running batch.\n# TYPE vlm_zoo_joined_total counter\n");
    s.push_str(&format!("vlm_zoo_joined_total {}\n", ws.joined.load(Ordering::Relaxed)));
    let tokens = ws.tokens.load(Ordering::Relaxed);
    let secs = ws.generate_micros.load(Ordering::Relaxed) as f64 / 1e6;
    s.push_str("# HELP vlm_zoo_generated_tokens_total Tokens generated.\n# TYPE vlm_zoo_generated_tokens_total counter\n");
    s.push_str(&format!("vlm_zoo_generated_tokens_total {tokens}\n"));
    s.push_str("# HELP vlm_zoo_tokens_per_second Generated tokens per second of generation time.\n# TYPE vlm_zoo_tokens_per_second gauge\n");
    s.push_str(&format!(
        "vlm_zoo_tokens_per_second {}\n",
        if secs > 0.0 { tokens as f64 / secs } else { 0.0 }
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s).into_response()
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint (see GET / for the page, /health, /v1/*)")
}

/// Loads the model, binds, and serves until SIGTERM / Ctrl-C; `on_ready(addr)` is called once
/// the socket listens.
pub fn serve(args: &ServeArgs, on_ready: impl FnOnce(std::net::SocketAddr)) -> zoo_nn::Result<()> {
    if args.max_batch == 0 || args.max_queue == 0 || args.timeout_s == 0 {
        return Err(NnError::Config("--max-batch, --max-queue and --timeout-s must be at least 1".into()));
    }
    if !(args.max_image_mp.is_finite() && args.max_image_mp > 0.0) {
        return Err(NnError::Config(format!(
            "--max-image-mp {}: expected a positive number",
            args.max_image_mp
        )));
    }
    let dir = args.model.resolve()?;
    let compute = args.compute.compute()?;
    let kind = zoo_nn::model_type(&dir)?;
    let seg = zoo_paligemma::segment::find_seg_model(
        args.seg_model.as_deref(),
        &dir,
        crate::hub::cache_dir().as_deref(),
    );
    // The model is loaded on its own thread (it stays there); its facts come back first.
    let (facts_tx, facts_rx) = std::sync::mpsc::channel();
    let (tx, rx) = mpsc::channel::<Job>(args.max_queue);
    let stats = Arc::new(WorkerStats::default());
    let (worker_stats, max_batch, window) =
        (stats.clone(), args.max_batch, Duration::from_millis(args.batch_window_ms));
    let worker = std::thread::Builder::new()
        .name("vlm-zoo-model".into())
        .spawn(move || {
            let loaded = match kind.as_str() {
                "gemma" | "gemma2" | "paligemma" => crate::generate::Generator::load(
                    &dir,
                    &compute,
                    if kind == "paligemma" { seg.as_deref() } else { None },
                )
                .map(Loaded::Generator),
                _ => crate::zero_shot::Scorer::load(&dir, &compute).map(Loaded::Scorer),
            };
            match loaded {
                Ok(l) => {
                    let facts = match &l {
                        Loaded::Generator(g) => {
                            (true, g.needs_image(), g.has_token("<start_of_turn>"), g.max_len())
                        }
                        Loaded::Scorer(_) => (false, false, false, 0),
                    };
                    let _ = facts_tx.send(Ok((l.kind().to_string(), facts)));
                    worker::run(l, rx, max_batch, window, worker_stats);
                }
                Err(e) => {
                    let _ = facts_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| NnError::Config(format!("cannot start the model thread: {e}")))?;
    let (kind, (generates, needs_image, chat_template, max_len)) =
        facts_rx.recv().map_err(|_| NnError::Config("the model thread stopped while loading".into()))??;
    let state = Arc::new(AppState {
        tx,
        stats,
        metrics: Metrics::default(),
        model_id: args.model.to_string(),
        kind,
        generates,
        needs_image,
        chat_template,
        max_len,
        api_key: args
            .api_key
            .clone()
            .or_else(|| std::env::var("VLM_ZOO_API_KEY").ok())
            .filter(|k| !k.is_empty()),
        max_pixels: (args.max_image_mp * 1e6) as u64,
        timeout: Duration::from_secs(args.timeout_s),
        started: Instant::now(),
    });
    let app = axum::Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/generate", post(generate))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/zero-shot", post(zero_shot))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(args.max_body_mb << 20))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| NnError::Config(format!("cannot start the HTTP runtime: {e}")))?;
    let addr = format!("{}:{}", args.host, args.port);
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| NnError::Config(format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr().map_err(|e| NnError::Config(e.to_string()))?;
        on_ready(local);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|e| NnError::Config(format!("server error: {e}")))
    })?;
    // The router (and with it the queue's sender) is gone: the model thread finishes and ends.
    let _ = worker.join();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
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
