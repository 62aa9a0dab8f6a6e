//! `PaliGemmaConfig`: the SigLIP vision config and the Gemma (1 or 2) text config it embeds,
//! plus the image token.

use serde::Deserialize;
use zoo_gemma::GemmaConfig;
use zoo_nn::{NnError, Result};
use zoo_siglip::SiglipVisionConfig;

/// A resolved PaliGemma config.
#[derive(Debug, Clone, PartialEq)]
pub struct PaliGemmaConfig {
    /// The vision tower (`vision_use_head` is false for PaliGemma).
    pub vision_config: SiglipVisionConfig,
    /// The language model (Gemma 1 for PaliGemma, Gemma 2 for PaliGemma 2).
    pub text_config: GemmaConfig,
    /// Id of `<image>`; may equal `vocab_size` (PaliGemma 2), then embedded as id 0.
    pub image_token_index: u32,
    /// Output width of the projector (= the text width).
    pub projection_dim: usize,
}

#[derive(Deserialize)]
struct Raw {
    vision_config: Option<serde_json::Value>,
    text_config: Option<serde_json::Value>,
    #[serde(alias = "image_token_id")]
    image_token_index: Option<u32>,
    projection_dim: Option<usize>,
}

impl PaliGemmaConfig {
    /// Resolves config.json's value with transformers' defaults (PaliGemma-3B-224 shapes).
    pub fn from_value(value: serde_json::Value) -> Result<Self> {
        let raw: Raw =
            serde_json::from_value(value).map_err(|e| NnError::Config(format!("paligemma config: {e}")))?;
        let mut vision = serde_json::json!({
            "intermediate_size": 4096, "hidden_size": 1152, "patch_size": 14, "image_size": 224,
            "num_hidden_layers": 27, "num_attention_heads": 16, "vision_use_head": false
        });
        merge(&mut vision, raw.vision_config.unwrap_or_default());
        let vision_config: SiglipVisionConfig =
            serde_json::from_value(vision).map_err(|e| NnError::Config(format!("vision_config: {e}")))?;
        let mut text = serde_json::json!({
            "model_type": "gemma", "hidden_size": 2048, "num_hidden_layers": 18, "intermediate_size": 16384,
            "num_attention_heads": 8, "num_key_value_heads": 1, "vocab_size": 257152
        });
        merge(&mut text, raw.text_config.unwrap_or_default());
        let text_config = GemmaConfig::from_value(text)?;
        let config = Self {
            projection_dim: raw.projection_dim.unwrap_or(text_config.hidden_size),
            image_token_index: raw.image_token_index.unwrap_or(256_000),
            vision_config,
            text_config,
        };
        config.validate()?;
        Ok(config)
    }

    /// Image tokens per image.
    pub fn num_image_tokens(&self) -> usize {
        self.vision_config.num_patches()
    }

    /// Checks the parts fit together.
    pub fn validate(&self) -> Result<()> {
        self.vision_config.validate()?;
        self.text_config.validate()?;
        if self.projection_dim != self.text_config.hidden_size {
            return Err(NnError::Config(format!(
                "projection_dim {} differs from the text hidden_size {}",
                self.projection_dim, self.text_config.hidden_size
            )));
        }
        if self.image_token_index as usize > self.text_config.vocab_size {
            return Err(NnError::Config(format!(
                "image_token_index {} lies beyond vocab_size {}",
                self.image_token_index, self.text_config.vocab_size
            )));
        }
        Ok(())
    }
}

/// Overlays `over`'s keys on `base` (one level deep, as sub-config defaults work).
fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    if let (Some(b), serde_json::Value::Object(o)) = (base.as_object_mut(), over) {
        for (k, v) in o {
            b.insert(k, v);
        }
    }
}
