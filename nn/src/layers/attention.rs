//! Multi-head attention with separate q/k/v/o projections, GQA/MQA, explicit head_dim, a
//! configurable scale, optional logit soft-capping, masks and an explicit KV cache.
//!
//! Axis letters: `B` batch, `L` query length, `S` key length, `H` query heads, `K` key/value
//! heads (`H % K == 0`; query head `h` reads key/value head `h / (H / K)`), `D` head_dim,
//! `C` model width.

use crate::layers::kv_cache::LayerKvCache;
use crate::layers::rope::{RopeTables, apply_rotary};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::DType;

/// Configuration of an [`Attention`] block.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionConfig {
    /// Model width `C` (input and output of the block).
    pub hidden_size: usize,
    /// Query heads `H`.
    pub num_heads: usize,
    /// Key/value heads `K` (1 = MQA, `H` = MHA).
    pub num_kv_heads: usize,
    /// Per-head width `D` (its own config key, not necessarily `C / H`).
    pub head_dim: usize,
    /// Bias on the q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Multiplier of `q·k`; `None` means `head_dim^-0.5`.
    pub scale: Option<f64>,
    /// Soft-cap `cap * tanh(x / cap)` of the attention logits.
    pub softcap: Option<f64>,
}

impl AttentionConfig {
    /// Standard multi-head attention of `num_heads` heads of `hidden_size / num_heads`, with biases.
    pub fn mha(hidden_size: usize, num_heads: usize) -> Self {
        Self {
            hidden_size,
            num_heads,
            num_kv_heads: num_heads,
            head_dim: hidden_size / num_heads.max(1),
            qkv_bias: true,
            o_bias: true,
            scale: None,
            softcap: None,
        }
    }

    /// Checks the head arithmetic.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::NnError::Config(m));
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.head_dim == 0 {
            return bad(format!(
                "attention needs num_heads, num_key_value_heads and head_dim > 0 (got {}, {}, {})",
                self.num_heads, self.num_kv_heads, self.head_dim
            ));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        Ok(())
    }

    /// Builds the block with randomly initialised projections.
    pub fn init(&self, device: &Device) -> Attention {
        let (c, h, k, d) = (self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim);
        let lin = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        Attention {
            q_proj: lin(c, h * d, self.qkv_bias),
            k_proj: lin(c, k * d, self.qkv_bias),
            v_proj: lin(c, k * d, self.qkv_bias),
            o_proj: lin(h * d, c, self.o_bias),
            num_heads: h,
            num_kv_heads: k,
            head_dim: d,
            scale: self.scale.unwrap_or((d as f64).powf(-0.5)),
            softcap: self.softcap,
        }
    }
}

/// Multi-head attention. Checkpoints that call the output projection `out_proj` (SigLIP, CLIP)
/// map it to `o_proj` in their key table.
#[derive(Module, Debug)]
pub struct Attention {
    /// `C -> H*D`.
    pub q_proj: Linear,
    /// `C -> K*D`.
    pub k_proj: Linear,
    /// `C -> K*D`.
    pub v_proj: Linear,
    /// `H*D -> C`.
    pub o_proj: Linear,
    /// `H`.
    pub num_heads: usize,
    /// `K`.
    pub num_kv_heads: usize,
    /// `D`.
    pub head_dim: usize,
    /// Multiplier of `q·k`.
    pub scale: f64,
    /// Soft-cap of the logits.
    pub softcap: Option<f64>,
}

impl Attention {
    /// Self-attention over `x`.
    ///
    /// With `cache`, the new keys/values are written at the cache's current length and the
    /// queries attend over everything cached so far (`S` = cached + `L`); `mask` must then be
    /// built for `S` keys.
    ///
    /// # Shapes
    /// - `x`: `[B, L, C]`; `rope`: tables `[B, L, D]`; `mask`: `bool[B, 1, L, S]` (true = masked)
    /// - output: `[B, L, C]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: Option<&RopeTables>,
        mask: Option<&Tensor<4, Bool>>,
        cache: Option<&mut LayerKvCache>,
    ) -> Tensor<3> {
        let [b, l, _] = x.dims();
        let (h, k, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let split = |t: Tensor<3>, heads| t.reshape([b, l, heads, d]).swap_dims(1, 2);
        // Packed weights: q, k and v from one product over x, side by side; self-attention
        // without positions or cache (encoders) then reads them in place on the AMX tiles.
        let projections = [&self.q_proj, &self.k_proj, &self.v_proj];
        let (mut q, mut key, value) = match crate::packed::linear_many(&projections, x) {
            Ok(qkv) => {
                let qkv = if rope.is_none() && cache.is_none() {
                    match self.packed_self_attention(qkv, mask) {
                        Ok(out) => return crate::packed::linear(&self.o_proj, out),
                        Err(qkv) => qkv,
                    }
                } else {
                    qkv
                };
                let part = |at: usize, n: usize| split(qkv.clone().narrow(2, at * d, n * d), n);
                (part(0, h), part(h, k), part(h + k, k))
            }
            Err(x) => (
                split(crate::packed::linear(&self.q_proj, x.clone()), h), // (B, H, L, D)
                split(crate::packed::linear(&self.k_proj, x.clone()), k), // (B, K, L, D)
                split(crate::packed::linear(&self.v_proj, x), k),         // (B, K, L, D)
            ),
        };
        if let Some(tables) = rope {
            q = apply_rotary(q, tables);
            key = apply_rotary(key, tables);
        }
        let (key, value) = match cache {
            Some(cache) => cache.append(key, value),
            None => (key, value),
        };
        let out = match self.packed_attention(&q, &key, &value, mask) {
            Some(out) => out,
            None => {
                let out = scaled_dot_product_attention(q, key, value, mask, self.scale, self.softcap);
                out.swap_dims(1, 2).reshape([b, l, h * d]) // (B, L, H*D)
            }
        };
        crate::packed::linear(&self.o_proj, out)
    }

    /// With packed weights (`--dtype bf16|q8` on the CPU) on a CPU with AMX, and at least 16
    /// queries: the attention on the tiles ([`zoo_kernels::gemm::attention_bf16`]: q, k, p and
    /// v rounded to bf16, sums in f32, as PyTorch's bf16 attention), straight into
    /// `(B, L, H*D)`; `None` otherwise (f32 weights, training, GPUs, decode), for the
    /// tensor-op path.
    fn packed_attention(
        &self,
        q: &Tensor<4>,
        k: &Tensor<4>,
        v: &Tensor<4>,
        mask: Option<&Tensor<4, Bool>>,
    ) -> Option<Tensor<3>> {
        use zoo_kernels::gemm::{AttentionShape, Heads, attention_bf16_available};
        let [b, h, l, d] = q.dims();
        let [_, kh, s, _] = k.dims();
        // Checked before the host copies below.
        if l < 16 || !crate::packed::is_packed(&self.q_proj) || !attention_bf16_available() {
            return None;
        }
        let host = |t: &Tensor<4>| t.clone().cast(DType::F32).into_data().try_into_vec::<f32>().ok();
        let (q_host, k_host, v_host) = (host(q)?, host(k)?, host(v)?);
        let shape = AttentionShape { batch: b, heads: h, kv_heads: kh, len: l, keys: s, head_dim: d };
        let heads = [
            Heads::head_major(&q_host, h, l, d),
            Heads::head_major(&k_host, kh, s, d),
            Heads::head_major(&v_host, kh, s, d),
        ];
        self.attend_on_tiles(heads, shape, mask, &q.device())
    }

    /// Self-attention of 16 or more positions on the AMX tiles straight from the side-by-side
    /// projections `qkv` (`(B, L, (H + 2K) D)`, see `forward`), read in place; `(B, L, H*D)`.
    /// `Err(qkv)` when it does not apply.
    #[allow(clippy::result_large_err)]
    fn packed_self_attention(
        &self,
        qkv: Tensor<3>,
        mask: Option<&Tensor<4, Bool>>,
    ) -> Result<Tensor<3>, Tensor<3>> {
        use zoo_kernels::gemm::{AttentionShape, Heads, attention_bf16_available};
        let [b, l, width] = qkv.dims();
        let (h, kh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let mask_fits = mask.is_none_or(|m| {
            let [mb, one, ml, ms] = m.dims();
            (mb == 1 || mb == b) && one == 1 && ml == l && ms == l
        });
        if l < 16 || width != (h + 2 * kh) * d || !mask_fits || !attention_bf16_available() {
            return Err(qkv);
        }
        let device = qkv.device();
        // Taken, not copied (the tensor is not shared).
        let data = qkv.into_data();
        let shape = AttentionShape { batch: b, heads: h, kv_heads: kh, len: l, keys: l, head_dim: d };
        let out = match data.as_slice::<f32>() {
            Ok(values) => {
                let heads = |at: usize| Heads::token_major(values, l, width, at * d, d);
                self.attend_on_tiles([heads(0), heads(h), heads(h + kh)], shape, mask, &device)
            }
            Err(_) => None,
        };
        out.ok_or_else(|| {
            let dtype = data.dtype();
            Tensor::from_data(data, (&device, dtype))
        })
    }

    /// [`zoo_kernels::gemm::attention_bf16`] of q, k, v with this block's scale, soft cap and
    /// `mask` (`bool[B or 1, 1, L, S]`): `(B, L, H*D)`, or `None` for another mask shape (or
    /// without AMX, which the callers check first).
    fn attend_on_tiles(
        &self,
        [q, k, v]: [zoo_kernels::gemm::Heads<'_>; 3],
        shape: zoo_kernels::gemm::AttentionShape,
        mask: Option<&Tensor<4, Bool>>,
        device: &Device,
    ) -> Option<Tensor<3>> {
        use zoo_kernels::gemm::{AttentionMask, attention_bf16};
        let (b, l, s) = (shape.batch, shape.len, shape.keys);
        let masked = match mask {
            None => None,
            Some(mask) => {
                let [mb, one, ml, ms] = mask.dims();
                if (mb != 1 && mb != b) || one != 1 || ml != l || ms != s {
                    return None;
                }
                Some((mask.clone().into_data().try_into_vec::<bool>().ok()?, mb == b))
            }
        };
        let mask = masked.as_ref().map(|(m, per_batch)| AttentionMask { masked: m, per_batch: *per_batch });
        let scale = self.scale as f32;
        let out = attention_bf16(q, k, v, shape, mask, scale, self.softcap.map(|c| c as f32))?;
        let width = shape.heads * shape.head_dim;
        Some(Tensor::from_data(TensorData::new(out, [b, l, width]), (device, DType::F32)))
    }
}

/// `softmax(softcap(q·kᵀ·scale) + mask)·v`, with grouped key/value heads.
///
/// The logits and the softmax are computed in f32 whatever the input dtype (as transformers'
/// eager attention upcasts the softmax), then cast back.
///
/// # Shapes
/// - `q`: `[B, H, L, D]`; `k`, `v`: `[B, K, S, D]`; `mask`: `bool[B or 1, 1, L, S]` (true = masked)
/// - output: `[B, H, L, D]`
pub fn scaled_dot_product_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<&Tensor<4, Bool>>,
    scale: f64,
    softcap: Option<f64>,
) -> Tensor<4> {
    let [b, h, l, d] = q.dims();
    let [_, kh, s, _] = k.dims();
    let group = h / kh;
    // Fold the query heads that share a key/value head into the query axis: no copy of K or V.
    let q = q.reshape([b, kh, group * l, d]); // (B, K, G*L, D)
    let scores = zoo_kernels::fused::cast(zoo_kernels::fused::matmul(q, k.swap_dims(2, 3)), DType::F32); // (B, K, G*L, S)
    // Without a soft cap the scale is folded into the fused softmax (one pass fewer each way).
    let (scores, scale) = match softcap {
        Some(cap) => (((scores * scale) / cap).tanh() * cap, 1.0),
        None => (scores, scale),
    };
    let mut scores = scores.reshape([b, h, l, s]); // (B, H, L, S)
    if let Some(mask) = mask {
        let mask = mask.clone().expand([b, h, l, s]);
        scores = scores.mask_fill(mask, f32::MIN);
    }
    let probs = zoo_kernels::fused::cast(zoo_kernels::fused::softmax_last(scores, scale as f32), v.dtype());
    let probs = probs.reshape([b, kh, group * l, s]);
    zoo_kernels::fused::matmul(probs, v).reshape([b, h, l, d])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::kv_cache::KvCache;
    use crate::layers::mask::MaskSpec;
    use crate::layers::rope::RotaryEmbedding;
    use crate::testing::{assert_close, assert_slices_close, device, tensor_from, to_vec};

    fn seq(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i + seed) * 37 % 101) as f32 - 50.0) / 40.0).collect()
    }

    /// Naive attention over plain slices: q `[B,H,L,D]`, k/v `[B,K,S,D]`.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dims: (usize, usize, usize, usize, usize, usize),
        scale: f32,
        softcap: Option<f32>,
        spec: &MaskSpec,
    ) -> Vec<f32> {
        let (b, h, kh, l, s, d) = dims;
        let mut out = vec![0f32; b * h * l * d];
        for bi in 0..b {
            for hi in 0..h {
                let ki = hi / (h / kh);
                for i in 0..l {
                    let qrow = &q[((bi * h + hi) * l + i) * d..][..d];
                    let mut logits: Vec<f32> = (0..s)
                        .map(|j| {
                            let krow = &k[((bi * kh + ki) * s + j) * d..][..d];
                            let mut x = qrow.iter().zip(krow).map(|(a, b)| a * b).sum::<f32>() * scale;
                            if let Some(c) = softcap {
                                x = c * (x / c).tanh();
                            }
                            x
                        })
                        .collect();
                    for (j, x) in logits.iter_mut().enumerate() {
                        if spec.is_masked(bi, s - l + i, j) {
                            *x = f32::NEG_INFINITY;
                        }
                    }
                    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = logits.iter().map(|x| (x - m).exp()).collect();
                    let z: f32 = e.iter().sum();
                    for (j, p) in e.iter().enumerate() {
                        let vrow = &v[((bi * kh + ki) * s + j) * d..][..d];
                        for c in 0..d {
                            out[((bi * h + hi) * l + i) * d + c] += p / z * vrow[c];
                        }
                    }
                }
            }
        }
        out
    }

    fn check(spec: MaskSpec, h: usize, kh: usize, l: usize, s: usize, softcap: Option<f32>) {
        let dev = device();
        let (b, d) = (2, 4);
        let (q, k, v) = (seq(b * h * l * d, 1), seq(b * kh * s * d, 2), seq(b * kh * s * d, 3));
        let scale = 0.37;
        let mask = spec.build(b, l, s, &dev);
        let out = scaled_dot_product_attention(
            tensor_from(&q, [b, h, l, d], &dev),
            tensor_from(&k, [b, kh, s, d], &dev),
            tensor_from(&v, [b, kh, s, d], &dev),
            mask.as_ref(),
            scale as f64,
            softcap.map(f64::from),
        );
        let expect = naive(&q, &k, &v, (b, h, kh, l, s, d), scale, softcap, &spec);
        assert_close(out, &expect, 1e-5, &format!("{spec:?} h={h} kh={kh}"));
    }

    #[test]
    fn every_mask_kind_matches_naive_reference() {
        check(MaskSpec::none(), 4, 4, 5, 5, None);
        check(MaskSpec::causal(), 4, 2, 5, 5, None);
        check(MaskSpec::causal(), 4, 1, 2, 6, Some(1.5)); // queries at the end (cached decode)
        check(
            MaskSpec::none().with_key_valid(vec![vec![true; 5], vec![false, false, true, true, true]]),
            2,
            2,
            5,
            5,
            None,
        );
        check(MaskSpec::prefix_lm(vec![3, 1]), 4, 2, 6, 6, None);
        check(MaskSpec::causal().with_sliding_window(2), 2, 1, 6, 6, Some(0.8));
        check(
            MaskSpec::prefix_lm(vec![4, 2])
                .with_key_valid(vec![vec![true; 6], vec![false, true, true, true, true, true]]),
            4,
            4,
            6,
            6,
            None,
        );
    }

    /// With packed weights on an AMX CPU, prefill-sized attention runs on the tiles
    /// (`packed_attention`): the same block output as the f32 path within bf16's rounding, for
    /// grouped heads, a soft cap, and masks shared by the batch and per entry (one prompt's
    /// keys partly invalid). Elsewhere both runs take the tensor path.
    #[test]
    fn packed_attention_follows_the_f32_path() {
        let dev = device();
        let cfg = AttentionConfig {
            hidden_size: 48,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 24,
            qkv_bias: true,
            o_bias: true,
            scale: None,
            softcap: Some(3.0),
        };
        let attn = cfg.init(&dev);
        let (b, l) = (2, 37);
        let x = tensor_from(&seq(b * l * 48, 9), [b, l, 48], &dev);
        let valid = vec![vec![true; l], (0..l).map(|j| j >= 5).collect()];
        for spec in
            [MaskSpec::none(), MaskSpec::causal(), MaskSpec::prefix_lm(vec![20, 9]).with_key_valid(valid)]
        {
            let mask = spec.build(b, l, l, &dev);
            let want = to_vec(attn.forward(x.clone(), None, mask.as_ref(), None));
            let packed = crate::packed::pack(attn.clone(), zoo_kernels::gemm::WeightFormat::Bf16);
            let got = to_vec(packed.forward(x.clone(), None, mask.as_ref(), None));
            crate::packed::release(&packed);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = got.iter().zip(&want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
            assert!(worst < 0.02 * scale, "{spec:?}: max |d| {worst} of {scale}");
        }
    }

    #[test]
    fn cached_incremental_decoding_equals_full_attention() {
        let dev = device();
        let cfg = AttentionConfig {
            hidden_size: 12,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 4,
            qkv_bias: false,
            o_bias: false,
            scale: Some(0.3),
            softcap: Some(2.0),
        };
        let attn = cfg.init(&dev);
        let (b, l, prompt) = (2, 7, 4);
        let x = tensor_from(&seq(b * l * 12, 5), [b, l, 12], &dev);
        // Full pass with a prefix-LM mask over the prompt.
        let spec = MaskSpec::prefix_lm(vec![prompt, prompt - 1]).with_sliding_window(3);
        let positions = |from: usize, to: usize| vec![(from as i64..to as i64).collect::<Vec<_>>(); b];
        let rope = RotaryEmbedding::new(4, 100.0);
        let full_mask = spec.build(b, l, l, &dev);
        let full =
            attn.forward(x.clone(), Some(&rope.tables(&positions(0, l), &dev)), full_mask.as_ref(), None);

        // Prefill the prompt, then one token at a time through the cache.
        let mut cache = KvCache::new(1, b, 2, 4, l + 2, &dev);
        let mut pieces = Vec::new();
        let mut start = 0;
        for end in [prompt, prompt + 1, prompt + 2, l] {
            let xs = x.clone().slice([0..b, start..end, 0..12]);
            let mask = spec.build(b, end - start, end, &dev);
            let tables = rope.tables(&positions(start, end), &dev);
            pieces.push(attn.forward(xs, Some(&tables), mask.as_ref(), Some(cache.layer(0))));
            start = end;
        }
        assert_eq!(cache.seq_len(), l);
        let inc = Tensor::cat(pieces, 1);
        assert_slices_close(&to_vec(inc), &to_vec(full), 1e-5, "cached vs full");
    }
}
