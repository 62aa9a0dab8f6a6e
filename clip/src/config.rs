//! CLIP configs: serde mirrors of transformers' `CLIPTextConfig`, `CLIPVisionConfig` and
//! `CLIPConfig` (transformers' defaults, unknown keys ignored), plus the vlm-zoo `norm` field.

use serde::{Deserialize, Serialize};
use zoo_nn::data::image::{ChannelValues, SizeSpec};
use zoo_nn::{Activation, NnError, NormKind, PreprocessorConfig, Result};

macro_rules! default_fns {
    ($($name:ident: $ty:ty = $val:expr;)*) => { $(fn $name() -> $ty { $val })* };
}
default_fns! {
    d49408: usize = 49408; d512: usize = 512; d2048: usize = 2048; d12: usize = 12; d8: usize = 8;
    d77: usize = 77; eps5: f64 = 1e-5; d768: usize = 768; d3072: usize = 3072; d3: usize = 3;
    d224: usize = 224; d32: usize = 32; quick: Activation = Activation::QuickGelu;
    pad1: Option<u32> = Some(1); bos: Option<u32> = Some(49406); eos: Option<u32> = Some(49407);
    scale_init: f64 = 2.6592;
}

/// The text tower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    /// Vocabulary size.
    #[serde(default = "d49408")]
    pub vocab_size: usize,
    /// Width.
    #[serde(default = "d512")]
    pub hidden_size: usize,
    /// MLP width.
    #[serde(default = "d2048")]
    pub intermediate_size: usize,
    /// Layers.
    #[serde(default = "d12")]
    pub num_hidden_layers: usize,
    /// Heads.
    #[serde(default = "d8")]
    pub num_attention_heads: usize,
    /// Context length.
    #[serde(default = "d77")]
    pub max_position_embeddings: usize,
    /// MLP activation (`quick_gelu` for OpenAI's checkpoints).
    #[serde(default = "quick")]
    pub hidden_act: Activation,
    /// Norm epsilon.
    #[serde(default = "eps5")]
    pub layer_norm_eps: f64,
    /// Pad token.
    #[serde(default = "pad1")]
    pub pad_token_id: Option<u32>,
    /// Begin-of-text token.
    #[serde(default = "bos")]
    pub bos_token_id: Option<u32>,
    /// End-of-text token; the text is pooled at its first occurrence (legacy configs with 2
    /// pool at the largest id instead).
    #[serde(default = "eos")]
    pub eos_token_id: Option<u32>,
    /// vlm-zoo: which normalisation the blocks use.
    #[serde(default)]
    pub norm: NormKind,
}

/// The vision tower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    /// Width.
    #[serde(default = "d768")]
    pub hidden_size: usize,
    /// MLP width.
    #[serde(default = "d3072")]
    pub intermediate_size: usize,
    /// Layers.
    #[serde(default = "d12")]
    pub num_hidden_layers: usize,
    /// Heads.
    #[serde(default = "d12")]
    pub num_attention_heads: usize,
    /// Input channels.
    #[serde(default = "d3")]
    pub num_channels: usize,
    /// Input side in pixels.
    #[serde(default = "d224")]
    pub image_size: usize,
    /// Patch side in pixels.
    #[serde(default = "d32")]
    pub patch_size: usize,
    /// MLP activation.
    #[serde(default = "quick")]
    pub hidden_act: Activation,
    /// Norm epsilon.
    #[serde(default = "eps5")]
    pub layer_norm_eps: f64,
    /// vlm-zoo: which normalisation the blocks use.
    #[serde(default)]
    pub norm: NormKind,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl ClipVisionConfig {
    /// Patch tokens per image (the class token comes on top).
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// transformers' `CLIPImageProcessor` defaults at this tower's image size (shortest edge,
    /// centre crop, CLIP's mean/std): for folders without preprocessor_config.json and for
    /// models trained from scratch.
    pub fn default_preprocessor(&self) -> PreprocessorConfig {
        let s = self.image_size as u32;
        let mut c = PreprocessorConfig::square(s);
        c.size = Some(SizeSpec::ShortestEdge { shortest_edge: s });
        c.do_center_crop = true;
        c.crop_size = Some(SizeSpec::Exact { height: s, width: s });
        c.image_mean = Some(ChannelValues::Each(vec![0.481_454_66, 0.457_827_5, 0.408_210_73]));
        c.image_std = Some(ChannelValues::Each(vec![0.268_629_54, 0.261_302_6, 0.275_777_1]));
        c
    }
}

/// `CLIPConfig`: both towers and the shared projection width.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// Text tower.
    #[serde(default)]
    pub text_config: ClipTextConfig,
    /// Vision tower.
    #[serde(default)]
    pub vision_config: ClipVisionConfig,
    /// Width of both embeddings.
    #[serde(default = "d512")]
    pub projection_dim: usize,
    /// Initial `logit_scale` (ln(1/0.07)).
    #[serde(default = "scale_init")]
    pub logit_scale_init_value: f64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl ClipConfig {
    /// Checks the arithmetic the model relies on.
    pub fn validate(&self) -> Result<()> {
        let (v, t) = (&self.vision_config, &self.text_config);
        let (vh, th) = (v.hidden_size as f64, t.hidden_size as f64);
        zoo_nn::memory::check_weights(
            "CLIP config",
            &[
                (
                    format!("vision num_hidden_layers {} (hidden_size {vh})", v.num_hidden_layers),
                    zoo_nn::memory::encoder_params(v.num_hidden_layers, v.hidden_size, v.intermediate_size),
                ),
                (
                    format!("text num_hidden_layers {} (hidden_size {th})", t.num_hidden_layers),
                    zoo_nn::memory::encoder_params(t.num_hidden_layers, t.hidden_size, t.intermediate_size),
                ),
                (
                    format!("vision image_size {}", v.image_size),
                    (v.image_size / v.patch_size.max(1)).pow(2) as f64 * vh,
                ),
                (format!("text vocab_size {}", t.vocab_size), t.vocab_size as f64 * th),
                (
                    format!("text max_position_embeddings {}", t.max_position_embeddings),
                    t.max_position_embeddings as f64 * th,
                ),
                (format!("projection_dim {}", self.projection_dim), self.projection_dim as f64 * (vh + th)),
            ],
        )?;
        let v = &self.vision_config;
        let t = &self.text_config;
        let bad = |m: String| Err(NnError::Config(m));
        // The stride-`patch_size` convolution floors, as in PyTorch.
        if v.patch_size == 0 || v.image_size < v.patch_size {
            return bad(format!(
                "vision image_size {} must be at least patch_size {} (> 0)",
                v.image_size, v.patch_size
            ));
        }
        for (what, c, h) in
            [("vision", v.hidden_size, v.num_attention_heads), ("text", t.hidden_size, t.num_attention_heads)]
        {
            if h == 0 || !c.is_multiple_of(h) {
                return bad(format!("{what} hidden_size {c} is not a multiple of num_attention_heads {h}"));
            }
        }
        Ok(())
    }
}
