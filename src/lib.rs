//! # vlm-zoo
//!
//! PaliGemma (1 and 2), SigLIP, CLIP and Gemma (1 and 2) in Rust on [Burn](https://burn.dev):
//! pretrained inference from HuggingFace checkpoint folders, contrastive training, and
//! compose-your-own vision-language models from the parts.
//!
//! This umbrella crate re-exports the member crates:
//! - [`nn`]: shared blocks (Norm, attention + KV cache, RoPE, MLPs, patch embedding, HF loading);
//! - [`siglip`]: ViT and SigLIP; [`clip`]: CLIP; [`gemma`]: Gemma 1/2; [`paligemma`]: PaliGemma.
//!
//! Its modules (ARCHITECTURE.md draws them):
//! - [`front_door`]: [`Model`], the entry point below; [`models`]: the one `model_type` registry
//!   ([`Family`]) and the contrastive towers;
//! - [`generate`] / [`zero_shot`]: the models loaded once that the CLI, the server and [`Model`]
//!   call; [`chat`]: a conversation into a prompt through the model's template;
//! - [`training`]: the one training engine, data formats, checkpoints; its tasks [`train`]
//!   (CLIP / SigLIP), [`finetune`] (PaliGemma) and [`demo`]; [`export`]: the one HF exporter;
//! - [`compose`]: your own VLM from the parts; [`draw`]: every picture; [`serve`]: the HTTP
//!   server; [`embed`]: a dataset's embeddings into parquet files, shardable; [`bench`],
//!   [`inspect`], [`quantize`]: the other commands;
//! - [`args`]: the arguments every command shares; [`hub`]: downloads; [`fs`]: atomic writes;
//!   [`synthetic`]: the synthetic datasets of the demo and the tests.
//!
//! ## The front door
//!
//! [`Model::load`] takes a folder or a hub id (downloaded into the HF cache once, as the CLI's
//! `--model` is) and a device + dtype; the folder's `model_type` picks the [`Family`]. SigLIP,
//! SigLIP 2 and CLIP embed and score; Gemma generates; PaliGemma captions, answers, detects and
//! segments. The calls are those the CLI and the server make ([`generate::Generator`],
//! [`zero_shot::Scorer`]), so the answers are the same.
//!
//! ```
//! use vlm_zoo::Model;
//! use vlm_zoo::nn::{Compute, open_image};
//! # fn main() -> vlm_zoo::nn::Result<()> {
//! let compute = Compute::parse("cpu", "f32")?; // or "cuda", "bf16" / "q8" (packed CPU weights)
//! // A folder, or a hub id such as "google/siglip-base-patch16-224".
//! let model = Model::load("tests/fixtures/siglip-a", &compute)?;
//! let image = open_image("tests/fixtures/images/rgb_64x48.png".as_ref())?;
//! let scores = model.zero_shot(&[image.clone()], &["a red square", "a blue circle"])?;
//! println!("{:?}", scores.probs[0]); // one sigmoid probability per text
//! let pali = Model::load("tests/fixtures/paligemma-a", &compute)?; // e.g. google/paligemma2-3b-mix-224
//! println!("{} | {:?}", pali.caption(&image)?, pali.detect(&image, &["square"])?);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub use zoo_clip as clip;
pub use zoo_gemma as gemma;
pub use zoo_nn as nn;
pub use zoo_paligemma as paligemma;
pub use zoo_siglip as siglip;

pub mod args;
pub mod bench;
pub mod chat;
pub mod compose;
pub mod demo;
pub mod draw;
pub mod embed;
pub mod export;
pub mod finetune;
pub mod front_door;
pub mod fs;
pub mod generate;
pub mod hub;
pub mod inspect;
pub mod models;
pub mod quantize;
pub mod serve;
pub mod synthetic;
pub mod train;
pub mod training;
pub mod zero_shot;

pub use front_door::Model;
pub use models::Family;
