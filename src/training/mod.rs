//! Training, written once: the [`engine`] owns the loop every trainer shares (lock and resume,
//! atomic checkpoints, progress and throughput, bf16 autocast, gradient accumulation and
//! clipping, the NaN stop, losses.csv / metrics.csv and the figure); a trainer is a [`Task`]
//! that supplies its batches, its loss and its evaluation. The tasks are `vlm-zoo train`
//! (`crate::train`: CLIP / SigLIP), `vlm-zoo finetune` (`crate::finetune`: PaliGemma) and the
//! demo (`crate::demo`: a composed VLM).
//!
//! - [`data`]: every training data format behind one source, decoded in one place;
//! - [`checkpoint`]: checkpoints, the lock on a run's folder, `--resume`;
//! - [`tokenizer`]: BPE tokenizers trained on captions;
//! - [`parallel`]: data-parallel steps over several devices (`--devices`).
//!
//! A new trainer: a type implementing [`Task`], a `clap::Args` struct that flattens
//! [`TrainLoop`]'s options as it needs, and a call to [`Run::open`] + [`Run::train`].

pub mod checkpoint;
pub mod data;
pub mod engine;
pub mod parallel;
pub mod tokenizer;

pub use engine::{EpochEnd, Loaded, Outcome, Precision, Run, Task, TrainLoop, backward, learning_rate};
