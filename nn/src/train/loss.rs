//! Contrastive losses of CLIP (softmax) and SigLIP (sigmoid), the latter also in a chunked form,
//! and the next-token loss of prefix-LM fine-tuning ([`suffix_cross_entropy`]).
//!
//! Both take L2-normalised embeddings; `logit_scale` is the log temperature `t` (logits are
//! scaled by `exp(t)`), `logit_bias` SigLIP's `b`.

use burn::prelude::*;
use burn::tensor::activation::{log_sigmoid, log_softmax};

/// Image-text logits `exp(t) * img · txtᵀ (+ b)`.
///
/// # Shapes
/// - `img`: `[N, P]`; `txt`: `[M, P]`; `logit_scale`, `logit_bias`: `[1]`; output `[N, M]`
pub fn contrastive_logits(
    img: Tensor<2>,
    txt: Tensor<2>,
    logit_scale: Tensor<1>,
    logit_bias: Option<Tensor<1>>,
) -> Tensor<2> {
    let logits = img.matmul(txt.transpose()) * logit_scale.exp().unsqueeze::<2>();
    match logit_bias {
        Some(b) => logits + b.unsqueeze::<2>(),
        None => logits,
    }
}

/// CLIP: `(CE(rows) + CE(columns)) / 2` with the matching pair on the diagonal.
///
/// # Shapes
/// - `img`, `txt`: `[N, P]`; output `[1]`
pub fn clip_loss(img: Tensor<2>, txt: Tensor<2>, logit_scale: Tensor<1>) -> Tensor<1> {
    let logits = contrastive_logits(img, txt, logit_scale, None);
    let n = logits.dims()[0];
    let diag = |lp: Tensor<2>| {
        let eye = Tensor::<2>::eye(n, &lp.device());
        -(lp * eye).sum() / n as f64
    };
    (diag(log_softmax(logits.clone(), 1)) + diag(log_softmax(logits, 0))) / 2.0
}

/// SigLIP: `-sum(log_sigmoid(z_ij * logits_ij)) / N` with `z = +1` on the diagonal, `-1` elsewhere.
///
/// # Shapes
/// - `img`, `txt`: `[N, P]`; output `[1]`
pub fn siglip_loss(
    img: Tensor<2>,
    txt: Tensor<2>,
    logit_scale: Tensor<1>,
    logit_bias: Tensor<1>,
) -> Tensor<1> {
    let n = img.dims()[0];
    let logits = contrastive_logits(img, txt, logit_scale, Some(logit_bias));
    let labels = Tensor::<2>::eye(n, &logits.device()) * 2.0 - 1.0;
    -log_sigmoid(logits * labels).sum() / n as f64
}

/// SigLIP's loss over blocks of `chunk` texts: every image against one block of texts at a
/// time, so no more than `N x chunk` logits exist at once. Equal in value (and gradient) to
/// [`siglip_loss`]. `img_offset` is the global index of this device's first image (for
/// data-parallel training, where each device scores its images against every device's texts:
/// local image `i` pairs with text `i + img_offset`).
///
/// # Shapes
/// - `img`: `[N, P]`; `txt`: `[M, P]`; output `[1]` (summed over the blocks, divided by `N`)
pub fn siglip_loss_chunked(
    img: Tensor<2>,
    txt: Tensor<2>,
    logit_scale: Tensor<1>,
    logit_bias: Tensor<1>,
    chunk: usize,
    img_offset: usize,
) -> Tensor<1> {
    let [n, p] = img.dims();
    let m = txt.dims()[0];
    let device = img.device();
    let chunk = chunk.max(1);
    let mut total: Option<Tensor<1>> = None;
    let mut start = 0;
    while start < m {
        let end = (start + chunk).min(m);
        let block = txt.clone().slice([start..end, 0..p]);
        let logits = contrastive_logits(img.clone(), block, logit_scale.clone(), Some(logit_bias.clone()));
        // +1 where image i and text j are a pair: global text index == image index.
        let labels: Vec<f32> = (0..n)
            .flat_map(|i| (start..end).map(move |j| if j == i + img_offset { 1.0 } else { -1.0 }))
            .collect();
        let labels = Tensor::<2>::from_data(TensorData::new(labels, [n, end - start]), &device);
        let part = -log_sigmoid(logits * labels).sum();
        total = Some(match total {
            Some(t) => t + part,
            None => part,
        });
        start = end;
    }
    total.unwrap_or_else(|| Tensor::zeros([1], &device)) / n as f64
}

/// Positions whose next token [`suffix_cross_entropy`] scores in a row of `width` ids whose
/// suffix of `suffix_len` tokens starts at `prefix` (what its mean divides by, summed over rows).
pub fn suffix_positions(width: usize, prefix: usize, suffix_len: usize) -> usize {
    (1..width).filter(|&next| next >= prefix && next < prefix + suffix_len).count()
}

/// Next-token cross-entropy on the suffix only, as transformers' PaliGemma computes it with the
/// processor's `labels` (-100 on the image, the prompt and the padding): position `t` predicts
/// token `t + 1` for `prefix[b] <= t + 1 < prefix[b] + suffix_len[b]`; the mean over those
/// tokens of the whole batch (not per row). Rows are padded after their suffix.
///
/// # Shapes
/// - `logits`: `[B, L, V]`; `ids`: `[B][L]`; `prefix`, `suffix_len`: `[B]`; output `[1]`
pub fn suffix_cross_entropy(
    logits: Tensor<3>,
    ids: &[Vec<u32>],
    prefix: &[usize],
    suffix_len: &[usize],
) -> Tensor<1> {
    let device = logits.device();
    let [b, l, v] = logits.dims();
    let logp = log_softmax(logits.slice([0..b, 0..l - 1, 0..v]), 2);
    let mut targets = Vec::with_capacity(b * (l - 1));
    let mut weights = Vec::with_capacity(b * (l - 1));
    let mut count = 0usize;
    for (row, r) in ids.iter().enumerate() {
        for t in 0..l - 1 {
            let next = t + 1;
            let on = next >= prefix[row] && next < prefix[row] + suffix_len[row];
            targets.push(if on { r[next] as i64 } else { 0 });
            weights.push(if on { 1.0f32 } else { 0.0 });
            count += on as usize;
        }
    }
    let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [b, l - 1, 1]), &device);
    let picked = logp.gather(2, targets).reshape([b, l - 1]);
    let weights = Tensor::<2>::from_data(TensorData::new(weights, [b, l - 1]), &device);
    -(picked * weights).sum() / count.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, device, tensor_from, to_vec};

    fn embeds(n: usize, p: usize, seed: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..n * p).map(|i| (((i + seed) * 31 % 17) as f32 - 8.0) / 7.0).collect();
        v.chunks(p)
            .flat_map(|r| {
                let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
                r.iter().map(move |x| x / norm).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn losses_match_direct_formulas() {
        let dev = device();
        let (n, p) = (4, 3);
        let (a, b) = (embeds(n, p, 1), embeds(n, p, 5));
        let (t, bias) = (1.3f32, -2.0f32);
        let logit = |i: usize, j: usize| (0..p).map(|k| a[i * p + k] * b[j * p + k]).sum::<f32>() * t.exp();
        // CLIP
        let mut ce_rows = 0.0;
        let mut ce_cols = 0.0;
        for i in 0..n {
            let lse_r = (0..n).map(|j| logit(i, j).exp()).sum::<f32>().ln();
            let lse_c = (0..n).map(|j| logit(j, i).exp()).sum::<f32>().ln();
            ce_rows += lse_r - logit(i, i);
            ce_cols += lse_c - logit(i, i);
        }
        let want = (ce_rows + ce_cols) / (2.0 * n as f32);
        let img = tensor_from(&a, [n, p], &dev);
        let txt = tensor_from(&b, [n, p], &dev);
        let got = clip_loss(img.clone(), txt.clone(), tensor_from(&[t], [1], &dev));
        assert_close(got, &[want], 1e-5, "clip loss");
        // SigLIP, plain and chunked (chunks that do not divide N too).
        let mut s = 0.0;
        for i in 0..n {
            for j in 0..n {
                let z = if i == j { 1.0 } else { -1.0 };
                let x = z * (logit(i, j) + bias);
                s += -(1.0 / (1.0 + (-x).exp())).ln();
            }
        }
        let want = s / n as f32;
        let (ts, bs) = (tensor_from(&[t], [1], &dev), tensor_from(&[bias], [1], &dev));
        let full = siglip_loss(img.clone(), txt.clone(), ts.clone(), bs.clone());
        assert_close(full, &[want], 1e-5, "siglip loss");
        for chunk in [1, 3, 4, 9] {
            let c = siglip_loss_chunked(img.clone(), txt.clone(), ts.clone(), bs.clone(), chunk, 0);
            assert_close(c, &[want], 1e-5, &format!("chunked {chunk}"));
        }
        // Data-parallel split: each half of the images against all texts; the parts sum to the loss.
        let rows = |x: &Tensor<2>, r: std::ops::Range<usize>| x.clone().slice([r, 0..p]);
        let l0 = siglip_loss_chunked(rows(&img, 0..2), txt.clone(), ts.clone(), bs.clone(), 2, 0);
        let l1 = siglip_loss_chunked(rows(&img, 2..4), txt.clone(), ts.clone(), bs.clone(), 3, 2);
        let sum = (to_vec(l0)[0] * 2.0 + to_vec(l1)[0] * 2.0) / n as f32;
        assert!((sum - want).abs() < 1e-4, "{sum} vs {want}");
    }
}
