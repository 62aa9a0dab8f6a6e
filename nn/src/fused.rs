//! Fused operations with their own backward pass, as a Burn backend extension: softmax over the
//! last axis (with a scale folded in), `x * sigmoid(x * (a + b x^2))` (tanh-GELU, quick-GELU),
//! LayerNorm, the matrix product, and AdamW's update ([`crate::optim::AdamW`]).
//!
//! Each is one operation in the autodiff graph whose backward pass is one more: Burn's autodiff
//! otherwise records the 5-10 primitive ops each of these chains is made of (LayerNorm's mean,
//! subtraction, square, mean, sqrt, division, scale and shift) and replays each backward with
//! its own pass and buffer, on one core for Flex's elementwise ops. On Flex, f32 tensors go to
//! the host kernels of [`crate::cpu_kernels`] and [`crate::cpu_gemm::matmul_f32`] (read in
//! place, results in fresh f32 buffers); ndarray, other dtypes and the CUDA backend compose the
//! same functions from tensor operations ([`composed`]), forward and backward. The elementwise
//! backward passes keep only the inputs (checkpointed like Burn's own memory-bound ops, so
//! gradient checkpointing recomputes them) and recompute what they need; the product keeps its
//! operands as Burn's does.

// Burn 0.22 deprecates ndarray in favour of Flex; both are offered (see device.rs).
#![allow(deprecated)]

use crate::cpu_kernels as host;
use burn::backend::autodiff::checkpoint::{
    base::Checkpointer, retro_forward::RetroForward, state::BackwardStates, strategy::CheckpointStrategy,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::ops::FloatTensorOps;
use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension, tensor::FloatTensor};
use burn::prelude::*;
use burn::tensor::DType;
use std::borrow::Cow;
use std::marker::PhantomData;

/// The fused operations. Default bodies compose tensor operations ([`composed`]); the CPU
/// backends override them with host kernels for f32, and `Autodiff<B, C>` records each as one
/// operation with the backward below.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "cuda"),
    Autodiff,
)]
pub trait FusedOps: Backend {
    /// `x * sigmoid(x * (a + b x^2))`.
    fn x_sigmoid(x: FloatTensor<Self>, a: f32, b: f32) -> FloatTensor<Self> {
        composed::x_sigmoid::<Self>(x, a, b)
    }

    /// The input gradient of [`FusedOps::x_sigmoid`] for the output gradient `grad`.
    fn x_sigmoid_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        a: f32,
        b: f32,
    ) -> FloatTensor<Self> {
        composed::x_sigmoid_backward::<Self>(x, grad, a, b)
    }

    /// `softmax(scale * x)` over the last axis (`scale > 0`).
    fn softmax_last(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        composed::softmax_last::<Self>(x, scale)
    }

    /// The input gradient of [`FusedOps::softmax_last`] for the output gradient `grad`.
    fn softmax_last_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        composed::softmax_last_backward::<Self>(x, grad, scale)
    }

    /// LayerNorm over the last axis: `(x - mean) / sqrt(var + eps) * gamma + beta`.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        composed::layer_norm::<Self>(x, gamma, beta, eps)
    }

    /// The gradients of [`FusedOps::fused_layer_norm`] for the output gradient `grad`:
    /// `(dx, dgamma, dbeta)`.
    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed::layer_norm_backward::<Self>(x, gamma, grad, eps)
    }

    /// One AdamW step ([`host::adamw`]) on a parameter: `(param, m, v)` after it.
    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        step: host::AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed::adamw_step::<Self>(param, grad, m, v, step)
    }

    /// `lhs · rhs` over the last two axes: `[..., M, K] x [..., K, N]`, the batch axes of `rhs`
    /// equal to `lhs`'s or all 1 (one matrix for every batch entry, as a Linear weight is).
    fn fused_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }
}

/// One AdamW step on a parameter tensor `param` with gradient `grad` and moments `m`, `v`, as
/// one pass (in place where the buffers are not shared): `(param, m, v)` after it.
pub fn adamw_step<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    m: Tensor<D>,
    v: Tensor<D>,
    step: host::AdamWStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let (p, m, v) = <Dispatch as FusedOps>::adamw_step(
        param.into_dispatch(),
        grad.into_dispatch(),
        m.into_dispatch(),
        v.into_dispatch(),
        step,
    );
    (Tensor::from_dispatch(p), Tensor::from_dispatch(m), Tensor::from_dispatch(v))
}

/// `lhs · rhs` over the last two axes on any device, with its own backward pass: on Flex in f32
/// the products read transposed and strided operands in place and write fresh f32 buffers
/// ([`crate::cpu_gemm::matmul_f32`]), and a weight shared by the batch gets its gradient from
/// one product over all rows.
///
/// # Shapes
/// - `lhs`: `[..., M, K]`; `rhs`: `[..., K, N]` with the batch axes of `lhs` or all 1
pub fn matmul<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_matmul(lhs.into_dispatch(), rhs.into_dispatch()))
}

/// `x * sigmoid(x * (a + b x^2))` on any device, differentiable as one operation.
pub fn x_sigmoid<const D: usize>(x: Tensor<D>, a: f32, b: f32) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::x_sigmoid(x.into_dispatch(), a, b))
}

/// `softmax(scale * x)` over the last axis on any device, differentiable as one operation.
pub fn softmax_last<const D: usize>(x: Tensor<D>, scale: f32) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::softmax_last(x.into_dispatch(), scale))
}

/// LayerNorm over the last axis on any device, differentiable as one operation.
///
/// # Shapes
/// - `x`: `[..., C]`; `gamma`, `beta`: `[C]`; output like `x`
pub fn layer_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        eps,
    ))
}

/// The same functions from tensor operations, for any backend and dtype.
pub mod composed {
    use super::*;

    fn last<B: Backend>(t: &FloatTensor<B>) -> usize {
        t.shape().num_dims() - 1
    }

    /// See [`FusedOps::x_sigmoid`].
    pub fn x_sigmoid<B: Backend>(x: FloatTensor<B>, a: f32, b: f32) -> FloatTensor<B> {
        let s = B::sigmoid(z::<B>(x.clone(), a, b));
        B::float_mul(x, s)
    }

    /// `x * (a + b x^2)`.
    fn z<B: Backend>(x: FloatTensor<B>, a: f32, b: f32) -> FloatTensor<B> {
        let x2 = B::float_mul(x.clone(), x.clone());
        B::float_mul(B::float_add_scalar(B::float_mul_scalar(x2, (b as f64).into()), (a as f64).into()), x)
    }

    /// See [`FusedOps::x_sigmoid_backward`]: `g * (s + x s (1 - s) (a + 3 b x^2))`.
    pub fn x_sigmoid_backward<B: Backend>(
        x: FloatTensor<B>,
        grad: FloatTensor<B>,
        a: f32,
        b: f32,
    ) -> FloatTensor<B> {
        let s = B::sigmoid(z::<B>(x.clone(), a, b));
        let ds = B::float_sub(s.clone(), B::float_mul(s.clone(), s.clone())); // s (1 - s)
        let x2 = B::float_mul(x.clone(), x.clone());
        let dz = B::float_add_scalar(B::float_mul_scalar(x2, (3.0 * b as f64).into()), (a as f64).into());
        let d = B::float_add(s, B::float_mul(B::float_mul(x, ds), dz));
        B::float_mul(grad, d)
    }

    /// See [`FusedOps::softmax_last`].
    pub fn softmax_last<B: Backend>(x: FloatTensor<B>, scale: f32) -> FloatTensor<B> {
        let dim = last::<B>(&x);
        let x = if scale == 1.0 { x } else { B::float_mul_scalar(x, (scale as f64).into()) };
        B::softmax(x, dim)
    }

    /// See [`FusedOps::softmax_last_backward`]: `scale * y * (g - sum(g * y))`.
    pub fn softmax_last_backward<B: Backend>(
        x: FloatTensor<B>,
        grad: FloatTensor<B>,
        scale: f32,
    ) -> FloatTensor<B> {
        let dim = last::<B>(&x);
        let y = softmax_last::<B>(x, scale);
        let dot = B::float_sum_dim(B::float_mul(grad.clone(), y.clone()), dim);
        let out = B::float_mul(y, B::float_sub(grad, dot));
        if scale == 1.0 { out } else { B::float_mul_scalar(out, (scale as f64).into()) }
    }

    /// See [`FusedOps::adamw_step`].
    pub fn adamw_step<B: Backend>(
        param: FloatTensor<B>,
        grad: FloatTensor<B>,
        m: FloatTensor<B>,
        v: FloatTensor<B>,
        h: host::AdamWStep,
    ) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
        let s = |x: f32| -> burn::backend::Scalar { (x as f64).into() };
        let m = B::float_add(
            B::float_mul_scalar(m, s(h.beta_1)),
            B::float_mul_scalar(grad.clone(), s(1.0 - h.beta_1)),
        );
        let g2 = B::float_mul(grad.clone(), grad);
        let v = B::float_add(B::float_mul_scalar(v, s(h.beta_2)), B::float_mul_scalar(g2, s(1.0 - h.beta_2)));
        let root = B::float_add_scalar(
            B::float_sqrt(B::float_div_scalar(v.clone(), s(h.correction_2))),
            s(h.epsilon),
        );
        let update = B::float_div(B::float_div_scalar(m.clone(), s(h.correction_1)), root);
        let param =
            B::float_sub(B::float_mul_scalar(param, s(1.0 - h.decay)), B::float_mul_scalar(update, s(h.lr)));
        (param, m, v)
    }

    /// See [`FusedOps::fused_layer_norm`].
    pub fn layer_norm<B: Backend>(
        x: FloatTensor<B>,
        gamma: FloatTensor<B>,
        beta: FloatTensor<B>,
        eps: f64,
    ) -> FloatTensor<B> {
        B::layer_norm(x, gamma, Some(beta), eps)
    }

    /// See [`FusedOps::fused_layer_norm_backward`].
    pub fn layer_norm_backward<B: Backend>(
        x: FloatTensor<B>,
        gamma: FloatTensor<B>,
        grad: FloatTensor<B>,
        eps: f64,
    ) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
        let shape = x.shape();
        let dim = last::<B>(&x);
        let c = shape[dim];
        let rows = shape.num_elements() / c.max(1);
        let mean = B::float_mean_dim(x.clone(), dim);
        let centered = B::float_sub(x, mean);
        let var = B::float_mean_dim(B::float_mul(centered.clone(), centered.clone()), dim);
        let rstd = B::float_recip(B::float_sqrt(B::float_add_scalar(var, eps.into())));
        let xhat = B::float_mul(centered, rstd.clone());
        let mut gamma_shape = vec![1; dim + 1];
        gamma_shape[dim] = c;
        let dxhat = B::float_mul(grad.clone(), B::float_reshape(gamma, Shape::from(gamma_shape)));
        let mean_d = B::float_mean_dim(dxhat.clone(), dim);
        let mean_dx = B::float_mean_dim(B::float_mul(dxhat.clone(), xhat.clone()), dim);
        let inner = B::float_sub(B::float_sub(dxhat, mean_d), B::float_mul(xhat.clone(), mean_dx));
        let dx = B::float_mul(rstd, inner);
        let flat = |t: FloatTensor<B>| B::float_reshape(t, Shape::from(vec![rows, c]));
        let col_sum =
            |t: FloatTensor<B>| B::float_reshape(B::float_sum_dim(flat(t), 0), Shape::from(vec![c]));
        let dgamma = col_sum(B::float_mul(grad.clone(), xhat));
        let dbeta = col_sum(grad);
        (dx, dgamma, dbeta)
    }
}

/// Flex's f32 tensors go to the host kernels, read and written in place (no copies).
#[cfg(feature = "flex")]
mod flex {
    use super::*;
    use burn::backend::Flex;

    /// The tensor's elements, row-major, when it is f32 (`None` otherwise).
    fn read(t: &FloatTensor<Flex>) -> Option<Cow<'_, [f32]>> {
        if t.dtype() != DType::F32 {
            return None;
        }
        match t.as_slice::<f32>() {
            Some(s) => Some(Cow::Borrowed(s)),
            None => t.to_contiguous().as_slice::<f32>().map(|s| Cow::Owned(s.to_vec())),
        }
    }

    /// The tensor's own f32 buffer for writing in place, when it is contiguous and not shared.
    fn write_in_place(t: &mut FloatTensor<Flex>) -> Option<&mut [f32]> {
        let n = t.shape().num_elements();
        let whole = t.dtype() == DType::F32 && t.layout().contiguous_offsets() == Some((0, n));
        let buffer = if whole { t.try_storage_mut::<f32>()? } else { return None };
        (buffer.len() == n).then_some(buffer)
    }

    /// A tensor of `shape` from `values` (moved in, not copied), on `like`'s device.
    fn write(values: Vec<f32>, shape: Shape, like: &FloatTensor<Flex>) -> FloatTensor<Flex> {
        Flex::float_from_data(TensorData::new(values, shape), &like.device())
    }

    /// `t`'s matrices as a [`host::Strided`] operand with `rows x cols` per matrix and the given
    /// batch axes: `None` unless f32 with non-negative strides. `shared`: one matrix for all.
    fn strided<'a>(
        t: &'a FloatTensor<Flex>,
        offsets: &'a mut Vec<usize>,
        shared: bool,
    ) -> Option<crate::cpu_gemm::Strided<'a>> {
        let layout = t.layout();
        let r = layout.num_dims();
        if t.dtype() != DType::F32 || r < 2 || layout.strides().iter().any(|&s| s < 0) {
            return None;
        }
        let strides: Vec<usize> = layout.strides().iter().map(|&s| s as usize).collect();
        let dims = layout.shape();
        offsets.clear();
        offsets.push(layout.start_offset());
        if !shared {
            // Row-major over the batch axes: each axis multiplies the offsets so far.
            for axis in 0..r - 2 {
                let (prev, step) = (std::mem::take(offsets), strides[axis]);
                offsets.extend(prev.iter().flat_map(|&o| (0..dims[axis]).map(move |i| o + i * step)));
            }
        }
        Some(crate::cpu_gemm::Strided {
            data: t.storage::<f32>(),
            offsets,
            row_stride: strides[r - 2],
            col_stride: strides[r - 1],
        })
    }

    /// The product on the host, or `None` for shapes or layouts it does not take (broadcast
    /// `lhs`, mismatched batch axes, bf16, negative strides).
    fn host_matmul(lhs: &FloatTensor<Flex>, rhs: &FloatTensor<Flex>) -> Option<FloatTensor<Flex>> {
        let (ls, rs) = (lhs.shape(), rhs.shape());
        let r = ls.num_dims();
        if rs.num_dims() != r || r < 2 || ls[r - 1] != rs[r - 2] {
            return None;
        }
        let (lb, rb) = (&ls[..r - 2], &rs[..r - 2]);
        let shared = rb.iter().all(|&d| d == 1);
        if !shared && lb != rb {
            return None;
        }
        let (m, k, n) = (ls[r - 2], ls[r - 1], rs[r - 1]);
        let batch: usize = lb.iter().product();
        let (mut lo, mut ro) = (Vec::new(), Vec::new());
        let rhs_op = strided(rhs, &mut ro, shared)?;
        // A shared weight and batch rows that follow one another at the row stride: one product
        // over all `batch * m` rows.
        let merged = shared && {
            let st = lhs.layout().strides();
            (0..r - 2)
                .rev()
                .try_fold(st[r - 2], |step, axis| {
                    (ls[axis + 1] as isize * step == st[axis] || ls[axis] == 1).then_some(st[axis])
                })
                .is_some()
                || batch == 1
        };
        let lhs_op = strided(lhs, &mut lo, merged)?;
        let out = if merged {
            crate::cpu_gemm::matmul_f32(1, batch * m, k, n, lhs_op, rhs_op)?
        } else {
            crate::cpu_gemm::matmul_f32(batch, m, k, n, lhs_op, rhs_op)?
        };
        let mut dims = lb.to_vec();
        dims.extend([m, n]);
        Some(write(out, Shape::from(dims), lhs))
    }

    impl FusedOps for Flex {
        fn fused_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
            host_matmul(&lhs, &rhs).unwrap_or_else(|| Self::float_matmul(lhs, rhs))
        }

        fn x_sigmoid(x: FloatTensor<Self>, a: f32, b: f32) -> FloatTensor<Self> {
            match read(&x) {
                Some(v) => write(host::x_sigmoid(&v, a, b), x.shape(), &x),
                None => composed::x_sigmoid::<Self>(x, a, b),
            }
        }

        fn x_sigmoid_backward(
            x: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            a: f32,
            b: f32,
        ) -> FloatTensor<Self> {
            match (read(&x), read(&grad)) {
                (Some(v), Some(g)) => write(host::x_sigmoid_backward(&v, &g, a, b), x.shape(), &x),
                _ => composed::x_sigmoid_backward::<Self>(x, grad, a, b),
            }
        }

        fn softmax_last(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
            let n = x.shape()[x.shape().num_dims() - 1];
            match read(&x) {
                Some(v) => write(host::softmax(&v, n, scale), x.shape(), &x),
                None => composed::softmax_last::<Self>(x, scale),
            }
        }

        fn softmax_last_backward(
            x: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            scale: f32,
        ) -> FloatTensor<Self> {
            let n = x.shape()[x.shape().num_dims() - 1];
            match (read(&x), read(&grad)) {
                (Some(v), Some(g)) => write(host::softmax_backward(&v, &g, n, scale), x.shape(), &x),
                _ => composed::softmax_last_backward::<Self>(x, grad, scale),
            }
        }

        fn fused_layer_norm(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            eps: f64,
        ) -> FloatTensor<Self> {
            match (read(&x), read(&gamma), read(&beta)) {
                (Some(v), Some(w), Some(b)) => write(host::layer_norm(&v, &w, &b, eps as f32), x.shape(), &x),
                _ => composed::layer_norm::<Self>(x, gamma, beta, eps),
            }
        }

        fn adamw_step(
            mut param: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            mut m: FloatTensor<Self>,
            mut v: FloatTensor<Self>,
            h: host::AdamWStep,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            let Some(g) = read(&grad) else {
                return composed::adamw_step::<Self>(param, grad, m, v, h);
            };
            if let (Some(p), Some(mm), Some(vv)) =
                (write_in_place(&mut param), write_in_place(&mut m), write_in_place(&mut v))
            {
                host::adamw(p, &g, mm, vv, h);
                drop(g);
                return (param, m, v);
            }
            match (read(&param), read(&m), read(&v)) {
                (Some(p), Some(mm), Some(vv)) => {
                    let (mut p, mut mm, mut vv) = (p.into_owned(), mm.into_owned(), vv.into_owned());
                    host::adamw(&mut p, &g, &mut mm, &mut vv, h);
                    let shape = param.shape();
                    (
                        write(p, shape.clone(), &param),
                        write(mm, shape.clone(), &param),
                        write(vv, shape, &param),
                    )
                }
                _ => {
                    drop(g);
                    composed::adamw_step::<Self>(param, grad, m, v, h)
                }
            }
        }

        fn fused_layer_norm_backward(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            eps: f64,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            match (read(&x), read(&gamma), read(&grad)) {
                (Some(v), Some(w), Some(g)) => {
                    let (dx, dgamma, dbeta) = host::layer_norm_backward(&v, &w, &g, eps as f32);
                    (
                        write(dx, x.shape(), &x),
                        write(dgamma, gamma.shape(), &gamma),
                        write(dbeta, gamma.shape(), &gamma),
                    )
                }
                _ => composed::layer_norm_backward::<Self>(x, gamma, grad, eps),
            }
        }
    }
}
// ndarray: the forward softmax and GELUs on owned tensors (moved out, not copied) take the host
// kernels; everything else composes its tensor ops, since reading shared ndarray tensors out for
// the kernels copies them element by element, which measured slower than its own ops (tiny
// SigLIP training 15.1 -> 4.8 steps/s with every op on the host).
#[cfg(feature = "ndarray")]
impl FusedOps for burn::backend::NdArray {
    fn x_sigmoid(x: FloatTensor<Self>, a: f32, b: f32) -> FloatTensor<Self> {
        match owned_f32(x) {
            Ok((v, shape, device)) => {
                Self::float_from_data(TensorData::new(host::x_sigmoid(&v, a, b), shape), &device)
            }
            Err(x) => composed::x_sigmoid::<Self>(x, a, b),
        }
    }

    fn softmax_last(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        match owned_f32(x) {
            Ok((v, shape, device)) => {
                let n = shape[shape.num_dims() - 1];
                Self::float_from_data(TensorData::new(host::softmax(&v, n, scale), shape), &device)
            }
            Err(x) => composed::softmax_last::<Self>(x, scale),
        }
    }
}

/// The elements of an f32 tensor, moved out of it (`Err` with the tensor for other dtypes).
#[cfg(feature = "ndarray")]
type NdArrayFloat = FloatTensor<burn::backend::NdArray>;

#[cfg(feature = "ndarray")]
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
#[cfg(feature = "cuda")]
impl FusedOps for burn::backend::Cube {}

/// Unary fused ops: which one, with its scalar arguments.
#[derive(Debug, Clone, Copy)]
enum Unary {
    XSigmoid(f32, f32),
    Softmax(f32),
}

impl Unary {
    fn forward<B: FusedOps>(self, x: FloatTensor<B>) -> FloatTensor<B> {
        match self {
            Unary::XSigmoid(a, b) => B::x_sigmoid(x, a, b),
            Unary::Softmax(scale) => B::softmax_last(x, scale),
        }
    }

    fn backward<B: FusedOps>(self, x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
        match self {
            Unary::XSigmoid(a, b) => B::x_sigmoid_backward(x, grad, a, b),
            Unary::Softmax(scale) => B::softmax_last_backward(x, grad, scale),
        }
    }
}

#[derive(Debug)]
struct UnaryBackward(Unary);

impl<B: FusedOps> Backward<B, 1> for UnaryBackward {
    type State = NodeId;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state);
        unary::<B, _>(ops.parents, ops.node, grads, |grad| self.0.backward::<B>(x, grad));
    }
}

/// Records `op` on `x` as one memory-bound operation with its fused backward.
fn record_unary<B: FusedOps, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    op: Unary,
) -> FloatTensor<Autodiff<B, C>> {
    #[derive(Debug)]
    struct RetroUnary<B> {
        input: NodeId,
        op: Unary,
        _backend: PhantomData<B>,
    }
    impl<B: FusedOps> RetroForward for RetroUnary<B> {
        fn forward(&self, states: &mut BackwardStates, out_node: NodeId) {
            let x = states.get_state::<FloatTensor<B>>(&self.input);
            states.save(out_node, self.op.forward::<B>(x))
        }
    }
    let retro = RetroUnary::<B> { input: x.id(), op, _backend: PhantomData };
    match UnaryBackward(op)
        .prepare::<C>([x.node()])
        .memory_bound()
        .retro_forward(retro)
        .parents([&x])
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let state = prep.checkpoint(&x);
            prep.finish(state, op.forward::<B>(x.into_primitive()))
        }
        OpsKind::UnTracked(prep) => prep.finish(op.forward::<B>(x.into_primitive())),
    }
}

#[derive(Debug)]
struct LayerNormBackward(f64);

impl<B: FusedOps> Backward<B, 3> for LayerNormBackward {
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state.0);
        let gamma: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state.1);
        let grad = grads.consume::<B>(&ops.node);
        let (dx, dgamma, dbeta) = B::fused_layer_norm_backward(x, gamma, grad, self.0);
        let [x_node, gamma_node, beta_node] = ops.parents;
        for (node, grad) in [(x_node, dx), (gamma_node, dgamma), (beta_node, dbeta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct MatmulBackward;

impl<B: FusedOps> Backward<B, 2> for MatmulBackward {
    /// The checkpointed operands (each kept only when the other one needs it) and `rhs`'s shape.
    type State = (Option<NodeId>, Option<NodeId>, Shape);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let (lhs, rhs, rhs_shape) = ops.state;
        let lhs: Option<FloatTensor<B>> = lhs.map(|id| checkpointer.retrieve_node_output(id));
        let rhs: Option<FloatTensor<B>> = rhs.map(|id| checkpointer.retrieve_node_output(id));
        let t = |x: FloatTensor<B>| {
            let r = x.shape().num_dims();
            B::float_swap_dims(x, r - 2, r - 1)
        };
        let [lhs_node, rhs_node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let (Some(node), Some(rhs)) = (rhs_node, lhs) {
            let r = rhs_shape.num_dims();
            let shared =
                rhs_shape[..r - 2].iter().all(|&d| d == 1) && grad.shape()[..r - 2].iter().any(|&d| d != 1);
            let d = if shared {
                // One weight for the whole batch: its gradient is one product over all rows.
                let flat = |x: FloatTensor<B>| {
                    let s = x.shape();
                    let cols = s[r - 1];
                    B::float_reshape(x, Shape::from(vec![s.num_elements() / cols.max(1), cols]))
                };
                let d = B::fused_matmul(t(flat(rhs)), flat(grad.clone()));
                B::float_reshape(d, rhs_shape)
            } else {
                B::fused_matmul(t(rhs), grad.clone())
            };
            grads.register::<B>(node.id, d);
        }
        if let (Some(node), Some(rhs)) = (lhs_node, rhs) {
            grads.register::<B>(node.id, B::fused_matmul(grad, t(rhs)));
        }
    }
}

impl<B: FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        let rhs_shape = rhs.shape();
        match MatmulBackward.prepare::<C>([lhs.node(), rhs.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let lhs_state = rhs_tracked.then(|| prep.checkpoint(&lhs));
                let rhs_state = lhs_tracked.then(|| prep.checkpoint(&rhs));
                let out = B::fused_matmul(lhs.into_primitive(), rhs.into_primitive());
                prep.finish((lhs_state, rhs_state, rhs_shape), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_matmul(lhs.into_primitive(), rhs.into_primitive()))
            }
        }
    }

    fn x_sigmoid(x: FloatTensor<Self>, a: f32, b: f32) -> FloatTensor<Self> {
        record_unary::<B, C>(x, Unary::XSigmoid(a, b))
    }

    fn softmax_last(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        record_unary::<B, C>(x, Unary::Softmax(scale))
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct RetroLayerNorm<B> {
            inputs: [NodeId; 3],
            eps: f64,
            _backend: PhantomData<B>,
        }
        impl<B: FusedOps> RetroForward for RetroLayerNorm<B> {
            fn forward(&self, states: &mut BackwardStates, out_node: NodeId) {
                let [x, gamma, beta] = self.inputs.map(|id| states.get_state::<FloatTensor<B>>(&id));
                states.save(out_node, B::fused_layer_norm(x, gamma, beta, self.eps))
            }
        }
        let retro =
            RetroLayerNorm::<B> { inputs: [x.id(), gamma.id(), beta.id()], eps, _backend: PhantomData };
        let prep = LayerNormBackward(eps)
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .memory_bound()
            .retro_forward(retro)
            .parents([&x, &gamma, &beta]);
        match prep.stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&gamma));
                let out = B::fused_layer_norm(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    eps,
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_layer_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                eps,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_slices_close, tensor_from, to_vec};
    use burn::tensor::activation;

    fn data(len: usize, k: usize) -> Vec<f32> {
        (0..len).map(|i| (((i * k + 3) % 103) as f32 - 51.0) / 19.0).collect()
    }

    /// `sum(w * f(x))`'s value and its gradients for `x`, `gamma` and `beta`.
    fn run(
        device: &Device,
        dtype: DType,
        f: impl Fn(Tensor<3>, Tensor<1>, Tensor<1>) -> Tensor<3>,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let shape = [2, 5, 24];
        let leaf = |v: &[f32], s: &[usize]| -> Tensor<1> {
            tensor_from(v, [v.len()], device).reshape([s.iter().product::<usize>()]).require_grad()
        };
        let x = tensor_from(&data(240, 7), shape, device).cast(dtype).require_grad();
        let gamma = leaf(&data(24, 5), &[24]).cast(dtype);
        let beta = leaf(&data(24, 11), &[24]).cast(dtype);
        let w = tensor_from(&data(240, 13), shape, device).cast(dtype);
        let y = f(x.clone(), gamma.clone(), beta.clone());
        let grads = (y.clone() * w).sum().backward();
        let grad = |t: &Tensor<3>| to_vec(t.grad(&grads).expect("x has a gradient"));
        let grad1 = |t: &Tensor<1>| t.grad(&grads).map(to_vec).unwrap_or_default();
        (to_vec(y), grad(&x), grad1(&gamma), grad1(&beta))
    }

    #[test]
    fn fused_ops_and_gradients_equal_the_tensor_ops() {
        let c = 2.0 * (2.0 / std::f64::consts::PI).sqrt();
        let (a, b) = (c as f32, (c * 0.044715) as f32);
        type Op = Box<dyn Fn(Tensor<3>, Tensor<1>, Tensor<1>) -> Tensor<3>>;
        let cases: Vec<(&str, Op, Op)> = vec![
            (
                "gelu",
                Box::new(move |x, _, _| x_sigmoid(x, a, b)),
                Box::new(|x, _, _| activation::gelu_approximate(x)),
            ),
            (
                "quick gelu",
                Box::new(|x, _, _| x_sigmoid(x, 1.702, 0.0)),
                Box::new(|x, _, _| x.clone() * activation::sigmoid(x * 1.702)),
            ),
            (
                "softmax",
                Box::new(|x, _, _| softmax_last(x, 0.25)),
                Box::new(|x, _, _| activation::softmax(x * 0.25, 2)),
            ),
            (
                "layer norm",
                Box::new(|x, g, b| layer_norm(x, g, b, 1e-5)),
                Box::new(|x, g, b| {
                    let mean = x.clone().mean_dim(2);
                    let xc = x - mean;
                    let var = xc.clone().square().mean_dim(2);
                    xc / (var + 1e-5).sqrt() * g.unsqueeze::<3>() + b.unsqueeze::<3>()
                }),
            ),
        ];
        let devices = [crate::device::flex_device(), crate::device::ndarray_device()];
        for base in devices.into_iter().flatten() {
            // ndarray is f32 only.
            let dtypes: &[(DType, f32)] = if Some(&base) == crate::device::ndarray_device().as_ref() {
                &[(DType::F32, 1e-5)]
            } else {
                &[(DType::F32, 1e-5), (DType::BF16, 3e-2)]
            };
            for device in [base.clone().autodiff(), base.clone().autodiff().gradient_checkpointing()] {
                // f32 takes the host kernels; bf16 the composed tensor ops.
                for &(dtype, tol) in dtypes {
                    for (name, fused, reference) in &cases {
                        let what = format!("{name} on {device:?} {dtype:?}");
                        let got = run(&device, dtype, fused);
                        let want = run(&device, dtype, reference);
                        assert_slices_close(&got.0, &want.0, tol, &format!("{what}: output"));
                        assert_slices_close(&got.1, &want.1, tol * 10.0, &format!("{what}: dx"));
                        if *name == "layer norm" {
                            assert_slices_close(&got.2, &want.2, tol * 10.0, &format!("{what}: dgamma"));
                            assert_slices_close(&got.3, &want.3, tol * 10.0, &format!("{what}: dbeta"));
                        }
                    }
                }
            }
            // Without autodiff: the same values.
            let x = tensor_from(&data(240, 7), [2, 5, 24], &base);
            let want = to_vec(activation::softmax(x.clone(), 2));
            assert_slices_close(&to_vec(softmax_last(x, 1.0)), &want, 1e-6, "softmax, inference");
        }
    }

    /// Output and both gradients of `sum(w * f(lhs, rhs))`.
    fn run_matmul<const D: usize>(
        device: &Device,
        lhs: (Vec<f32>, [usize; D]),
        rhs: (Vec<f32>, [usize; D]),
        prepare: impl Fn(Tensor<D>, Tensor<D>) -> (Tensor<D>, Tensor<D>),
        f: impl Fn(Tensor<D>, Tensor<D>) -> Tensor<D>,
    ) -> [Vec<f32>; 3] {
        let tracked = |t: Tensor<D>| if device.is_autodiff() { t.require_grad() } else { t };
        let a = tracked(tensor_from(&lhs.0, lhs.1, device));
        let b = tracked(tensor_from(&rhs.0, rhs.1, device));
        let (pa, pb) = prepare(a.clone(), b.clone());
        let y = f(pa, pb);
        let w = tensor_from(&data(y.shape().num_elements(), 13), y.dims(), device);
        if !device.is_autodiff() {
            return [to_vec(y), Vec::new(), Vec::new()];
        }
        let grads = (y.clone() * w).sum().backward();
        let g = |t: &Tensor<D>| t.grad(&grads).map(to_vec).expect("a gradient");
        [to_vec(y), g(&a), g(&b)]
    }

    #[test]
    fn fused_matmul_and_gradients_equal_burns() {
        let devices = [crate::device::flex_device(), crate::device::ndarray_device()];
        for base in devices.into_iter().flatten() {
            for device in [base.clone(), base.clone().autodiff()] {
                let check = |what: &str, got: [Vec<f32>; 3], want: [Vec<f32>; 3]| {
                    for (i, part) in ["output", "d lhs", "d rhs"].iter().enumerate() {
                        assert_slices_close(
                            &got[i],
                            &want[i],
                            1e-5,
                            &format!("{what} on {device:?}: {part}"),
                        );
                    }
                };
                // Batched, rhs a transposed view (attention's q k^T).
                let (l, r) = ((data(120, 7), [2, 3, 5, 4]), (data(144, 5), [2, 3, 6, 4]));
                let swap = |a: Tensor<4>, b: Tensor<4>| (a, b.swap_dims(2, 3));
                check(
                    "batched",
                    run_matmul(&device, l.clone(), r.clone(), swap, matmul),
                    run_matmul(&device, l, r, swap, |a, b| a.matmul(b)),
                );
                // A weight shared by the batch (Linear), lhs rows contiguous across the batch.
                let (l, r) = ((data(40, 3), [2, 5, 4]), (data(24, 11), [1, 4, 6]));
                let id = |a: Tensor<3>, b: Tensor<3>| (a, b);
                check(
                    "shared",
                    run_matmul(&device, l.clone(), r.clone(), id, matmul),
                    run_matmul(&device, l, r, id, |a, b| a.matmul(b)),
                );
                // Shared weight, lhs batch rows not contiguous (a transposed batch axis).
                let (l, r) = ((data(40, 3), [5, 2, 4]), (data(24, 11), [1, 4, 6]));
                let perm = |a: Tensor<3>, b: Tensor<3>| (a.swap_dims(0, 1), b);
                check(
                    "strided",
                    run_matmul(&device, l.clone(), r.clone(), perm, matmul),
                    run_matmul(&device, l, r, perm, |a, b| a.matmul(b)),
                );
                // Plain matrices, lhs transposed.
                let (l, r) = ((data(12, 3), [4, 3]), (data(20, 11), [4, 5]));
                let t = |a: Tensor<2>, b: Tensor<2>| (a.transpose(), b);
                check(
                    "2d",
                    run_matmul(&device, l.clone(), r.clone(), t, matmul),
                    run_matmul(&device, l, r, t, |a, b| a.matmul(b)),
                );
            }
        }
    }
}
