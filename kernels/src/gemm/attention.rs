//! Attention on AMX tiles, for inference with packed (bf16 / int8) weights: `softmax(q·kᵀ)·v`
//! with q, k, p and v rounded to bf16 and every sum in f32, block by block, without the
//! `[B, H, L, S]` score tensors of the tensor-op path (written, read, written and read again
//! in f32) or its copies between head layouts.
//!
//! Keys are laid out once per (batch, key/value head) as AMX weight panels of 16 keys
//! (`x86::stage_pairs`), values as panels of 16 head dimensions over pairs of positions; each
//! task then takes 32 query rows of one head: their scores against all keys (one row block of
//! f32 in the task's own buffer), the softmax of each row (the same rules as
//! [`crate::host_ops::softmax`]: masked positions excluded, a fully masked row uniform,
//! probabilities below the smallest normal float 0), and the product of the probabilities
//! with the values, written straight into `[B, L, H * D]`, the layout the output projection
//! reads.

use super::{Kernel, kernel::available};
#[cfg(target_arch = "x86_64")]
use super::{PANEL, SyncPtr, amx, x86};
use crate::host_ops::{exp, max, reduce};
#[cfg(target_arch = "x86_64")]
use rayon::prelude::*;

/// Sizes of an attention call. Query head `h` reads key/value head `h / (heads / kv_heads)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// `B`.
    pub batch: usize,
    /// Query heads `H`.
    pub heads: usize,
    /// Key/value heads `K` (`H % K == 0`).
    pub kv_heads: usize,
    /// Query positions `L`.
    pub len: usize,
    /// Key positions `S`.
    pub keys: usize,
    /// Head width `D`.
    pub head_dim: usize,
}

/// Where q, k or v is: element `(b, head, position, d)` at
/// `offset + b * batch + head * head_stride + position * row + d` of `data` (head-major
/// `[B, H, L, D]` tensors and token-major `[B, L, width]` projection outputs alike).
#[derive(Clone, Copy, Debug)]
pub struct Heads<'a> {
    /// The values.
    pub data: &'a [f32],
    /// Index of element `(0, 0, 0, 0)`.
    pub offset: usize,
    /// Between batch entries.
    pub batch: usize,
    /// Between heads.
    pub head_stride: usize,
    /// Between positions.
    pub row: usize,
}

impl<'a> Heads<'a> {
    /// A row-major `[B, heads, len, D]` tensor.
    pub fn head_major(data: &'a [f32], heads: usize, len: usize, d: usize) -> Self {
        Self { data, offset: 0, batch: heads * len * d, head_stride: len * d, row: d }
    }

    /// Heads `D` wide starting at column `at` of row-major `[B, len, width]` rows.
    pub fn token_major(data: &'a [f32], len: usize, width: usize, at: usize, d: usize) -> Self {
        Self { data, offset: at, batch: len * width, head_stride: d, row: width }
    }

    /// Position `l` of head `h` of entry `b`: `d` values.
    #[inline]
    fn at(&self, b: usize, h: usize, l: usize, d: usize) -> &'a [f32] {
        let i = self.offset + b * self.batch + h * self.head_stride + l * self.row;
        &self.data[i..i + d]
    }

    /// Whether every element of `[batch, heads, len, d]` is inside `data`.
    fn covers(&self, batch: usize, heads: usize, len: usize, d: usize) -> bool {
        let last = |n: usize, stride: usize| n.saturating_sub(1).checked_mul(stride);
        let end = [last(batch, self.batch), last(heads, self.head_stride), last(len, self.row)]
            .into_iter()
            .try_fold(self.offset + d, |acc, x| x.and_then(|x| acc.checked_add(x)));
        batch * heads * len * d == 0 || end.is_some_and(|e| e <= self.data.len())
    }
}

/// The mask of an attention call: `true` = masked, `[B or 1, L, S]` row-major.
#[derive(Clone, Copy, Debug)]
pub struct AttentionMask<'a> {
    /// The flags.
    pub masked: &'a [bool],
    /// Whether each batch entry has its own `[L, S]` (else one for all).
    pub per_batch: bool,
}

/// Whether [`attention_bf16`] runs on this CPU (AMX-BF16 usable, and AVX512-BF16 for rounding).
pub fn attention_bf16_available() -> bool {
    available().contains(&Kernel::Amx) && available().contains(&Kernel::Avx512Bf16)
}

/// `out[b, l, h * D + d] = sum_s p[b, h, l, s] v[b, h / G, s, d]` with `p` the softmax over `s`
/// of `scale * q·k` (soft-capped to `cap * tanh(x / cap)` when `softcap` is set), masked
/// positions excluded: q `[B, H, L, D]`, k and v `[B, K, S, D]` (laid out as [`Heads`] say);
/// output `[B, L, H * D]`. `None` when the CPU lacks AMX ([`attention_bf16_available`]), the
/// sizes disagree with the slices, or `H % K != 0`.
pub fn attention_bf16(
    q: Heads<'_>,
    k: Heads<'_>,
    v: Heads<'_>,
    shape: AttentionShape,
    mask: Option<AttentionMask<'_>>,
    scale: f32,
    softcap: Option<f32>,
) -> Option<Vec<f32>> {
    let AttentionShape { batch, heads, kv_heads, len, keys, head_dim } = shape;
    let sizes_agree = kv_heads > 0
        && heads.is_multiple_of(kv_heads)
        && q.covers(batch, heads, len, head_dim)
        && k.covers(batch, kv_heads, keys, head_dim)
        && v.covers(batch, kv_heads, keys, head_dim)
        && mask.is_none_or(|m| m.masked.len() == if m.per_batch { batch } else { 1 } * len * keys);
    if !attention_bf16_available() || !sizes_agree {
        return None;
    }
    let mut out = vec![0f32; batch * len * heads * head_dim];
    if out.is_empty() || keys == 0 {
        return Some(out);
    }
    #[cfg(target_arch = "x86_64")]
    {
        let dp = head_dim.next_multiple_of(32);
        let sp = keys.next_multiple_of(32);
        // Per (batch, kv head): key panels (sp / 16 of dp / 2 pairs) then value panels
        // (dp / 16 of sp / 2 pairs), both sp * dp bf16.
        let per = 2 * sp * dp;
        let mut staged = vec![0u16; batch * kv_heads * per];
        staged.par_chunks_mut(per).enumerate().for_each(|(bk, buf)| {
            let (kp, vp) = buf.split_at_mut(sp * dp);
            let (b, kh) = (bk / kv_heads, bk % kv_heads);
            stage_keys(|s| k.at(b, kh, s, head_dim), keys, dp, kp);
            stage_values(|s| v.at(b, kh, s, head_dim), keys, head_dim, dp, vp);
        });
        let blocks = len.div_ceil(amx::ROWS);
        let group = heads / kv_heads;
        let out_ptr = SyncPtr(out.as_mut_ptr());
        let staged = &staged[..];
        (0..batch * heads * blocks).into_par_iter().for_each_init(
            || Scratch::new(dp, sp),
            |scratch, task| {
                let (bh, rb) = (task / blocks, task % blocks);
                let (b, h) = (bh / heads, bh % heads);
                let bk = b * kv_heads + h / group;
                let buf = &staged[bk * per..(bk + 1) * per];
                let rows = rb * amx::ROWS..((rb + 1) * amx::ROWS).min(len);
                let q = |l: usize| q.at(b, h, l, head_dim);
                let mask = mask.map(|m| {
                    let at = if m.per_batch { b * len * keys } else { 0 };
                    &m.masked[at + rows.start * keys..at + rows.end * keys]
                });
                let out = out_ptr;
                // SAFETY: `attention_bf16_available` checked AMX and AVX512-BF16; each task
                // writes rows `rows` of head `h` of batch entry `b`, which no other task writes,
                // inside the `batch * len * heads * head_dim` output.
                unsafe { block(&q, buf, shape, dp, sp, mask, scale, softcap, scratch, out.0, b, h, rows) };
            },
        );
    }
    Some(out)
}

#[cfg(target_arch = "x86_64")]
/// A task's buffers: 32 query rows, their scores and probabilities, one accumulator block.
struct Scratch {
    q: Vec<u16>,
    scores: Vec<f32>,
    p: Vec<u16>,
}

#[cfg(target_arch = "x86_64")]
impl Scratch {
    fn new(dp: usize, sp: usize) -> Self {
        Self { q: vec![0; amx::ROWS * dp], scores: vec![0.0; amx::ROWS * sp], p: vec![0; amx::ROWS * sp] }
    }
}

/// Keys `[S, D]` as `sp / 16` AMX weight panels of 16 keys x `dp / 2` pairs of head dims.
#[cfg(target_arch = "x86_64")]
fn stage_keys<'a>(k: impl Fn(usize) -> &'a [f32], keys: usize, dp: usize, kp: &mut [u16]) {
    let mut rows = vec![0u16; PANEL * dp];
    for (j, panel) in kp.chunks_mut(PANEL * dp).enumerate() {
        let n = PANEL.min(keys.saturating_sub(j * PANEL));
        rows.fill(0);
        for c in 0..n {
            let s = j * PANEL + c;
            // SAFETY: AVX512-BF16 is present (checked by the caller's caller); the row has
            // `dp >= d` elements.
            unsafe { x86::round_bf16(k(s), &mut rows[c * dp..(c + 1) * dp]) };
        }
        // SAFETY: AVX-512F is present; `n` rows of `dp` bf16 (64 * dp / 32 bytes each) are
        // readable, and the panel has `16 * dp` u16 = `256 * dp / 32` u32.
        unsafe {
            x86::stage_pairs(rows.as_ptr() as *const u8, dp * 2, n, dp / 32, panel.as_mut_ptr() as *mut u32)
        };
    }
}

/// Values `[S, D]` as `dp / 16` panels of 16 head dims x `sp / 2` pairs of positions: the rows
/// rounded to bf16 (vector), then each panel's pairs of positions interleaved 64 bytes at a
/// time (`x86::panel_from_rows`; element by element this was 5% of a CLIP-B/32 encode).
#[cfg(target_arch = "x86_64")]
fn stage_values<'a>(v: impl Fn(usize) -> &'a [f32], keys: usize, d: usize, dp: usize, vp: &mut [u16]) {
    let pairs = vp.len() / dp / 2;
    let mut rows = vec![0u16; keys * d];
    for s in 0..keys {
        // SAFETY: AVX512-BF16 is present (checked by the caller's caller); the row has `d`.
        unsafe { x86::round_bf16(&v(s)[..d], &mut rows[s * d..(s + 1) * d]) };
    }
    // Panels past `d` stay zero (as the caller made them).
    for j in 0..d.div_ceil(PANEL) {
        let cols = PANEL.min(d - j * PANEL);
        let panel = &mut vp[j * pairs * PANEL * 2..(j + 1) * pairs * PANEL * 2];
        // SAFETY: AMX CPUs have AVX512F/BW/VL; rows `0..keys` x columns `j * 16..` + `cols`
        // of the `keys x d` rows are readable; the panel holds `pairs >= keys / 2` pairs.
        unsafe { x86::panel_from_rows(rows[j * PANEL..].as_ptr(), d, cols, keys, panel.as_mut_ptr(), pairs) };
    }
}

/// One task: query rows `rows` of head `h` of batch entry `b` (see [`attention_bf16`]).
///
/// # Safety
/// AMX and AVX512-BF16 are usable; `out` holds the `[B, L, H * D]` output and no other task
/// writes these rows of this head.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn block<'a>(
    q: &impl Fn(usize) -> &'a [f32],
    staged: &[u16],
    shape: AttentionShape,
    dp: usize,
    sp: usize,
    mask: Option<&[bool]>,
    scale: f32,
    softcap: Option<f32>,
    scratch: &mut Scratch,
    out: *mut f32,
    b: usize,
    h: usize,
    rows: std::ops::Range<usize>,
) {
    let AttentionShape { heads, len, keys, head_dim: d, .. } = shape;
    let n = rows.len();
    let (kp, vp) = staged.split_at(sp * dp);
    scratch.q.fill(0);
    for i in 0..n {
        // SAFETY: AVX512-BF16 is present; the row has `dp >= d` elements.
        unsafe { x86::round_bf16(q(rows.start + i), &mut scratch.q[i * dp..(i + 1) * dp]) };
    }
    let mut c = [0f32; amx::ROWS * 32];
    // SAFETY: AMX is usable (the caller's contract).
    unsafe { amx::configure() };
    // Scores: 32 rows x 32 keys per step, over dp / 32 blocks of head dims.
    for jp in 0..sp / 32 {
        let b0 = kp[2 * jp * PANEL * dp..].as_ptr();
        let b1 = kp[(2 * jp + 1) * PANEL * dp..].as_ptr();
        // SAFETY: configured; 32 rows of `dp` bf16, and two panels of `dp / 2` pairs.
        unsafe {
            amx::zero();
            amx::accumulate(scratch.q.as_ptr(), dp, b0, b1, dp / 32);
            amx::store(&mut c);
        }
        for i in 0..n {
            scratch.scores[i * sp + jp * 32..i * sp + jp * 32 + 32].copy_from_slice(&c[i * 32..i * 32 + 32]);
        }
    }
    scratch.p.fill(0);
    for i in 0..n {
        let row = &mut scratch.scores[i * sp..i * sp + keys];
        let masked = mask.map(|m| &m[i * keys..(i + 1) * keys]);
        softmax_row(row, masked, scale, softcap);
        // SAFETY: AVX512-BF16 is present; the probability row has `sp >= keys` elements.
        unsafe { x86::round_bf16(row, &mut scratch.p[i * sp..(i + 1) * sp]) };
    }
    // Output: 32 rows x 32 head dims per step, over sp / 32 blocks of positions.
    let pairs = sp / 2;
    for dj in 0..dp / 32 {
        let b0 = vp[2 * dj * pairs * PANEL * 2..].as_ptr();
        let b1 = vp[(2 * dj + 1) * pairs * PANEL * 2..].as_ptr();
        // SAFETY: configured; 32 rows of `sp` bf16, two panels of `sp / 2` pairs.
        unsafe {
            amx::zero();
            amx::accumulate(scratch.p.as_ptr(), sp, b0, b1, sp / 32);
            amx::store(&mut c);
        }
        let cols = 32.min(d - dj * 32);
        for i in 0..n {
            let l = rows.start + i;
            let at = ((b * len + l) * heads + h) * d + dj * 32;
            // SAFETY: row `l` of head `h` of entry `b` is this task's, within the output.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.add(at), cols) };
            dst.copy_from_slice(&c[i * 32..i * 32 + cols]);
        }
    }
    // SAFETY: configured above.
    unsafe { amx::release() };
}

#[cfg(target_arch = "x86_64")]
crate::wide_fn! {
    /// `softmax(z)` in place with `z = scale * x` (or `cap * tanh(scale * x / cap)`), masked
    /// positions 0 and excluded; a fully masked row is uniform; probabilities below the
    /// smallest normal float are 0.
    fn softmax_row(x: &mut [f32], masked: Option<&[bool]>, scale: f32, softcap: Option<f32>) {
        match softcap {
            // tanh(y) = 1 - 2 / (e^2y + 1), on the vectorised exponential.
            Some(cap) => {
                for v in x.iter_mut() {
                    let y = *v * scale / cap;
                    *v = cap * (1.0 - 2.0 / (exp(2.0 * y) + 1.0));
                }
            }
            None => x.iter_mut().for_each(|v| *v *= scale),
        }
        if let Some(m) = masked {
            for (v, &m) in x.iter_mut().zip(m) {
                *v = if m { f32::NEG_INFINITY } else { *v };
            }
        }
        let max = max(x);
        if max == f32::NEG_INFINITY {
            x.fill(1.0 / x.len() as f32);
            return;
        }
        // exp(-inf) is 0 (the exponential gives 0 below -87).
        x.iter_mut().for_each(|v| *v = exp(*v - max));
        let inv = 1.0 / reduce(x, |v| v);
        for v in x.iter_mut() {
            let p = *v * inv;
            *v = if p < f32::MIN_POSITIVE { 0.0 } else { p };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 3.0
            })
            .collect()
    }

    /// f64 attention of the f32 inputs.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        sh: AttentionShape,
        mask: Option<AttentionMask<'_>>,
        scale: f64,
        softcap: Option<f64>,
    ) -> Vec<f64> {
        let AttentionShape { batch, heads, kv_heads, len, keys, head_dim: d } = sh;
        let mut out = vec![0f64; batch * len * heads * d];
        for b in 0..batch {
            for h in 0..heads {
                let kh = b * kv_heads + h / (heads / kv_heads);
                for l in 0..len {
                    let qi = &q[((b * heads + h) * len + l) * d..][..d];
                    let masked = |s: usize| {
                        mask.is_some_and(|m| {
                            m.masked[if m.per_batch { b * len * keys } else { 0 } + l * keys + s]
                        })
                    };
                    let z: Vec<f64> = (0..keys)
                        .map(|s| {
                            let ks = &k[(kh * keys + s) * d..][..d];
                            let dot: f64 = qi.iter().zip(ks).map(|(a, b)| *a as f64 * *b as f64).sum();
                            match softcap {
                                Some(c) => c * (dot * scale / c).tanh(),
                                None => dot * scale,
                            }
                        })
                        .collect();
                    let max =
                        (0..keys).filter(|&s| !masked(s)).map(|s| z[s]).fold(f64::NEG_INFINITY, f64::max);
                    let p: Vec<f64> = if max == f64::NEG_INFINITY {
                        vec![1.0 / keys as f64; keys]
                    } else {
                        let e: Vec<f64> =
                            (0..keys).map(|s| if masked(s) { 0.0 } else { (z[s] - max).exp() }).collect();
                        let sum: f64 = e.iter().sum();
                        e.iter().map(|x| x / sum).collect()
                    };
                    for dd in 0..d {
                        out[((b * len + l) * heads + h) * d + dd] =
                            (0..keys).map(|s| p[s] * v[(kh * keys + s) * d + dd] as f64).sum();
                    }
                }
            }
        }
        out
    }

    /// Tails of every padded axis (one key, one row, 33 keys, 40 rows, head widths 64 and 72),
    /// grouped heads, masks shared and per entry (one row fully masked), and a soft cap: within
    /// bf16's rounding of q, k, p and v.
    #[test]
    fn attention_equals_the_f64_reference_on_edge_shapes() {
        if !attention_bf16_available() {
            return;
        }
        let shapes =
            [(1, 1, 1, 1, 1, 64), (2, 4, 2, 40, 33, 64), (1, 3, 3, 17, 50, 72), (2, 2, 1, 33, 65, 32)];
        for (i, &(batch, heads, kv_heads, len, keys, head_dim)) in shapes.iter().enumerate() {
            let sh = AttentionShape { batch, heads, kv_heads, len, keys, head_dim };
            let q = data(batch * heads * len * head_dim, 3 + i as u32);
            let k = data(batch * kv_heads * keys * head_dim, 5 + i as u32);
            let v = data(batch * kv_heads * keys * head_dim, 7 + i as u32);
            let causal: Vec<bool> =
                (0..batch * len * keys).map(|j| (j % keys) > (j / keys) % len + 2).collect();
            let mut per_row = causal.clone();
            per_row[..keys].iter_mut().for_each(|m| *m = true); // entry 0, row 0: all masked
            let masks = [
                None,
                Some(AttentionMask { masked: &causal[..len * keys], per_batch: false }),
                Some(AttentionMask { masked: &per_row, per_batch: true }),
            ];
            for mask in masks {
                for softcap in [None, Some(5.0f32)] {
                    let scale = (head_dim as f32).powf(-0.5);
                    let hm = |t, n, l| Heads::head_major(t, n, l, head_dim);
                    let (qh, kh, vh) = (hm(&q, heads, len), hm(&k, kv_heads, keys), hm(&v, kv_heads, keys));
                    let got = attention_bf16(qh, kh, vh, sh, mask, scale, softcap).expect("available");
                    let want = reference(&q, &k, &v, sh, mask, scale as f64, softcap.map(f64::from));
                    let worst = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
                    assert!(
                        worst < 1.5e-2,
                        "{sh:?} mask {} softcap {softcap:?}: max |d| {worst}",
                        mask.is_some()
                    );
                }
            }
        }
    }

    /// q, k and v read from one token-major `[B, L, (H + 2K) D]` buffer (the projections side
    /// by side) give exactly what the head-major tensors give.
    #[test]
    fn token_major_heads_equal_head_major_ones() {
        if !attention_bf16_available() {
            return;
        }
        let (batch, heads, kv_heads, len, d) = (2, 4, 2, 37, 24);
        let sh = AttentionShape { batch, heads, kv_heads, len, keys: len, head_dim: d };
        let width = (heads + 2 * kv_heads) * d;
        let qkv = data(batch * len * width, 13);
        let head_major = |at: usize, n: usize| {
            let mut t = vec![0f32; batch * n * len * d];
            for b in 0..batch {
                for h in 0..n {
                    for l in 0..len {
                        let src = &qkv[(b * len + l) * width + at + h * d..][..d];
                        t[((b * n + h) * len + l) * d..][..d].copy_from_slice(src);
                    }
                }
            }
            t
        };
        let (q, k, v) = (
            head_major(0, heads),
            head_major(heads * d, kv_heads),
            head_major((heads + kv_heads) * d, kv_heads),
        );
        let hm = |t, n| Heads::head_major(t, n, len, d);
        let want = attention_bf16(hm(&q, heads), hm(&k, kv_heads), hm(&v, kv_heads), sh, None, 0.3, None);
        let tm = |at| Heads::token_major(&qkv, len, width, at, d);
        let got = attention_bf16(tm(0), tm(heads * d), tm((heads + kv_heads) * d), sh, None, 0.3, None);
        assert_eq!(got.expect("available"), want.expect("available"));
    }

    #[test]
    fn mismatched_sizes_are_refused() {
        let sh = AttentionShape { batch: 1, heads: 2, kv_heads: 2, len: 3, keys: 4, head_dim: 8 };
        let (q, k) = (vec![0f32; 48], vec![0f32; 64]);
        let hm = |t, len| Heads::head_major(t, 2, len, 8);
        assert!(attention_bf16(hm(&q[..47], 3), hm(&k, 4), hm(&k, 4), sh, None, 1.0, None).is_none());
        let sh3 = AttentionShape { kv_heads: 3, ..sh };
        assert!(attention_bf16(hm(&q, 3), hm(&k, 4), hm(&k, 4), sh3, None, 1.0, None).is_none());
        let tm = Heads::token_major(&k, 4, 16, 9, 8);
        assert!(attention_bf16(hm(&q, 3), tm, tm, sh, None, 1.0, None).is_none(), "past the end");
    }
}
