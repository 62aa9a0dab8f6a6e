//! # zoo-siglip: ViT and SigLIP
//!
//! The SigLIP vision tower (a ViT with conv patch embedding, learned positions, pre-norm
//! layers, `post_layernorm` and the optional MAP attention-pooling head), the text tower, and
//! `SiglipModel` with sigmoid image-text scores, loaded from HuggingFace checkpoints with the
//! outputs transformers gives. The ViT is usable alone ([`SiglipVisionTransformer`]), as
//! PaliGemma uses it.
//!
//! - [`config`]: `SiglipConfig` and its towers' configs (serde mirrors of config.json, transformers' defaults);
//! - [`model`]: the vision and text towers and `SiglipModel` (field names = checkpoint keys);
//! - [`load`]: HF folders (every key layout the hub has) into modules;
//! - [`naflex`]: SigLIP 2 NaFlex (`model_type` siglip2): patches at each image's aspect ratio.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
pub mod load;
pub mod model;
pub mod naflex;

pub use config::{SiglipConfig, SiglipTextConfig, SiglipVisionConfig};
pub use load::{load_siglip, load_siglip_vision};
pub use model::{SiglipModel, SiglipOutput, SiglipTextTransformer, SiglipVisionTransformer};
