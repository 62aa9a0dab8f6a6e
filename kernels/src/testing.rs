//! Helpers for the tests of this crate and the workspace's (re-exported by `zoo_nn::testing`):
//! tensors from slices and tolerance comparisons that print the largest difference they saw.

use burn::prelude::*;
use burn::tensor::DType;

/// A float tensor of `shape` from `data` (row-major).
pub fn tensor_from<const D: usize>(data: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), device)
}

/// The elements of a float tensor as f32, row-major.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(DType::F32).into_data().try_into_vec::<f32>().expect("f32 data")
}

/// Largest `|a - b| - (atol + rtol*|b|)` over all elements, and the largest plain `|a - b|`.
pub fn max_excess(actual: &[f32], expected: &[f32], atol: f32, rtol: f32) -> (f32, f32) {
    let mut excess = f32::NEG_INFINITY;
    let mut max_diff = 0f32;
    for (a, b) in actual.iter().zip(expected) {
        let d = (a - b).abs();
        let d = if d.is_nan() { f32::INFINITY } else { d };
        max_diff = max_diff.max(d);
        excess = excess.max(d - (atol + rtol * b.abs()));
    }
    (excess, max_diff)
}

/// Asserts `actual` equals `expected` within `tol + tol*|expected|`, printing the largest
/// difference.
#[track_caller]
pub fn assert_close<const D: usize>(actual: Tensor<D>, expected: &[f32], tol: f32, what: &str) {
    let actual = to_vec(actual);
    assert_slices_close(&actual, expected, tol, what);
}

/// Slice form of [`assert_close`].
#[track_caller]
pub fn assert_slices_close(actual: &[f32], expected: &[f32], tol: f32, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length differs");
    let (excess, max_diff) = max_excess(actual, expected, tol, tol);
    println!("{what}: max |diff| = {max_diff:.3e} over {} values", actual.len());
    assert!(excess <= 0.0, "{what}: max |diff| {max_diff:.3e} exceeds {tol:e} + {tol:e}*|ref|");
}
