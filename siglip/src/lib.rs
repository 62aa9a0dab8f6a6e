//! # zoo-siglip: ViT and SigLIP
//!
//! The SigLIP vision tower (a ViT with conv patch embedding, learned positions, pre-norm
//! layers, `post_layernorm` and the optional MAP attention-pooling head), the text tower, and
//! `SiglipModel` with sigmoid image-text scores, loaded from HuggingFace checkpoints with the
//! outputs transformers gives. The ViT is usable alone ([`SiglipVisionTransformer`]), as
//! PaliGemma uses it.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
pub mod load;
pub mod model;
pub mod naflex;

pub use config::{SiglipConfig, SiglipTextConfig, SiglipVisionConfig};
pub use load::{load_siglip, load_siglip_vision};
pub use model::{SiglipModel, SiglipOutput, SiglipTextTransformer, SiglipVisionTransformer};
