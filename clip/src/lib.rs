//! # zoo-clip: CLIP
//!
//! Both CLIP towers from HuggingFace checkpoints — the vision tower (class token, bias-free
//! patch conv, `pre_layrnorm`, pooled `post_layernorm(class token)`, `visual_projection`) and the
//! causal text tower pooled at the end-of-text token (`text_projection`) — with softmax
//! image-text scores equal to transformers'.
//!
//! - [`config`]: `ClipConfig` and its towers' configs (serde mirrors of config.json, transformers' defaults);
//! - [`model`]: the two towers and `ClipModel` (field names = checkpoint keys);
//! - [`load`]: HF folders (and legacy `pytorch_model.bin`) into modules;
//! - [`open_clip`]: OpenCLIP's key layout and `open_clip_config.json`.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
pub mod load;
pub mod model;
pub mod open_clip;

pub use config::{ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use load::load_clip;
pub use model::{ClipModel, ClipOutput, ClipTextTransformer, ClipVisionTransformer};
