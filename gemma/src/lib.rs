//! # zoo-gemma: Gemma 1 and Gemma 2
//!
//! One config-driven decoder for `model_type` `gemma` and `gemma2` (scaled embeddings, Gemma
//! RMSNorm — or any [`zoo_nn::NormKind`] —, GQA/MQA with explicit `head_dim`, rotate-half RoPE,
//! GeGLU, tied `lm_head`; Gemma 2's `query_pre_attn_scalar`, soft-caps, sliding layers and
//! sandwich norms), and [`GemmaDecoder`], through which `zoo_nn::generate` runs it with an explicit
//! KV cache. [`chat`] renders a conversation in the instruction checkpoints' chat format.
//!
//! - [`config`]: `GemmaConfig` for Gemma 1 and 2 (serde mirror of config.json, transformers' defaults);
//! - [`model`]: the decoder (field names = checkpoint keys);
//! - [`load`]: HF folders into modules;
//! - [`decoder`]: [`GemmaDecoder`], the model behind `zoo_nn::Decoder`;
//! - [`chat`]: the instruction checkpoints' turn format.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod chat;
pub mod config;
pub mod decoder;
pub mod load;
pub mod model;

pub use chat::{ChatMessage, apply_chat_template};
pub use config::{GemmaConfig, LayerType};
pub use decoder::GemmaDecoder;
pub use load::load_gemma;
pub use model::{GemmaDecoderLayer, GemmaForCausalLM, GemmaModel};
