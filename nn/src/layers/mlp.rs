//! Feed-forward blocks: `fc1 -> act -> fc2` (ViT, SigLIP, CLIP) and the gated GeGLU
//! `down_proj(act(gate_proj(x)) * up_proj(x))` (Gemma).

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation;
use serde::{Deserialize, Serialize};

/// An activation function, named as transformers' `hidden_act` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Activation {
    /// `gelu_pytorch_tanh` / `gelu_new`: `0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))`.
    #[default]
    #[serde(rename = "gelu_pytorch_tanh", alias = "gelu_new", alias = "gelu_fast")]
    GeluTanh,
    /// `gelu`: the exact erf form.
    #[serde(rename = "gelu")]
    Gelu,
    /// `quick_gelu`: `x * sigmoid(1.702x)` (CLIP).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// `silu` / `swish`.
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    /// `relu`.
    #[serde(rename = "relu")]
    Relu,
}

impl Activation {
    /// Parses a transformers `hidden_act` string.
    pub fn from_hf(name: &str) -> crate::Result<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).map_err(|_| {
            crate::NnError::Config(format!(
                "hidden_act '{name}': expected gelu_pytorch_tanh, gelu_new, gelu, quick_gelu, silu or relu"
            ))
        })
    }

    /// `Some((a, b))` when the activation is `x * sigmoid(x (a + b x^2))`
    /// ([`zoo_kernels::fused::x_sigmoid`]): GELU-tanh (see [`gelu_tanh`]) and quick-GELU.
    pub fn x_sigmoid(&self) -> Option<(f32, f32)> {
        match self {
            Activation::GeluTanh => {
                let c = 2.0 * (2.0 / std::f64::consts::PI).sqrt();
                Some((c as f32, (c * 0.044715) as f32))
            }
            Activation::QuickGelu => Some((1.702, 0.0)),
            Activation::Gelu | Activation::Silu | Activation::Relu => None,
        }
    }

    /// Applies the activation elementwise (`GeluTanh` through [`gelu_tanh`]).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::GeluTanh => gelu_tanh(x),
            Activation::Gelu => activation::gelu(x),
            Activation::QuickGelu => {
                let (a, b) = Activation::QuickGelu.x_sigmoid().unwrap_or_default();
                zoo_kernels::fused::x_sigmoid(x, a, b)
            }
            Activation::Silu => activation::silu(x),
            Activation::Relu => activation::relu(x),
        }
    }
}

/// `fc2(act(fc1(x)))`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `C -> I`.
    pub fc1: Linear,
    /// `I -> C`.
    pub fc2: Linear,
    /// The activation between them.
    #[module(skip)]
    pub act: Activation,
}

impl Mlp {
    /// A randomly initialised MLP `hidden -> intermediate -> hidden` with biases.
    pub fn init(hidden: usize, intermediate: usize, act: Activation, device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(hidden, intermediate).init(device),
            fc2: LinearConfig::new(intermediate, hidden).init(device),
            act,
        }
    }

    /// # Shapes
    /// - input `[..., C]`, output `[..., C]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        crate::packed::linear(&self.fc2, activated(&self.fc1, self.act, x))
    }
}

/// Gated MLP: `down_proj(act(gate_proj(x)) * up_proj(x))`, no biases (Gemma's GeGLU).
#[derive(Module, Debug)]
pub struct GatedMlp {
    /// `C -> I`.
    pub gate_proj: Linear,
    /// `C -> I`.
    pub up_proj: Linear,
    /// `I -> C`.
    pub down_proj: Linear,
    /// Applied to the gate.
    #[module(skip)]
    pub act: Activation,
}

impl GatedMlp {
    /// A randomly initialised gated MLP without biases.
    pub fn init(hidden: usize, intermediate: usize, act: Activation, device: &Device) -> Self {
        let lin = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        Self {
            gate_proj: lin(hidden, intermediate),
            up_proj: lin(hidden, intermediate),
            down_proj: lin(intermediate, hidden),
            act,
        }
    }

    /// # Shapes
    /// - input `[..., C]`, output `[..., C]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let gate = activated(&self.gate_proj, self.act, x.clone());
        crate::packed::linear(&self.down_proj, gate * crate::packed::linear(&self.up_proj, x))
    }
}

/// `act(linear(x))`: with a packed weight the activation is the product's epilogue when it is
/// an `x * sigmoid` form ([`Activation::x_sigmoid`]).
fn activated<const D: usize>(linear: &Linear, act: Activation, x: Tensor<D>) -> Tensor<D> {
    let x = match act.x_sigmoid() {
        Some(ab) => match crate::packed::linear_x_sigmoid(linear, x, ab) {
            Ok(y) => return y,
            Err(x) => x,
        },
        None => x,
    };
    act.forward(crate::packed::linear(linear, x))
}

/// `0.5x(1 + tanh(u))` with `u = sqrt(2/pi)(x + 0.044715x^3)`, computed as the equal
/// `x * sigmoid(2u)` (since `1 + tanh(u) = 2 sigmoid(2u)`) by one fused operation
/// ([`zoo_kernels::fused::x_sigmoid`]: one host pass on the CPU, one backward pass under autodiff);
/// Burn's own takes eight passes with `powf` and `tanh` (18% of a SigLIP-B/16 forward, perf).
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let (a, b) = Activation::GeluTanh.x_sigmoid().unwrap_or_default();
    zoo_kernels::fused::x_sigmoid(x, a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, device, tensor_from};
    use burn::module::Param;

    fn xs() -> Vec<f32> {
        vec![-3.0, -1.5, -0.5, 0.0, 0.25, 1.0, 2.0, 4.0]
    }

    #[test]
    fn activations_match_formulas() {
        let dev = device();
        let x = xs();
        let erf_gelu = |v: f64| 0.5 * v * (1.0 + erf(v / 2f64.sqrt()));
        type Reference = Box<dyn Fn(f64) -> f64>;
        let cases: [(Activation, Reference); 4] = [
            (
                Activation::GeluTanh,
                Box::new(|v| {
                    0.5 * v
                        * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
                }),
            ),
            (Activation::Gelu, Box::new(erf_gelu)),
            (Activation::QuickGelu, Box::new(|v| v / (1.0 + (-1.702 * v).exp()))),
            (Activation::Silu, Box::new(|v| v / (1.0 + (-v).exp()))),
        ];
        for (act, f) in cases {
            let out = act.forward(tensor_from(&x, [8], &dev));
            let expect: Vec<f32> = x.iter().map(|&v| f(v as f64) as f32).collect();
            assert_close(out, &expect, 1e-5, &format!("{act:?}"));
        }
    }

    /// erf by Abramowitz-Stegun 7.1.26 is too coarse; use a series good to 1e-12 on |x| < 5.
    fn erf(x: f64) -> f64 {
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0;
        while term.abs() > 1e-16 && n < 200 {
            sum += term / (2 * n + 1) as f64;
            n += 1;
            term *= -x * x / n as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn hf_names_parse() {
        assert_eq!(Activation::from_hf("gelu_pytorch_tanh").unwrap(), Activation::GeluTanh);
        assert_eq!(Activation::from_hf("quick_gelu").unwrap(), Activation::QuickGelu);
        assert!(Activation::from_hf("mish").unwrap_err().to_string().contains("mish"));
    }

    #[test]
    fn gated_mlp_matches_formula() {
        let dev = device();
        let mut mlp = GatedMlp::init(2, 3, Activation::GeluTanh, &dev);
        // Burn Linear weights are [in, out].
        let g = [0.5f32, -1.0, 0.25, 1.5, 0.0, -0.5];
        let u = [1.0f32, 2.0, -1.0, 0.5, 0.5, 0.5];
        let dn = [1.0f32, 0.0, -1.0, 1.0, 0.5, 2.0];
        mlp.gate_proj.weight = Param::from_tensor(tensor_from(&g, [2, 3], &dev));
        mlp.up_proj.weight = Param::from_tensor(tensor_from(&u, [2, 3], &dev));
        mlp.down_proj.weight = Param::from_tensor(tensor_from(&dn, [3, 2], &dev));
        let x = [0.3f32, -0.7];
        let out = mlp.forward(tensor_from(&x, [1, 2], &dev));
        let gelu = |v: f32| {
            0.5 * v * (1.0 + ((2.0f32 / std::f32::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
        };
        let mut hidden = [0f32; 3];
        for j in 0..3 {
            let gj = x[0] * g[j] + x[1] * g[3 + j];
            let uj = x[0] * u[j] + x[1] * u[3 + j];
            hidden[j] = gelu(gj) * uj;
        }
        let expect: Vec<f32> = (0..2).map(|o| (0..3).map(|j| hidden[j] * dn[j * 2 + o]).sum()).collect();
        assert_close(out, &expect, 1e-5, "gated mlp");
    }
}
