//! `--train-tokenizer`: a byte-level BPE tokenizer trained on the captions with the `tokenizers`
//! crate, saved as tokenizer.json (the file transformers' fast tokenizers read).

use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::utils::Lowercase;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, TokenizerBuilder};
use zoo_nn::{NnError, Result};

use crate::models::Arch;

/// Special tokens of the trained tokenizer: `(pad, eos, [bos])`.
pub fn specials(arch: Arch) -> Vec<&'static str> {
    match arch {
        Arch::Siglip => vec!["<pad>", "</s>", "<unk>"],
        Arch::Clip => vec!["<|endoftext|>", "<|startoftext|>"],
    }
}

/// A byte-level BPE trainer of up to `vocab_size` tokens with `special` first (ids 0, 1, ...).
fn bpe_trainer(vocab_size: usize, special: &[&str]) -> tokenizers::models::bpe::BpeTrainer {
    BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(1)
        .show_progress(false)
        .special_tokens(special.iter().map(|t| AddedToken::from(*t, true)).collect())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
}

/// Trains a BPE tokenizer of up to `vocab_size` tokens on `captions` and writes `tokenizer.json`
/// and `tokenizer_config.json` into `dir`. SigLIP texts end with `</s>` (pad `<pad>`); CLIP texts
/// are wrapped in `<|startoftext|> ... <|endoftext|>` (pad = end of text).
pub fn train_tokenizer(captions: &[String], vocab_size: usize, arch: Arch, dir: &Path) -> Result<()> {
    let err = |e: String| NnError::Tokenizer { path: dir.join("tokenizer.json"), reason: e };
    let mut trainer = bpe_trainer(vocab_size, &specials(arch));
    let post = match arch {
        Arch::Siglip => TemplateProcessing::builder()
            .try_single("$A </s>")
            .and_then(|b| b.special_tokens(vec![("</s>", 1)]).build().map_err(|e| e.to_string()))
            .map_err(|e| err(e.to_string()))?,
        Arch::Clip => TemplateProcessing::builder()
            .try_single("<|startoftext|> $A <|endoftext|>")
            .and_then(|b| {
                b.special_tokens(vec![("<|startoftext|>", 1), ("<|endoftext|>", 0)])
                    .build()
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| err(e.to_string()))?,
    };
    let mut tok = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(Some(Lowercase))
        .with_pre_tokenizer(Some(ByteLevel::default()))
        .with_post_processor(Some(post))
        .with_decoder(Some(ByteLevelDecoder::default()))
        .build()
        .map_err(|e| err(e.to_string()))?;
    tok.train(&mut trainer, captions.iter()).map_err(|e| err(e.to_string()))?;
    let path = dir.join("tokenizer.json");
    tok.save(&path, false).map_err(|e| err(e.to_string()))?;
    let config = match arch {
        // SigLIP trains as big_vision does, attending to its padding: the tokenizer returns no
        // attention_mask (zoo_nn::TextMask's rule reads this).
        Arch::Siglip => serde_json::json!({"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                                           "tokenizer_class": "PreTrainedTokenizerFast",
                                           "model_input_names": ["input_ids"]}),
        Arch::Clip => serde_json::json!({"pad_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                                         "bos_token": "<|startoftext|>", "unk_token": "<|endoftext|>",
                                         "tokenizer_class": "PreTrainedTokenizerFast"}),
    };
    crate::fs::write_atomic(&dir.join("tokenizer_config.json"), config.to_string().as_bytes())
}

/// A decoder-side tokenizer for composed VLMs: byte-level BPE with `<pad>`=0, `<eos>`=1,
/// `<bos>`=2, `<unk>`=3, `<image>`=4 and no post-processor (the processor inserts `<bos>`).
pub fn train_decoder_tokenizer(texts: &[String], vocab_size: usize, dir: &Path) -> Result<()> {
    let err = |e: String| NnError::Tokenizer { path: dir.join("tokenizer.json"), reason: e };
    let mut trainer = bpe_trainer(vocab_size, &["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]);
    let mut tok = TokenizerBuilder::<BPE, Lowercase, ByteLevel, TemplateProcessing, ByteLevelDecoder>::new()
        .with_model(BPE::default())
        .with_normalizer(Some(Lowercase))
        .with_pre_tokenizer(Some(ByteLevel::default()))
        .with_post_processor(None)
        .with_decoder(Some(ByteLevelDecoder::default()))
        .build()
        .map_err(|e| err(e.to_string()))?;
    tok.train(&mut trainer, texts.iter()).map_err(|e| err(e.to_string()))?;
    tok.save(dir.join("tokenizer.json"), false).map_err(|e| err(e.to_string()))?;
    let config = serde_json::json!({"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>",
                                    "tokenizer_class": "PreTrainedTokenizerFast"});
    crate::fs::write_atomic(&dir.join("tokenizer_config.json"), config.to_string().as_bytes())
}
