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
//!   what went wrong; nothing a client sends ends the process. Slow and stuck clients are bounded
//!   in time and count (`limits`); SIGTERM / Ctrl-C stop accepting, let in-flight requests
//!   finish up to `--shutdown-timeout-s`, then exit.
//!
//! The files, one job each: `args` (the options), `errors` (the JSON errors), `auth` (the API
//! key and per-route accounting), `metrics` (Prometheus text), `images` (decoding request
//! images), `limits` (the accept loop: header and body timeouts, the connection cap, the
//! shutdown deadline), `state` (what the handlers share), `requests` (what every handler does: parse, check, queue, await or stream), `openai`
//! (chat completions and models), `native` (generate, embeddings, zero-shot, health, the page)
//! and [`worker`] (the model thread and its batching); this file starts the model and routes.

mod args;
mod auth;
mod errors;
mod images;
mod limits;
mod metrics;
mod native;
mod openai;
mod requests;
mod state;
pub mod worker;

pub use args::ServeArgs;
pub use errors::ApiError;

use crate::Model;
use axum::routing::{get, post};
use metrics::Metrics;
use state::AppState;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use worker::{Job, WorkerStats};
use zoo_nn::NnError;

/// Loads the model, binds, and serves until SIGTERM / Ctrl-C; `on_ready(addr)` is called once
/// the socket listens.
pub fn serve(args: &ServeArgs, on_ready: impl FnOnce(std::net::SocketAddr)) -> zoo_nn::Result<()> {
    if args.max_batch == 0 || args.max_queue == 0 || args.timeout_s == 0 {
        return Err(NnError::Config("--max-batch, --max-queue and --timeout-s must be at least 1".into()));
    }
    if args.header_timeout_s == 0 || args.body_timeout_s == 0 || args.max_connections == 0 {
        return Err(NnError::Config(
            "--header-timeout-s, --body-timeout-s and --max-connections must be at least 1".into(),
        ));
    }
    if !(args.max_image_mp.is_finite() && args.max_image_mp > 0.0) {
        return Err(NnError::Config(format!(
            "--max-image-mp {}: expected a positive number",
            args.max_image_mp
        )));
    }
    let dir = args.model.resolve()?;
    let compute = args.compute.compute()?;
    let text_mask = args.text_mask.mask();
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
            // The one registry picks the family (the mask decoder matters to PaliGemma only).
            let loaded = Model::load_dir(&dir, &compute, seg.as_deref()).map(|m| m.with_text_mask(text_mask));
            match loaded {
                Ok(l) => {
                    let facts = match &l {
                        Model::Generator(g) => {
                            (true, g.needs_image(), g.has_token(zoo_gemma::chat::START_OF_TURN), g.max_len())
                        }
                        Model::Scorer(_) => (false, false, false, 0),
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
        body_timeout: Duration::from_secs(args.body_timeout_s),
        max_body: args.max_body_mb << 20,
        started: Instant::now(),
    });
    let limits = limits::Limits {
        header_timeout: Duration::from_secs(args.header_timeout_s),
        max_connections: args.max_connections,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout_s),
    };
    let app = axum::Router::new()
        .route("/", get(native::page))
        .route("/health", get(native::health))
        .route("/metrics", get(native::metrics))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/generate", post(native::generate))
        .route("/v1/embeddings", post(native::embeddings))
        .route("/v1/zero-shot", post(native::zero_shot))
        .fallback(errors::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(args.max_body_mb << 20))
        .layer(axum::middleware::from_fn_with_state(state.clone(), limits::body_deadline))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::guard))
        .with_state(state.clone());
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
        limits::serve(listener, app, limits, state, shutdown_signal()).await;
        Ok::<(), NnError>(())
    })?;
    // The router (and with it the queue's sender) is gone: the model thread finishes and ends.
    let _ = worker.join();
    Ok(())
}

/// Resolves at Ctrl-C or SIGTERM.
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
