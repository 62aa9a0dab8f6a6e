//! Gemma 1 and Gemma 2 decoders, one config-driven code path. Follows transformers'
//! `models/gemma/modeling_gemma.py` and `models/gemma2/modeling_gemma2.py`; field names are the
//! checkpoint keys (`model.layers.N.self_attn.q_proj`, ...).
//!
//! Axis letters: `B` batch, `L` new tokens, `S` cached + new tokens, `C` width, `V` vocabulary.

use crate::config::{GemmaConfig, LayerType};
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use zoo_nn::{
    Attention, AttentionConfig, GatedMlp, KvCache, MaskSpec, Norm, NormConfig, RopeTables, RotaryEmbedding,
};

/// One decoder layer. Gemma 1: `x + attn(input_ln(x))`, then `x + mlp(post_attention_ln(x))`.
/// Gemma 2 (sandwich norms): `x + post_attention_ln(attn(input_ln(x)))`, then
/// `x + post_feedforward_ln(mlp(pre_feedforward_ln(x)))`.
#[derive(Module, Debug)]
pub struct GemmaDecoderLayer {
    /// Norm before attention.
    pub input_layernorm: Norm,
    /// Self-attention (GQA/MQA, RoPE, optional soft-cap).
    pub self_attn: Attention,
    /// Gemma 1: norm before the MLP. Gemma 2: norm after attention.
    pub post_attention_layernorm: Norm,
    /// Gemma 2: norm before the MLP.
    pub pre_feedforward_layernorm: Option<Norm>,
    /// Gemma 2: norm after the MLP.
    pub post_feedforward_layernorm: Option<Norm>,
    /// GeGLU MLP.
    pub mlp: GatedMlp,
    /// Sliding (true) or full attention.
    pub sliding: bool,
}

impl GemmaDecoderLayer {
    /// # Shapes
    /// - `x`: `[B, L, C]`; masks `bool[B, 1, L, S]`; output `[B, L, C]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        mask: Option<&Tensor<4, Bool>>,
        cache: Option<&mut zoo_nn::LayerKvCache>,
    ) -> Tensor<3> {
        let attn = self.self_attn.forward(self.input_layernorm.forward(x.clone()), Some(rope), mask, cache);
        match (&self.pre_feedforward_layernorm, &self.post_feedforward_layernorm) {
            (Some(pre), Some(post)) => {
                let h = x + self.post_attention_layernorm.forward(attn);
                h.clone() + post.forward(self.mlp.forward(pre.forward(h)))
            }
            _ => {
                let h = x + attn;
                h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
            }
        }
    }
}

/// The decoder stack (`model` in checkpoints).
#[derive(Module, Debug)]
pub struct GemmaModel {
    /// `[V, C]`; outputs are scaled by `sqrt(C)`.
    pub embed_tokens: Embedding,
    /// The layers.
    pub layers: Vec<GemmaDecoderLayer>,
    /// Final norm.
    pub norm: Norm,
}

/// A Gemma language model (`GemmaForCausalLM` / `Gemma2ForCausalLM`).
#[derive(Module, Debug)]
pub struct GemmaForCausalLM {
    /// The decoder.
    pub model: GemmaModel,
    /// Untied output projection (`None`: logits use the embedding matrix).
    pub lm_head: Option<Linear>,
    /// `sqrt(hidden_size)`, rounded to the weights' dtype as transformers does.
    pub embed_scale: f64,
    /// Gemma 2's final logit soft-cap.
    pub final_logit_softcapping: Option<f64>,
    /// Sliding window of the sliding layers.
    pub sliding_window: Option<usize>,
    /// RoPE head dim.
    pub head_dim: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// Key/value heads (for the cache).
    pub num_kv_heads: usize,
}

impl GemmaForCausalLM {
    /// A randomly initialised model for `config`.
    pub fn new(config: &GemmaConfig, device: &Device) -> Self {
        let c = config.hidden_size;
        let norm = NormConfig::new(config.norm, c, config.rms_norm_eps);
        let g2 = config.is_gemma2();
        let attn = AttentionConfig {
            hidden_size: c,
            num_heads: config.num_attention_heads,
            num_kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
            qkv_bias: config.attention_bias,
            o_bias: config.attention_bias,
            scale: config.query_pre_attn_scalar.map(|s| s.powf(-0.5)),
            softcap: config.attn_logit_softcapping,
        };
        let layers = config
            .layer_types
            .iter()
            .map(|t| GemmaDecoderLayer {
                input_layernorm: norm.init(device),
                self_attn: attn.init(device),
                post_attention_layernorm: norm.init(device),
                pre_feedforward_layernorm: g2.then(|| norm.init(device)),
                post_feedforward_layernorm: g2.then(|| norm.init(device)),
                mlp: GatedMlp::init(c, config.intermediate_size, config.hidden_activation, device),
                sliding: *t == LayerType::SlidingAttention,
            })
            .collect();
        Self {
            model: GemmaModel {
                // transformers' init (std 0.02): the embedding is also the output head.
                embed_tokens: EmbeddingConfig::new(config.vocab_size, c)
                    .with_initializer(Initializer::Normal { mean: 0.0, std: 0.02 })
                    .init(device),
                layers,
                norm: norm.init(device),
            },
            lm_head: (!config.tie_word_embeddings)
                .then(|| LinearConfig::new(c, config.vocab_size).with_bias(false).init(device)),
            embed_scale: (c as f32).sqrt() as f64,
            final_logit_softcapping: config.final_logit_softcapping,
            sliding_window: config.sliding_window,
            head_dim: config.head_dim,
            rope_theta: config.rope_theta,
            num_kv_heads: config.num_key_value_heads,
        }
    }

    /// Scaled token embeddings.
    ///
    /// # Shapes
    /// - `ids`: `int[B, L]`; output `[B, L, C]`
    pub fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        zoo_nn::packed::embedding(&self.model.embed_tokens, ids) * self.embed_scale
    }

    /// A KV cache for `batch` rows and up to `max_len` positions.
    pub fn new_cache(&self, batch: usize, max_len: usize, device: &Device) -> KvCache {
        KvCache::new(self.model.layers.len(), batch, self.num_kv_heads, self.head_dim, max_len, device)
    }

    /// Runs the decoder over input embeddings and returns the final-normed hidden states.
    ///
    /// `positions` are the RoPE positions of the new tokens; `mask` says which keys each query
    /// sees (causal, prefix-LM, padding); the sliding layers add their window to it. With a
    /// cache, the new keys/values are appended and the queries attend over everything cached.
    ///
    /// # Shapes
    /// - `x`: `[B, L, C]`; `positions`: `[B][L]`; output `[B, L, C]`
    pub fn forward_embeds(
        &self,
        x: Tensor<3>,
        positions: &[Vec<i64>],
        mask: &MaskSpec,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [b, l, _] = x.dims();
        let device = x.device();
        let past = cache.as_ref().map_or(0, |c| c.seq_len());
        let s = past + l;
        let rope = RotaryEmbedding::new(self.head_dim, self.rope_theta).tables(positions, &device);
        let full = mask.build(b, l, s, &device);
        let sliding = match self.sliding_window {
            Some(w) if self.model.layers.iter().any(|layer| layer.sliding) => {
                mask.clone().with_sliding_window(w).build(b, l, s, &device)
            }
            _ => None,
        };
        let mut x = x;
        for (i, layer) in self.model.layers.iter().enumerate() {
            let m = if layer.sliding { sliding.as_ref() } else { full.as_ref() };
            let layer_cache = cache.as_deref_mut().map(|c| c.layer(i));
            x = layer.forward(x, &rope, m, layer_cache);
        }
        self.model.norm.forward(x)
    }

    /// Output logits (soft-capped for Gemma 2).
    ///
    /// # Shapes
    /// - `h`: `[B, L, C]`; output `[B, L, V]`
    pub fn logits(&self, h: Tensor<3>) -> Tensor<3> {
        let logits = match &self.lm_head {
            Some(head) => zoo_nn::packed::linear(head, h),
            // The tied head: on packed CPU weights (`--dtype bf16|q8`) the host kernels, else
            // [V, C] @ [C, B*L] with the embedding matrix used as stored (no transposed copy of
            // the largest weight on every decode step).
            None => zoo_nn::packed::tied_logits(&self.model.embed_tokens, h.clone()).unwrap_or_else(|| {
                let [b, l, c] = h.dims();
                let w = self.model.embed_tokens.weight.val();
                let v = w.dims()[0];
                w.matmul(h.reshape([b * l, c]).transpose()).transpose().reshape([b, l, v])
            }),
        };
        match self.final_logit_softcapping {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    /// Causal forward over token ids: logits of every position.
    ///
    /// # Shapes
    /// - `ids`: `int[B, L]`; output `[B, L, V]`
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, l] = ids.dims();
        let positions = vec![(0..l as i64).collect::<Vec<_>>(); b];
        let h = self.forward_embeds(self.embed(ids), &positions, &MaskSpec::causal(), None);
        self.logits(h)
    }
}
