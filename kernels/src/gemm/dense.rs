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
use super::{PANEL, SyncPtr, amx};
use crate::matmul_f32::Strided;
use half::bf16;
#[cfg(target_arch = "x86_64")]
use rayon::prelude::*;

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

/// `out[b] = lhs[b] (m x k) · rhs[b] (k x n)` for `batch` matrices of bf16, summed in f32,
/// row-major `batch * m * n` f32. `None` without AMX, when an operand reaches outside its
/// buffer, or when the sizes overflow.
pub fn matmul_bf16(
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    lhs: StridedBf16<'_>,
    rhs: StridedBf16<'_>,
) -> Option<Vec<f32>> {
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
    let mut out = vec![0f32; len];
    if len == 0 || k == 0 {
        return Some(out);
    }
    #[cfg(target_arch = "x86_64")]
    for (b, out) in out.chunks_mut(m * n).enumerate() {
        product(b, m, k, n, &lhs, &rhs, out);
    }
    Some(out)
}

/// One matrix of the batch (see [`matmul_bf16`]).
#[cfg(target_arch = "x86_64")]
fn product(
    b: usize,
    m: usize,
    k: usize,
    n: usize,
    lhs: &StridedBf16<'_>,
    rhs: &StridedBf16<'_>,
    out: &mut [f32],
) {
    let kp = k.next_multiple_of(32);
    // Rows 64 bytes more than a multiple of 4 KiB apart (see PackedWeight's AMX path).
    let lda = kp + 32;
    let mp = m.next_multiple_of(amx::ROWS);
    let mut a = vec![0u16; mp * lda];
    let lhs_at = lhs.offset(b);
    let (rs, cs, data) = (lhs.row_stride, lhs.col_stride, lhs.data);
    a.par_chunks_mut(lda * amx::ROWS).enumerate().for_each(|(blk, rows)| {
        let r0 = blk * amx::ROWS;
        let n_rows = amx::ROWS.min(m.saturating_sub(r0));
        if cs == 1 {
            for (i, row) in rows.chunks_mut(lda).take(n_rows).enumerate() {
                let src = &data[lhs_at + (r0 + i) * rs..][..k];
                for (d, s) in row.iter_mut().zip(src) {
                    *d = s.to_bits();
                }
            }
        } else if rs == 1 {
            // A transposed view: each k's rows are contiguous.
            for kk in 0..k {
                let src = &data[lhs_at + kk * cs + r0..][..n_rows];
                for (i, v) in src.iter().enumerate() {
                    rows[i * lda + kk] = v.to_bits();
                }
            }
        } else {
            for i in 0..n_rows {
                for kk in 0..k {
                    rows[i * lda + kk] = get(lhs, b, r0 + i, kk);
                }
            }
        }
    });
    // Panels of 16 columns, kp / 2 pairs each; an even number of them (pairs of panels).
    let panels = n.div_ceil(PANEL).next_multiple_of(2);
    let panel_len = kp * PANEL;
    let mut w = vec![0u16; panels * panel_len];
    let rhs_at = rhs.offset(b);
    let (rs, cs, data) = (rhs.row_stride, rhs.col_stride, rhs.data);
    w.par_chunks_mut(panel_len).enumerate().for_each(|(p, panel)| {
        let cols = PANEL.min(n.saturating_sub(p * PANEL));
        if cols == 0 {
            return;
        }
        if cs == 1 {
            // Rows of B contiguous: each row's 16 columns, interleaved by pairs of rows.
            for kk in 0..k {
                let row = &data[rhs_at + kk * rs + p * PANEL..][..cols];
                let (t, e) = (kk / 2, kk % 2);
                for (c, v) in row.iter().enumerate() {
                    panel[(t * PANEL + c) * 2 + e] = v.to_bits();
                }
            }
        } else if rs == 1 {
            // Columns of B contiguous (a transposed view): each column's k values in turn.
            for c in 0..cols {
                let col = &data[rhs_at + (p * PANEL + c) * cs..][..k];
                for (kk, v) in col.iter().enumerate() {
                    panel[((kk / 2) * PANEL + c) * 2 + kk % 2] = v.to_bits();
                }
            }
        } else {
            for kk in 0..k {
                for c in 0..cols {
                    panel[((kk / 2) * PANEL + c) * 2 + kk % 2] = get(rhs, b, kk, p * PANEL + c);
                }
            }
        }
    });
    let pairs = panels / 2;
    let row_blocks = mp / amx::ROWS;
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let (a, w) = (&a[..], &w[..]);
    (0..row_blocks * pairs).into_par_iter().for_each(|task| {
        let (rb, pp) = (task / pairs, task % pairs);
        let mut c = [0f32; amx::ROWS * 32];
        let out = out_ptr;
        // SAFETY: AMX is usable (`matmul_bf16_available`); `a` has 32 rows of `lda` from row
        // `rb * 32`, each panel `kp / 2` pairs; the task writes rows `rb * 32..` x columns
        // `pp * 32..` of the `m x n` output, which no other task writes.
        unsafe {
            amx::configure();
            amx::zero();
            let b0 = w.as_ptr().add(2 * pp * panel_len);
            amx::accumulate(a.as_ptr().add(rb * amx::ROWS * lda), lda, b0, b0.add(panel_len), kp / 32);
            amx::store(&mut c);
            amx::release();
            let cols = 32.min(n - pp * 32);
            for i in 0..amx::ROWS.min(m - rb * amx::ROWS) {
                let r = rb * amx::ROWS + i;
                std::ptr::copy_nonoverlapping(c[i * 32..].as_ptr(), out.0.add(r * n + pp * 32), cols);
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
        for &(batch, m, k, n) in &[(1, 1, 1, 1), (2, 33, 70, 17), (1, 64, 32, 64), (3, 5, 129, 40)] {
            let a: Vec<bf16> = (0..batch * m * k).map(val).collect();
            let bt: Vec<bf16> = (0..n * k).map(|i| val(i + 7)).collect(); // [n, k]: B transposed
            let a_offsets: Vec<usize> = (0..batch).map(|b| b * m * k).collect();
            let lhs = StridedBf16 { data: &a, offsets: &a_offsets, row_stride: k, col_stride: 1 };
            let rhs = StridedBf16 { data: &bt, offsets: &[0], row_stride: 1, col_stride: k };
            let got = matmul_bf16(batch, m, k, n, lhs, rhs).expect("available");
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
            let short = StridedBf16 { data: &bt[1..], ..rhs };
            assert!(matmul_bf16(batch, m, k, n, lhs, short).is_none());
            // The same right operand row-major ([k, n], columns contiguous) and with both
            // strides above one (every other element of a wider buffer): the same products.
            let b_rows: Vec<bf16> = (0..k * n).map(|i| bt[(i % n) * k + i / n]).collect();
            let rows = StridedBf16 { data: &b_rows, offsets: &[0], row_stride: n, col_stride: 1 };
            assert_eq!(matmul_bf16(batch, m, k, n, lhs, rows).expect("available"), got);
            let spread: Vec<bf16> = b_rows.iter().flat_map(|&v| [v, bf16::ZERO]).collect();
            let wide = StridedBf16 { data: &spread, offsets: &[0], row_stride: 2 * n, col_stride: 2 };
            assert_eq!(matmul_bf16(batch, m, k, n, lhs, wide).expect("available"), got);
            // The left operand transposed (rows contiguous per k) and spread out.
            let at: Vec<bf16> = (0..batch * m * k)
                .map(|i| {
                    let (b, r) = (i / (m * k), i % (m * k));
                    a[b * m * k + (r % m) * k + r / m]
                })
                .collect();
            let lhs_t = StridedBf16 { data: &at, offsets: &a_offsets, row_stride: 1, col_stride: m };
            assert_eq!(matmul_bf16(batch, m, k, n, lhs_t, rhs).expect("available"), got);
            let a_spread: Vec<bf16> = a.iter().flat_map(|&v| [v, bf16::ZERO]).collect();
            let spread_offsets: Vec<usize> = a_offsets.iter().map(|o| 2 * o).collect();
            let lhs_s =
                StridedBf16 { data: &a_spread, offsets: &spread_offsets, row_stride: 2 * k, col_stride: 2 };
            assert_eq!(matmul_bf16(batch, m, k, n, lhs_s, rhs).expect("available"), got);
        }
    }
}
