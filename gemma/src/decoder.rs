//! Gemma as a [`Decoder`] for [`zoo_nn::generate`]: a causal prefill over the left-padded
//! prompts, then one token per step.

use crate::model::GemmaForCausalLM;
use burn::prelude::*;
use zoo_nn::generate::{Decoder, last_position_logits, row_positions};
use zoo_nn::{KvCache, MaskSpec, Result};

/// A Gemma model with the context length it may use.
#[derive(Debug)]
pub struct GemmaDecoder<'a> {
    /// The model.
    pub model: &'a GemmaForCausalLM,
    /// Context length (`max_position_embeddings`).
    pub max_len: usize,
    /// Device.
    pub device: Device,
}

impl GemmaDecoder<'_> {
    fn last_logits(&self, h: Tensor<3>) -> Tensor<2> {
        last_position_logits(h, |h| self.model.logits(h))
    }
}

impl Decoder for GemmaDecoder<'_> {
    fn prefill(&self, prompt: &[Vec<u32>], valid: &[Vec<bool>], cache: &mut KvCache) -> Result<Tensor<2>> {
        let x = self.model.embed(zoo_nn::host::ids_tensor(prompt, &self.device));
        let mask = MaskSpec::causal().with_key_valid(valid.to_vec());
        let h = self.model.forward_embeds(x, &row_positions(valid), &mask, Some(cache));
        Ok(self.last_logits(h))
    }

    fn step(
        &self,
        tokens: &[u32],
        positions: &[i64],
        valid: &[Vec<bool>],
        cache: &mut KvCache,
    ) -> Result<Tensor<2>> {
        let ids: Vec<Vec<u32>> = tokens.iter().map(|&t| vec![t]).collect();
        let x = self.model.embed(zoo_nn::host::ids_tensor(&ids, &self.device));
        let pos: Vec<Vec<i64>> = positions.iter().map(|&p| vec![p]).collect();
        let mask = MaskSpec::causal().with_key_valid(valid.to_vec());
        let h = self.model.forward_embeds(x, &pos, &mask, Some(cache));
        Ok(self.last_logits(h))
    }

    fn cache(&self, batch: usize, max_len: usize) -> KvCache {
        self.model.new_cache(batch, max_len, &self.device)
    }

    fn max_len(&self) -> usize {
        self.max_len
    }

    fn vocab_limit(&self) -> usize {
        self.model.model.embed_tokens.weight.dims()[0]
    }
}
