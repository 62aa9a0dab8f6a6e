//! Products of two bf16 matrices on AMX tiles (`--precision bf16` training: the forward and
//! backward products of activations and weights that are both bf16 tensors), f32 sums.
//!
//! Each matrix of the batch is laid out once per call: the left operand as bf16 rows padded to
//! 32 (as [`super::PackedWeight`]'s AMX path lays out activations), the right one as AMX
//! weight panels of 16 columns over pairs of k; then tasks of 32 rows x 32 columns run on the
//! tiles. Operands are read through strides, so transposed views cost nothing more than their
//! gather.

use super::{Kernel, kernel::available};
#[cfg(target_arch = "x86_64")]
use super::{PANEL, SyncPtr, amx, x86};
use crate::matmul_f32::Strided;
use half::bf16;
#[cfg(target_arch = "x86_64")]
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// One bf16 operand of [`matmul_bf16`] (see [`Strided`]).
pub type StridedBf16<'a> = Strided<'a, bf16>;

/// Element `(r, c)` of matrix `b` of a bf16 operand, as bits.
#[cfg(target_arch = "x86_64")]
fn get(s: &StridedBf16<'_>, b: usize, r: usize, c: usize) -> u16 {
    s.data[s.offset(b) + r * s.row_stride + c * s.col_stride].to_bits()
}

/// Whether [`matmul_bf16`] runs on this CPU (AMX-BF16 usable).
pub fn matmul_bf16_available() -> bool {
    available().contains(&Kernel::Amx)
}

/// What [`matmul_bf16`] stores its f32 sums as: f32, or bf16 rounded as `half::bf16::from_f32`
/// rounds (what a bf16 tensor's product gives, without an f32 buffer and a pass after).
///
/// # Safety
/// `store` writes every `dst[i]` for `i < src.len()`: the product's output is handed out as
/// initialised once the stores are done.
pub unsafe trait DenseOut: Copy + Send + Sync + 'static {
    /// Zero.
    const ZERO: Self;
    /// `dst[i] = src[i]` in this type for every `i < src.len()` (`dst` at least as long).
    fn store(src: &[f32], dst: &mut [MaybeUninit<Self>]);
}

// SAFETY: each element of `src` is written (`dst` is asserted long enough by the callers).
unsafe impl DenseOut for f32 {
    const ZERO: Self = 0.0;
    fn store(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
        for (d, s) in dst.iter_mut().zip(src) {
            d.write(*s);
        }
    }
}

// SAFETY: `round_into` writes `src.len()` elements (it asserts `dst` is long enough).
unsafe impl DenseOut for bf16 {
    const ZERO: Self = bf16::ZERO;
    fn store(src: &[f32], dst: &mut [MaybeUninit<bf16>]) {
        crate::convert::round_into(src, dst);
    }
}

/// `out[b] = lhs[b] (m x k) · rhs[b] (k x n)` for `batch` matrices of bf16, summed in f32 and
/// stored as `T` (f32 or bf16), row-major `batch * m * n`. `None` without AMX, when an operand
/// reaches outside its buffer, or when the sizes overflow.
pub fn matmul_bf16<T: DenseOut>(
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    lhs: StridedBf16<'_>,
    rhs: StridedBf16<'_>,
) -> Option<Vec<T>> {
    let len = m.checked_mul(n)?.checked_mul(batch)?;
    let batch_ok = |s: &StridedBf16<'_>| s.offsets.len() == 1 || s.offsets.len() == batch;
    let usable = matmul_bf16_available()
        && batch_ok(&lhs)
        && batch_ok(&rhs)
        && lhs.in_bounds(m, k)
        && rhs.in_bounds(k, n);
    if !usable {
        return None;
    }
    // Laid-out operands of one matrix must fit comfortably (they are per batch entry).
    let kp = k.checked_next_multiple_of(32)?;
    m.checked_next_multiple_of(32)?.checked_mul(kp + 32)?;
    n.checked_next_multiple_of(32)?.checked_mul(kp)?;
    if len == 0 || k == 0 {
        return Some(vec![T::ZERO; len]);
    }
    #[cfg(target_arch = "x86_64")]
    {
        let mut out: Vec<T> = Vec::with_capacity(len);
        for (b, out) in out.spare_capacity_mut()[..len].chunks_mut(m * n).enumerate() {
            product(b, m, k, n, &lhs, &rhs, out);
        }
        // SAFETY: `product` wrote every element of each matrix (its tasks' blocks cover all
        // `m` rows and `n` columns, each stored whole by `DenseOut::store`).
        unsafe { out.set_len(len) };
        Some(out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("AMX is x86-64 only: `matmul_bf16_available` is false elsewhere")
}

/// `dst[..]` as u16 pointer (the layouts write through the vector kernels).
#[cfg(target_arch = "x86_64")]
fn raw(dst: &mut [MaybeUninit<u16>]) -> *mut u16 {
    dst.as_mut_ptr() as *mut u16
}

/// One matrix of the batch (see [`matmul_bf16`]).
#[cfg(target_arch = "x86_64")]
fn product<T: DenseOut>(
    b: usize,
    m: usize,
    k: usize,
    n: usize,
    lhs: &StridedBf16<'_>,
    rhs: &StridedBf16<'_>,
    out: &mut [MaybeUninit<T>],
) {
    let kp = k.next_multiple_of(32);
    // Rows 64 bytes more than a multiple of 4 KiB apart (see PackedWeight's AMX path).
    let lda = kp + 32;
    let mp = m.next_multiple_of(amx::ROWS);
    // AMX CPUs have AVX-512 (F, BW, VL): the transposed layouts run on its gathers.
    let vector = crate::wide::level() == 2;
    let lhs_at = lhs.offset(b);
    let (rs, cs, data) = (lhs.row_stride, lhs.col_stride, lhs.data);
    let a = crate::convert::filled(mp * lda, lda * amx::ROWS, |blk, rows| {
        let src = data.as_ptr() as *const u16;
        let r0 = blk * amx::ROWS;
        let n_rows = amx::ROWS.min(m.saturating_sub(r0));
        let dst = raw(rows);
        if rs == 1 && cs != 1 && vector && x86::gather_stride_ok(cs) {
            // A transposed view (each k's rows contiguous), as a weight's gradient reads the
            // activations. SAFETY: `in_bounds` checked every element of rows `r0..r0 +
            // n_rows` x `0..k`; `rows` holds 32 rows of `lda >= k`.
            unsafe { x86::rows_from_columns(src.add(lhs_at + r0), cs, n_rows, k, dst, lda) };
        } else {
            for i in 0..n_rows {
                let row = &mut rows[i * lda..][..k];
                if cs == 1 {
                    let from = &data[lhs_at + (r0 + i) * rs..][..k];
                    for (d, s) in row.iter_mut().zip(from) {
                        d.write(s.to_bits());
                    }
                } else {
                    for (kk, d) in row.iter_mut().enumerate() {
                        d.write(get(lhs, b, r0 + i, kk));
                    }
                }
            }
        }
        // Zeros past `k` (the tiles read up to `kp`; the rest of `lda` too, so that every
        // element is written) and in the rows past `m`.
        for i in 0..amx::ROWS {
            let from = if i < n_rows { k } else { 0 };
            for d in &mut rows[i * lda + from..(i + 1) * lda] {
                d.write(0);
            }
        }
    });
    // Panels of 16 columns, kp / 2 pairs each; an even number of them (pairs of panels).
    let panels = n.div_ceil(PANEL).next_multiple_of(2);
    let panel_len = kp * PANEL;
    let rhs_at = rhs.offset(b);
    let (rs, cs, data) = (rhs.row_stride, rhs.col_stride, rhs.data);
    let w = crate::convert::filled(panels * panel_len, panel_len, |p, panel| {
        let src = data.as_ptr() as *const u16;
        let cols = PANEL.min(n.saturating_sub(p * PANEL));
        let dst = raw(panel);
        let at = rhs_at + p * PANEL * cs;
        if cols > 0 && vector && cs == 1 {
            // Rows of B contiguous (a weight as Linear keeps it). SAFETY: `in_bounds` checked
            // rows `0..k` x columns `p * 16..` + `cols`; the panel holds `kp / 2` pairs.
            unsafe { x86::panel_from_rows(src.add(at), rs, cols, k, dst, kp / 2) };
        } else if cols > 0 && vector && rs == 1 && x86::gather_stride_ok(cs) {
            // Columns of B contiguous (a transposed view, as the input gradient reads the
            // weight). SAFETY: as above.
            unsafe { x86::panel_from_columns(src.add(at), cs, cols, k, dst, kp / 2) };
        } else {
            for (i, d) in panel.iter_mut().enumerate() {
                let (t, c, e) = (i / (2 * PANEL), (i / 2) % PANEL, i % 2);
                let kk = 2 * t + e;
                d.write(if c < cols && kk < k { get(rhs, b, kk, p * PANEL + c) } else { 0 });
            }
        }
    });
    let pairs = panels / 2;
    let row_blocks = mp / amx::ROWS;
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let (a, w) = (&a[..], &w[..]);
    (0..row_blocks * pairs).into_par_iter().for_each(|task| {
        let (rb, pp) = (task / pairs, task % pairs);
        let mut c = MaybeUninit::<[f32; amx::ROWS * 32]>::uninit();
        let out = out_ptr;
        // SAFETY: AMX is usable (`matmul_bf16_available`); `a` has 32 rows of `lda` from row
        // `rb * 32`, each panel `kp / 2` pairs; the task writes rows `rb * 32..` x columns
        // `pp * 32..` of the `m x n` output (`pp * 32 < n`: `pairs` pairs of 16 columns cover
        // `n` with less than one pair to spare), which no other task writes.
        unsafe {
            amx::configure();
            amx::zero();
            let b0 = w.as_ptr().add(2 * pp * panel_len);
            amx::accumulate(a.as_ptr().add(rb * amx::ROWS * lda), lda, b0, b0.add(panel_len), kp / 32);
            amx::store_to(c.as_mut_ptr() as *mut f32);
            amx::release();
            let c = c.assume_init_ref();
            let cols = 32.min(n - pp * 32);
            // The block in `T` at once (one call for its 1024 values), then its rows.
            let mut block = [MaybeUninit::<T>::uninit(); amx::ROWS * 32];
            T::store(c, &mut block);
            for i in 0..amx::ROWS.min(m - rb * amx::ROWS) {
                let r = rb * amx::ROWS + i;
                std::ptr::copy_nonoverlapping(block[i * 32..].as_ptr(), out.0.add(r * n + pp * 32), cols);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Products of bf16 matrices equal the f64 products of the same values (within f32
    /// summation), for tails of every axis, a transposed right operand, a batch with a shared
    /// right operand; strides out of range are refused.
    #[test]
    fn products_equal_the_f64_reference() {
        if !matmul_bf16_available() {
            return;
        }
        let val = |i: usize| bf16::from_f32(((i * 37 % 101) as f32 - 50.0) / 25.0);
        for &(batch, m, k, n) in &[
            (1, 1, 1, 1),
            (2, 33, 70, 17),
            (1, 64, 32, 64),
            (3, 5, 129, 40),
            (1, 2, 2, 16),
            (1, 70, 301, 49),
        ] {
            let a: Vec<bf16> = (0..batch * m * k).map(val).collect();
            let bt: Vec<bf16> = (0..n * k).map(|i| val(i + 7)).collect(); // [n, k]: B transposed
            let a_offsets: Vec<usize> = (0..batch).map(|b| b * m * k).collect();
            let lhs = StridedBf16 { data: &a, offsets: &a_offsets, row_stride: k, col_stride: 1 };
            let rhs = StridedBf16 { data: &bt, offsets: &[0], row_stride: 1, col_stride: k };
            let got = matmul_bf16::<f32>(batch, m, k, n, lhs, rhs).expect("available");
            for b in 0..batch {
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|kk| a[b * m * k + i * k + kk].to_f64() * bt[j * k + kk].to_f64())
                            .sum();
                        let g = got[(b * m + i) * n + j] as f64;
                        assert!(
                            (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{batch}x{m}x{k}x{n}: {g} vs {want}"
                        );
                    }
                }
            }
            // Stored as bf16: the f32 sums rounded as half rounds them.
            let rounded: Vec<bf16> = matmul_bf16(batch, m, k, n, lhs, rhs).expect("available");
            assert!(rounded.iter().zip(&got).all(|(r, g)| *r == bf16::from_f32(*g)));
            let short = StridedBf16 { data: &bt[1..], ..rhs };
            assert!(matmul_bf16::<f32>(batch, m, k, n, lhs, short).is_none());
            // The same right operand row-major ([k, n], columns contiguous) and with both
            // strides above one (every other element of a wider buffer): the same products.
            let b_rows: Vec<bf16> = (0..k * n).map(|i| bt[(i % n) * k + i / n]).collect();
            let rows = StridedBf16 { data: &b_rows, offsets: &[0], row_stride: n, col_stride: 1 };
            assert_eq!(matmul_bf16::<f32>(batch, m, k, n, lhs, rows).expect("available"), got);
            let spread: Vec<bf16> = b_rows.iter().flat_map(|&v| [v, bf16::ZERO]).collect();
            let wide = StridedBf16 { data: &spread, offsets: &[0], row_stride: 2 * n, col_stride: 2 };
            assert_eq!(matmul_bf16::<f32>(batch, m, k, n, lhs, wide).expect("available"), got);
            // The left operand transposed (rows contiguous per k) and spread out.
            let at: Vec<bf16> = (0..batch * m * k)
                .map(|i| {
                    let (b, r) = (i / (m * k), i % (m * k));
                    a[b * m * k + (r % m) * k + r / m]
                })
                .collect();
            let lhs_t = StridedBf16 { data: &at, offsets: &a_offsets, row_stride: 1, col_stride: m };
            assert_eq!(matmul_bf16::<f32>(batch, m, k, n, lhs_t, rhs).expect("available"), got);
            let a_spread: Vec<bf16> = a.iter().flat_map(|&v| [v, bf16::ZERO]).collect();
            let spread_offsets: Vec<usize> = a_offsets.iter().map(|o| 2 * o).collect();
            let lhs_s =
                StridedBf16 { data: &a_spread, offsets: &spread_offsets, row_stride: 2 * k, col_stride: 2 };
            assert_eq!(matmul_bf16::<f32>(batch, m, k, n, lhs_s, rhs).expect("available"), got);
        }
    }
}
