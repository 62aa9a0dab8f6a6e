//! PaliGemma as a [`Decoder`] for [`zoo_nn::generate`]: image features computed once, then the
//! left-padded prefix (image + prompt, bidirectional) and one token per step.

use crate::model::PaliGemmaForConditionalGeneration;
use burn::prelude::*;
use zoo_gemma::GemmaForCausalLM;
use zoo_nn::generate::{Decoder, last_position_logits, row_positions};
use zoo_nn::{KvCache, MaskSpec, Result};

/// A model that places image features at `<image>` tokens of a Gemma decoder, as PaliGemma
/// does (PaliGemma itself, or a composed VLM).
pub trait ImageTextModel {
    /// Input embeddings with the image features placed at the `<image>` tokens.
    fn embed_inputs(
        &self,
        ids: &[Vec<u32>],
        features: Option<&Tensor<3>>,
        device: &Device,
    ) -> Result<Tensor<3>>;
    /// The decoder.
    fn language_model(&self) -> &GemmaForCausalLM;
    /// Ids a prompt may hold (the vocabulary, and the image token when it lies just past it).
    fn vocab_limit(&self) -> usize;
}

impl ImageTextModel for PaliGemmaForConditionalGeneration {
    fn embed_inputs(
        &self,
        ids: &[Vec<u32>],
        features: Option<&Tensor<3>>,
        device: &Device,
    ) -> Result<Tensor<3>> {
        PaliGemmaForConditionalGeneration::embed_inputs(self, ids, features, device)
    }
    fn language_model(&self) -> &GemmaForCausalLM {
        &self.language_model
    }
    fn vocab_limit(&self) -> usize {
        self.vocab_size.max(self.image_token_index as usize + 1)
    }
}

/// A batch of images ready for generation.
#[derive(Debug)]
pub struct PaliGemmaDecoder<'a, M = PaliGemmaForConditionalGeneration> {
    /// The model.
    pub model: &'a M,
    /// `[B, N, C]`: projected features of each row's image.
    pub image_features: Tensor<3>,
    /// Context length.
    pub max_len: usize,
    /// Device.
    pub device: Device,
}

impl<M: ImageTextModel> PaliGemmaDecoder<'_, M> {
    /// The language model over `x`, projected onto the vocabulary at the last position only.
    fn next_logits(
        &self,
        x: Tensor<3>,
        positions: &[Vec<i64>],
        mask: &MaskSpec,
        cache: &mut KvCache,
    ) -> Tensor<2> {
        let lm = self.model.language_model();
        last_position_logits(lm.forward_embeds(x, positions, mask, Some(cache)), |h| lm.logits(h))
    }
}

impl<M: ImageTextModel + Sync> Decoder for PaliGemmaDecoder<'_, M> {
    fn prefill(&self, prompt: &[Vec<u32>], valid: &[Vec<bool>], cache: &mut KvCache) -> Result<Tensor<2>> {
        let x = self.model.embed_inputs(prompt, Some(&self.image_features), &self.device)?;
        // The whole prompt is the bidirectional prefix; positions are 1-indexed.
        let positions: Vec<Vec<i64>> =
            row_positions(valid).into_iter().map(|r| r.into_iter().map(|p| p + 1).collect()).collect();
        let prefix = valid.iter().map(Vec::len).collect();
        let mask = MaskSpec::prefix_lm(prefix).with_key_valid(valid.to_vec());
        Ok(self.next_logits(x, &positions, &mask, cache))
    }

    fn step(
        &self,
        tokens: &[u32],
        positions: &[i64],
        valid: &[Vec<bool>],
        cache: &mut KvCache,
    ) -> Result<Tensor<2>> {
        let ids: Vec<Vec<u32>> = tokens.iter().map(|&t| vec![t]).collect();
        let x = self.model.embed_inputs(&ids, None, &self.device)?;
        let pos: Vec<Vec<i64>> = positions.iter().map(|&p| vec![p + 1]).collect();
        let mask = MaskSpec::causal().with_key_valid(valid.to_vec());
        Ok(self.next_logits(x, &pos, &mask, cache))
    }

    fn cache(&self, batch: usize, max_len: usize) -> KvCache {
        self.model.language_model().new_cache(batch, max_len, &self.device)
    }

    fn max_len(&self) -> usize {
        self.max_len
    }

    fn vocab_limit(&self) -> usize {
        self.model.vocab_limit()
    }
}
