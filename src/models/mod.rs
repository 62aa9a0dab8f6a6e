//! The model registry: which family a checkpoint folder holds (its `model_type`, read once
//! by [`Family::of`] in `family.rs`) and what each family can do, and the contrastive towers
//! (SigLIP, SigLIP 2 NaFlex or CLIP behind one type, `contrastive.rs`) that zero-shot, bench,
//! quantize and training share. The library's front door, [`crate::Model`], loads through it
//! (`src/front_door.rs`).
//!
//! Every command picks its code path by matching on a [`Family`], so a family added here is a
//! compile error wherever it is not handled yet, and no command can refuse a folder that another
//! accepts for the same capability.

pub mod contrastive;
pub mod family;

pub use contrastive::{ModelConfig, Preset, Towers};
pub use family::{Arch, Family};
