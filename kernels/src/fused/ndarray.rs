//! ndarray: the forward softmax and GELUs on owned tensors (moved out, not copied) take the host
//! kernels; everything else composes its tensor ops, since reading shared ndarray tensors out for
//! the kernels copies them element by element, which measured slower than its own ops (tiny
//! SigLIP training 15.1 -> 4.8 steps/s with every op on the host).

use super::*;

impl FusedOps for burn::backend::NdArray {
    fn x_sigmoid(x: FloatTensor<Self>, a: f32, b: f32) -> FloatTensor<Self> {
        match owned_f32(x) {
            Ok((v, shape, device)) => {
                Self::float_from_data(TensorData::new(host_ops::x_sigmoid(&v, a, b), shape), &device)
            }
            Err(x) => composed::x_sigmoid::<Self>(x, a, b),
        }
    }

    fn softmax_last(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        match owned_f32(x) {
            Ok((v, shape, device)) => {
                let n = shape[shape.num_dims() - 1];
                Self::float_from_data(TensorData::new(host_ops::softmax(&v, n, scale), shape), &device)
            }
            Err(x) => composed::softmax_last::<Self>(x, scale),
        }
    }
}

/// The elements of an f32 tensor, moved out of it (`Err` with the tensor for other dtypes).
type NdArrayFloat = FloatTensor<burn::backend::NdArray>;

fn owned_f32(
    x: NdArrayFloat,
) -> Result<(Vec<f32>, Shape, <NdArrayFloat as TensorMetadata>::Device), NdArrayFloat> {
    if x.dtype() != DType::F32 {
        return Err(x);
    }
    let (shape, device) = (x.shape(), x.device());
    let data = burn::tensor::try_read_sync(burn::backend::NdArray::float_into_data(x));
    match data.and_then(Result::ok).map(|d| d.into_vec::<f32>()) {
        Some(Ok(v)) => Ok((v, shape, device)),
        _ => unreachable!("an f32 CPU tensor reads back as f32"),
    }
}
