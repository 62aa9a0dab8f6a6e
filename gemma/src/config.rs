//! Gemma 1 / Gemma 2 config: one struct for both `model_type`s, read from config.json with
//! transformers' defaults for whichever type the file declares (unknown keys ignored).

use serde::{Deserialize, Serialize};
use zoo_nn::{Activation, NnError, NormKind, Result};

/// End-of-sequence ids: one or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// One id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// As a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(i) => vec![*i],
            Self::Many(v) => v.clone(),
        }
    }
}

/// `rope_parameters` (transformers 5.x).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RopeParameters {
    /// Base.
    pub rope_theta: Option<f64>,
}

/// config.json as written, every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
struct Raw {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    attention_bias: Option<bool>,
    pad_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
    bos_token_id: Option<u32>,
    tie_word_embeddings: Option<bool>,
    query_pre_attn_scalar: Option<f64>,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
    final_logit_softcapping: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    norm: Option<NormKind>,
}

/// Which attention a layer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    /// Causal over the whole context.
    FullAttention,
    /// Causal within `sliding_window` positions.
    SlidingAttention,
}

/// A Gemma (1) or Gemma 2 decoder, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GemmaConfig {
    /// `gemma` or `gemma2`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width `C`.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Per-head width (its own key, not `C / heads`).
    pub head_dim: usize,
    /// MLP gate activation.
    pub hidden_activation: Activation,
    /// Context length.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Biases on q/k/v/o.
    pub attention_bias: bool,
    /// Pad id.
    pub pad_token_id: Option<u32>,
    /// End-of-sequence ids.
    pub eos_token_id: Vec<u32>,
    /// Begin-of-sequence id.
    pub bos_token_id: Option<u32>,
    /// `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Gemma 2: attention scale is `query_pre_attn_scalar^-0.5` (Gemma 1: `head_dim^-0.5`).
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 2: window of the sliding layers.
    pub sliding_window: Option<usize>,
    /// Per layer: full or sliding attention.
    pub layer_types: Vec<LayerType>,
    /// Gemma 2: `cap * tanh(logits / cap)` on the output logits.
    pub final_logit_softcapping: Option<f64>,
    /// Gemma 2: soft-cap of the attention logits.
    pub attn_logit_softcapping: Option<f64>,
    /// vlm-zoo: the norm of every block (default Gemma's RMSNorm).
    pub norm: NormKind,
}

impl GemmaConfig {
    /// Whether this is Gemma 2 (sandwich norms, soft-caps, sliding layers).
    pub fn is_gemma2(&self) -> bool {
        self.model_type == "gemma2"
    }

    /// Resolves a config.json value (a Gemma config or PaliGemma's `text_config`).
    pub fn from_value(value: serde_json::Value) -> Result<Self> {
        let raw: Raw =
            serde_json::from_value(value).map_err(|e| NnError::Config(format!("gemma config: {e}")))?;
        let model_type = raw.model_type.clone().unwrap_or_else(|| "gemma".into());
        let g2 = match model_type.as_str() {
            "gemma" => false,
            "gemma2" => true,
            other => {
                return Err(NnError::Config(format!(
                    "model_type '{other}' is not a Gemma decoder (expected gemma or gemma2)"
                )));
            }
        };
        // transformers' defaults per model_type.
        let d = |g1: usize, g2v: usize| if g2 { g2v } else { g1 };
        let num_hidden_layers = raw.num_hidden_layers.unwrap_or(d(28, 26));
        {
            // The memory budget, before anything sized by the config is allocated.
            let h = raw.hidden_size.unwrap_or(d(3072, 2304)) as f64;
            let i = raw.intermediate_size.unwrap_or(d(24576, 9216)) as f64;
            let q = (raw.num_attention_heads.unwrap_or(d(16, 8)) * raw.head_dim.unwrap_or(256)) as f64;
            let kv = (raw.num_key_value_heads.unwrap_or(d(16, 4)) * raw.head_dim.unwrap_or(256)) as f64;
            let vocab = raw.vocab_size.unwrap_or(256_000);
            zoo_nn::memory::check_weights(
                "Gemma config",
                &[
                    (
                        format!(
                            "num_hidden_layers {num_hidden_layers} (hidden_size {h}, intermediate_size {i})"
                        ),
                        num_hidden_layers as f64 * (2.0 * h * q + 2.0 * h * kv + 3.0 * h * i),
                    ),
                    (format!("vocab_size {vocab}"), vocab as f64 * h),
                ],
            )?;
        }
        let act_name = if g2 {
            raw.hidden_activation.clone()
        } else {
            raw.hidden_act.clone().or(raw.hidden_activation.clone())
        }
        .unwrap_or_else(|| "gelu_pytorch_tanh".into());
        // Gemma's legacy `hidden_act: "gelu"` means the tanh approximation.
        let hidden_activation =
            if act_name == "gelu" { Activation::GeluTanh } else { Activation::from_hf(&act_name)? };
        let layer_types = match &raw.layer_types {
            Some(types) => types
                .iter()
                .map(|t| match t.as_str() {
                    "full_attention" => Ok(LayerType::FullAttention),
                    "sliding_attention" => Ok(LayerType::SlidingAttention),
                    other => Err(NnError::Config(format!("layer_types: unknown '{other}'"))),
                })
                .collect::<Result<Vec<_>>>()?,
            None if g2 => (0..num_hidden_layers)
                .map(|i| if i % 2 == 0 { LayerType::SlidingAttention } else { LayerType::FullAttention })
                .collect(),
            None => vec![LayerType::FullAttention; num_hidden_layers],
        };
        let num_attention_heads = raw.num_attention_heads.unwrap_or(d(16, 8));
        let config = Self {
            vocab_size: raw.vocab_size.unwrap_or(256_000),
            hidden_size: raw.hidden_size.unwrap_or(d(3072, 2304)),
            intermediate_size: raw.intermediate_size.unwrap_or(d(24576, 9216)),
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(d(16, 4)),
            head_dim: raw.head_dim.unwrap_or(256),
            hidden_activation,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(8192),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: raw
                .rope_parameters
                .as_ref()
                .and_then(|r| r.rope_theta)
                .or(raw.rope_theta)
                .unwrap_or(10_000.0),
            attention_bias: raw.attention_bias.unwrap_or(false),
            pad_token_id: raw.pad_token_id.or(Some(0)),
            eos_token_id: raw.eos_token_id.map_or(vec![1], |e| e.to_vec()),
            bos_token_id: raw.bos_token_id.or(Some(2)),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(true),
            query_pre_attn_scalar: if g2 { Some(raw.query_pre_attn_scalar.unwrap_or(256.0)) } else { None },
            sliding_window: if g2 { raw.sliding_window.or(Some(4096)) } else { None },
            layer_types,
            final_logit_softcapping: if g2 { raw.final_logit_softcapping.or(Some(30.0)) } else { None },
            attn_logit_softcapping: if g2 { raw.attn_logit_softcapping.or(Some(50.0)) } else { None },
            norm: raw.norm.unwrap_or(NormKind::RmsGemma),
            model_type,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the arithmetic the model relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(NnError::Config(m));
        for (key, v) in [("rope_theta", self.rope_theta), ("rms_norm_eps", self.rms_norm_eps)] {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("{key} {v}: expected a finite number > 0"));
            }
        }
        if self.layer_types.len() != self.num_hidden_layers {
            return bad(format!(
                "layer_types has {} entries for num_hidden_layers {}",
                self.layer_types.len(),
                self.num_hidden_layers
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even for rotary embeddings", self.head_dim));
        }
        if self.num_key_value_heads == 0 || !self.num_attention_heads.is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        Ok(())
    }
}
