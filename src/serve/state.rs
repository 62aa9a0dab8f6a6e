//! What the handlers share: the queue to the model thread, its counters, the request metrics,
//! the facts of the loaded model and the limits.

use super::metrics::Metrics;
use super::worker::{Job, WorkerStats};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the handlers share.
pub(super) struct AppState {
    pub(super) tx: mpsc::Sender<Job>,
    pub(super) stats: Arc<WorkerStats>,
    pub(super) metrics: Metrics,
    pub(super) model_id: String,
    pub(super) kind: String,
    pub(super) generates: bool,
    pub(super) needs_image: bool,
    /// Whether the tokenizer has Gemma's turn tokens (a chat format to apply).
    pub(super) chat_template: bool,
    pub(super) max_len: usize,
    pub(super) api_key: Option<String>,
    pub(super) max_pixels: u64,
    pub(super) timeout: Duration,
    /// `--body-timeout-s`.
    pub(super) body_timeout: Duration,
    /// `--max-body-mb`, in bytes.
    pub(super) max_body: usize,
    pub(super) started: Instant,
}
