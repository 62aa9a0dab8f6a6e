//! What a weight is packed from: an f32/bf16 slice ([`Matrix`]) or a checkpoint's bytes read in
//! place ([`RawMatrix`]).

use rayon::prelude::*;

/// Where element `(row, col)` of the source matrix is, as f32.
pub trait Source: Sync {
    /// `W[row, col]`.
    fn get(&self, row: usize, col: usize) -> f32;

    /// Row `row` as little-endian bf16 bytes, when the source stores it so (the fast path).
    fn bf16_row(&self, _row: usize) -> Option<&[u8]> {
        None
    }

    /// Rows `first..` (`out.len() / k` of them, `k` columns each) as f32 into `out`, row after
    /// row. Sources stored by rows read each row's bytes in one pass; a transposed matrix reads
    /// each column's run of these rows (contiguous) in turn.
    fn rows_f32(&self, first: usize, k: usize, out: &mut [f32]) {
        for (i, row) in out.chunks_mut(k.max(1)).enumerate() {
            for (col, x) in row.iter_mut().enumerate() {
                *x = self.get(first + i, col);
            }
        }
    }
}

crate::wide_fn! {
    /// Little-endian f32 bytes as f32.
    fn f32_from_bytes(bytes: &[u8], out: &mut [f32]) {
        for (x, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
}

crate::wide_fn! {
    /// Little-endian bf16 bytes widened to f32 (exact).
    fn f32_from_bf16_bytes(bytes: &[u8], out: &mut [f32]) {
        for (x, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *x = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
        }
    }
}

/// A row-major `[rows, cols]` slice (`transposed = false`: `W[n, k]`; `true`: `W^T[k, n]`,
/// Burn's Linear layout).
pub struct Matrix<'a, T> {
    /// The values.
    pub data: &'a [T],
    /// Columns of the stored matrix.
    pub cols: usize,
    /// Whether the stored matrix is `W^T`.
    pub transposed: bool,
}

impl<T: Copy + Sync + Into<f32>> Source for Matrix<'_, T> {
    #[inline]
    fn get(&self, row: usize, col: usize) -> f32 {
        let i = if self.transposed { col * self.cols + row } else { row * self.cols + col };
        self.data[i].into()
    }

    fn rows_f32(&self, first: usize, k: usize, out: &mut [f32]) {
        let rows = out.len() / k.max(1);
        if self.transposed {
            // `W^T[k, n]`: column `kk` of these rows is `rows` contiguous values.
            for kk in 0..k {
                let run = &self.data[kk * self.cols + first..][..rows];
                for (i, v) in run.iter().enumerate() {
                    out[i * k + kk] = (*v).into();
                }
            }
        } else {
            for (i, row) in out.chunks_mut(k.max(1)).enumerate() {
                for (x, v) in row.iter_mut().zip(&self.data[(first + i) * self.cols..][..k]) {
                    *x = (*v).into();
                }
            }
        }
    }
}

/// The element type of a [`RawMatrix`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawDtype {
    /// 4-byte IEEE floats.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl RawDtype {
    /// A safetensors dtype name (`F32`, `BF16`, `F16`), `None` for others.
    pub fn from_safetensors(name: &str) -> Option<Self> {
        match name {
            "F32" => Some(Self::F32),
            "BF16" => Some(Self::Bf16),
            "F16" => Some(Self::F16),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        if self == Self::F32 { 4 } else { 2 }
    }
}

/// A row-major `W[n, k]` in a checkpoint's little-endian bytes, read in place (no aligned copy,
/// no conversion of the whole matrix).
pub struct RawMatrix<'a> {
    /// The bytes (`n * k * dtype.size()`).
    pub bytes: &'a [u8],
    /// Their element type.
    pub dtype: RawDtype,
    /// Columns (`k`).
    pub cols: usize,
}

impl RawMatrix<'_> {
    #[inline]
    fn bits16(&self, i: usize) -> u16 {
        u16::from_le_bytes([self.bytes[2 * i], self.bytes[2 * i + 1]])
    }

    /// Whether any element is NaN or infinite (an all-ones exponent), checked over all cores.
    pub fn has_non_finite(&self) -> bool {
        let bytes = self.bytes;
        match self.dtype {
            RawDtype::F32 => bytes.par_chunks(1 << 18).any(|c| {
                c.chunks_exact(4)
                    .any(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000)
            }),
            RawDtype::Bf16 | RawDtype::F16 => {
                let mask = if self.dtype == RawDtype::Bf16 { 0x7f80 } else { 0x7c00 };
                bytes.par_chunks(1 << 18).any(|c| {
                    c.chunks_exact(2)
                        .fold(false, |bad, b| bad | (u16::from_le_bytes([b[0], b[1]]) & mask == mask))
                })
            }
        }
    }
}

impl Source for RawMatrix<'_> {
    #[inline]
    fn get(&self, row: usize, col: usize) -> f32 {
        let i = row * self.cols + col;
        match self.dtype {
            RawDtype::F32 => {
                let b = &self.bytes[4 * i..4 * i + 4];
                f32::from_le_bytes([b[0], b[1], b[2], b[3]])
            }
            RawDtype::Bf16 => f32::from_bits((self.bits16(i) as u32) << 16),
            RawDtype::F16 => half::f16::from_bits(self.bits16(i)).to_f32(),
        }
    }

    fn bf16_row(&self, row: usize) -> Option<&[u8]> {
        (self.dtype == RawDtype::Bf16).then(|| &self.bytes[row * self.cols * 2..(row + 1) * self.cols * 2])
    }

    fn rows_f32(&self, first: usize, k: usize, out: &mut [f32]) {
        let size = self.dtype.size();
        for (i, out) in out.chunks_mut(k.max(1)).enumerate() {
            let bytes = &self.bytes[(first + i) * self.cols * size..][..out.len() * size];
            match self.dtype {
                RawDtype::F32 => f32_from_bytes(bytes, out),
                RawDtype::Bf16 => f32_from_bf16_bytes(bytes, out),
                RawDtype::F16 => {
                    for (x, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                        *x = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                    }
                }
            }
        }
    }
}
