//! burn-store adapters: PyTorch layouts to Burn's and back (with a parallel tiled transpose of
//! `Linear` weights), scalars as `[1]` vectors, and a parallel float widening.

use burn::tensor::DType;
use burn::tensor::{Shape, TensorData};
use burn_store::{FloatCastAdapter, ModuleAdapter, ModuleContext, PyTorchToBurnAdapter};
use regex::Regex;

/// PyTorch scalar parameters (shape `[]`, e.g. CLIP's `logit_scale`) become `[1]` tensors, as a
/// Burn module holds them.
#[derive(Debug, Clone)]
pub(crate) struct ScalarAsVector;

impl ModuleAdapter for ScalarAsVector {
    fn adapt(
        &self,
        tensor: burn_store::burn_pack::Tensor,
        _ctx: ModuleContext<'_>,
    ) -> burn_store::burn_pack::Tensor {
        if tensor.shape.num_dims() != 0 {
            return tensor;
        }
        let (name, dtype) = (tensor.name.clone(), tensor.dtype);
        burn_store::bridge::map_data(tensor, name, dtype, Shape::new([1]), move |data: TensorData| {
            TensorData::from_bytes_vec(data.as_bytes().to_vec(), [1], dtype)
        })
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// burn-store's [`PyTorchToBurnAdapter`] with a fast transpose of `Linear` weights
/// (`[out, in]` -> `[in, out]`): burn-store copies element by element in source order, which
/// made loading PaliGemma-3B take 42 s against PyTorch's 27 s; here the copy goes tile by tile
/// over all cores. Norm renames and everything else are burn-store's.
#[derive(Debug, Clone)]
pub(crate) struct PyTorchToBurnFast;

/// burn-store's module type name of `burn::nn::Linear` (what its own adapter matches).
const LINEAR: &str = "Struct:Linear";

impl ModuleAdapter for PyTorchToBurnFast {
    fn adapt(
        &self,
        tensor: burn_store::burn_pack::Tensor,
        ctx: ModuleContext<'_>,
    ) -> burn_store::burn_pack::Tensor {
        let is_weight = tensor.name.rsplit('.').next() == Some("weight");
        let size = tensor.dtype.size();
        if ctx.module_type() != Some(LINEAR)
            || !is_weight
            || tensor.shape.num_dims() != 2
            || !matches!(size, 2 | 4 | 8)
            || matches!(tensor.dtype, DType::QFloat(_))
        {
            return PyTorchToBurnAdapter.adapt(tensor, ctx);
        }
        let (name, dtype) = (tensor.name.clone(), tensor.dtype);
        let (rows, cols) = (tensor.shape[0], tensor.shape[1]);
        burn_store::bridge::map_data(
            tensor,
            name,
            dtype,
            Shape::new([cols, rows]),
            move |data: TensorData| {
                let out = match size {
                    2 => transpose_bytes::<2>(data.as_bytes(), rows, cols),
                    4 => transpose_bytes::<4>(data.as_bytes(), rows, cols),
                    _ => transpose_bytes::<8>(data.as_bytes(), rows, cols),
                };
                TensorData::from_bytes_vec(out, [cols, rows], dtype)
            },
        )
    }

    fn get_alternative_param_name(&self, param_name: &str, container_type: &str) -> Option<String> {
        PyTorchToBurnAdapter.get_alternative_param_name(param_name, container_type)
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// [`FloatCastAdapter`] with a parallel widening of BF16/F16 files to F32 (burn-store converts
/// one element at a time on one core: 27 s of PaliGemma-3B's 35 s load). Other casts are
/// burn-store's.
#[derive(Debug, Clone)]
pub(crate) struct FloatCastFast(pub(crate) DType);

impl ModuleAdapter for FloatCastFast {
    fn adapt(
        &self,
        tensor: burn_store::burn_pack::Tensor,
        ctx: ModuleContext<'_>,
    ) -> burn_store::burn_pack::Tensor {
        if self.0 != DType::F32 || !matches!(tensor.dtype, DType::BF16 | DType::F16) {
            return FloatCastAdapter::to(self.0).adapt(tensor, ctx);
        }
        let (name, from, shape) = (tensor.name.clone(), tensor.dtype, tensor.shape.clone());
        burn_store::bridge::map_data(tensor, name, DType::F32, shape.clone(), move |data: TensorData| {
            use rayon::prelude::*;
            let bytes = data.as_bytes();
            let mut out = vec![0f32; bytes.len() / 2];
            out.par_chunks_mut(1 << 16).zip(bytes.par_chunks(2 << 16)).for_each(|(o, b)| {
                for (o, b) in o.iter_mut().zip(b.chunks_exact(2)) {
                    let bits = u16::from_le_bytes([b[0], b[1]]);
                    *o = if from == DType::BF16 {
                        f32::from_bits(u32::from(bits) << 16) // bf16 is the top half of an f32
                    } else {
                        half::f16::from_bits(bits).to_f32()
                    };
                }
            });
            TensorData::new(out, shape.clone())
        })
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// Transposes a row-major `rows x cols` matrix of `E`-byte elements: bands of 32 output rows
/// in parallel, 32 x 32 tiles inside a band (both sides stay in cache).
pub(crate) fn transpose_bytes<const E: usize>(src: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    use rayon::prelude::*;
    const T: usize = 32;
    let mut dst = vec![0u8; rows * cols * E];
    if rows == 0 || cols == 0 {
        return dst;
    }
    dst.par_chunks_mut(T * rows * E).enumerate().for_each(|(band, out)| {
        let j0 = band * T; // first output row = first source column of this band
        let jn = out.len() / (rows * E);
        for i0 in (0..rows).step_by(T) {
            for dj in 0..jn {
                let j = j0 + dj;
                for i in i0..(i0 + T).min(rows) {
                    let s = (i * cols + j) * E;
                    let d = (dj * rows + i) * E;
                    out[d..d + E].copy_from_slice(&src[s..s + E]);
                }
            }
        }
    });
    dst
}

/// The reverse of [`ScalarAsVector`] for saving: `[1]` tensors at the listed paths become `[]`.
#[derive(Debug, Clone)]
pub(crate) struct VectorAsScalar(pub(crate) Vec<Regex>);

impl ModuleAdapter for VectorAsScalar {
    fn adapt(
        &self,
        tensor: burn_store::burn_pack::Tensor,
        _ctx: ModuleContext<'_>,
    ) -> burn_store::burn_pack::Tensor {
        if tensor.shape.num_dims() != 1
            || tensor.shape[0] != 1
            || !self.0.iter().any(|r| r.is_match(&tensor.name))
        {
            return tensor;
        }
        let (name, dtype) = (tensor.name.clone(), tensor.dtype);
        burn_store::bridge::map_data(tensor, name, dtype, Shape::new([0usize; 0]), move |data: TensorData| {
            TensorData::from_bytes_vec(data.as_bytes().to_vec(), [0usize; 0], dtype)
        })
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}
