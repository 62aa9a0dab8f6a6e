//! One configurable normalisation: LayerNorm, RMSNorm, Gemma's RMSNorm or BatchNorm.
//!
//! Every model config in vlm-zoo carries a [`NormKind`] field defaulting to its checkpoint's own
//! norm, so an architecture can be rebuilt and trained with any of the four.
//!
//! Weight names follow PyTorch (`weight`, `bias`, `running_mean`, `running_var`): RMSNorm and
//! BatchNorm are Burn's modules, [`LayerNorm`] has Burn's name and fields (their `gamma`/`beta`
//! are renamed by burn-store's PyTorch adapters on load and save, which go by the struct name);
//! Gemma's RMSNorm is [`GemmaRmsNorm`].

use burn::module::{Module, Param};
use burn::nn::{BatchNorm, BatchNormConfig, RmsNorm, RmsNormConfig};
use burn::prelude::*;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

/// Which normalisation a [`Norm`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// LayerNorm: `(x - mean) / sqrt(var + eps) * weight + bias` over the last dim.
    #[default]
    Layer,
    /// RMSNorm: `x / sqrt(mean(x^2) + eps) * weight` over the last dim.
    Rms,
    /// Gemma's RMSNorm: `x * rsqrt(mean(x^2) + eps) * (1 + weight)`, computed in f32.
    RmsGemma,
    /// BatchNorm over the channel (last) dim of `[batch, seq, channels]`: batch statistics while
    /// training on an autodiff device, running statistics otherwise.
    Batch,
}

impl std::str::FromStr for NormKind {
    type Err = crate::NnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "layer" => Ok(Self::Layer),
            "rms" => Ok(Self::Rms),
            "rms_gemma" => Ok(Self::RmsGemma),
            "batch" => Ok(Self::Batch),
            _ => Err(crate::NnError::Config(format!("norm '{s}': expected layer, rms, rms_gemma or batch"))),
        }
    }
}

impl std::fmt::Display for NormKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Layer => "layer",
            Self::Rms => "rms",
            Self::RmsGemma => "rms_gemma",
            Self::Batch => "batch",
        })
    }
}

/// Configuration of a [`Norm`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormConfig {
    /// Which norm.
    pub kind: NormKind,
    /// Size of the normalised (channel) dimension.
    pub dim: usize,
    /// Epsilon added to the variance / mean square.
    pub eps: f64,
}

impl NormConfig {
    /// A config of `kind` over `dim` channels with epsilon `eps`.
    pub fn new(kind: NormKind, dim: usize, eps: f64) -> Self {
        Self { kind, dim, eps }
    }

    /// Builds the norm with identity parameters (weight 1 / Gemma weight 0, bias 0).
    pub fn init(&self, device: &Device) -> Norm {
        match self.kind {
            NormKind::Layer => Norm::Layer(LayerNorm {
                gamma: Param::from_tensor(Tensor::ones([self.dim], device)),
                beta: Some(Param::from_tensor(Tensor::zeros([self.dim], device))),
                epsilon: self.eps,
            }),
            NormKind::Rms => Norm::Rms(RmsNormConfig::new(self.dim).with_epsilon(self.eps).init(device)),
            NormKind::RmsGemma => Norm::RmsGemma(GemmaRmsNorm {
                weight: Param::from_tensor(Tensor::zeros([self.dim], device)),
                eps: self.eps,
            }),
            NormKind::Batch => {
                Norm::Batch(BatchNormConfig::new(self.dim).with_epsilon(self.eps).init(device))
            }
        }
    }
}

/// A normalisation layer over the last dimension; see [`NormKind`].
#[derive(Module, Debug)]
pub enum Norm {
    /// LayerNorm.
    Layer(LayerNorm),
    /// Plain RMSNorm.
    Rms(RmsNorm),
    /// Gemma's RMSNorm.
    RmsGemma(GemmaRmsNorm),
    /// BatchNorm over channels.
    Batch(BatchNorm),
}

impl Norm {
    /// Normalises over the last dimension.
    ///
    /// # Shapes
    /// - input: `[..., channels]` (BatchNorm: `[batch, channels]` or `[batch, ..., channels]`)
    /// - output: same as input
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Norm::Layer(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
            Norm::RmsGemma(n) => n.forward(x),
            Norm::Batch(n) => {
                if D <= 2 {
                    batch_norm(n, x)
                } else {
                    // BatchNorm takes channels at dim 1.
                    batch_norm(n, x.swap_dims(1, D - 1)).swap_dims(1, D - 1)
                }
            }
        }
    }

    /// Which kind of norm this is.
    pub fn kind(&self) -> NormKind {
        match self {
            Norm::Layer(_) => NormKind::Layer,
            Norm::Rms(_) => NormKind::Rms,
            Norm::RmsGemma(_) => NormKind::RmsGemma,
            Norm::Batch(_) => NormKind::Batch,
        }
    }
}

/// BatchNorm as PyTorch computes it: batch statistics while training on an autodiff device
/// (with the layer not frozen), running statistics otherwise. Unlike Burn's own training path,
/// the running variance is updated with the *unbiased* batch variance, as PyTorch does, so
/// running statistics agree with a PyTorch-trained model.
fn batch_norm<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    if !(x.device().is_autodiff() && bn.training.is_enabled()) {
        return bn.forward(x);
    }
    let dims = x.dims();
    let n = (dims.iter().product::<usize>() / dims[1]) as f64;
    let device = x.device();
    let out = burn::tensor::module::batch_norm_train(x, bn.gamma.val(), bn.beta.val(), bn.epsilon);
    let m = bn.momentum;
    let unbiased = out.variance.detach() * (n / (n - 1.0).max(1.0));
    let mean = bn.running_mean.value_sync().to_device(&device) * (1.0 - m) + out.mean.detach() * m;
    let var = bn.running_var.value_sync().to_device(&device) * (1.0 - m) + unbiased * m;
    bn.running_mean.update(mean.detach());
    bn.running_var.update(var.detach());
    out.output
}

/// LayerNorm: `(x - mean) / sqrt(var + eps) * gamma + beta` over the last dim, as one fused
/// operation ([`zoo_kernels::fused::layer_norm`]: a host kernel on the CPU, one backward pass under
/// autodiff) computed in f32 (bf16/f16 inputs are widened, as Burn's LayerNorm does). Burn's
/// name and fields, so checkpoints load and save through the same adapters; its `epsilon` is
/// private there, which is why this is a struct of its own.
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// `float[C]`, the scale (`weight` in checkpoints).
    pub gamma: Param<Tensor<1>>,
    /// `float[C]`, the shift (`bias` in checkpoints), absent in bias-free variants.
    pub beta: Option<Param<Tensor<1>>>,
    /// Epsilon added to the variance.
    pub epsilon: f64,
}

impl LayerNorm {
    /// # Shapes
    /// - input: `[..., C]`; output: same
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let gamma = self.gamma.val().cast(DType::F32);
        let beta = match &self.beta {
            Some(beta) => beta.val().cast(DType::F32),
            None => gamma.zeros_like(),
        };
        zoo_kernels::fused::layer_norm(x.cast(DType::F32), gamma, beta, self.epsilon).cast(dtype)
    }
}

/// Gemma's RMSNorm: `x * rsqrt(mean(x^2) + eps) * (1 + weight)`, computed in f32 and cast back
/// to the input's dtype after the multiplication by `(1 + weight)`.
#[derive(Module, Debug)]
pub struct GemmaRmsNorm {
    /// `float[C]`, zero-initialised (the layer starts as a plain RMS normalisation).
    pub weight: Param<Tensor<1>>,
    /// Epsilon added to the mean square.
    pub eps: f64,
}

impl GemmaRmsNorm {
    /// # Shapes
    /// - input: `[..., C]`; output: same
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let inv_rms = (x.clone().square().mean_dim(D - 1) + self.eps).sqrt().recip();
        let scale = self.weight.val().cast(DType::F32) + 1.0;
        (x * inv_rms * scale.unsqueeze::<D>()).cast(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, device, tensor_from};

    fn input() -> (Vec<f32>, [usize; 3]) {
        let data: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.37).collect();
        (data, [2, 3, 4])
    }

    /// Per-row reference over the last dim.
    fn rows(data: &[f32], c: usize, f: impl Fn(&[f32]) -> Vec<f32>) -> Vec<f32> {
        data.chunks(c).flat_map(f).collect()
    }

    #[test]
    fn layer_norm_matches_formula() {
        let dev = device();
        let (data, shape) = input();
        let mut norm = NormConfig::new(NormKind::Layer, 4, 1e-5).init(&dev);
        let w = [0.5f32, -1.0, 2.0, 1.5];
        let b = [0.1f32, 0.2, -0.3, 0.0];
        if let Norm::Layer(ln) = &mut norm {
            ln.gamma = Param::from_tensor(tensor_from(&w, [4], &dev));
            ln.beta = Some(Param::from_tensor(tensor_from(&b, [4], &dev)));
        }
        let out = norm.forward(tensor_from(&data, shape, &dev));
        let expect = rows(&data, 4, |r| {
            let m = r.iter().sum::<f32>() / 4.0;
            let v = r.iter().map(|x| (x - m).powi(2)).sum::<f32>() / 4.0;
            r.iter().enumerate().map(|(i, x)| (x - m) / (v + 1e-5).sqrt() * w[i] + b[i]).collect()
        });
        assert_close(out, &expect, 1e-5, "layer norm");
    }

    #[test]
    fn rms_and_gemma_rms_match_formula() {
        let dev = device();
        let (data, shape) = input();
        let w = [0.5f32, -1.0, 2.0, 1.5];
        let ms = |r: &[f32]| r.iter().map(|x| x * x).sum::<f32>() / 4.0;

        let mut rms = NormConfig::new(NormKind::Rms, 4, 1e-6).init(&dev);
        if let Norm::Rms(n) = &mut rms {
            n.gamma = Param::from_tensor(tensor_from(&w, [4], &dev));
        }
        let expect = rows(&data, 4, |r| {
            let inv = 1.0 / (ms(r) + 1e-6).sqrt();
            r.iter().enumerate().map(|(i, x)| x * inv * w[i]).collect()
        });
        assert_close(rms.forward(tensor_from(&data, shape, &dev)), &expect, 1e-5, "rms");

        let mut gemma = NormConfig::new(NormKind::RmsGemma, 4, 1e-6).init(&dev);
        if let Norm::RmsGemma(n) = &mut gemma {
            n.weight = Param::from_tensor(tensor_from(&w, [4], &dev));
        }
        let expect = rows(&data, 4, |r| {
            let inv = 1.0 / (ms(r) + 1e-6).sqrt();
            r.iter().enumerate().map(|(i, x)| x * inv * (1.0 + w[i])).collect()
        });
        assert_close(gemma.forward(tensor_from(&data, shape, &dev)), &expect, 1e-5, "gemma rms");
    }

    /// Batch statistics over (batch, seq) per channel, biased variance.
    fn batch_reference(data: &[f32], c: usize, mean: &[f32], var: &[f32], eps: f32) -> Vec<f32> {
        data.iter().enumerate().map(|(i, x)| (x - mean[i % c]) / (var[i % c] + eps).sqrt()).collect()
    }

    fn channel_stats(data: &[f32], c: usize) -> (Vec<f32>, Vec<f32>) {
        let n = (data.len() / c) as f32;
        let mean: Vec<f32> = (0..c).map(|k| data.iter().skip(k).step_by(c).sum::<f32>() / n).collect();
        let var: Vec<f32> = (0..c)
            .map(|k| data.iter().skip(k).step_by(c).map(|x| (x - mean[k]).powi(2)).sum::<f32>() / n)
            .collect();
        (mean, var)
    }

    #[test]
    fn batch_norm_training_uses_batch_stats_and_updates_running() {
        let dev = device().autodiff();
        let (data, shape) = input();
        let norm = NormConfig::new(NormKind::Batch, 4, 1e-5).init(&dev);
        let out = norm.forward(tensor_from(&data, shape, &dev));
        let (mean, var) = channel_stats(&data, 4);
        assert_close(out, &batch_reference(&data, 4, &mean, &var, 1e-5), 1e-4, "bn train");

        // Running statistics moved by momentum 0.1 from (0, 1) towards the batch's
        // (PyTorch and Burn keep the unbiased variance there).
        let Norm::Batch(bn) = &norm else { unreachable!() };
        let n = (data.len() / 4) as f32;
        let run_mean: Vec<f32> = mean.iter().map(|m| 0.1 * m).collect();
        let run_var: Vec<f32> = var.iter().map(|v| 0.9 + 0.1 * v * n / (n - 1.0)).collect();
        assert_close(bn.running_mean.value_sync(), &run_mean, 1e-5, "running mean");
        assert_close(bn.running_var.value_sync(), &run_var, 1e-4, "running var");
    }

    #[test]
    fn batch_norm_inference_uses_running_stats() {
        let dev = device();
        let (data, shape) = input();
        let mut norm = NormConfig::new(NormKind::Batch, 4, 1e-5).init(&dev);
        let mean = [0.5f32, -0.25, 1.0, 0.0];
        let var = [2.0f32, 0.5, 1.0, 4.0];
        if let Norm::Batch(bn) = &mut norm {
            bn.running_mean = burn::module::RunningState::new(tensor_from(&mean, [4], &dev));
            bn.running_var = burn::module::RunningState::new(tensor_from(&var, [4], &dev));
        }
        let out = norm.forward(tensor_from(&data, shape, &dev));
        assert_close(out, &batch_reference(&data, 4, &mean, &var, 1e-5), 1e-5, "bn eval");
    }

    #[test]
    fn norm_kind_parses() {
        assert_eq!("rms_gemma".parse::<NormKind>().unwrap(), NormKind::RmsGemma);
        let kind: NormKind = serde_json::from_str("\"batch\"").unwrap();
        assert_eq!(kind, NormKind::Batch);
        assert!("group".parse::<NormKind>().unwrap_err().to_string().contains("group"));
    }
}
