//! Host kernels on f32 slices for the elementwise chains that Burn's CPU backends run as many
//! one-core passes: softmax over the last axis, `x * sigmoid(x * g(x))` (tanh-GELU and
//! quick-GELU) and LayerNorm, each with its backward pass, and a bias's gradient (the sums of
//! rows). [`crate::fused`] calls them for f32 tensors on Flex and ndarray, and for bf16 tensors
//! on Flex through f32 chunks, in inference and (through its autodiff implementation) in
//! training; other backends and dtypes compose the same functions from tensor operations.
//!
//! Measured on a SigLIP-B/16 batch-8 forward (`cargo bench --bench ops`): Flex's softmax of
//! `[8,12,197,197]` took 17.5 ms against PyTorch's 2.3 ms and tanh-GELU of `[8,197,3072]` 46 ms
//! against 4.9 ms, together a third of the forward. Under autodiff each of these chains was
//! 5-20 recorded ops, each with its own pass and buffer forward and backward.
//!
//! The `exp` here is a branch-free Cody-Waite reduction with a degree-6 polynomial on fused
//! multiply-adds (relative error below 3e-7, 2.5 ulp; exact at every [`crate::wide_fn!`] level)
//! that the compiler vectorises; rows are split over the cores with rayon.

use rayon::prelude::*;

/// `e^x` for f32, branch-free: `x = n ln2 + r`, `e^r` by a degree-6 polynomial on
/// `|r| <= ln2 / 2`, `2^n` by building the exponent bits. Inputs are clamped to `[-87, 88]`
/// (results below `e^-87` ~ 1.6e-38 are not needed by softmax or sigmoid).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const SHIFT: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    // Below -87 the result would be subnormal: 0 instead (subnormal operands cost the FMAs
    // that read them, in the attention product after a softmax, ~100x per product).
    let underflow = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x.mul_add(LOG2E, SHIFT);
    let n = t - SHIFT;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let p = (1.0 / 720.0f32).mul_add(r, 1.0 / 120.0);
    let p = p.mul_add(r, 1.0 / 24.0);
    let p = p.mul_add(r, 1.0 / 6.0);
    let p = p.mul_add(r, 0.5);
    let p = p.mul_add(r, 1.0);
    let p = p.mul_add(r, 1.0);
    let k = (t.to_bits() as i32).wrapping_sub(0x4B40_0000); // n as an integer
    let y = p * f32::from_bits(((k + 127) << 23) as u32);
    if underflow { 0.0 } else { y }
}

/// `x * sigmoid(x (a + b x^2))` ([`x_sigmoid`]): `x / (1 + e^-z)`, the division by
/// [`recip_at_least_one`] (a vector division occupies one port for 10-16 cycles: 40% of
/// SigLIP-B/16's GELU).
#[inline(always)]
pub(crate) fn x_sigmoid_one(x: f32, a: f32, b: f32) -> f32 {
    x * recip_at_least_one(1.0 + exp(-x * (a + b * x * x)))
}

/// `1 / d` for `d >= 1` (finite or not), within 1.5e-7 relative (about 1 ulp; not rounded
/// exactly): an integer guess from the bits (within 12.5%), then three Newton steps of two
/// multiply-adds each, which the error squares. FMAs are exact at every level of
/// [`crate::wide_fn!`], so the result is the same bit for bit on every CPU.
#[inline(always)]
pub(crate) fn recip_at_least_one(d: f32) -> f32 {
    let mut r = f32::from_bits(0x7EF3_11C7u32.wrapping_sub(d.to_bits()));
    for _ in 0..3 {
        let e = (-d).mul_add(r, 1.0);
        r = r.mul_add(e, r);
    }
    r
}

/// Elements per rayon task: large enough that scheduling is noise.
pub(crate) const CHUNK: usize = 16 * 1024;

/// Lanes of the reductions below: separate accumulators let the compiler vectorise a sum
/// (a single running `f32` sum is a serial chain it may not reorder).
const LANES: usize = 16;

/// `sum(f(x_i, y_i, z_i))` over equal-length slices, in [`LANES`] accumulators.
#[inline(always)]
fn reduce3(x: &[f32], y: &[f32], z: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (xs, ys, zs) = (x.chunks_exact(LANES), y.chunks_exact(LANES), z.chunks_exact(LANES));
    let tail: f32 = (xs.remainder().iter().zip(ys.remainder()).zip(zs.remainder()))
        .map(|((&a, &b), &c)| f(a, b, c))
        .sum();
    for ((x, y), z) in xs.zip(ys).zip(zs) {
        for i in 0..LANES {
            acc[i] += f(x[i], y[i], z[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `sum(f(x_i))`, vectorised.
#[inline(always)]
pub(crate) fn reduce(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    reduce3(x, x, x, |a, _, _| f(a))
}

/// The largest element (`-inf` for an empty slice), vectorised.
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// Inputs up to this many elements run on the calling thread: handing even one chunk to the
/// rayon pool costs a thread wake-up, the largest overhead of small models (18% of the tiny
/// SigLIP's training profile in the scheduler).
pub(crate) const INLINE: usize = 64 * 1024;

/// `body(out chunk, x chunk)` over `step`-element chunks, on the pool for large inputs.
fn chunks2(out: &mut [f32], x: &[f32], step: usize, body: impl Fn(&mut [f32], &[f32]) + Sync + Send) {
    if x.len() <= INLINE {
        out.chunks_mut(step).zip(x.chunks(step)).for_each(|(o, x)| body(o, x));
    } else {
        out.par_chunks_mut(step).zip(x.par_chunks(step)).for_each(|(o, x)| body(o, x));
    }
}

/// `body(out chunk, x chunk, g chunk)` over `step`-element chunks, on the pool for large inputs.
fn chunks3(
    out: &mut [f32],
    x: &[f32],
    g: &[f32],
    step: usize,
    body: impl Fn(&mut [f32], &[f32], &[f32]) + Sync + Send,
) {
    if x.len() <= INLINE {
        out.chunks_mut(step).zip(x.chunks(step)).zip(g.chunks(step)).for_each(|((o, x), g)| body(o, x, g));
    } else {
        out.par_chunks_mut(step)
            .zip(x.par_chunks(step))
            .zip(g.par_chunks(step))
            .for_each(|((o, x), g)| body(o, x, g));
    }
}

/// Rows of `n` per rayon task.
fn rows_per_task(n: usize) -> usize {
    (CHUNK / n.max(1)).max(1)
}

/// `softmax(scale * x)` over rows of `n` (`scale > 0`). A row of equal values (a fully masked
/// row, all `f32::MIN`) comes out uniform, as the tensor-op softmax makes it.
pub fn softmax(x: &[f32], n: usize, scale: f32) -> Vec<f32> {
    let n = n.max(1);
    let mut out = vec![0f32; x.len()];
    let step = rows_per_task(n) * n;
    chunks2(&mut out, x, step, |o, x| softmax_rows(o, x, n, scale));
    out
}

crate::wide_fn! {
    /// [`softmax_row`] over each row of `n`.
    fn softmax_rows(o: &mut [f32], x: &[f32], n: usize, scale: f32) {
        for (o, x) in o.chunks_mut(n).zip(x.chunks(n)) {
            softmax_row(x, o, scale);
        }
    }
}

#[inline(always)]
fn softmax_row(x: &[f32], o: &mut [f32], scale: f32) {
    let max = max(x);
    for (o, &x) in o.iter_mut().zip(x) {
        *o = exp((x - max) * scale);
    }
    let inv = 1.0 / reduce(o, |v| v);
    for o in o.iter_mut() {
        // Probabilities below the smallest normal float are 0: a subnormal one would slow
        // every multiply-add of the product that reads it (masked positions of a causal mask
        // came out of the exponential at 1.6e-38 and turned subnormal here: 100x slower).
        let p = *o * inv;
        *o = if p < f32::MIN_POSITIVE { 0.0 } else { p };
    }
}

/// The gradient of `softmax(scale * x)` over rows of `n` for the output gradient `g`:
/// `scale * y * (g - sum(g * y))`, with `y` recomputed from `x` (nothing saved but the input).
pub fn softmax_backward(x: &[f32], g: &[f32], n: usize, scale: f32) -> Vec<f32> {
    let n = n.max(1);
    let mut out = vec![0f32; x.len()];
    let step = rows_per_task(n) * n;
    chunks3(&mut out, x, g, step, |o, x, g| softmax_backward_rows(o, x, g, n, scale));
    out
}

crate::wide_fn! {
    /// [`softmax_backward`] of rows of `n`.
    fn softmax_backward_rows(o: &mut [f32], x: &[f32], g: &[f32], n: usize, scale: f32) {
        for ((o, x), g) in o.chunks_mut(n).zip(x.chunks(n)).zip(g.chunks(n)) {
            softmax_row(x, o, scale);
            let dot = reduce3(o, g, g, |y, g, _| y * g);
            for (o, &g) in o.iter_mut().zip(g) {
                *o = scale * *o * (g - dot);
            }
        }
    }
}

/// `x * sigmoid(x * (a + b x^2))`: tanh-GELU with `a = 2 sqrt(2/pi)`, `b = 0.044715 a`;
/// quick-GELU with `a = 1.702`, `b = 0`.
pub fn x_sigmoid(x: &[f32], a: f32, b: f32) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    chunks2(&mut out, x, CHUNK, |o, x| x_sigmoid_slice(o, x, a, b));
    out
}

crate::wide_fn! {
    /// [`x_sigmoid`] of a slice.
    fn x_sigmoid_slice(o: &mut [f32], x: &[f32], a: f32, b: f32) {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = x_sigmoid_one(x, a, b);
        }
    }
}

/// The gradient of [`x_sigmoid`] for the output gradient `g`: with `z = x (a + b x^2)` and
/// `s = sigmoid(z)`, `g * (s + x s (1 - s) (a + 3 b x^2))`.
pub fn x_sigmoid_backward(x: &[f32], g: &[f32], a: f32, b: f32) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    chunks3(&mut out, x, g, CHUNK, |o, x, g| x_sigmoid_backward_slice(o, x, g, a, b));
    out
}

crate::wide_fn! {
    /// [`x_sigmoid_backward`] of a slice.
    fn x_sigmoid_backward_slice(o: &mut [f32], x: &[f32], g: &[f32], a: f32, b: f32) {
        for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
            let s = recip_at_least_one(1.0 + exp(-x * (a + b * x * x)));
            *o = g * (s + x * s * (1.0 - s) * (a + 3.0 * b * x * x));
        }
    }
}

/// The sums of the rows of `n` of `x` (`x.len() / n` rows): a bias's gradient, the rows split
/// over the cores and their partial sums added.
pub fn column_sums(x: &[f32], n: usize) -> Vec<f32> {
    let n = n.max(1);
    let step = rows_per_task(n) * n;
    let add = |mut a: Vec<f32>, b: Vec<f32>| {
        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
        a
    };
    let part = |rows: &[f32]| {
        let mut acc = vec![0f32; n];
        add_rows(&mut acc, rows);
        acc
    };
    if x.len() <= INLINE { part(x) } else { x.par_chunks(step).map(part).reduce(|| vec![0f32; n], add) }
}

crate::wide_fn! {
    /// `acc += row` for each row of `acc.len()` in `rows`.
    fn add_rows(acc: &mut [f32], rows: &[f32]) {
        for row in rows.chunks_exact(acc.len()) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
    }
}

/// Mean and `1 / sqrt(var + eps)` of a row (biased variance, two passes).
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len().max(1) as f32;
    let mean = reduce(x, |v| v) / n;
    let var = reduce(x, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm over rows of `gamma.len()`: `(x - mean) / sqrt(var + eps) * gamma + beta`.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    let n = gamma.len().max(1);
    let mut out = vec![0f32; x.len()];
    let step = rows_per_task(n) * n;
    chunks2(&mut out, x, step, |o, x| layer_norm_rows(o, x, gamma, beta, eps));
    out
}

crate::wide_fn! {
    /// [`layer_norm`] of rows of `gamma.len()`.
    fn layer_norm_rows(o: &mut [f32], x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let n = gamma.len().max(1);
        for (o, x) in o.chunks_mut(n).zip(x.chunks(n)) {
            let (mean, rstd) = row_stats(x, eps);
            for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(gamma).zip(beta) {
                *o = (x - mean) * rstd * w + b;
            }
        }
    }
}

/// The gradients of [`layer_norm`] for the output gradient `g`: `(dx, dgamma, dbeta)`, with
/// `xhat = (x - mean) rstd`, `dxhat = g gamma`:
/// `dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))`, `dgamma = sum_rows(g xhat)`,
/// `dbeta = sum_rows(g)`. The statistics are recomputed from `x`.
pub fn layer_norm_backward(x: &[f32], gamma: &[f32], g: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = gamma.len().max(1);
    let mut dx = vec![0f32; x.len()];
    let step = rows_per_task(n) * n;
    let partial =
        |(dx, (x, g)): (&mut [f32], (&[f32], &[f32]))| layer_norm_backward_rows(dx, x, g, gamma, eps);
    let add = |mut a: Vec<f32>, b: Vec<f32>| {
        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
        a
    };
    let acc = if x.len() <= INLINE {
        partial((&mut dx, (x, g)))
    } else {
        dx.par_chunks_mut(step)
            .zip(x.par_chunks(step).zip(g.par_chunks(step)))
            .map(partial)
            .reduce(|| vec![0f32; 2 * n], add)
    };
    let (dgamma, dbeta) = acc.split_at(n);
    (dx, dgamma.to_vec(), dbeta.to_vec())
}

crate::wide_fn! {
    /// [`layer_norm_backward`] of rows of `gamma.len()`: `dx` written, `(dgamma, dbeta)` of
    /// these rows returned side by side.
    fn layer_norm_backward_rows(dx: &mut [f32], x: &[f32], g: &[f32], gamma: &[f32], eps: f32) -> Vec<f32> {
        let n = gamma.len().max(1);
        let mut acc = vec![0f32; 2 * n];
        let (dgamma, dbeta) = acc.split_at_mut(n);
        for ((dx, x), g) in dx.chunks_mut(n).zip(x.chunks(n)).zip(g.chunks(n)) {
            let (mean, rstd) = row_stats(x, eps);
            // sum(d) and sum(d xhat) with d = g gamma, xhat = (x - mean) rstd.
            let sum_d = reduce3(g, gamma, g, |g, w, _| g * w);
            let sum_dx = reduce3(g, gamma, x, |g, w, x| g * w * (x - mean)) * rstd;
            for ((&x, &g), (dg, db)) in x.iter().zip(g).zip(dgamma.iter_mut().zip(dbeta.iter_mut())) {
                *dg += g * (x - mean) * rstd;
                *db += g;
            }
            let (mean_d, mean_dx) = (sum_d / n as f32, sum_dx / n as f32);
            for (((dx, &x), &g), &w) in dx.iter_mut().zip(x).zip(g).zip(gamma) {
                let xhat = (x - mean) * rstd;
                *dx = rstd * (g * w - mean_d - xhat * mean_dx);
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_the_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64) - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "relative error {worst}"); // 2.5 ulp
        // Below -87 (where the true value nears the subnormals) and at -inf: exactly 0.
        assert_eq!(exp(f32::MIN), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-87.5), 0.0);
    }

    /// A causal mask's hidden positions come out exactly 0, never subnormal (subnormal
    /// probabilities slowed the attention product that reads them ~100x).
    #[test]
    fn masked_softmax_positions_are_zero_not_subnormal() {
        let row = [0.0, 1.0, f32::MIN, -1e30, -200.0];
        let y = softmax(&row, 5, 1.0);
        assert_eq!(&y[2..], &[0.0, 0.0, 0.0]);
        assert!((y[0] + y[1] - 1.0).abs() < 1e-6);
        assert!(y.iter().all(|v| *v == 0.0 || v.is_normal()));
    }

    /// Row sums split over the cores equal one running sum per column.
    #[test]
    fn column_sums_equal_the_plain_sums() {
        let n = 197;
        let x = data(n * 400);
        let got = column_sums(&x, n);
        for (c, g) in got.iter().enumerate() {
            let want: f64 = x.iter().skip(c).step_by(n).map(|&v| v as f64).sum();
            assert!((*g as f64 - want).abs() < 1e-3 * (1.0 + want.abs()), "column {c}: {g} vs {want}");
        }
        assert_eq!(column_sums(&[], 3), vec![0.0; 3]);
    }

    fn data(len: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect()
    }

    fn close(got: &[f32], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g as f64 - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
        }
    }

    /// `sum(w * f(x))` for fixed weights `w`, in f64: a scalar whose gradient is the backward
    /// pass's result for the output gradient `w`, checked by central differences.
    fn numeric_grad(x: &[f32], f: impl Fn(&[f64]) -> Vec<f64>, w: &[f64]) -> Vec<f64> {
        let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let loss = |x: &[f64]| f(x).iter().zip(w).map(|(y, w)| y * w).sum::<f64>();
        (0..x.len())
            .map(|i| {
                let h = 1e-5;
                let (mut p, mut m) = (x.clone(), x.clone());
                p[i] += h;
                m[i] -= h;
                (loss(&p) - loss(&m)) / (2.0 * h)
            })
            .collect()
    }

    fn softmax64(x: &[f64], n: usize, scale: f64) -> Vec<f64> {
        x.chunks(n)
            .flat_map(|r| {
                let max = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = r.iter().map(|v| ((v - max) * scale).exp()).collect();
                let s: f64 = e.iter().sum();
                e.into_iter().map(move |v| v / s)
            })
            .collect()
    }

    fn layer_norm64(x: &[f64], gamma: &[f64], beta: &[f64], eps: f64) -> Vec<f64> {
        let n = gamma.len();
        x.chunks(n)
            .flat_map(|r| {
                let mean = r.iter().sum::<f64>() / n as f64;
                let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
                let rstd = 1.0 / (var + eps).sqrt();
                r.iter()
                    .zip(gamma)
                    .zip(beta)
                    .map(move |((v, w), b)| (v - mean) * rstd * w + b)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn kernels_and_their_gradients_match_the_formulas() {
        let (n, x) = (7, data(3 * 7));
        let w: Vec<f64> = data(x.len()).iter().map(|&v| (v as f64 * 1.3).sin()).collect();
        let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();

        for scale in [1.0f32, 0.125] {
            close(&softmax(&x, n, scale), &softmax64(&x64, n, scale as f64), 1e-6, "softmax");
            let want = numeric_grad(&x, |x| softmax64(x, n, scale as f64), &w);
            close(&softmax_backward(&x, &w32, n, scale), &want, 1e-5, "softmax backward");
        }
        // A fully masked row stays uniform, as the tensor-op softmax makes it.
        assert_eq!(softmax(&[f32::MIN; 4], 4, 0.5), vec![0.25; 4]);

        let c = 2.0 * (2.0 / std::f64::consts::PI).sqrt();
        for (a, b) in [(c, c * 0.044715), (1.702, 0.0)] {
            let f =
                |x: &[f64]| x.iter().map(|&v| v / (1.0 + (-v * (a + b * v * v)).exp())).collect::<Vec<_>>();
            close(&x_sigmoid(&x, a as f32, b as f32), &f(&x64), 1e-6, "x_sigmoid");
            let want = numeric_grad(&x, f, &w);
            close(&x_sigmoid_backward(&x, &w32, a as f32, b as f32), &want, 1e-5, "x_sigmoid backward");
        }
        // tanh-GELU is x * sigmoid(2u).
        let gelu = x_sigmoid(&x, c as f32, (c * 0.044715) as f32);
        let want: Vec<f64> = x64
            .iter()
            .map(|&v| {
                0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
            })
            .collect();
        close(&gelu, &want, 1e-6, "gelu tanh");

        let gamma: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 * 0.1).collect();
        let beta: Vec<f32> = (0..n).map(|i| i as f32 * 0.05 - 0.1).collect();
        let (g64, b64): (Vec<f64>, Vec<f64>) =
            (gamma.iter().map(|&v| v as f64).collect(), beta.iter().map(|&v| v as f64).collect());
        let eps = 1e-5;
        close(
            &layer_norm(&x, &gamma, &beta, eps as f32),
            &layer_norm64(&x64, &g64, &b64, eps),
            1e-5,
            "layer_norm",
        );
        let (dx, dgamma, dbeta) = layer_norm_backward(&x, &gamma, &w32, eps as f32);
        close(&dx, &numeric_grad(&x, |x| layer_norm64(x, &g64, &b64, eps), &w), 1e-4, "layer_norm dx");
        let dg = numeric_grad(&gamma, |g| layer_norm64(&x64, g, &b64, eps), &w);
        close(&dgamma, &dg, 1e-4, "layer_norm dgamma");
        let db = numeric_grad(&beta, |b| layer_norm64(&x64, &g64, b, eps), &w);
        close(&dbeta, &db, 1e-4, "layer_norm dbeta");
    }

    /// Inputs over [`INLINE`] go through the pool in chunks: the same results as row by row.
    #[test]
    fn pooled_chunks_equal_the_inline_path() {
        let (n, rows) = (100, 800); // 80k elements
        let x = data(n * rows);
        let g: Vec<f32> = x.iter().map(|v| (v * 0.7).cos()).collect();
        let gamma: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 0.01).collect();
        let beta = vec![0.1f32; n];
        let big = (
            softmax_backward(&x, &g, n, 0.5),
            layer_norm(&x, &gamma, &beta, 1e-5),
            x_sigmoid_backward(&x, &g, 1.702, 0.0),
        );
        let (dx, dgamma, dbeta) = layer_norm_backward(&x, &gamma, &g, 1e-5);
        let (mut dg, mut db) = (vec![0f32; n], vec![0f32; n]);
        for r in 0..rows {
            let (xr, gr) = (&x[r * n..(r + 1) * n], &g[r * n..(r + 1) * n]);
            let row = |v: &[f32]| v[r * n..(r + 1) * n].to_vec();
            assert_eq!(row(&big.0), softmax_backward(xr, gr, n, 0.5));
            assert_eq!(row(&big.1), layer_norm(xr, &gamma, &beta, 1e-5));
            assert_eq!(row(&big.2), x_sigmoid_backward(xr, gr, 1.702, 0.0));
            let (dxr, dgr, dbr) = layer_norm_backward(xr, &gamma, gr, 1e-5);
            assert_eq!(row(&dx), dxr);
            dg.iter_mut().zip(&dgr).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(&dbr).for_each(|(a, b)| *a += b);
        }
        let want = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        close(&dgamma, &want(&dg), 1e-4, "dgamma over the pool");
        close(&dbeta, &want(&db), 1e-4, "dbeta over the pool");
    }
}
