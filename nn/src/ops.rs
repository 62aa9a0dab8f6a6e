//! Small tensor functions shared by the model crates.

use burn::prelude::*;

/// `x / ||x||_2` along the last dim (no epsilon, as transformers normalises embeddings).
///
/// # Shapes
/// - `x`: `[B, D]`; output `[B, D]`
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt();
    x / norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, device, tensor_from};

    #[test]
    fn rows_get_unit_norm() {
        let out = l2_normalize(tensor_from(&[3.0, 4.0, 0.0, -2.0], [2, 2], &device()));
        assert_close(out, &[0.6, 0.8, 0.0, -1.0], 1e-6, "l2");
    }
}
