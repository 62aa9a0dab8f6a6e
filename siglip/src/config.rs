//! SigLIP configs: serde mirrors of transformers' `SiglipVisionConfig`, `SiglipTextConfig` and
//! `SiglipConfig` (missing keys take transformers' defaults, unknown keys are ignored), plus the
//! vlm-zoo `norm` field (default: the checkpoint's own LayerNorm).

use serde::{Deserialize, Serialize};
use zoo_nn::{Activation, NnError, NormKind, PreprocessorConfig, Result};

macro_rules! default_fns {
    ($($name:ident: $ty:ty = $val:expr;)*) => { $(fn $name() -> $ty { $val })* };
}
default_fns! {
    d768: usize = 768; d3072: usize = 3072; d12: usize = 12; d3: usize = 3; d224: usize = 224;
    d16: usize = 16; d64: usize = 64; d32000: usize = 32000; eps6: f64 = 1e-6; yes: bool = true;
    pad1: Option<u32> = Some(1); bos: Option<u32> = Some(49406); eos: Option<u32> = Some(49407);
}

/// The vision tower (ViT) of SigLIP; also PaliGemma's vision tower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiglipVisionConfig {
    /// Width `C`.
    #[serde(default = "d768")]
    pub hidden_size: usize,
    /// MLP width.
    #[serde(default = "d3072")]
    pub intermediate_size: usize,
    /// Encoder layers.
    #[serde(default = "d12")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "d12")]
    pub num_attention_heads: usize,
    /// Input channels.
    #[serde(default = "d3")]
    pub num_channels: usize,
    /// Input side in pixels.
    #[serde(default = "d224")]
    pub image_size: usize,
    /// Patch side in pixels.
    #[serde(default = "d16")]
    pub patch_size: usize,
    /// MLP activation.
    #[serde(default)]
    pub hidden_act: Activation,
    /// Norm epsilon.
    #[serde(default = "eps6")]
    pub layer_norm_eps: f64,
    /// Whether the MAP attention-pooling head exists (PaliGemma: false).
    #[serde(default = "yes")]
    pub vision_use_head: bool,
    /// vlm-zoo: which normalisation the blocks use.
    #[serde(default)]
    pub norm: NormKind,
}

impl Default for SiglipVisionConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl SiglipVisionConfig {
    /// Patches per image side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patch tokens per image.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// transformers' `SiglipImageProcessor` defaults at this tower's image size (square resize,
    /// mean = std = 0.5): for folders without preprocessor_config.json and for models trained
    /// from scratch.
    pub fn default_preprocessor(&self) -> PreprocessorConfig {
        PreprocessorConfig::square(self.image_size as u32)
    }

    /// Checks the arithmetic the model relies on.
    pub fn validate(&self) -> Result<()> {
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(NnError::Config(format!(
                "vision layer_norm_eps {}: expected a finite number > 0",
                self.layer_norm_eps
            )));
        }
        // The stride-`patch_size` convolution floors: so400m's 384 px / 14 px gives 27 x 27 patches.
        if self.patch_size == 0 || self.image_size < self.patch_size {
            return Err(NnError::Config(format!(
                "vision image_size {} must be at least patch_size {} (> 0)",
                self.image_size, self.patch_size
            )));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(NnError::Config(format!(
                "vision hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        let h = self.hidden_size as f64;
        zoo_nn::memory::check_weights(
            "vision_config",
            &[
                (
                    format!("num_hidden_layers {} (hidden_size {h})", self.num_hidden_layers),
                    zoo_nn::memory::encoder_params(
                        self.num_hidden_layers,
                        self.hidden_size,
                        self.intermediate_size,
                    ),
                ),
                (format!("image_size {}", self.image_size), self.num_patches() as f64 * h),
                (
                    format!("patch_size {}", self.patch_size),
                    (self.num_channels * self.patch_size.pow(2)) as f64 * h,
                ),
            ],
        )
    }
}

/// The text tower of SigLIP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiglipTextConfig {
    /// Vocabulary size.
    #[serde(default = "d32000")]
    pub vocab_size: usize,
    /// Width.
    #[serde(default = "d768")]
    pub hidden_size: usize,
    /// MLP width.
    #[serde(default = "d3072")]
    pub intermediate_size: usize,
    /// Encoder layers.
    #[serde(default = "d12")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "d12")]
    pub num_attention_heads: usize,
    /// Context length; texts are padded to it.
    #[serde(default = "d64")]
    pub max_position_embeddings: usize,
    /// MLP activation.
    #[serde(default)]
    pub hidden_act: Activation,
    /// Norm epsilon.
    #[serde(default = "eps6")]
    pub layer_norm_eps: f64,
    /// Pad token.
    #[serde(default = "pad1")]
    pub pad_token_id: Option<u32>,
    /// Begin-of-sequence token.
    #[serde(default = "bos")]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token.
    #[serde(default = "eos")]
    pub eos_token_id: Option<u32>,
    /// Output width of `head` (defaults to `hidden_size`).
    #[serde(default)]
    pub projection_size: Option<usize>,
    /// vlm-zoo: which normalisation the blocks use.
    #[serde(default)]
    pub norm: NormKind,
}

impl Default for SiglipTextConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl SiglipTextConfig {
    /// Width of the text embedding.
    pub fn projection_size(&self) -> usize {
        self.projection_size.unwrap_or(self.hidden_size)
    }

    /// Checks the arithmetic the model relies on.
    pub fn validate(&self) -> Result<()> {
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(NnError::Config(format!(
                "text layer_norm_eps {}: expected a finite number > 0",
                self.layer_norm_eps
            )));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(NnError::Config(format!(
                "text hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        let h = self.hidden_size as f64;
        zoo_nn::memory::check_weights(
            "text_config",
            &[
                (
                    format!("num_hidden_layers {} (hidden_size {h})", self.num_hidden_layers),
                    zoo_nn::memory::encoder_params(
                        self.num_hidden_layers,
                        self.hidden_size,
                        self.intermediate_size,
                    ),
                ),
                (format!("vocab_size {}", self.vocab_size), self.vocab_size as f64 * h),
                (
                    format!("max_position_embeddings {}", self.max_position_embeddings),
                    self.max_position_embeddings as f64 * h,
                ),
            ],
        )
    }
}

/// `SiglipConfig`: both towers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SiglipConfig {
    /// The text tower.
    #[serde(default)]
    pub text_config: SiglipTextConfig,
    /// The vision tower.
    #[serde(default)]
    pub vision_config: SiglipVisionConfig,
}

impl SiglipConfig {
    /// Checks both towers and that their embeddings can be compared.
    pub fn validate(&self) -> Result<()> {
        self.text_config.validate()?;
        self.vision_config.validate()?;
        if self.vision_config.vision_use_head
            && self.text_config.projection_size() != self.vision_config.hidden_size
        {
            return Err(NnError::Config(format!(
                "text projection_size {} differs from vision hidden_size {}: embeddings cannot be compared",
                self.text_config.projection_size(),
                self.vision_config.hidden_size
            )));
        }
        if !self.vision_config.vision_use_head {
            return Err(NnError::Config(
                "a SiglipModel needs vision_use_head = true (its image embedding is the head's output)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// A tiny config for tests and examples.
    pub fn tiny() -> Self {
        serde_json::from_value(serde_json::json!({
            "text_config": {"vocab_size": 256, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                            "num_attention_heads": 2, "max_position_embeddings": 16},
            "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
        }))
        .expect("tiny config")
    }
}
