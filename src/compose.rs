//! Compose your own vision-language model from the zoo's parts: a vision tower (SigLIP's ViT or
//! CLIP's, any size, any [`NormKind`]), a projector (Linear or a 2-layer MLP) and a Gemma 1/2
//! decoder, wired as PaliGemma is (image tokens + prefix-LM attention). PaliGemma itself is one
//! configuration: SigLIP tower, linear projector, Gemma.
//!
//! Field names follow PaliGemma's checkpoint keys, so a composition of PaliGemma's shape saves
//! as an HF PaliGemma folder.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use zoo_clip::{ClipVisionConfig, ClipVisionTransformer};
use zoo_gemma::{GemmaConfig, GemmaForCausalLM};
use zoo_nn::{Activation, MaskSpec, NnError, Result};
use zoo_siglip::{SiglipVisionConfig, SiglipVisionTransformer};

/// Which vision tower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum VisionConfig {
    /// SigLIP's ViT (all patch tokens, after `post_layernorm`).
    Siglip(SiglipVisionConfig),
    /// CLIP's vision transformer (class + patch tokens of the last layer).
    Clip(ClipVisionConfig),
}

/// Which projector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProjectorKind {
    /// One Linear with bias (PaliGemma's).
    #[default]
    Linear,
    /// Linear -> GELU (tanh) -> Linear.
    Mlp,
}

/// One serde file describes a composition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VlmConfig {
    /// The vision tower.
    pub vision: VisionConfig,
    /// The projector.
    #[serde(default)]
    pub projector: ProjectorKind,
    /// The decoder (`model_type` gemma or gemma2), as config.json spells it.
    pub text: serde_json::Value,
    /// `<image>` id.
    pub image_token_index: u32,
}

impl VlmConfig {
    /// The resolved decoder config.
    pub fn text_config(&self) -> Result<GemmaConfig> {
        GemmaConfig::from_value(self.text.clone())
    }

    /// Vision width and image tokens per image.
    pub fn vision_dims(&self) -> (usize, usize) {
        match &self.vision {
            VisionConfig::Siglip(c) => (c.hidden_size, c.num_patches()),
            VisionConfig::Clip(c) => (c.hidden_size, c.num_patches() + 1),
        }
    }

    /// Input side in pixels.
    pub fn image_size(&self) -> usize {
        match &self.vision {
            VisionConfig::Siglip(c) => c.image_size,
            VisionConfig::Clip(c) => c.image_size,
        }
    }
}

/// The vision tower.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum VisionTower {
    /// SigLIP.
    Siglip(SiglipVisionTransformer),
    /// CLIP.
    Clip(ClipVisionTransformer),
}

/// The projector (`multi_modal_projector`).
#[derive(Module, Debug)]
pub struct Projector {
    /// First (or only) Linear.
    pub linear: Linear,
    /// Second Linear of the MLP form.
    pub linear_2: Option<Linear>,
}

/// A composed vision-language model.
#[derive(Module, Debug)]
pub struct Vlm {
    /// Vision tower.
    pub vision_tower: VisionTower,
    /// Projector to the decoder's width.
    pub multi_modal_projector: Projector,
    /// The decoder.
    pub language_model: GemmaForCausalLM,
    /// `<image>` id.
    pub image_token_index: u32,
    /// Decoder vocabulary.
    pub vocab_size: usize,
}

impl Vlm {
    /// A randomly initialised composition.
    pub fn new(config: &VlmConfig, device: &Device) -> Result<Self> {
        let text = config.text_config()?;
        let (vw, _) = config.vision_dims();
        let tower = match &config.vision {
            VisionConfig::Siglip(c) => VisionTower::Siglip(SiglipVisionTransformer::new(c, device)),
            VisionConfig::Clip(c) => VisionTower::Clip(ClipVisionTransformer::new(c, device)),
        };
        let c = text.hidden_size;
        let projector = match config.projector {
            ProjectorKind::Linear => {
                Projector { linear: LinearConfig::new(vw, c).init(device), linear_2: None }
            }
            ProjectorKind::Mlp => Projector {
                linear: LinearConfig::new(vw, c).init(device),
                linear_2: Some(LinearConfig::new(c, c).init(device)),
            },
        };
        Ok(Self {
            vision_tower: tower,
            multi_modal_projector: projector,
            language_model: GemmaForCausalLM::new(&text, device),
            image_token_index: config.image_token_index,
            vocab_size: text.vocab_size,
        })
    }

    /// The composition PaliGemma is, from a PaliGemma model.
    pub fn from_paligemma(m: zoo_paligemma::PaliGemmaForConditionalGeneration) -> Self {
        Self {
            vision_tower: VisionTower::Siglip(m.vision_tower),
            multi_modal_projector: Projector { linear: m.multi_modal_projector.linear, linear_2: None },
            language_model: m.language_model,
            image_token_index: m.image_token_index,
            vocab_size: m.vocab_size,
        }
    }

    /// Projected image features.
    ///
    /// # Shapes
    /// - `pixels`: `[B, 3, H, W]`; output `[B, N, C]`
    pub fn image_features(&self, pixels: Tensor<4>) -> Tensor<3> {
        let h = match &self.vision_tower {
            VisionTower::Siglip(t) => t.forward(pixels).last_hidden_state,
            VisionTower::Clip(t) => t.forward(pixels).last_hidden_state,
        };
        let p = &self.multi_modal_projector;
        let x = p.linear.forward(h);
        match &p.linear_2 {
            Some(l2) => l2.forward(Activation::GeluTanh.forward(x)),
            None => x,
        }
    }

    /// Scaled text embeddings with the image features placed (unscaled) at the `<image>` ids.
    pub fn embed_inputs(
        &self,
        ids: &[Vec<u32>],
        features: Option<&Tensor<3>>,
        device: &Device,
    ) -> Result<Tensor<3>> {
        zoo_paligemma::model::embed_with_images(
            &self.language_model,
            self.image_token_index,
            self.vocab_size,
            ids,
            features,
            device,
        )
    }

    /// Logits of every position for image + tokens, prefix-LM over the first `prefix[b]` tokens.
    ///
    /// # Shapes
    /// - `pixels`: `[B, 3, H, W]`; `ids`: `[B][L]`; output `[B, L, V]`
    pub fn forward(&self, pixels: Tensor<4>, ids: &[Vec<u32>], prefix: Vec<usize>) -> Result<Tensor<3>> {
        let device = pixels.device();
        let features = self.image_features(pixels);
        let x = self.embed_inputs(ids, Some(&features), &device)?;
        let positions: Vec<Vec<i64>> = ids.iter().map(|r| (1..=r.len() as i64).collect()).collect();
        let h = self.language_model.forward_embeds(x, &positions, &MaskSpec::prefix_lm(prefix), None);
        Ok(self.language_model.logits(h))
    }

    /// Next-token cross-entropy on the suffix only (labels masked on image and prompt, as
    /// PaliGemma fine-tuning does): position `t` predicts token `t + 1` for `t + 1 >= prefix`.
    ///
    /// # Shapes
    /// - `pixels`: `[B, 3, H, W]`; `ids`: `[B][L]` (same length; pad after the suffix with
    ///   `valid = false` via `suffix_len`); output `[1]`
    pub fn suffix_loss(
        &self,
        pixels: Tensor<4>,
        ids: &[Vec<u32>],
        prefix: &[usize],
        suffix_len: &[usize],
    ) -> Result<Tensor<1>> {
        let logits = self.forward(pixels, ids, prefix.to_vec())?;
        Ok(zoo_nn::train::loss::suffix_cross_entropy(logits, ids, prefix, suffix_len))
    }
}

/// `(ids, prefix lengths, suffix lengths)`, the inputs of [`Vlm::suffix_loss`].
pub type CaptionBatch = (Vec<Vec<u32>>, Vec<usize>, Vec<usize>);

/// Token rows for captioning training: `prompt` then each caption's tokens and `eos`, padded
/// with 0 to one length.
pub fn caption_batch(
    tok: &zoo_nn::TextTokenizer,
    prompt: &[u32],
    captions: &[String],
    eos: u32,
) -> Result<CaptionBatch> {
    let mut suffixes = Vec::with_capacity(captions.len());
    for c in captions {
        let enc = tok.inner().encode(c.as_str(), false).map_err(|e| NnError::Tokenizer {
            path: tok.path().to_path_buf(),
            reason: format!("encoding {c:?}: {e}"),
        })?;
        let mut s = enc.get_ids().to_vec();
        s.push(eos);
        suffixes.push(s);
    }
    let width = prompt.len() + suffixes.iter().map(Vec::len).max().unwrap_or(0);
    let ids = suffixes
        .iter()
        .map(|s| {
            let mut r = [prompt, s.as_slice()].concat();
            r.resize(width, 0);
            r
        })
        .collect();
    Ok((ids, vec![prompt.len(); captions.len()], suffixes.iter().map(Vec::len).collect()))
}

impl zoo_paligemma::ImageTextModel for Vlm {
    fn embed_inputs(
        &self,
        ids: &[Vec<u32>],
        features: Option<&Tensor<3>>,
        device: &Device,
    ) -> Result<Tensor<3>> {
        Vlm::embed_inputs(self, ids, features, device)
    }
    fn language_model(&self) -> &GemmaForCausalLM {
        &self.language_model
    }
    fn vocab_limit(&self) -> usize {
        self.vocab_size.max(self.image_token_index as usize + 1)
    }
}

/// A batch of images ready for generation with a [`Vlm`]: PaliGemma's decoder over the composition.
pub type VlmDecoder<'a> = zoo_paligemma::PaliGemmaDecoder<'a, Vlm>;
