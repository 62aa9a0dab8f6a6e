//! Model inputs from raw data: images preprocessed as transformers' image processors do it, and
//! text tokenised as its fast tokenizers (or a SentencePiece model, or open_clip's built-in BPE)
//! do it.

pub mod image;
pub mod open_clip_bpe;
pub mod spm;
pub mod text;
