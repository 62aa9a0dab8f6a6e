//! PaliGemma's processor: images resized to exactly `image_size` (Pillow-exact bicubic, rescale,
//! mean = std = 0.5 from the checkpoint's image-processor config) and the prompt layout
//! `<image> x num_image_tokens, <bos>, prompt, "\n"` (the tokenizer's own special tokens are not
//! added again); a training suffix is followed by `<eos>`.

use crate::config::PaliGemmaConfig;
use std::path::Path;
use zoo_nn::{ImageProcessor, NnError, PreprocessorConfig, Result, TextTokenizer};

/// Builds model inputs from images and prompts.
#[derive(Debug, Clone)]
pub struct PaliGemmaProcessor {
    /// The tokenizer.
    pub tokenizer: TextTokenizer,
    /// The image preprocessing.
    pub images: ImageProcessor,
    /// `<image>` id.
    pub image_token: u32,
    /// `<bos>` id.
    pub bos: u32,
    /// `<eos>` ids (the first ends a suffix).
    pub eos: Vec<u32>,
    /// Image tokens per image.
    pub num_image_tokens: usize,
    /// Notes for the user (fallbacks taken).
    pub notes: Vec<String>,
}

impl PaliGemmaProcessor {
    /// Reads the tokenizer and the image-processor config of a checkpoint folder
    /// (`preprocessor_config.json`, else `processor_config.json`'s `image_processor`, else the
    /// config's image size with SigLIP's normalisation, with a note).
    pub fn from_dir(dir: &Path, config: &PaliGemmaConfig) -> Result<Self> {
        let tokenizer = TextTokenizer::from_dir(dir)?;
        let n = tokenizer.inner().get_vocab_size(true);
        // The image token may sit at vocab_size (PaliGemma 2), one past the embeddings.
        let limit = config.text_config.vocab_size.max(config.image_token_index as usize + 1);
        if n > limit {
            return Err(NnError::Tokenizer {
                path: tokenizer.path().to_path_buf(),
                reason: format!(
                    "{n} tokens, but the model's vocab_size is {}",
                    config.text_config.vocab_size
                ),
            });
        }
        let mut notes = Vec::new();
        let pre = dir.join("preprocessor_config.json");
        let proc = dir.join("processor_config.json");
        let image_config = if pre.is_file() {
            PreprocessorConfig::from_file(&pre)?
        } else if proc.is_file() {
            let v: serde_json::Value = zoo_nn::read_json(&proc)?;
            serde_json::from_value(v["image_processor"].clone()).map_err(|source| NnError::Json {
                path: proc.clone(),
                key: String::new(),
                source,
            })?
        } else {
            notes.push(format!(
                "{}: no preprocessor_config.json; resizing to image_size {} with mean = std = 0.5",
                dir.display(),
                config.vision_config.image_size
            ));
            PreprocessorConfig::square(config.vision_config.image_size as u32)
        };
        let bos = tokenizer.token_to_id("<bos>").or(config.text_config.bos_token_id).ok_or_else(|| {
            NnError::Tokenizer { path: tokenizer.path().to_path_buf(), reason: "no <bos> token".into() }
        })?;
        Ok(Self {
            images: ImageProcessor::new(image_config),
            image_token: config.image_token_index,
            bos,
            eos: config.text_config.eos_token_id.clone(),
            num_image_tokens: config.num_image_tokens(),
            tokenizer,
            notes,
        })
    }

    fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.inner().encode(text, false).map_err(|e| NnError::Tokenizer {
            path: self.tokenizer.path().to_path_buf(),
            reason: format!("encoding {text:?}: {e}"),
        })?;
        Ok(enc.get_ids().to_vec())
    }

    /// `<image> x N, <bos>, prompt, "\n"` (token type 0: the bidirectional prefix).
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let mut ids = vec![self.image_token; self.num_image_tokens];
        ids.push(self.bos);
        ids.extend(self.encode_plain(&format!("{prompt}\n"))?);
        Ok(ids)
    }

    /// A training target: `suffix, <eos>` (token type 1: causal).
    pub fn suffix_ids(&self, suffix: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode_plain(suffix)?;
        ids.push(*self.eos.first().unwrap_or(&1));
        Ok(ids)
    }
}
