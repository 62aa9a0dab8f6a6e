//! # zoo-nn: the shared blocks of vlm-zoo
//!
//! Every model family in vlm-zoo is composed of these backend-generic Burn modules (tensors are
//! `Tensor<D>` on a runtime `Device`, so one module runs on ndarray, Flex or CUDA). The CPU
//! kernels they call (SIMD products, fused host operations, memory maps) are the `zoo-kernels`
//! crate, re-exported as [`kernels`]. Modules, by concept:
//!
//! - [`layers`]: the building blocks, field names = checkpoint keys:
//!   - [`layers::attention`]: q/k/v/o attention with GQA/MQA, explicit head_dim, scale and
//!     soft-capping ([`Attention`], [`scaled_dot_product_attention`]);
//!   - [`layers::mask`]: [`MaskSpec`] masks (none, causal, padding, prefix-LM, sliding window);
//!   - [`layers::kv_cache`]: an explicit preallocated [`KvCache`];
//!   - [`layers::rope`]: rotate-half rotary embeddings with explicit positions;
//!   - [`layers::norm`]: one [`Norm`] chosen by a config field (LayerNorm, RMSNorm, Gemma's
//!     RMSNorm, BatchNorm);
//!   - [`layers::mlp`]: `fc1-act-fc2` and gated GeGLU;
//!   - [`layers::embed`]: conv patch embedding and learned positions;
//!   - [`layers::encoder`]: the pre-norm encoder layer ViT/SigLIP and CLIP share;
//! - [`packed`] (re-exported from zoo-kernels): the table of bf16 / int8 Linear weights packed for
//!   the CPU kernels, and the `linear` / `embedding` / `tied_logits` calls that consult it before
//!   Burn's path;
//! - [`data`]: model inputs from raw data:
//!   - [`data::image`]: image preprocessing as transformers' PIL image processors do it;
//!   - [`data::text`]: tokenisation ([`TextTokenizer`], [`TextBatch`]) as its fast tokenizers do it;
//!   - [`data::spm`]: SentencePiece models without a `tokenizer.json` (SigLIP v1);
//! - [`load`]: HuggingFace checkpoint folders (single or sharded safetensors or PyTorch files,
//!   F32/BF16/F16) into modules through burn-store, and HF-layout files out;
//! - [`generate`]: model-agnostic text generation (sampling, the [`Decoder`] trait each model
//!   family implements, batched, continuous and streamed generation);
//! - [`train`]: what training adds to the forward pass:
//!   - [`train::loss`]: CLIP (softmax) and SigLIP (sigmoid, also chunked) contrastive losses and
//!     the prefix-LM suffix loss of fine-tuning;
//!   - [`train::optim`]: AdamW as one fused pass per tensor;
//!   - [`train::mixed`]: mixed precision (autocast to a half-precision view of the model);
//! - [`contrastive`]: the [`ContrastiveModel`] interface SigLIP and CLIP share;
//! - [`device`]: device and dtype selection, and [`Compute`] (which weight format a command uses);
//! - [`host`]: reading tensors back to the host and ids into tensors;
//! - [`rng`]: the project's one seeded RNG;
//! - [`memory`]: the memory budget checked before a model is built;
//! - [`error`]: [`NnError`] and [`Result`];
//! - [`ops`]: small tensor functions shared by the model crates ([`l2_normalize`]);
//! - `testing` (test builds and the `testing` feature): tolerance checks and reference files.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod contrastive;
pub mod data;
pub mod device;
pub mod error;
pub mod generate;
pub mod host;
pub mod layers;
pub mod load;
pub mod memory;
pub mod ops;
pub mod rng;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod train;

pub use contrastive::ContrastiveModel;
pub use data::image::{ImageProcessor, PreprocessorConfig, open_image};
pub use data::text::{Encoded, Padding, TextBatch, TextMask, TextTokenizer};
pub use device::{Compute, device_with_dtype, parse_device, parse_dtype};
pub use error::{NnError, Result};
pub use generate::{
    Decoder, Generated, Sampling, StopReason, TextStream, generate, generate_each, generate_stream,
};
pub use layers::attention::{Attention, AttentionConfig, scaled_dot_product_attention};
pub use layers::encoder::{Encoder, EncoderConfig, EncoderLayer};
pub use layers::kv_cache::{KvCache, LayerKvCache};
pub use layers::mask::MaskSpec;
pub use layers::mlp::{Activation, GatedMlp, Mlp};
pub use layers::norm::{GemmaRmsNorm, Norm, NormConfig, NormKind};
pub use layers::rope::{RopeTables, RotaryEmbedding, apply_rotary};
pub use load::{Checkpoint, KeyMap, LoadSpec, model_type, read_json};
pub use ops::l2_normalize;
pub use rng::Rng;

/// The CPU kernels crate, re-exported so downstream crates use the same build.
pub use zoo_kernels as kernels;
/// The packed-weight table (`--dtype bf16|q8` on the CPU), from the kernels crate, where the
/// layers and the loader reach it.
pub use zoo_kernels::packed;

/// Burn, re-exported so downstream crates use the same version.
pub use burn;
