//! The hot operations of a SigLIP-B/16 batch-8 forward, timed one at a time on each CPU backend
//! (`cargo bench --bench ops`), to see which one keeps vlm-zoo from PyTorch's speed. The same
//! shapes in PyTorch: `python scripts/bench_torch_ops.py`. One JSON line per (backend, op).

use burn::prelude::*;
use burn::tensor::activation::softmax;

mod common;
use common::time;

/// (name, floating-point operations per call or 0, the call).
type Op<'a> = (&'static str, f64, Box<dyn Fn() + 'a>);

fn sync<const D: usize>(t: Tensor<D>) {
    let _ = t.slice(std::array::from_fn::<_, D, _>(|_| 0..1)).into_data();
}

fn main() {
    let (b, l, c, f, h) = (8, 197, 768, 3072, 12);
    let mut devices = vec![("flex", zoo_nn::device::flex_device())];
    devices.push(("ndarray", zoo_nn::device::ndarray_device()));
    for (name, device) in devices {
        let Some(device) = device else { continue };
        let x = Tensor::<3>::random([b, l, c], burn::tensor::Distribution::Default, &device);
        let w = Tensor::<2>::random([c, f], burn::tensor::Distribution::Default, &device);
        let hid = Tensor::<3>::random([b, l, f], burn::tensor::Distribution::Default, &device);
        let scores = Tensor::<4>::random([b, h, l, l], burn::tensor::Distribution::Default, &device);
        let q = Tensor::<4>::random([b, h, l, c / h], burn::tensor::Distribution::Default, &device);
        let norm = zoo_nn::NormConfig::new(zoo_nn::NormKind::Layer, c, 1e-6).init(&device);
        let gemm_flop = 2.0 * (b * l * c * f) as f64;
        let ops: Vec<Op> = vec![
            (
                "matmul [8*197,768]x[768,3072]",
                gemm_flop,
                Box::new(|| sync(x.clone().reshape([b * l, c]).matmul(w.clone()).unsqueeze::<3>())),
            ),
            (
                "attention q.k^T [8,12,197,64]",
                2.0 * (b * h * l * l * (c / h)) as f64,
                Box::new(|| sync(q.clone().matmul(q.clone().swap_dims(2, 3)))),
            ),
            ("softmax [8,12,197,197], Burn", 0.0, Box::new(|| sync(softmax(scores.clone(), 3)))),
            (
                "softmax [8,12,197,197], vlm-zoo host kernel",
                0.0,
                Box::new(|| sync(zoo_nn::kernels::fused::softmax_last(scores.clone(), 1.0))),
            ),
            ("layer_norm [8,197,768]", 0.0, Box::new(|| sync(norm.forward(x.clone())))),
            (
                "gelu_tanh [8,197,3072], vlm-zoo",
                0.0,
                Box::new(|| sync(zoo_nn::layers::mlp::gelu_tanh(hid.clone()))),
            ),
            ("add [8,197,3072]", 0.0, Box::new(|| sync(hid.clone() + hid.clone()))),
        ];
        for (op, flop, run) in ops {
            let s = time(run);
            let gflops = if flop > 0.0 { flop / s / 1e9 } else { 0.0 };
            println!(
                r#"{{"backend": "{name}", "op": "{op}", "ms": {:.3}, "gflop_s": {gflops:.1}}}"#,
                s * 1e3
            );
        }
    }
}
