//! PaliGemma: SigLIP ViT (no head) -> `multi_modal_projector.linear` -> inserted unscaled at the
//! `<image>` positions of a Gemma (1 or 2) decoder whose text embeddings are scaled by
//! `sqrt(hidden)`; prefix-LM attention (image + prompt bidirectional, the rest causal) and
//! 1-indexed positions. Follows transformers' `models/paligemma/modeling_paligemma.py`.
//!
//! Axis letters: `B` batch, `N` image tokens, `L` sequence, `C` text width, `V` vocabulary.

use crate::config::PaliGemmaConfig;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use zoo_gemma::GemmaForCausalLM;
use zoo_nn::{KvCache, MaskSpec, NnError, Result};
use zoo_siglip::SiglipVisionTransformer;

/// Vision width -> text width, with bias.
#[derive(Module, Debug)]
pub struct PaliGemmaMultiModalProjector {
    /// The projection.
    pub linear: Linear,
}

/// `PaliGemmaForConditionalGeneration`.
#[derive(Module, Debug)]
pub struct PaliGemmaForConditionalGeneration {
    /// The SigLIP ViT.
    pub vision_tower: SiglipVisionTransformer,
    /// The projector.
    pub multi_modal_projector: PaliGemmaMultiModalProjector,
    /// The Gemma decoder and its (tied) head.
    pub language_model: GemmaForCausalLM,
    /// `<image>` id.
    pub image_token_index: u32,
    /// Text vocabulary size.
    pub vocab_size: usize,
}

impl PaliGemmaForConditionalGeneration {
    /// A randomly initialised model.
    pub fn new(config: &PaliGemmaConfig, device: &Device) -> Self {
        Self {
            vision_tower: SiglipVisionTransformer::new(&config.vision_config, device),
            multi_modal_projector: PaliGemmaMultiModalProjector {
                linear: LinearConfig::new(config.vision_config.hidden_size, config.projection_dim)
                    .init(device),
            },
            language_model: GemmaForCausalLM::new(&config.text_config, device),
            image_token_index: config.image_token_index,
            vocab_size: config.text_config.vocab_size,
        }
    }

    /// Projected image features, computed once per image.
    ///
    /// # Shapes
    /// - `pixels`: `[B, 3, H, W]`; output `[B, N, C]`
    pub fn image_features(&self, pixels: Tensor<4>) -> Tensor<3> {
        zoo_nn::packed::linear(
            &self.multi_modal_projector.linear,
            self.vision_tower.forward(pixels).last_hidden_state,
        )
    }

    /// Input embeddings: scaled text embeddings, with row `b`'s `<image>` positions replaced, in
    /// order, by `image_features[b]` (unscaled). An `<image>` id at or beyond the vocabulary is
    /// embedded as id 0 first, as transformers does.
    ///
    /// # Shapes
    /// - `ids`: `[B][L]`; `image_features`: `[B, N, C]`; output `[B, L, C]`
    pub fn embed_inputs(
        &self,
        ids: &[Vec<u32>],
        image_features: Option<&Tensor<3>>,
        device: &Device,
    ) -> Result<Tensor<3>> {
        embed_with_images(
            &self.language_model,
            self.image_token_index,
            self.vocab_size,
            ids,
            image_features,
            device,
        )
    }

    /// Runs the decoder over prepared embeddings; returns logits of every position.
    ///
    /// `positions` are 1-indexed as PaliGemma's are. `mask` is the prefix-LM spec.
    ///
    /// # Shapes
    /// - `x`: `[B, L, C]`; output `[B, L, V]`
    pub fn forward_embeds(
        &self,
        x: Tensor<3>,
        positions: &[Vec<i64>],
        mask: &MaskSpec,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let h = self.language_model.forward_embeds(x, positions, mask, cache);
        self.language_model.logits(h)
    }

    /// One forward over image + tokens with `token_type_ids` (0: prefix, 1: suffix), as
    /// transformers' `forward`: logits of every position.
    ///
    /// # Shapes
    /// - `pixels`: `[B, 3, H, W]`; `ids`, `token_type_ids`: `[B][L]`; output `[B, L, V]`
    pub fn forward(
        &self,
        pixels: Tensor<4>,
        ids: &[Vec<u32>],
        token_type_ids: &[Vec<u32>],
    ) -> Result<Tensor<3>> {
        let device = pixels.device();
        let features = self.image_features(pixels);
        let x = self.embed_inputs(ids, Some(&features), &device)?;
        let prefix = token_type_ids.iter().map(|r| r.iter().take_while(|&&t| t == 0).count()).collect();
        let positions: Vec<Vec<i64>> = ids.iter().map(|r| (1..=r.len() as i64).collect()).collect();
        Ok(self.forward_embeds(x, &positions, &MaskSpec::prefix_lm(prefix), None))
    }
}

/// Scaled token embeddings of `lm` with the `<image>` positions of each row replaced, in order,
/// by that row's (unscaled) image features; shared by PaliGemma and composed VLMs.
///
/// # Shapes
/// - `ids`: `[B][L]`; `features`: `[B, N, C]`; output `[B, L, C]`
pub fn embed_with_images(
    lm: &GemmaForCausalLM,
    image_token: u32,
    vocab_size: usize,
    ids: &[Vec<u32>],
    features: Option<&Tensor<3>>,
    device: &Device,
) -> Result<Tensor<3>> {
    let (b, l) = (ids.len(), ids.first().map_or(0, Vec::len));
    // An image token past the vocabulary (PaliGemma 2) is looked up as id 0; its row is replaced.
    let oov = image_token as usize >= vocab_size;
    let lookup: Vec<Vec<u32>> = ids
        .iter()
        .map(|r| r.iter().map(|&t| if oov && t == image_token { 0 } else { t }).collect())
        .collect();
    let text = lm.embed(zoo_nn::host::ids_tensor(&lookup, device));
    let Some(features) = features else {
        return Ok(text);
    };
    let [fb, n, c] = features.dims();
    // Which feature goes where: the k-th <image> of a row takes feature k.
    let mut gather = Vec::with_capacity(b * l);
    let mut is_image = Vec::with_capacity(b * l);
    for (row, row_ids) in ids.iter().enumerate() {
        let mut k = 0i64;
        for &t in row_ids {
            is_image.push(t == image_token);
            gather.push(if t == image_token { k } else { 0 });
            k += (t == image_token) as i64;
        }
        if k as usize != n || row >= fb {
            return Err(NnError::Config(format!(
                "row {row} has {k} <image> tokens but the image gives {n} features"
            )));
        }
    }
    let index = Tensor::<3, Int>::from_data(TensorData::new(gather, [b, l, 1]), device).expand([b, l, c]);
    let placed = features.clone().gather(1, index); // (B, L, C)
    let mask = Tensor::<3, Bool>::from_data(TensorData::new(is_image, [b, l, 1]), device).expand([b, l, c]);
    Ok(text.mask_where(mask, placed))
}
