//! `vlm-zoo serve`'s command-line options.

use crate::args::{ComputeArgs, ModelSource};

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
    /// The SigLIP text mask.
    #[command(flatten)]
    pub text_mask: crate::args::TextMaskArgs,
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
    /// Seconds a client has to send a request's headers; also how long a kept-alive connection
    /// may stay idle before its next request. Then the connection is closed.
    #[arg(long, default_value_t = 10)]
    pub header_timeout_s: u64,
    /// Seconds a client has to send a request's body (then 408).
    #[arg(long, default_value_t = 30)]
    pub body_timeout_s: u64,
    /// Most connections open at once; one more is answered 503 and closed.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// On SIGTERM / Ctrl-C: seconds to let requests in flight finish before the remaining
    /// connections are closed and the process exits (0).
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout_s: u64,
    /// PaliGemma `segment` prompts: big_vision's vae-oid.npz [default: next to the model, else
    /// the HF cache].
    #[arg(long)]
    pub seg_model: Option<std::path::PathBuf>,
}
