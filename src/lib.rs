//! # vlm-zoo
//!
//! PaliGemma (1 and 2), SigLIP, CLIP and Gemma (1 and 2) in Rust on [Burn](https://burn.dev):
//! pretrained inference from HuggingFace checkpoint folders, contrastive training, and
//! compose-your-own vision-language models from the parts.
//!
//! This umbrella crate re-exports the member crates:
//! - [`nn`]: shared blocks (Norm, attention + KV cache, RoPE, MLPs, patch embedding, HF loading);
//! - [`siglip`]: ViT and SigLIP; [`clip`]: CLIP; [`gemma`]: Gemma 1/2; [`paligemma`]: PaliGemma.
#![warn(missing_docs)]

pub use zoo_clip as clip;
pub use zoo_gemma as gemma;
pub use zoo_nn as nn;
pub use zoo_paligemma as paligemma;
pub use zoo_siglip as siglip;

pub mod args;
pub mod bench;
pub mod compose;
pub mod demo;
pub mod draw;
pub mod finetune;
pub mod fs;
pub mod generate;
pub mod hub;
pub mod inspect;
pub mod models;
pub mod quantize;
pub mod serve;
pub mod synthetic;
pub mod train;
pub mod zero_shot;
