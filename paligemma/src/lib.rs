//! # zoo-paligemma: PaliGemma 1 and 2
//!
//! SigLIP's ViT (no head) + `multi_modal_projector` + a Gemma 1 or Gemma 2 decoder, composed from
//! the siglip and gemma crates; every checkpoint layout (hub, fresh 5.x saves, `model.`-prefixed,
//! sharded, BF16); the processor's prompt layout; prefix-LM generation with the vision tower run
//! once per image; detection boxes parsed from `<locYYYY>` tokens.
//!
//! - [`config`]: `PaliGemmaConfig` (embeds the SigLIP and Gemma configs);
//! - [`model`]: vision tower + projector + language model (field names = checkpoint keys);
//! - [`load`]: HF folders (hub, 5.x, prefixed, sharded layouts) into modules;
//! - [`processor`]: the prompt layout (image tokens, `<bos>`, `\n`) and the image preprocessing;
//! - [`decoder`]: prefix-LM generation through `zoo_nn::Decoder`, the image encoded once;
//! - [`detect`]: `<locYYYY>` answers as boxes;
//! - [`segment`]: `<seg>` answers as masks (big_vision's VQ-VAE decoder and its npz).
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
pub mod decoder;
pub mod detect;
pub mod load;
pub mod model;
pub mod processor;
pub mod segment;

pub use config::PaliGemmaConfig;
pub use decoder::{ImageTextModel, PaliGemmaDecoder};
pub use detect::{Detection, is_detect_prompt, parse_detections};
pub use load::load_paligemma;
pub use model::PaliGemmaForConditionalGeneration;
pub use processor::PaliGemmaProcessor;
pub use segment::{SegmentMask, SegmentationDecoder, decode_masks, is_segment_prompt, parse_segments};
