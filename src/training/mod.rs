//! Training, written once: the [`engine`] owns the loop every trainer shares (lock and resume,
//! atomic checkpoints, progress and throughput, bf16 autocast, gradient accumulation and
//! clipping, the NaN stop, losses.csv / metrics.csv and the figure); a trainer is a [`Task`]
//! that supplies its batches, its loss and its evaluation. The tasks are `vlm-zoo train`
//! (`crate::train`: CLIP / SigLIP), `vlm-zoo finetune` (`crate::finetune`: PaliGemma) and the
//! demo (`crate::demo`: a composed VLM).
//!
//! - [`data`]: every training data format behind one source, decoded in one place;
//! - [`checkpoint`]: checkpoints, the lock on a run's folder, `--resume`;
//! - [`tokenizer`]: BPE tokenizers trained on captions.
//!
//! A new trainer: a type implementing [`Task`], a `clap::Args` struct that flattens
//! [`TrainLoop`]'s options as it needs, and a call to [`Run::open`] + [`Run::train`].

pub mod checkpoint;
pub mod data;
pub mod engine;
pub mod tokenizer;

pub use engine::{EpochEnd, Loaded, Outcome, Run, Task, TrainLoop};

/// Training precision.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 compute with f32 master weights, optimiser state and loss.
    Bf16,
}

/// Warm-up then cosine decay to 10% of the peak.
pub fn learning_rate(step: usize, total: usize, warmup: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    peak * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()))
}
