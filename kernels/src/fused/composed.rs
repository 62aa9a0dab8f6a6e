//! The fused operations composed from tensor operations, for any backend and dtype (the trait's
//! default bodies, and the fallback of the host paths).

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
    h: AdamWStep,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let s = |x: f32| -> burn::backend::Scalar { (x as f64).into() };
    let m = B::float_add(
        B::float_mul_scalar(m, s(h.beta_1)),
        B::float_mul_scalar(grad.clone(), s(1.0 - h.beta_1)),
    );
    let g2 = B::float_mul(grad.clone(), grad);
    let v = B::float_add(B::float_mul_scalar(v, s(h.beta_2)), B::float_mul_scalar(g2, s(1.0 - h.beta_2)));
    let root =
        B::float_add_scalar(B::float_sqrt(B::float_div_scalar(v.clone(), s(h.correction_2))), s(h.epsilon));
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
    let col_sum = |t: FloatTensor<B>| B::float_reshape(B::float_sum_dim(flat(t), 0), Shape::from(vec![c]));
    let dgamma = col_sum(B::float_mul(grad.clone(), xhat));
    let dbeta = col_sum(grad);
    (dx, dgamma, dbeta)
}

/// `x + bias` by Burn's broadcast add.
pub fn bias_add<B: Backend>(x: FloatTensor<B>, bias: FloatTensor<B>) -> FloatTensor<B> {
    let r = x.shape().num_dims();
    let mut dims = vec![1; r];
    dims[r - 1] = bias.shape()[0];
    B::float_add(x, B::float_reshape(bias, Shape::from(dims)))
}

/// The sums of the rows of `x` by Burn's `sum_dim` over the flattened rows.
pub fn sum_rows<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let shape = x.shape();
    let n = shape[shape.num_dims() - 1];
    let rows = shape.num_elements() / n.max(1);
    let flat = B::float_reshape(x, Shape::from(vec![rows, n]));
    B::float_reshape(B::float_sum_dim(flat, 0), Shape::from(vec![n]))
}
