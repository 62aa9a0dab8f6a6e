//! Model inputs from raw data: images preprocessed as transformers' image processors do it, and
//! text tokenised as its fast tokenizers (or a SentencePiece model) do it.

pub mod image;
pub mod spm;
pub mod text;
