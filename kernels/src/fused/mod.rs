//! Fused operations with their own backward pass, as a Burn backend extension: softmax over the
//! last axis (with a scale folded in), `x * sigmoid(x * (a + b x^2))` (tanh-GELU, quick-GELU),
//! LayerNorm, the matrix product, a bias added to rows (its gradient one parallel row sum), the
//! f32 <-> bf16 cast, and AdamW's update (`zoo_nn::train::optim::AdamW`).
//!
//! Each is one operation in the autodiff graph whose backward pass is one more: Burn's autodiff
//! otherwise records the 5-10 primitive ops each of these chains is made of (LayerNorm's mean,
//! subtraction, square, mean, sqrt, division, scale and shift) and replays each backward with
//! its own pass and buffer, on one core for Flex's elementwise ops. On Flex, f32 tensors go to
//! the host kernels of [`crate::host_ops`] and [`crate::matmul_f32`] (read in place, results in
//! fresh f32 buffers), and bf16 tensors (`--precision bf16` training) to the same host kernels
//! through f32 chunks in cache ([`crate::convert::through_f32`]) and their products to the AMX
//! tiles ([`crate::gemm::matmul_bf16`]); ndarray, other dtypes and the CUDA backend compose the
//! same functions from tensor operations ([`composed`]), forward and backward. The elementwise
//! backward passes keep only the inputs (checkpointed like Burn's own memory-bound ops, so
//! gradient checkpointing recomputes them) and recompute what they need; the product keeps its
//! operands as Burn's does.
//!
//! One file per part: this one holds the trait and the tensor-level functions callers use;
//! [`composed`] the fallbacks from tensor operations (any backend, any dtype), `flex` and
//! `ndarray` the host paths of the CPU backends, `autodiff` the recording of each operation with
//! its backward pass for `Autodiff<B, C>`.

// Burn 0.22 deprecates ndarray in favour of Flex; both are offered (see zoo_nn's device.rs).
#![allow(deprecated)]

use crate::adamw::{self, AdamWStep};
use crate::host_ops;
use burn::backend::autodiff::checkpoint::{
    base::Checkpointer, retro_forward::RetroForward, state::BackwardStates, strategy::CheckpointStrategy,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::ops::FloatTensorOps;
use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension, tensor::FloatTensor};
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use std::borrow::Cow;
use std::marker::PhantomData;

mod autodiff;
pub mod composed;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "ndarray")]
mod ndarray;
#[cfg(test)]
mod tests;

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

    /// One AdamW step ([`adamw::adamw`]) on a parameter: `(param, m, v)` after it.
    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed::adamw_step::<Self>(param, grad, m, v, step)
    }

    /// `lhs · rhs` over the last two axes: `[..., M, K] x [..., K, N]`, the batch axes of `rhs`
    /// equal to `lhs`'s or all 1 (one matrix for every batch entry, as a Linear weight is).
    fn fused_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }
    /// `x + bias`, `bias: [N]` added to each row of `x: [..., N]` (its gradient: the sums of
    /// the rows of the output's, [`FusedOps::sum_rows`]).
    fn bias_add(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::bias_add::<Self>(x, bias)
    }

    /// The sums of the rows of `x: [..., N]`: `[N]`.
    fn sum_rows(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::sum_rows::<Self>(x)
    }

    /// `x` as `dtype` (its gradient cast back to `x`'s dtype).
    fn fused_cast(x: FloatTensor<Self>, dtype: FloatDType) -> FloatTensor<Self> {
        Self::float_cast(x, dtype)
    }
}

/// One AdamW step on a parameter tensor `param` with gradient `grad` and moments `m`, `v`, as
/// one pass (in place where the buffers are not shared): `(param, m, v)` after it.
pub fn adamw_step<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    m: Tensor<D>,
    v: Tensor<D>,
    step: AdamWStep,
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
/// ([`crate::matmul_f32`]), and a weight shared by the batch gets its gradient from
/// one product over all rows.
///
/// # Shapes
/// - `lhs`: `[..., M, K]`; `rhs`: `[..., K, N]` with the batch axes of `lhs` or all 1
pub fn matmul<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_matmul(lhs.into_dispatch(), rhs.into_dispatch()))
}

/// `x + bias` over the rows of `x` on any device, differentiable as one operation whose bias
/// gradient is one parallel pass over the rows (Burn's broadcast add reduces it on one core:
/// 3.9% of a SigLIP-B/16 training step).
///
/// # Shapes
/// - `x`: `[..., N]`; `bias`: `[N]`; output like `x`
pub fn bias_add<const D: usize>(x: Tensor<D>, bias: Tensor<1>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::bias_add(x.into_dispatch(), bias.into_dispatch()))
}

/// `x` as `dtype` on any device, differentiable (the gradient is cast back): on Flex, f32 <->
/// bf16 on every core ([`crate::convert`]) where Burn's cast runs element by element on one
/// (the f32 master weights' bf16 view each step of `--precision bf16` training, and back).
pub fn cast<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if x.dtype() == dtype {
        return x;
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_cast(x.into_dispatch(), dtype.into()))
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

#[cfg(feature = "cuda")]
impl FusedOps for burn::backend::Cube {}
