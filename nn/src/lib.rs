//! # zoo-nn: the shared blocks of vlm-zoo
//!
//! Every model family in vlm-zoo is composed of these backend-generic Burn modules (tensors are
//! `Tensor<D>` on a runtime `Device`, so one module runs on ndarray, Flex or CUDA):
//!
//! - [`norm`]: one [`Norm`] chosen by a config field — LayerNorm, RMSNorm, Gemma's RMSNorm, BatchNorm;
//! - [`attention`]: q/k/v/o attention with GQA/MQA, explicit head_dim, scale, soft-capping and
//!   [`MaskSpec`] masks (none, causal, padding, prefix-LM, sliding window);
//! - [`kv_cache`]: an explicit preallocated [`KvCache`];
//! - [`rope`]: rotate-half rotary embeddings with explicit positions;
//! - [`mlp`]: `fc1-act-fc2` and gated GeGLU;
//! - [`embed`]: conv patch embedding and learned positions;
//! - [`encoder`]: the pre-norm encoder layer ViT/SigLIP and CLIP share;
//! - [`image`] / [`text`]: preprocessing as transformers' PIL image processors and fast
//!   tokenizers do it;
//! - [`generate`]: model-agnostic text generation (sampling, the [`Decoder`] trait each model
//!   family implements, batched and streamed generation); [`rng`]: the project's one seeded RNG;
//! - [`host`]: reading tensors back to the host and ids into tensors;
//! - [`contrastive`]: the [`ContrastiveModel`] interface SigLIP and CLIP share, and [`TextBatch`];
//! - [`loss`]: CLIP (softmax) and SigLIP (sigmoid, also chunked) contrastive losses;
//! - [`load`]: HuggingFace checkpoint folders (single or sharded safetensors, F32/BF16/F16) into
//!   modules, through burn-store.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod attention;
pub mod contrastive;
pub mod device;
pub mod embed;
pub mod encoder;
pub mod error;
pub mod generate;
pub mod host;
pub mod image;
pub mod kv_cache;
pub mod load;
pub mod loss;
pub mod memory;
pub mod mixed;
pub mod mlp;
pub mod norm;
pub mod ops;
pub mod optim;
pub mod packed;
pub mod rng;
pub mod rope;
pub mod spm;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod text;

pub use attention::{Attention, AttentionConfig, MaskSpec, scaled_dot_product_attention};
pub use contrastive::ContrastiveModel;
pub use device::{Compute, device_with_dtype, parse_device, parse_dtype};
pub use encoder::{Encoder, EncoderConfig, EncoderLayer};
pub use error::{NnError, Result};
pub use generate::{
    Decoder, Generated, Sampling, StopReason, TextStream, generate, generate_each, generate_stream,
};
pub use image::{ImageProcessor, PreprocessorConfig, open_image};
pub use kv_cache::{KvCache, LayerKvCache};
pub use load::{Checkpoint, KeyMap, LoadSpec, model_type, read_json};
pub use mlp::{Activation, GatedMlp, Mlp};
pub use norm::{GemmaRmsNorm, Norm, NormConfig, NormKind};
pub use ops::l2_normalize;
pub use rng::Rng;
pub use rope::{RopeTables, RotaryEmbedding, apply_rotary};
pub use text::{Encoded, Padding, TextBatch, TextTokenizer};

/// The CPU kernels crate, re-exported so downstream crates use the same build.
pub use zoo_kernels as kernels;

/// Burn, re-exported so downstream crates use the same version.
pub use burn;
