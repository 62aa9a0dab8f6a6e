//! Tokenisation from a checkpoint's `tokenizer.json` (the `tokenizers` crate, the same library
//! transformers' fast tokenizers run), with padding and truncation as transformers applies them.

use crate::data::spm::SiglipSpm;
use crate::error::{NnError, Result};
use burn::prelude::*;
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// How a batch of texts is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Every row padded (and truncated) to this length (SigLIP: `max_position_embeddings`).
    MaxLength(usize),
    /// Rows padded to the longest row, truncated at this length (CLIP).
    Longest(usize),
}

/// Whether a SigLIP text tower sees the padding mask (`--text-mask`). CLIP always masks (its
/// text tower is causal and pools at the end-of-text token); SigLIP's pools the last position,
/// so whether the padding positions are attended to changes its embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextMask {
    /// What transformers 5's documented call does with the folder's tokenizer
    /// (`model(**processor(text=..., padding="max_length"))`): the mask goes in exactly when the
    /// tokenizer returns an `attention_mask`, which `model_input_names` in tokenizer_config.json
    /// says, or else its class (`SiglipTokenizer`: no, as the google/siglip-* repositories and
    /// big_vision's training; Gemma / Siglip2 and every tokenizer.json-backed class: yes).
    #[default]
    Auto,
    /// Always mask the padding.
    On,
    /// Never: the text tower attends to its padding (big_vision's convention).
    Off,
}

impl TextMask {
    /// `auto`, `on` or `off`.
    pub fn name(self) -> &'static str {
        match self {
            TextMask::Auto => "auto",
            TextMask::On => "on",
            TextMask::Off => "off",
        }
    }
}

impl std::str::FromStr for TextMask {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(TextMask::Auto),
            "on" => Ok(TextMask::On),
            "off" => Ok(TextMask::Off),
            _ => Err(format!("'{s}' is not a text mask (expected auto, on or off)")),
        }
    }
}

/// Whether transformers 5's tokenizer for this tokenizer_config.json returns an
/// `attention_mask` (see [`TextMask::Auto`]).
fn returns_attention_mask(config: &serde_json::Value) -> bool {
    match config.get("model_input_names").and_then(|v| v.as_array()) {
        Some(names) => names.iter().any(|n| n.as_str() == Some("attention_mask")),
        None => config.get("tokenizer_class").and_then(|c| c.as_str()) != Some("SiglipTokenizer"),
    }
}

/// A batch of token ids with its padding mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// `[B][L]` token ids, padded on the right.
    pub ids: Vec<Vec<u32>>,
    /// `[B][L]`, `true` for real tokens.
    pub mask: Vec<Vec<bool>>,
}

/// A tokenised batch of texts: what every contrastive text tower takes.
#[derive(Debug, Clone)]
pub struct TextBatch {
    /// `int[B, L]` on the device.
    pub input_ids: Tensor<2, Int>,
    /// `[B][L]` the same ids on the host (CLIP pools at a position found from them).
    pub ids: Vec<Vec<u32>>,
    /// `[B][L]`, `true` for real tokens (CLIP masks padding; SigLIP attends to every position,
    /// padding included, unless `attention_mask` says the tokenizer hands the mask on).
    pub mask: Vec<Vec<bool>>,
    /// Whether models without a mandatory mask (SigLIP) receive it: the tokenizer's
    /// [`TextMask`] rule.
    pub attention_mask: bool,
}

impl TextBatch {
    /// Moves an encoded batch to `device`.
    pub fn new(encoded: Encoded, device: &Device) -> Self {
        Self {
            input_ids: crate::host::ids_tensor(&encoded.ids, device),
            ids: encoded.ids,
            mask: encoded.mask,
            attention_mask: false,
        }
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A checkpoint's tokenizer.
#[derive(Clone)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    pad_id: Option<u32>,
    canonicalize: bool,
    /// A SentencePiece model read without tokenizer.json (`SiglipTokenizer`).
    pub(crate) spm: Option<SiglipSpm>,
    /// Pad on the left (`padding_side: left`, Siglip2Tokenizer's default).
    pad_left: bool,
    /// The padding mask goes to every model (see [`TextBatch::attention_mask`]).
    attention_mask: bool,
    /// What [`TextMask::Auto`] gives for this tokenizer.
    returns_mask: bool,
    /// Texts cleaned as open_clip's `basic_clean` does (its built-in tokenizer).
    open_clip_clean: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("path", &self.path).field("pad_id", &self.pad_id).finish()
    }
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
fn token_string(v: &serde_json::Value) -> Option<String> {
    v.as_str().map(str::to_string).or_else(|| v.get("content").and_then(|c| c.as_str()).map(str::to_string))
}

impl TextTokenizer {
    /// Loads a checkpoint folder's tokenizer: `tokenizer.json` (and `tokenizer_config.json`
    /// when present), or, for `SiglipTokenizer` repositories that ship none, `spiece.model`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = if config_path.is_file() {
            crate::load::read_json(&config_path)?
        } else {
            serde_json::Value::Null
        };
        let path = dir.join("tokenizer.json");
        if !path.is_file() && dir.join("open_clip_config.json").is_file() {
            return Self::from_open_clip(dir);
        }
        if !path.is_file() {
            return Self::from_sentencepiece(dir, &config);
        }
        let mut tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| NnError::Tokenizer { path: path.clone(), reason: e.to_string() })?;
        let class = config.get("tokenizer_class").and_then(|c| c.as_str()).unwrap_or("");
        // transformers 5's Siglip2Tokenizer: the Gemma tokenizer with SigLIP 2's training-time
        // lower-casing in front of its normaliser, padding on the left.
        let siglip2 = class == "Siglip2Tokenizer";
        if siglip2 {
            let mut norms: Vec<tokenizers::NormalizerWrapper> =
                vec![tokenizers::normalizers::Lowercase.into()];
            norms.extend(tokenizer.get_normalizer().cloned());
            tokenizer.with_normalizer(Some(tokenizers::normalizers::Sequence::new(norms)));
        }
        let pad_left = match config.get("padding_side").and_then(|v| v.as_str()) {
            Some(side) => side == "left",
            None => siglip2,
        };
        let pad_id = config
            .get("pad_token")
            .and_then(token_string)
            .and_then(|t| tokenizer.token_to_id(&t))
            .or_else(|| tokenizer.get_padding().map(|p| p.pad_id));
        // SiglipTokenizer lowercases and strips punctuation before SentencePiece.
        let canonicalize = config.get("tokenizer_class").and_then(|c| c.as_str()) == Some("SiglipTokenizer")
            && config.get("do_lower_case").and_then(|v| v.as_bool()).unwrap_or(true);
        let returns_mask = returns_attention_mask(&config);
        Ok(Self {
            tokenizer,
            path,
            pad_id,
            canonicalize,
            spm: None,
            pad_left,
            attention_mask: returns_mask,
            returns_mask,
            open_clip_clean: false,
        })
    }

    /// An OpenCLIP export without tokenizer.json: open_clip's default tokenizer, built in
    /// ([`crate::data::open_clip_bpe`]), unless its config names another one.
    fn from_open_clip(dir: &Path) -> Result<Self> {
        let path = dir.join("open_clip_config.json");
        let config: serde_json::Value = crate::load::read_json(&path)?;
        let text_cfg = &config["model_cfg"]["text_cfg"];
        let other = |key: &str, why: String| NnError::Tokenizer {
            path: path.clone(),
            reason: format!(
                "model_cfg.text_cfg.{key} {why}: vlm-zoo has open_clip's default tokenizer only (bpe_simple_vocab_16e6); add the repository's tokenizer.json"
            ),
        };
        if let Some(name) =
            text_cfg.get("hf_tokenizer_name").and_then(|v| v.as_str()).filter(|s| !s.is_empty())
        {
            return Err(other("hf_tokenizer_name", format!("names the tokenizer '{name}'")));
        }
        if let Some(kwargs) = text_cfg.get("tokenizer_kwargs").filter(|v| !v.is_null()) {
            let clean = kwargs.get("clean").and_then(|v| v.as_str()).unwrap_or("lower");
            if clean != "lower" || kwargs.get("reduction_mask").is_some_and(|v| !v.is_null()) {
                return Err(other("tokenizer_kwargs", format!("asks for {kwargs}")));
            }
        }
        Ok(Self {
            tokenizer: crate::data::open_clip_bpe::tokenizer()?,
            path,
            // open_clip pads with 0 to the context length.
            pad_id: Some(0),
            canonicalize: false,
            spm: None,
            pad_left: false,
            open_clip_clean: true,
            attention_mask: true,
            returns_mask: true,
        })
    }

    /// A folder without tokenizer.json: its SentencePiece model, for the tokenizer classes whose
    /// behaviour vlm-zoo rebuilds (`SiglipTokenizer`).
    fn from_sentencepiece(dir: &Path, config: &serde_json::Value) -> Result<Self> {
        let model =
            ["spiece.model", "tokenizer.model"].into_iter().map(|f| dir.join(f)).find(|p| p.is_file());
        let Some(model) = model else {
            return Err(NnError::MissingFile {
                dir: dir.to_path_buf(),
                what: "tokenizer".into(),
                expected: "tokenizer.json, or spiece.model with a SiglipTokenizer tokenizer_config.json"
                    .into(),
            });
        };
        let class = config.get("tokenizer_class").and_then(|c| c.as_str()).unwrap_or("(none)");
        if class != "SiglipTokenizer" {
            return Err(NnError::Tokenizer {
                path: dir.join("tokenizer_config.json"),
                reason: format!(
                    "tokenizer_class {class} with {} and no tokenizer.json is not supported (vlm-zoo reads SentencePiece models for SiglipTokenizer; other classes need their tokenizer.json)",
                    model.file_name().map(|f| f.to_string_lossy()).unwrap_or_default()
                ),
            });
        }
        let token = |key: &str, default: &str| {
            config.get(key).and_then(token_string).unwrap_or_else(|| default.to_string())
        };
        let extra: Vec<String> = config
            .get("additional_special_tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(token_string).collect())
            .unwrap_or_default();
        let lower = config.get("do_lower_case").and_then(|v| v.as_bool()).unwrap_or(true);
        let pad = token("pad_token", "</s>");
        let spm = SiglipSpm::new(
            &model,
            &token("eos_token", "</s>"),
            &token("unk_token", "<unk>"),
            &pad,
            &extra,
            lower,
        )?;
        let model_piece = crate::data::spm::SpmModel::read(&model)?;
        Ok(Self {
            tokenizer: spm.sentencepiece().clone(),
            pad_id: model_piece.piece_to_id(&pad),
            path: model,
            canonicalize: false,
            spm: Some(spm),
            pad_left: false,
            attention_mask: returns_attention_mask(config),
            returns_mask: returns_attention_mask(config),
            open_clip_clean: false,
        })
    }

    /// This tokenizer with the padding mask given to SigLIP text towers as `mask` says.
    pub fn with_text_mask(mut self, mask: TextMask) -> Self {
        self.attention_mask = match mask {
            TextMask::Auto => self.returns_mask,
            TextMask::On => true,
            TextMask::Off => false,
        };
        self
    }

    /// Whether SigLIP text towers receive the padding mask from this tokenizer's batches.
    pub fn text_mask(&self) -> bool {
        self.attention_mask
    }

    /// The tokenizer file (tokenizer.json, or the SentencePiece model).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pad token id, if the tokenizer defines one.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Errors when the tokenizer can produce ids the model has no embedding for.
    pub fn check_vocab(&self, vocab_size: usize) -> Result<()> {
        let n = self.tokenizer.get_vocab_size(true);
        if n > vocab_size {
            return Err(NnError::Tokenizer {
                path: self.path.clone(),
                reason: format!("{n} tokens, but the model's vocab_size is {vocab_size}"),
            });
        }
        Ok(())
    }

    fn prepare(&self, text: &str) -> String {
        if self.open_clip_clean {
            crate::data::open_clip_bpe::clean(text)
        } else if self.canonicalize {
            text.to_lowercase().chars().filter(|c| !c.is_ascii_punctuation()).collect()
        } else {
            text.to_string()
        }
    }

    /// Encodes texts with the tokenizer's special tokens, truncated and padded.
    pub fn encode(&self, texts: &[String], padding: Padding) -> Result<Encoded> {
        let max_len = match padding {
            Padding::MaxLength(n) | Padding::Longest(n) => n,
        };
        let mut tok = self.tokenizer.clone();
        tok.with_padding(None);
        tok.with_truncation(Some(TruncationParams {
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(|e| NnError::Tokenizer { path: self.path.clone(), reason: e.to_string() })?;
        let mut ids = Vec::with_capacity(texts.len());
        for text in texts {
            if let Some(spm) = &self.spm {
                let mut row = spm.encode(text)?;
                if row.len() > max_len {
                    // As transformers truncates: the text is cut, `</s>` stays last.
                    let eos = row[row.len() - 1];
                    row.truncate(max_len.saturating_sub(1));
                    row.extend(std::iter::once(eos).take(max_len.min(1)));
                }
                ids.push(row);
                continue;
            }
            let enc = tok.encode(self.prepare(text), true).map_err(|e| NnError::Tokenizer {
                path: self.path.clone(),
                reason: format!("encoding {text:?}: {e}"),
            })?;
            ids.push(enc.get_ids().to_vec());
        }
        let width = match padding {
            Padding::MaxLength(n) => n,
            Padding::Longest(_) => ids.iter().map(Vec::len).max().unwrap_or(0),
        };
        let needs_pad = ids.iter().any(|r| r.len() < width);
        let pad = match (needs_pad, self.pad_id) {
            (false, _) => 0,
            (true, Some(p)) => p,
            (true, None) => {
                return Err(NnError::Tokenizer {
                    path: self.path.clone(),
                    reason: "texts need padding but the tokenizer defines no pad token".into(),
                });
            }
        };
        let left = self.pad_left;
        let mask = ids
            .iter()
            .map(|r| (0..width).map(|i| if left { i >= width - r.len() } else { i < r.len() }).collect())
            .collect();
        let ids = ids
            .into_iter()
            .map(|r| {
                let fill = std::iter::repeat_n(pad, width - r.len());
                if left { fill.chain(r).collect() } else { r.into_iter().chain(fill).collect() }
            })
            .collect();
        Ok(Encoded { ids, mask })
    }

    /// [`encode`](Self::encode), then the ids moved to `device`: the text input of a contrastive
    /// model (`padding`: the model's [`text_padding`](crate::ContrastiveModel::text_padding)).
    pub fn encode_batch(&self, texts: &[String], padding: Padding, device: &Device) -> Result<TextBatch> {
        let mut batch = TextBatch::new(self.encode(texts, padding)?, device);
        batch.attention_mask = self.attention_mask;
        Ok(batch)
    }

    /// Decodes ids to text, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(spm) = &self.spm {
            return Ok(spm.decode(ids));
        }
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| NnError::Tokenizer { path: self.path.clone(), reason: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mask rule: `model_input_names` when given, else the class (SiglipTokenizer: none).
    #[test]
    fn the_text_mask_follows_model_input_names_then_the_class() {
        let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert!(!returns_attention_mask(&json(r#"{"tokenizer_class": "SiglipTokenizer"}"#)));
        assert!(returns_attention_mask(&json(r#"{"tokenizer_class": "GemmaTokenizerFast"}"#)));
        assert!(returns_attention_mask(&json(r#"{"tokenizer_class": "PreTrainedTokenizerFast"}"#)));
        assert!(returns_attention_mask(&serde_json::Value::Null));
        let names = r#"{"tokenizer_class": "Siglip2Tokenizer", "model_input_names": ["input_ids"]}"#;
        assert!(!returns_attention_mask(&json(names)));
        let names =
            r#"{"tokenizer_class": "SiglipTokenizer", "model_input_names": ["input_ids", "attention_mask"]}"#;
        assert!(returns_attention_mask(&json(names)));
        assert_eq!("on".parse::<TextMask>(), Ok(TextMask::On));
        assert!("maybe".parse::<TextMask>().unwrap_err().contains("auto, on or off"));
    }
}
