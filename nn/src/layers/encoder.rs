//! The pre-norm transformer encoder layer shared by ViT/SigLIP and CLIP (numerically the same
//! block in both): `x + attn(layer_norm1(x))`, then `x + mlp(layer_norm2(x))`, with
//! transformers' field names.

use crate::{Activation, Attention, AttentionConfig, Mlp, Norm, NormConfig};
use burn::prelude::*;

/// One pre-norm layer.
#[derive(Module, Debug)]
pub struct EncoderLayer {
    /// Norm before attention.
    pub layer_norm1: Norm,
    /// Multi-head self-attention with biases (`out_proj` in checkpoints, mapped to `o_proj`).
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub layer_norm2: Norm,
    /// `fc1 -> act -> fc2`.
    pub mlp: Mlp,
}

impl EncoderLayer {
    /// A randomly initialised layer of width `hidden`, `heads` heads, MLP width `intermediate`.
    pub fn new(
        hidden: usize,
        heads: usize,
        intermediate: usize,
        act: Activation,
        norm: NormConfig,
        device: &Device,
    ) -> Self {
        Self {
            layer_norm1: norm.init(device),
            self_attn: AttentionConfig::mha(hidden, heads).init(device),
            layer_norm2: norm.init(device),
            mlp: Mlp::init(hidden, intermediate, act, device),
        }
    }

    /// # Shapes
    /// - `x`: `[B, T, C]`; `mask`: `bool[B, 1, T, T]` (true = masked); output `[B, T, C]`
    pub fn forward(&self, x: Tensor<3>, mask: Option<&Tensor<4, Bool>>) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x), None, mask, None);
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// A stack of [`EncoderLayer`]s (`encoder.layers.N` in checkpoints).
#[derive(Module, Debug)]
pub struct Encoder {
    /// The layers, in order.
    pub layers: Vec<EncoderLayer>,
}

/// Sizes of an [`Encoder`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncoderConfig {
    /// Width.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Layers.
    pub layers: usize,
    /// MLP activation.
    pub act: Activation,
    /// Norm of every layer.
    pub norm: NormConfig,
}

impl EncoderConfig {
    /// A randomly initialised encoder.
    pub fn init(&self, device: &Device) -> Encoder {
        Encoder {
            layers: (0..self.layers)
                .map(|_| {
                    EncoderLayer::new(self.hidden, self.heads, self.intermediate, self.act, self.norm, device)
                })
                .collect(),
        }
    }
}

impl Encoder {
    /// # Shapes
    /// - `x`: `[B, T, C]`; output `[B, T, C]`
    pub fn forward(&self, x: Tensor<3>, mask: Option<&Tensor<4, Bool>>) -> Tensor<3> {
        self.layers.iter().fold(x, |x, layer| layer.forward(x, mask))
    }
}
