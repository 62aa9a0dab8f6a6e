//! bf16 <-> f32 over whole slices, vectorised ([`crate::wide_fn!`]) and split over the cores:
//! the casts of `--precision bf16` training (the f32 master weights to their bf16 view each
//! step, the bf16 gradients back), the bf16 tensors the fused ops read and write, and the bf16
//! products' outputs. Burn's Flex casts element by element on one core (6.7% of a SigLIP-B/16
//! bf16 training step, perf), and the fused ops did the same through iterators (6.2%).
//!
//! The results are those of `half::bf16::from_f32` / `to_f32` bit for bit (to nearest, ties to
//! even; NaNs keep their high mantissa bits with the quiet bit set; subnormals kept), so moving
//! a conversion here changes no value.
#![allow(unsafe_code)]

use half::bf16;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per rayon task.
const CHUNK: usize = 64 * 1024;

/// `half::bf16::from_f32(f32::from_bits(x)).to_bits()`, branch-free so loops vectorise.
#[inline(always)]
fn round_bits(x: u32) -> u16 {
    let nan = x & 0x7FFF_FFFF > 0x7F80_0000;
    // To nearest, ties to even: the low half plus 0x7FFF carries unless below the tie, and the
    // lowest kept bit breaks the tie.
    let rounded = x.wrapping_add(0x7FFF + ((x >> 16) & 1)) >> 16;
    if nan { ((x >> 16) | 0x40) as u16 } else { rounded as u16 }
}

/// `half::bf16::from_bits(x).to_f32().to_bits()`, branch-free.
#[inline(always)]
fn widen_bits(x: u16) -> u32 {
    let nan = x & 0x7FFF > 0x7F80;
    let x = x as u32;
    if nan { (x | 0x40) << 16 } else { x << 16 }
}

crate::wide_fn! {
    /// `dst[i] = bf16(src[i])` on this thread (`dst` at least as long as `src`).
    fn round_run(src: &[f32], dst: &mut [MaybeUninit<bf16>]) {
        for (d, s) in dst.iter_mut().zip(src) {
            d.write(bf16::from_bits(round_bits(s.to_bits())));
        }
    }
}

crate::wide_fn! {
    /// `dst[i] = f32(src[i])` on this thread (`dst` at least as long as `src`).
    fn widen_run(src: &[bf16], dst: &mut [MaybeUninit<f32>]) {
        for (d, s) in dst.iter_mut().zip(src) {
            d.write(f32::from_bits(widen_bits(s.to_bits())));
        }
    }
}

/// `dst[i] = bf16(src[i])` for `i < src.len()` on the calling thread: one block of a product's
/// output. `dst` must be at least as long as `src`.
pub(crate) fn round_into(src: &[f32], dst: &mut [MaybeUninit<bf16>]) {
    assert!(dst.len() >= src.len(), "round_into: {} values into {}", src.len(), dst.len());
    round_run(src, dst);
}

/// A new vector of `n` elements written by `fill(i, chunk)` over its chunks of `chunk`
/// elements (`i`: the chunk's index), on the pool when `n` is large. `fill` must write every
/// element of its chunk: the length is set once all have run.
pub(crate) fn filled<T: Send>(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    let spare = &mut out.spare_capacity_mut()[..n];
    let chunk = chunk.max(1);
    if n <= crate::host_ops::INLINE {
        spare.chunks_mut(chunk).enumerate().for_each(|(i, c)| fill(i, c));
    } else {
        spare.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| fill(i, c));
    }
    // SAFETY: the chunks cover `0..n` and `fill` writes each element of its chunk (its
    // contract; the conversions below write `min(src, dst)` elements with `src` as long as the
    // chunk, and the bf16 products' layouts write every row and padding element).
    unsafe { out.set_len(n) };
    out
}

/// `src` rounded to bf16 (as `half::bf16::from_f32`), on every core for large slices.
pub fn to_bf16(src: &[f32]) -> Vec<bf16> {
    filled(src.len(), CHUNK, |i, dst| round_run(&src[i * CHUNK..i * CHUNK + dst.len()], dst))
}

/// `src` widened to f32 (as `half::bf16::to_f32`), on every core for large slices.
pub fn to_f32(src: &[bf16]) -> Vec<f32> {
    filled(src.len(), CHUNK, |i, dst| widen_run(&src[i * CHUNK..i * CHUNK + dst.len()], dst))
}

/// `a + b` element by element, an empty side standing for zeros: the chunks' partial sums.
fn add_sums(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    if a.is_empty() {
        return b;
    }
    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
    a
}

/// Elements of the f32 working copy a chunk of [`through_f32`] gets (rows kept whole): small
/// enough to stay in L2 between its widening, its op and its rounding.
const WORKING: usize = 16 * 1024;

/// An f32 operation on bf16 tensors without f32 copies of them: over chunks of whole rows of
/// `n` elements, each chunk's `inputs` (equal lengths, multiples of `n`) are widened into
/// f32 in cache, `f` runs on them (on this thread: the host ops run inline at this size) and
/// its first result (as long as a chunk) is rounded into the bf16 output; its second result
/// (any fixed length, e.g. a norm's per-column gradient sums) is summed over the chunks. This
/// reads and writes 2 bytes an element where widening, the op and rounding as whole-tensor
/// passes move 20 (tanh-GELU of a bf16 tensor).
pub fn through_f32(
    inputs: &[&[bf16]],
    n: usize,
    f: impl Fn(&[&[f32]]) -> (Vec<f32>, Vec<f32>) + Sync,
) -> (Vec<bf16>, Vec<f32>) {
    let len = inputs.first().map_or(0, |x| x.len());
    assert!(inputs.iter().all(|x| x.len() == len), "through_f32: inputs of unequal lengths");
    let step = (WORKING / n.max(1)).max(1) * n.max(1);
    let mut out = Vec::with_capacity(len);
    let chunk = |(i, dst): (usize, &mut [MaybeUninit<bf16>])| {
        let at = i * step;
        let wide: Vec<Vec<f32>> = inputs.iter().map(|x| to_f32(&x[at..at + dst.len()])).collect();
        let refs: Vec<&[f32]> = wide.iter().map(Vec::as_slice).collect();
        let (y, extra) = f(&refs);
        assert_eq!(y.len(), dst.len(), "through_f32: an op gave {} values for {}", y.len(), dst.len());
        round_run(&y, dst);
        extra
    };
    let spare = &mut out.spare_capacity_mut()[..len];
    let extra = if len <= crate::host_ops::INLINE {
        spare.chunks_mut(step).enumerate().map(chunk).fold(Vec::new(), add_sums)
    } else {
        spare.par_chunks_mut(step).enumerate().map(chunk).reduce(Vec::new, add_sums)
    };
    // SAFETY: the chunks cover `0..len` and each was written by `round_run` (its `y` is as
    // long as the chunk, asserted).
    unsafe { out.set_len(len) };
    (out, extra)
}

/// Partial results of `f` over chunks of whole rows of `n` of a bf16 slice, each chunk widened
/// into f32 in cache (as [`through_f32`] does), added up: a reduction of a bf16 tensor
/// (a bias's gradient) without an f32 copy of it. Empty for an empty slice.
pub fn sum_through_f32(x: &[bf16], n: usize, f: impl Fn(&[f32]) -> Vec<f32> + Sync) -> Vec<f32> {
    let step = (WORKING / n.max(1)).max(1) * n.max(1);
    let part = |chunk: &[bf16]| f(&to_f32(chunk));
    if x.len() <= crate::host_ops::INLINE {
        x.chunks(step).map(part).fold(Vec::new(), add_sums)
    } else {
        x.par_chunks(step).map(part).reduce(Vec::new, add_sums)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every conversion equals `half`'s, on values chosen to hit ties (both parities), the
    /// round-up carry into the exponent, infinities, NaNs with payloads and subnormals; over a
    /// length that takes the pool path and has a tail.
    #[test]
    fn equal_half_bit_for_bit() {
        let special = [
            0.0f32,
            -0.0,
            1.0,
            f32::from_bits(0x3F80_8000), // tie, even low bit: stays
            f32::from_bits(0x3F81_8000), // tie, odd low bit
            f32::from_bits(0x3F80_8001),
            f32::from_bits(0x3F80_7FFF),
            f32::from_bits(0x7F7F_FFFF), // rounds up to infinity
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7F80_0001), // signalling NaN, low payload
            f32::from_bits(0xFFC1_2345),
            f32::from_bits(0x0000_8000), // subnormal tie
            f32::MIN_POSITIVE,
        ];
        let n = crate::host_ops::INLINE * 3 + 17;
        let src: Vec<f32> = (0..n)
            .map(|i| match i % 7 {
                0 => special[(i / 7) % special.len()],
                _ => f32::from_bits((i as u32).wrapping_mul(2_654_435_761)),
            })
            .collect();
        let want: Vec<u16> = src.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
        let got: Vec<u16> = to_bf16(&src).iter().map(|v| v.to_bits()).collect();
        if let Some(i) = (0..n).find(|&i| got[i] != want[i]) {
            panic!("to_bf16({:#x}) = {:#x}, half gives {:#x}", src[i].to_bits(), got[i], want[i]);
        }
        let halves: Vec<bf16> =
            (0..n).map(|i| bf16::from_bits((i as u32).wrapping_mul(40_503) as u16)).collect();
        let want: Vec<u32> = halves.iter().map(|v| v.to_f32().to_bits()).collect();
        let got: Vec<u32> = to_f32(&halves).iter().map(|v| v.to_bits()).collect();
        if let Some(i) = (0..n).find(|&i| got[i] != want[i]) {
            panic!("to_f32({:#x}) = {:#x}, half gives {:#x}", halves[i].to_bits(), got[i], want[i]);
        }
        // A short slice stays on the calling thread; an empty one is empty.
        assert_eq!(to_bf16(&src[..5]).len(), 5);
        assert!(to_f32(&[]).is_empty());
    }

    /// An op through f32 chunks gives what whole-tensor passes give (rows whole: bit for bit),
    /// on the pool path with a last partial chunk; second results are summed over the chunks.
    #[test]
    fn through_f32_equals_whole_passes() {
        let (n, rows) = (197, 700);
        let val = |i: usize, s: usize| bf16::from_f32(((i * s % 101) as f32 - 50.0) / 17.0);
        let x: Vec<bf16> = (0..n * rows).map(|i| val(i, 37)).collect();
        let g: Vec<bf16> = (0..n * rows).map(|i| val(i, 53)).collect();
        let (wx, wg) = (to_f32(&x), to_f32(&g));
        let want = to_bf16(&crate::host_ops::softmax_backward(&wx, &wg, n, 0.5));
        let op = |i: &[&[f32]]| (crate::host_ops::softmax_backward(i[0], i[1], n, 0.5), Vec::new());
        let (got, sums) = through_f32(&[&x, &g], n, op);
        assert!(got == want && sums.is_empty());
        let gamma: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 / n as f32).collect();
        let (dx, dgamma, dbeta) = crate::host_ops::layer_norm_backward(&wx, &gamma, &wg, 1e-5);
        let (got, sums) = through_f32(&[&x, &g], n, |i| {
            let (dx, dg, db) = crate::host_ops::layer_norm_backward(i[0], &gamma, i[1], 1e-5);
            (dx, [dg, db].concat())
        });
        assert!(got == to_bf16(&dx));
        for (s, w) in sums.iter().zip(dgamma.iter().chain(&dbeta)) {
            assert!((s - w).abs() <= 1e-3 * (1.0 + w.abs()), "{s} vs {w}");
        }
        assert_eq!(through_f32(&[&x[..0]], n, op).0.len(), 0);
        // A reduction of the rows: the bias gradient's column sums.
        let want = crate::host_ops::column_sums(&wx, n);
        let got = sum_through_f32(&x, n, |c| crate::host_ops::column_sums(c, n));
        for (s, w) in got.iter().zip(&want) {
            assert!((s - w).abs() <= 1e-3 * (1.0 + w.abs()), "{s} vs {w}");
        }
        assert!(sum_through_f32(&x[..0], n, |c| crate::host_ops::column_sums(c, n)).is_empty());
    }
}
