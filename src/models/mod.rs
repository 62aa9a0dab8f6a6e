//! The model registry: which family a checkpoint folder holds (its `model_type`), and the
//! contrastive towers (SigLIP or CLIP behind one type) that zero-shot, bench, quantize and
//! training share.

pub mod contrastive;

pub use contrastive::{Arch, ModelConfig, Preset, Towers};
