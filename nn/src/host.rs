//! Moving data between the host and a device: the one place production code reads tensors back
//! (as f32, whatever the compute dtype) and turns token ids into a tensor.

use burn::prelude::*;
use burn::tensor::DType;

/// The elements of a float tensor as f32, row-major (bf16/f16 tensors are widened first).
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    // Cast to F32 first, so the data is f32 and the conversion cannot fail.
    t.cast(DType::F32).into_data().try_into_vec::<f32>().expect("data cast to f32 is f32")
}

/// The rows of a matrix as f32 vectors.
///
/// # Shapes
/// - `t`: `[R, C]`; output `R` rows of `C` values
pub fn rows(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, c] = t.dims();
    to_vec(t).chunks(c.max(1)).map(<[f32]>::to_vec).collect()
}

/// The first element of a float tensor (a loss, a scale) as f64.
pub fn scalar<const D: usize>(t: Tensor<D>) -> f64 {
    to_vec(t).first().copied().map_or(f64::NAN, f64::from)
}

/// Token ids of equal-length rows as an `int[B, L]` tensor.
pub fn ids_tensor(ids: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let (b, l) = (ids.len(), ids.first().map_or(0, Vec::len));
    let flat: Vec<i64> = ids.iter().flatten().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(flat, [b, l]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{device, tensor_from};

    #[test]
    fn round_trips() {
        let dev = device();
        let t = tensor_from(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3], &dev);
        assert_eq!(rows(t.clone()), vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]);
        assert_eq!(scalar(t), 1.0);
        let ids = ids_tensor(&[vec![1, 2], vec![3, 4]], &dev);
        assert_eq!(ids.dims(), [2, 2]);
        assert_eq!(ids.into_data().convert::<i64>().try_into_vec::<i64>().expect("i64"), vec![1, 2, 3, 4]);
    }
}
