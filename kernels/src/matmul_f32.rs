//! The f32 matrix product of training and of f32 inference on the host: strided operands read
//! in place through the `gemm` crate Flex uses, results in fresh f32 buffers.

// `gemm::gemm` takes raw pointers; the bounds it reads and writes are checked first (SAFETY below).
#![allow(unsafe_code)]

use rayon::prelude::*;

/// One operand of [`matmul_f32`] (or, of bf16, of [`crate::gemm::matmul_bf16`]):
/// `data[offset_b + r * row_stride + c * col_stride]` is element `(r, c)` of matrix `b`, with
/// `offsets` holding `offset_b` for every matrix of the batch (one entry: the same matrix for
/// all, as a Linear weight is).
#[derive(Debug)]
pub struct Strided<'a, T = f32> {
    /// The buffer holding every matrix.
    pub data: &'a [T],
    /// Start of each matrix in `data` (length 1 or the batch size).
    pub offsets: &'a [usize],
    /// Element step between rows.
    pub row_stride: usize,
    /// Element step between columns.
    pub col_stride: usize,
}

// Derived Clone/Copy would ask `T: Copy`; the fields are references and integers.
impl<T> Clone for Strided<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Strided<'_, T> {}

impl<T> Strided<'_, T> {
    /// Whether every element of every `rows x cols` matrix lies inside `data`.
    pub(crate) fn in_bounds(&self, rows: usize, cols: usize) -> bool {
        let last = |o: usize| {
            let r = rows.checked_sub(1)?.checked_mul(self.row_stride)?;
            let c = cols.checked_sub(1)?.checked_mul(self.col_stride)?;
            o.checked_add(r)?.checked_add(c)
        };
        rows == 0 || cols == 0 || self.offsets.iter().all(|&o| last(o).is_some_and(|l| l < self.data.len()))
    }

    /// Where matrix `b` starts.
    pub(crate) fn offset(&self, b: usize) -> usize {
        self.offsets[if self.offsets.len() == 1 { 0 } else { b }]
    }
}

/// `out[b] = lhs[b] (m x k) · rhs[b] (k x n)` for `batch` matrices, row-major in a fresh buffer
/// of `batch * m * n` (not zeroed first: the product writes every element), through the same
/// `gemm` crate as Flex's matmul, reading strided operands in place (transposes are free). Large
/// products use every core; batches of small ones are split over the cores. `None` when an
/// operand's offsets or strides reach outside its buffer or the sizes overflow.
pub fn matmul_f32(
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    lhs: Strided,
    rhs: Strided,
) -> Option<Vec<f32>> {
    let per = m.checked_mul(n)?;
    let len = per.checked_mul(batch)?;
    let batch_ok = |s: &Strided| s.offsets.len() == 1 || s.offsets.len() == batch;
    if !(batch_ok(&lhs) && batch_ok(&rhs) && lhs.in_bounds(m, k) && rhs.in_bounds(k, n)) {
        return None;
    }
    let isize_ok = |v: usize| isize::try_from(v).is_ok();
    if ![lhs.row_stride, lhs.col_stride, rhs.row_stride, rhs.col_stride, n].into_iter().all(isize_ok) {
        return None;
    }
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return Some(out);
    }
    // Work per product; below ~7M multiply-adds gemm's own threading does not pay (Flex's
    // thresholds).
    let ops = m.saturating_mul(n).saturating_mul(k);
    let run = |dst: *mut f32, b: usize, parallelism: gemm::Parallelism| {
        // SAFETY: `dst` points at `m * n` writable f32s (one matrix of `out`'s capacity, disjoint
        // per `b`); with `read_dst = false` gemm writes each of them once and reads none. Every
        // operand element gemm reads, `offset + r * row_stride + c * col_stride` for `r < rows`,
        // `c < cols`, was checked above to lie inside its slice, and the strides fit `isize`.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst,
                1,
                n as isize,
                false,
                lhs.data.as_ptr().add(lhs.offset(b)),
                lhs.col_stride as isize,
                lhs.row_stride as isize,
                rhs.data.as_ptr().add(rhs.offset(b)),
                rhs.col_stride as isize,
                rhs.row_stride as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    };
    let spare = &mut out.spare_capacity_mut()[..len];
    if k == 0 {
        spare.iter_mut().for_each(|v| {
            v.write(0.0);
        });
    } else if ops >= 192 * 192 * 192 && (batch < 4 || batch.saturating_mul(ops) < 128 * 128 * 128) {
        for (b, dst) in spare.chunks_mut(per).enumerate() {
            run(dst.as_mut_ptr().cast(), b, gemm::Parallelism::Rayon(0));
        }
    } else if batch > 1 && batch.saturating_mul(ops) >= 128 * 128 * 128 {
        spare
            .par_chunks_mut(per)
            .enumerate()
            .for_each(|(b, dst)| run(dst.as_mut_ptr().cast(), b, gemm::Parallelism::None));
    } else {
        let parallelism =
            if ops >= 192 * 192 * 192 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        for (b, dst) in spare.chunks_mut(per).enumerate() {
            run(dst.as_mut_ptr().cast(), b, parallelism);
        }
    }
    // SAFETY: every one of the `len` elements was written above (gemm writes each output once;
    // `k == 0` wrote zeros).
    unsafe { out.set_len(len) };
    Some(out)
}

/// `out[b] = lhs[b] · rhs[b]` for bf16 operands on CPUs without AMX: both buffers widened to
/// f32 (exactly) and read in place, with the same offsets and strides, by [`matmul_f32`]; the
/// f32 sums rounded to bf16 once (as the AMX tiles' are). `None` as for `matmul_f32`.
pub fn matmul_bf16_widened(
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    lhs: Strided<half::bf16>,
    rhs: Strided<half::bf16>,
) -> Option<Vec<half::bf16>> {
    fn wide<'b>(op: &Strided<'b, half::bf16>, data: &'b [f32]) -> Strided<'b, f32> {
        Strided { data, offsets: op.offsets, row_stride: op.row_stride, col_stride: op.col_stride }
    }
    let (lw, rw) = (crate::convert::to_f32(lhs.data), crate::convert::to_f32(rhs.data));
    let out = matmul_f32(batch, m, k, n, wide(&lhs, &lw), wide(&rhs, &rw))?;
    Some(crate::convert::to_bf16(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The widened bf16 product equals the f32 product of the same (bf16) values, rounded once:
    /// a batch against a shared transposed rhs, and one large product (on every core).
    #[test]
    fn widened_bf16_products_round_the_f32_product_once() {
        use half::bf16;
        for (batch, m, k, n) in [(3, 17, 33, 9), (1, 200, 200, 200)] {
            let a: Vec<bf16> =
                (0..batch * m * k).map(|i| bf16::from_f32(((i * 7 % 13) as f32 - 6.0) / 5.3)).collect();
            let b: Vec<bf16> =
                (0..k * n).map(|i| bf16::from_f32(((i * 5 % 11) as f32 - 5.0) / 4.1)).collect();
            let a_off: Vec<usize> = (0..batch).map(|i| i * m * k).collect();
            let got = matmul_bf16_widened(
                batch,
                m,
                k,
                n,
                Strided { data: &a, offsets: &a_off, row_stride: k, col_stride: 1 },
                Strided { data: &b, offsets: &[0], row_stride: 1, col_stride: k },
            )
            .expect("in bounds");
            for bi in 0..batch {
                for r in 0..m {
                    for c in 0..n {
                        let want: f64 =
                            (0..k).map(|j| a[bi * m * k + r * k + j].to_f64() * b[c * k + j].to_f64()).sum();
                        let v = got[(bi * m + r) * n + c].to_f64();
                        // bf16's rounding of the output (2^-8 relative) and f32 sums.
                        assert!(
                            (v - want).abs() <= 4e-3 * want.abs() + 1e-3,
                            "{batch}x{m}x{k}x{n} [{bi},{r},{c}]: {v} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// `matmul_f32` on each of its three schedules (one large product on every core, a batch of
    /// small ones split over the cores, small work inline) against a plain triple loop, with a
    /// transposed (column-major) rhs; out-of-bounds operands are refused.
    #[test]
    fn strided_f32_products_equal_the_definition() {
        for (batch, m, k, n) in [(1, 200, 200, 200), (9, 64, 64, 64), (3, 5, 7, 4)] {
            let a: Vec<f32> = (0..batch * m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect(); // [n, k] rows
            let a_off: Vec<usize> = (0..batch).map(|i| i * m * k).collect();
            let lhs = Strided { data: &a, offsets: &a_off, row_stride: k, col_stride: 1 };
            let rhs = Strided { data: &b, offsets: &[0], row_stride: 1, col_stride: k };
            let got = matmul_f32(batch, m, k, n, lhs, rhs).expect("in bounds");
            for bi in 0..batch {
                for r in 0..m {
                    for c in 0..n {
                        let want: f64 =
                            (0..k).map(|j| a[bi * m * k + r * k + j] as f64 * b[c * k + j] as f64).sum();
                        let v = got[(bi * m + r) * n + c] as f64;
                        assert!(
                            (v - want).abs() < 1e-3 * (1.0 + want.abs()),
                            "{batch}x{m}x{k}x{n} [{bi},{r},{c}]: {v} vs {want}"
                        );
                    }
                }
            }
            let short = Strided { data: &b[..k * n - 1], ..rhs };
            assert!(matmul_f32(batch, m, k, n, lhs, short).is_none());
        }
    }
}
