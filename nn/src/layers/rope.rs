//! Rotary position embedding in the rotate-half convention (Gemma / HF `rotate_half`):
//! the head dim is split into two halves `x1`, `x2` and rotated as
//! `x * cos + cat(-x2, x1) * sin`, with `cos`/`sin` of `position * inv_freq` repeated over the
//! two halves. (Burn's `RotaryEncoding` rotates interleaved pairs instead.)

use burn::prelude::*;

/// Precomputed inverse frequencies `theta^(-2i/d)` for `i in 0..d/2`.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    inv_freq: Vec<f32>,
    head_dim: usize,
}

/// `cos` and `sin` tables for one set of positions.
///
/// # Shapes
/// - `cos`, `sin`: `[B, L, head_dim]`
#[derive(Debug, Clone)]
pub struct RopeTables {
    /// `cos(position * inv_freq)` repeated over both halves.
    pub cos: Tensor<3>,
    /// `sin(position * inv_freq)` repeated over both halves.
    pub sin: Tensor<3>,
}

impl RotaryEmbedding {
    /// Frequencies for an (even) `head_dim` and base `theta`, computed in f32 as transformers does.
    pub fn new(head_dim: usize, theta: f64) -> Self {
        let theta = theta as f32;
        let inv_freq =
            (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect();
        Self { inv_freq, head_dim }
    }

    /// Tables for explicit positions, one row of positions per batch element.
    ///
    /// # Shapes
    /// - `positions`: `[B][L]`
    pub fn tables(&self, positions: &[Vec<i64>], device: &Device) -> RopeTables {
        let b = positions.len();
        let l = positions.first().map_or(0, Vec::len);
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(b * l * self.head_dim);
        let mut sin = Vec::with_capacity(b * l * self.head_dim);
        for row in positions {
            assert_eq!(row.len(), l, "every batch row needs the same number of positions");
            for &p in row {
                let angles: Vec<f32> = self.inv_freq.iter().map(|f| p as f32 * f).collect();
                for _ in 0..2 {
                    cos.extend(angles.iter().map(|a| a.cos()));
                    sin.extend(angles.iter().map(|a| a.sin()));
                }
            }
        }
        debug_assert_eq!(cos.len(), b * l * 2 * half);
        let shape = [b, l, self.head_dim];
        RopeTables {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// The rotated head dimension.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
}

/// Rotates queries or keys.
///
/// # Shapes
/// - `x`: `[B, H, L, head_dim]`; tables `[B, L, head_dim]`; output like `x`
pub fn apply_rotary(x: Tensor<4>, tables: &RopeTables) -> Tensor<4> {
    let [b, h, l, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..l, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..l, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    let dtype = x.dtype();
    let cos = tables.cos.clone().unsqueeze_dim::<4>(1).cast(dtype);
    let sin = tables.sin.clone().unsqueeze_dim::<4>(1).cast(dtype);
    x * cos + rotated * sin
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, device, tensor_from};

    #[test]
    fn rotary_matches_direct_formula() {
        let dev = device();
        let (b, h, l, d) = (2, 3, 4, 8);
        let data: Vec<f32> = (0..b * h * l * d).map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0).collect();
        let positions = vec![vec![0i64, 1, 2, 3], vec![5, 9, 17, 100]];
        let theta = 10_000f64;
        let rope = RotaryEmbedding::new(d, theta);
        let out = apply_rotary(tensor_from(&data, [b, h, l, d], &dev), &rope.tables(&positions, &dev));

        // Direct formula: pair (i, i + d/2) rotated by angle pos * theta^(-2i/d).
        let mut expect = vec![0f32; data.len()];
        for bi in 0..b {
            for hi in 0..h {
                for li in 0..l {
                    let base = ((bi * h + hi) * l + li) * d;
                    let pos = positions[bi][li] as f64;
                    for i in 0..d / 2 {
                        let ang = pos * theta.powf(-((2 * i) as f64) / d as f64);
                        let (x1, x2) = (data[base + i] as f64, data[base + i + d / 2] as f64);
                        expect[base + i] = (x1 * ang.cos() - x2 * ang.sin()) as f32;
                        expect[base + i + d / 2] = (x2 * ang.cos() + x1 * ang.sin()) as f32;
                    }
                }
            }
        }
        assert_close(out, &expect, 1e-4, "rope");
    }
}
