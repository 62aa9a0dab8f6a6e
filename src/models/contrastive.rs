//! The contrastive families (SigLIP, SigLIP 2 NaFlex, CLIP) behind one interface: presets,
//! embeddings, loss and the HF-format export.

use burn::module::Module;
use burn::prelude::*;
use serde_json::json;
use std::path::Path;
use zoo_clip::{ClipConfig, ClipModel};
use zoo_nn::{ContrastiveModel, NormKind, PreprocessorConfig, Result, TextBatch};
use zoo_siglip::naflex::{Siglip2Config, Siglip2Model};
use zoo_siglip::{SiglipConfig, SiglipModel};

use super::family::{Arch, Family};

/// Model sizes for training from scratch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// 32 px images, width 64, 2 layers per tower: trains on a CPU in minutes.
    Tiny,
    /// 64 px images, width 192, 6 layers per tower.
    Small,
    /// The B/16 shape at 224 px.
    Base,
}

/// A contrastive model's config.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// SigLIP.
    Siglip(SiglipConfig),
    /// SigLIP 2 NaFlex (loaded, never trained: see [`Family::arch`]).
    Siglip2(Siglip2Config),
    /// CLIP.
    Clip(ClipConfig),
}

impl ModelConfig {
    /// A preset of `arch` for a vocabulary of `vocab` tokens with these special ids (`bos: None`
    /// for SigLIP, whose texts have none; written as `null`, never transformers' default 49406
    /// outside a small vocabulary), with `norm` in every block.
    pub fn preset(
        arch: Arch,
        preset: Preset,
        vocab: usize,
        (pad, eos, bos): (u32, u32, Option<u32>),
        norm: NormKind,
    ) -> Self {
        let (image, patch, width, layers, heads, text_len) = match preset {
            Preset::Tiny => (32, 8, 64, 2, 4, 16),
            Preset::Small => (64, 8, 192, 6, 6, 32),
            Preset::Base => (224, 16, 768, 12, 12, 64),
        };
        let tower = json!({"hidden_size": width, "intermediate_size": width * 4, "num_hidden_layers": layers,
                           "num_attention_heads": heads, "norm": norm});
        let mut vision = tower.clone();
        vision["image_size"] = json!(image);
        vision["patch_size"] = json!(patch);
        let mut text = tower;
        text["vocab_size"] = json!(vocab);
        text["max_position_embeddings"] = json!(text_len);
        text["pad_token_id"] = json!(pad);
        text["eos_token_id"] = json!(eos);
        text["bos_token_id"] = json!(bos);
        match arch {
            Arch::Siglip => {
                vision["vision_use_head"] = json!(true);
                Self::Siglip(
                    serde_json::from_value(json!({"text_config": text, "vision_config": vision}))
                        .expect("preset"),
                )
            }
            Arch::Clip => Self::Clip(
                serde_json::from_value(
                    json!({"text_config": text, "vision_config": vision, "projection_dim": width}),
                )
                .expect("preset"),
            ),
        }
    }

    /// The family.
    pub fn family(&self) -> Family {
        match self {
            Self::Siglip(_) => Family::Siglip,
            Self::Siglip2(_) => Family::Siglip2NaFlex,
            Self::Clip(_) => Family::Clip,
        }
    }

    /// Input side in pixels of a fixed-size (square) batch; for SigLIP 2 NaFlex, the square
    /// whose patch grid fills the position table (`sqrt(num_patches) * patch_size`).
    pub fn image_size(&self) -> usize {
        match self {
            Self::Siglip(c) => c.vision_config.image_size,
            Self::Siglip2(c) => {
                (c.num_patches as f64).sqrt().round() as usize * c.siglip.vision_config.patch_size
            }
            Self::Clip(c) => c.vision_config.image_size,
        }
    }

    /// Text context length.
    pub fn text_len(&self) -> usize {
        match self {
            Self::Siglip(c) => c.text_config.max_position_embeddings,
            Self::Siglip2(c) => c.siglip.text_config.max_position_embeddings,
            Self::Clip(c) => c.text_config.max_position_embeddings,
        }
    }

    /// The image preprocessing of a model trained from scratch (the family's processor defaults).
    pub fn default_preprocessor(&self) -> PreprocessorConfig {
        match self {
            Self::Siglip(c) => c.vision_config.default_preprocessor(),
            Self::Siglip2(c) => c.siglip.vision_config.default_preprocessor(),
            Self::Clip(c) => c.vision_config.default_preprocessor(),
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Siglip(c) => c.text_config.vocab_size,
            Self::Siglip2(c) => c.siglip.text_config.vocab_size,
            Self::Clip(c) => c.text_config.vocab_size,
        }
    }

    /// config.json as transformers writes it (plus vlm-zoo's `norm`, which transformers ignores).
    pub fn to_hf_json(&self) -> serde_json::Value {
        match self {
            Self::Siglip(c) => {
                let mut v = serde_json::to_value(c).expect("serializable");
                v["model_type"] = json!("siglip");
                v["architectures"] = json!(["SiglipModel"]);
                v["text_config"]["model_type"] = json!("siglip_text_model");
                v["vision_config"]["model_type"] = json!("siglip_vision_model");
                v
            }
            Self::Siglip2(c) => {
                let mut v = serde_json::to_value(&c.siglip).expect("serializable");
                v["model_type"] = json!("siglip2");
                v["architectures"] = json!(["Siglip2Model"]);
                v["text_config"]["model_type"] = json!("siglip2_text_model");
                v["vision_config"]["model_type"] = json!("siglip2_vision_model");
                v["vision_config"]["num_patches"] = json!(c.num_patches);
                v
            }
            Self::Clip(c) => {
                let mut v = json!({"text_config": c.text_config, "vision_config": c.vision_config,
                                   "projection_dim": c.projection_dim, "logit_scale_init_value": c.logit_scale_init_value});
                v["model_type"] = json!("clip");
                v["architectures"] = json!(["CLIPModel"]);
                v["text_config"]["model_type"] = json!("clip_text_model");
                v["vision_config"]["model_type"] = json!("clip_vision_model");
                v
            }
        }
    }
}

/// A contrastive model (one lives per run, so the size difference of the variants does not
/// matter).
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Towers {
    /// SigLIP.
    Siglip(SiglipModel),
    /// SigLIP 2 NaFlex: [`ContrastiveModel::encode_image`] reads a fixed-size batch as the full
    /// patch grid of each image; `Siglip2Model::image_features` takes NaFlex patches.
    Siglip2(Siglip2Model),
    /// CLIP.
    Clip(ClipModel),
}

impl Towers {
    /// A randomly initialised model.
    pub fn new(config: &ModelConfig, device: &Device) -> Self {
        match config {
            ModelConfig::Siglip(c) => Self::Siglip(SiglipModel::new(c, device)),
            ModelConfig::Siglip2(c) => Self::Siglip2(Siglip2Model::new(c, device)),
            ModelConfig::Clip(c) => Self::Clip(ClipModel::new(c, device)),
        }
    }

    /// Loads a SigLIP, SigLIP 2 NaFlex or CLIP folder (HF or OpenCLIP) with weights in
    /// `dtype`, returning its config too; another family is a one-line error.
    pub fn load(
        dir: &Path,
        dtype: impl Into<zoo_nn::LoadSpec>,
        device: &Device,
    ) -> Result<(Self, ModelConfig)> {
        match Family::of(dir)? {
            Family::Siglip => {
                let (m, c) = zoo_siglip::load_siglip(dir, dtype, device)?;
                Ok((Self::Siglip(m), ModelConfig::Siglip(c)))
            }
            Family::Siglip2NaFlex => {
                let (m, c) = zoo_siglip::naflex::load_siglip2(dir, dtype, device)?;
                Ok((Self::Siglip2(m), ModelConfig::Siglip2(c)))
            }
            Family::Clip => {
                let (m, c) = zoo_clip::load_clip(dir, dtype, device)?;
                Ok((Self::Clip(m), ModelConfig::Clip(c)))
            }
            other @ (Family::Gemma | Family::Gemma2 | Family::PaliGemma) => {
                Err(other.unsupported(dir, "the contrastive towers", Family::is_contrastive))
            }
        }
    }

    /// The log temperature, `[1]`.
    pub fn logit_scale(&self) -> Tensor<1> {
        match self {
            Self::Siglip(m) => m.logit_scale.val(),
            Self::Siglip2(m) => m.logit_scale.val(),
            Self::Clip(m) => m.logit_scale.val(),
        }
    }

    /// The model behind the one contrastive interface.
    pub fn model(&self) -> &dyn ContrastiveModel {
        match self {
            Self::Siglip(m) => m,
            Self::Siglip2(m) => m,
            Self::Clip(m) => m,
        }
    }

    /// The ids of the loss's own parameters (temperature, and SigLIP's bias): every replica of
    /// a data-parallel step scores the whole batch with them, so one replica's gradient of
    /// them is the whole batch's.
    pub fn loss_param_ids(&self) -> Vec<burn::module::ParamId> {
        match self {
            Self::Siglip(m) => vec![m.logit_scale.id, m.logit_bias.id],
            Self::Siglip2(m) => vec![m.logit_scale.id, m.logit_bias.id],
            Self::Clip(m) => vec![m.logit_scale.id],
        }
    }

    /// Clamps the temperature to `[0, ln 100]`, as CLIP and SigLIP do after each step.
    pub fn clamp_temperature(self) -> Self {
        let clamp =
            |p: burn::module::Param<Tensor<1>>| p.map(|t| t.clamp(0.0, 100f64.ln()).detach().require_grad());
        match self {
            Self::Siglip(mut m) => {
                m.logit_scale = clamp(m.logit_scale);
                Self::Siglip(m)
            }
            Self::Siglip2(mut m) => {
                m.logit_scale = clamp(m.logit_scale);
                Self::Siglip2(m)
            }
            Self::Clip(mut m) => {
                m.logit_scale = clamp(m.logit_scale);
                Self::Clip(m)
            }
        }
    }

    /// `embed` in the step's compute precision: with `cast` (`--precision bf16`: the model's
    /// half-precision view and its dtype) the pixels go in cast and the embeddings come back
    /// f32, for the loss on the f32 model.
    pub fn embed_in(
        &self,
        cast: Option<(&Towers, burn::tensor::DType)>,
        pixels: Tensor<4>,
        text: &TextBatch,
    ) -> (Tensor<2>, Tensor<2>) {
        match cast {
            None => self.embed(pixels, text),
            Some((half, dtype)) => {
                let (i, t) = half.embed(pixels.cast(dtype), text);
                (i.cast(burn::tensor::DType::F32), t.cast(burn::tensor::DType::F32))
            }
        }
    }

    /// L2-normalised image and text embeddings of a SigLIP 2 NaFlex model from NaFlex patches
    /// (each image at its own aspect ratio, padding masked); `None` for the fixed-size families.
    pub fn embed_naflex(
        &self,
        batch: &zoo_siglip::naflex::NaflexBatch,
        text: &TextBatch,
    ) -> Option<(Tensor<2>, Tensor<2>)> {
        match self {
            Self::Siglip2(m) => Some((
                zoo_nn::l2_normalize(m.image_features(batch)),
                zoo_nn::l2_normalize(m.encode_text(text)),
            )),
            Self::Siglip(_) | Self::Clip(_) => None,
        }
    }

    /// Writes `model.safetensors` with transformers' key names and layouts.
    pub fn save_hf(&self, path: &Path) -> Result<()> {
        let renames = [(r"\.self_attn\.o_proj\.", ".self_attn.out_proj.")];
        match self {
            Self::Siglip(m) => zoo_nn::load::save_safetensors(m, path, &renames, &[]),
            Self::Siglip2(m) => zoo_nn::load::save_safetensors(m, path, &renames, &[]),
            Self::Clip(m) => zoo_nn::load::save_safetensors(m, path, &renames, &["^logit_scale$"]),
        }
    }
}

/// Either model is a contrastive model: every call goes to the one inside.
impl ContrastiveModel for Towers {
    fn text_padding(&self) -> zoo_nn::Padding {
        self.model().text_padding()
    }
    fn encode_image(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.model().encode_image(pixels)
    }
    fn encode_text(&self, text: &TextBatch) -> Tensor<2> {
        self.model().encode_text(text)
    }
    fn logits(&self, image_embeds: Tensor<2>, text_embeds: Tensor<2>) -> Tensor<2> {
        self.model().logits(image_embeds, text_embeds)
    }
    fn probs(&self, logits_per_image: Tensor<2>) -> Tensor<2> {
        self.model().probs(logits_per_image)
    }
    fn loss(&self, img: Tensor<2>, txt: Tensor<2>, chunk: Option<usize>) -> Tensor<1> {
        self.model().loss(img, txt, chunk)
    }
}
