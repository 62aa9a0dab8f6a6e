//! Flex's f32 tensors go to the host kernels, read and written in place (no copies).

use super::*;
use burn::backend::Flex;

/// The tensor's elements, row-major, as f32: f32 in place, bf16 widened (`--precision bf16`
/// training computes these ops in f32 between bf16 tensors, as PyTorch's autocast does);
/// `None` for other dtypes.
fn read(t: &FloatTensor<Flex>) -> Option<Cow<'_, [f32]>> {
    match t.dtype() {
        DType::F32 => match t.as_slice::<f32>() {
            Some(s) => Some(Cow::Borrowed(s)),
            None => t.to_contiguous().as_slice::<f32>().map(|s| Cow::Owned(s.to_vec())),
        },
        DType::BF16 => match t.as_slice::<half::bf16>() {
            Some(s) => Some(Cow::Owned(crate::convert::to_f32(s))),
            None => t.to_contiguous().as_slice::<half::bf16>().map(|s| Cow::Owned(crate::convert::to_f32(s))),
        },
        _ => None,
    }
}

/// The tensor's own f32 buffer for writing in place, when it is contiguous and not shared.
fn write_in_place(t: &mut FloatTensor<Flex>) -> Option<&mut [f32]> {
    let n = t.shape().num_elements();
    let whole = t.dtype() == DType::F32 && t.layout().contiguous_offsets() == Some((0, n));
    let buffer = if whole { t.try_storage_mut::<f32>()? } else { return None };
    (buffer.len() == n).then_some(buffer)
}

/// A tensor of `shape` from `values` (moved in, not copied), on `like`'s device, in `like`'s
/// dtype (bf16 values rounded to nearest even).
fn write(values: Vec<f32>, shape: Shape, like: &FloatTensor<Flex>) -> FloatTensor<Flex> {
    if like.dtype() == DType::BF16 {
        let values = crate::convert::to_bf16(&values);
        return Flex::float_from_data(TensorData::new(values, shape), &like.device());
    }
    Flex::float_from_data(TensorData::new(values, shape), &like.device())
}

/// The elements of a bf16 tensor, row-major (in place when contiguous); `None` for other dtypes.
fn bf16s(t: &FloatTensor<Flex>) -> Option<Cow<'_, [half::bf16]>> {
    if t.dtype() != DType::BF16 {
        return None;
    }
    match t.as_slice::<half::bf16>() {
        Some(s) => Some(Cow::Borrowed(s)),
        None => t.to_contiguous().as_slice::<half::bf16>().map(|s| Cow::Owned(s.to_vec())),
    }
}

/// A bf16 tensor of `shape` from `values` on `like`'s device.
fn bf16_tensor(values: Vec<half::bf16>, shape: Shape, like: &FloatTensor<Flex>) -> FloatTensor<Flex> {
    Flex::float_from_data(TensorData::new(values, shape), &like.device())
}

/// An elementwise / row op on bf16 tensors through [`crate::convert::through_f32`] (chunks
/// widened in cache), when every input is bf16: the op's f32 result rounded, and the sums of
/// its second result.
fn on_bf16(
    inputs: &[&FloatTensor<Flex>],
    n: usize,
    f: impl Fn(&[&[f32]]) -> (Vec<f32>, Vec<f32>) + Sync,
) -> Option<(Vec<half::bf16>, Vec<f32>)> {
    let values: Vec<Cow<'_, [half::bf16]>> = inputs.iter().map(|t| bf16s(t)).collect::<Option<_>>()?;
    let slices: Vec<&[half::bf16]> = values.iter().map(|v| &v[..]).collect();
    Some(crate::convert::through_f32(&slices, n, f))
}

/// `t`'s matrices as a [`Strided`](crate::matmul_f32::Strided) operand of element type `T`
/// (f32 or bf16: `dtype`, read by `storage`) with `rows x cols` per matrix and the given batch axes: `None` unless
/// of `dtype` with non-negative strides. `shared`: one matrix for all.
fn strided<'a, T>(
    t: &'a FloatTensor<Flex>,
    dtype: DType,
    storage: fn(&'a FloatTensor<Flex>) -> &'a [T],
    offsets: &'a mut Vec<usize>,
    shared: bool,
) -> Option<crate::matmul_f32::Strided<'a, T>> {
    let layout = t.layout();
    let r = layout.num_dims();
    if t.dtype() != dtype || r < 2 || layout.strides().iter().any(|&s| s < 0) {
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
    Some(crate::matmul_f32::Strided {
        data: storage(t),
        offsets,
        row_stride: strides[r - 2],
        col_stride: strides[r - 1],
    })
}

/// The product on the host, or `None` for shapes or layouts it does not take (broadcast
/// `lhs`, mismatched batch axes, negative strides, other dtypes). Two bf16 operands run on
/// the AMX tiles (`--precision bf16` training), or without AMX widened through the f32
/// product, and give bf16.
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
    let mut dims = lb.to_vec();
    dims.extend([m, n]);
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
    let (pb, pm) = if merged { (1, batch * m) } else { (batch, m) };
    if lhs.dtype() == DType::BF16 && rhs.dtype() == DType::BF16 {
        // Below ~1M multiply-adds a matrix, laying both operands out for the tiles (or widening
        // them) costs more than Flex's own bf16 product (the tiny SigLIP preset trains 2x
        // faster that way on AMX).
        if pm.saturating_mul(n).saturating_mul(k) < 1 << 20 {
            return None;
        }
        let lhs_op = strided(lhs, DType::BF16, |t| t.storage::<half::bf16>(), &mut lo, merged)?;
        let rhs_op = strided(rhs, DType::BF16, |t| t.storage::<half::bf16>(), &mut ro, shared)?;
        if crate::gemm::matmul_bf16_available() {
            let out = crate::gemm::matmul_bf16::<half::bf16>(pb, pm, k, n, lhs_op, rhs_op)?;
            return Some(Flex::float_from_data(TensorData::new(out, Shape::from(dims)), &lhs.device()));
        }
        // Without AMX: widened through the f32 product. Flex's own bf16 product made SigLIP-B/16
        // training (VLM_ZOO_AMX=0) 0.65x as fast as f32; this 0.89x. Views of a much larger
        // buffer are left to Flex.
        let views = batch.saturating_mul(m).saturating_mul(k).saturating_add(rhs_op.offsets.len() * k * n);
        if lhs_op.data.len().saturating_add(rhs_op.data.len()) > views.saturating_mul(4) {
            return None;
        }
        let out = crate::matmul_f32::matmul_bf16_widened(pb, pm, k, n, lhs_op, rhs_op)?;
        return Some(bf16_tensor(out, Shape::from(dims), lhs));
    }
    let rhs_op = strided(rhs, DType::F32, |t| t.storage::<f32>(), &mut ro, shared)?;
    let lhs_op = strided(lhs, DType::F32, |t| t.storage::<f32>(), &mut lo, merged)?;
    let out = crate::matmul_f32::matmul_f32(pb, pm, k, n, lhs_op, rhs_op)?;
    Some(write(out, Shape::from(dims), lhs))
}

impl FusedOps for Flex {
    fn fused_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        host_matmul(&lhs, &rhs).unwrap_or_else(|| Self::float_matmul(lhs, rhs))
    }

    fn sum_rows(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let n = x.shape()[x.shape().num_dims() - 1];
        let sums = if n == 0 {
            Vec::new()
        } else if let Some(v) = bf16s(&x) {
            crate::convert::sum_through_f32(&v, n, |c| host_ops::column_sums(c, n))
        } else if let Some(v) = read(&x) {
            host_ops::column_sums(&v, n)
        } else {
            return composed::sum_rows::<Self>(x);
        };
        let sums = if sums.is_empty() { vec![0.0; n] } else { sums };
        write(sums, Shape::from(vec![n]), &x)
    }

    fn fused_cast(x: FloatTensor<Self>, dtype: FloatDType) -> FloatTensor<Self> {
        let to = DType::from(dtype);
        let shape = x.shape();
        let data = match (x.dtype(), to) {
            (DType::F32, DType::BF16) => {
                x.as_slice::<f32>().map(|s| TensorData::new(crate::convert::to_bf16(s), shape))
            }
            (DType::BF16, DType::F32) => {
                x.as_slice::<half::bf16>().map(|s| TensorData::new(crate::convert::to_f32(s), shape))
            }
            _ => None,
        };
        match data {
            Some(d) => Self::float_from_data(d, &x.device()),
            None => Self::float_cast(x, dtype),
        }
    }

    fn x_sigmoid(x: FloatTensor<Self>, a: f32, b: f32) -> FloatTensor<Self> {
        if let Some((y, _)) = on_bf16(&[&x], 1, |i| (host_ops::x_sigmoid(i[0], a, b), Vec::new())) {
            return bf16_tensor(y, x.shape(), &x);
        }
        match read(&x) {
            Some(v) => write(host_ops::x_sigmoid(&v, a, b), x.shape(), &x),
            None => composed::x_sigmoid::<Self>(x, a, b),
        }
    }

    fn x_sigmoid_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        a: f32,
        b: f32,
    ) -> FloatTensor<Self> {
        let op = |i: &[&[f32]]| (host_ops::x_sigmoid_backward(i[0], i[1], a, b), Vec::new());
        if let Some((y, _)) = on_bf16(&[&x, &grad], 1, op) {
            return bf16_tensor(y, x.shape(), &x);
        }
        match (read(&x), read(&grad)) {
            (Some(v), Some(g)) => write(host_ops::x_sigmoid_backward(&v, &g, a, b), x.shape(), &x),
            _ => composed::x_sigmoid_backward::<Self>(x, grad, a, b),
        }
    }

    fn softmax_last(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        let n = x.shape()[x.shape().num_dims() - 1];
        if let Some((y, _)) = on_bf16(&[&x], n, |i| (host_ops::softmax(i[0], n, scale), Vec::new())) {
            return bf16_tensor(y, x.shape(), &x);
        }
        match read(&x) {
            Some(v) => write(host_ops::softmax(&v, n, scale), x.shape(), &x),
            None => composed::softmax_last::<Self>(x, scale),
        }
    }

    fn softmax_last_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        let n = x.shape()[x.shape().num_dims() - 1];
        let op = |i: &[&[f32]]| (host_ops::softmax_backward(i[0], i[1], n, scale), Vec::new());
        if let Some((y, _)) = on_bf16(&[&x, &grad], n, op) {
            return bf16_tensor(y, x.shape(), &x);
        }
        match (read(&x), read(&grad)) {
            (Some(v), Some(g)) => write(host_ops::softmax_backward(&v, &g, n, scale), x.shape(), &x),
            _ => composed::softmax_last_backward::<Self>(x, grad, scale),
        }
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        let (Some(w), Some(b)) = (read(&gamma), read(&beta)) else {
            return composed::layer_norm::<Self>(x, gamma, beta, eps);
        };
        let n = w.len();
        let op = |i: &[&[f32]]| (host_ops::layer_norm(i[0], &w, &b, eps as f32), Vec::new());
        if let Some((y, _)) = on_bf16(&[&x], n, op) {
            return bf16_tensor(y, x.shape(), &x);
        }
        match read(&x) {
            Some(v) => write(host_ops::layer_norm(&v, &w, &b, eps as f32), x.shape(), &x),
            None => composed::layer_norm::<Self>(x, gamma, beta, eps),
        }
    }

    fn adamw_step(
        mut param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        mut m: FloatTensor<Self>,
        mut v: FloatTensor<Self>,
        h: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let Some(g) = read(&grad) else {
            return composed::adamw_step::<Self>(param, grad, m, v, h);
        };
        if let (Some(p), Some(mm), Some(vv)) =
            (write_in_place(&mut param), write_in_place(&mut m), write_in_place(&mut v))
        {
            adamw::adamw(p, &g, mm, vv, h);
            drop(g);
            return (param, m, v);
        }
        match (read(&param), read(&m), read(&v)) {
            (Some(p), Some(mm), Some(vv)) => {
                let (mut p, mut mm, mut vv) = (p.into_owned(), mm.into_owned(), vv.into_owned());
                adamw::adamw(&mut p, &g, &mut mm, &mut vv, h);
                let shape = param.shape();
                (write(p, shape.clone(), &param), write(mm, shape.clone(), &param), write(vv, shape, &param))
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
        let Some(w) = read(&gamma) else {
            return composed::layer_norm_backward::<Self>(x, gamma, grad, eps);
        };
        let op = |i: &[&[f32]]| {
            let (dx, dgamma, dbeta) = host_ops::layer_norm_backward(i[0], &w, i[1], eps as f32);
            (dx, [dgamma, dbeta].concat())
        };
        if let Some((dx, sums)) = on_bf16(&[&x, &grad], w.len(), op) {
            // The per-column sums of every chunk (empty only for an empty input).
            let sums = if sums.is_empty() { vec![0.0; 2 * w.len()] } else { sums };
            let (dgamma, dbeta) = sums.split_at(w.len());
            return (
                bf16_tensor(dx, x.shape(), &x),
                write(dgamma.to_vec(), gamma.shape(), &gamma),
                write(dbeta.to_vec(), gamma.shape(), &gamma),
            );
        }
        match (read(&x), read(&grad)) {
            (Some(v), Some(g)) => {
                let (dx, dgamma, dbeta) = host_ops::layer_norm_backward(&v, &w, &g, eps as f32);
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
