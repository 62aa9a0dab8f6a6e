use super::*;
use crate::testing::{assert_slices_close, tensor_from, to_vec};
use burn::tensor::activation;

/// The CPU devices compiled in, each with whether it is ndarray (f32 only).
#[allow(clippy::vec_init_then_push)] // each push is behind its own feature
fn cpu_devices() -> Vec<(Device, bool)> {
    let mut devices = Vec::new();
    #[cfg(feature = "flex")]
    devices.push((Device::flex(), false));
    #[cfg(feature = "ndarray")]
    devices.push((Device::ndarray(), true));
    devices
}

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
        ("bias add", Box::new(|x, _, b| bias_add(x, b)), Box::new(|x, _, b| x + b.unsqueeze::<3>())),
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
    for (base, ndarray) in cpu_devices() {
        // ndarray is f32 only.
        let dtypes: &[(DType, f32)] =
            if ndarray { &[(DType::F32, 1e-5)] } else { &[(DType::F32, 1e-5), (DType::BF16, 3e-2)] };
        for device in [base.clone().autodiff(), base.clone().autodiff().gradient_checkpointing()] {
            // Both take the host kernels (bf16 through f32 chunks, `convert::through_f32`); the
            // references are Burn's tensor ops in that dtype.
            for &(dtype, tol) in dtypes {
                for (name, fused, reference) in &cases {
                    let what = format!("{name} on {device:?} {dtype:?}");
                    let got = run(&device, dtype, fused);
                    let want = run(&device, dtype, reference);
                    assert_slices_close(&got.0, &want.0, tol, &format!("{what}: output"));
                    assert_slices_close(&got.1, &want.1, tol * 10.0, &format!("{what}: dx"));
                    if *name == "layer norm" {
                        assert_slices_close(&got.2, &want.2, tol * 10.0, &format!("{what}: dgamma"));
                    }
                    if *name == "layer norm" || *name == "bias add" {
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
    for (base, _) in cpu_devices() {
        for device in [base.clone(), base.clone().autodiff()] {
            let check = |what: &str, got: [Vec<f32>; 3], want: [Vec<f32>; 3]| {
                for (i, part) in ["output", "d lhs", "d rhs"].iter().enumerate() {
                    assert_slices_close(&got[i], &want[i], 1e-5, &format!("{what} on {device:?}: {part}"));
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

/// The fused cast equals Burn's both ways between f32 and bf16, forward and backward (the
/// gradient cast back to the input's dtype), contiguous and transposed, on the pool path; the
/// same dtype is the tensor itself; the bias add's gradient on the pool path is the row sums.
#[test]
fn fused_cast_and_bias_gradients_equal_burns() {
    for (base, ndarray) in cpu_devices() {
        if ndarray {
            continue; // f32 only
        }
        let device = base.clone().autodiff();
        let (rows, cols) = (300, 257); // > 64K elements: the parallel paths
        for (from, to) in [(DType::F32, DType::BF16), (DType::BF16, DType::F32)] {
            for transposed in [false, true] {
                let run = |fused: bool| {
                    let x =
                        tensor_from(&data(rows * cols, 7), [rows, cols], &device).cast(from).require_grad();
                    let v = if transposed { x.clone().transpose() } else { x.clone() };
                    let y = if fused { cast(v, to) } else { v.cast(to) };
                    assert_eq!(y.dtype(), to);
                    let w = tensor_from(&data(rows * cols, 3), y.dims(), &device).cast(to);
                    let grads = (y.clone() * w).sum().backward();
                    let g = x.grad(&grads).expect("a gradient for x");
                    assert_eq!(g.dtype(), from);
                    (to_vec(y), to_vec(g))
                };
                let (got, want) = (run(true), run(false));
                assert_eq!(got.0, want.0, "{from:?} -> {to:?} transposed {transposed}: output");
                assert_slices_close(&got.1, &want.1, 1e-2, &format!("{from:?} -> {to:?}: gradient"));
            }
        }
        let x = tensor_from(&data(4, 1), [2, 2], &base);
        assert_eq!(to_vec(cast(x.clone(), DType::F32)), to_vec(x));
        // The bias gradient of a large input (rows split over the cores).
        let x = tensor_from(&data(rows * cols, 5), [3, rows / 3, cols], &device).require_grad();
        let b = tensor_from(&data(cols, 9), [cols], &device).require_grad();
        let w = tensor_from(&data(rows * cols, 13), [3, rows / 3, cols], &device);
        let grads = (bias_add(x, b.clone()) * w.clone()).sum().backward();
        let want = to_vec(w.reshape([rows, cols]).sum_dim(0));
        assert_slices_close(&to_vec(b.grad(&grads).expect("a bias gradient")), &want, 1e-4, "bias gradient");
    }
}
