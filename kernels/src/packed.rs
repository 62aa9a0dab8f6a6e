//! Packed bf16 / int8 weights for CPU inference (`--dtype bf16` and `--dtype q8` on the CPU).
//!
//! Every `Linear` weight (and each embedding named `embed_tokens`, which Gemma also uses as its
//! tied output head) becomes a [`PackedWeight`] for the kernels of [`crate::gemm`], kept in
//! a process-wide table under its parameter id; the Burn parameter is replaced by a
//! zero-strided placeholder of the same shape (one element of memory), so the weights exist
//! once. Every other float parameter (norms, convolutions, positions) is f32, the dtype
//! activations flow in. Checkpoints get there straight from their files
//! (zoo-nn's `Checkpoint::load_into` with `LoadSpec::packed`: bf16 files used in place from a
//! read-only map, others packed one tensor at a time); [`pack`] does it for a model already in
//! memory.
//!
//! The model code calls [`linear`], [`embedding`] and [`tied_logits`] where it would call
//! `Linear::forward` / `Embedding::forward` / a matmul by the embedding: a packed weight runs
//! on the host kernels, any other (f32 CPU, CUDA, training) takes Burn's path unchanged.
//! [`release`] drops a model's entries from the table.

use crate::gemm::{Epilogue, Matrix, PackedWeight, WeightFormat};
use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, Linear};
use burn::prelude::*;
use burn::tensor::DType;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

/// A packed weight and its bias (f32).
#[derive(Debug)]
struct Entry {
    weight: PackedWeight,
    bias: Option<Vec<f32>>,
}

static TABLE: LazyLock<RwLock<HashMap<ParamId, Arc<Entry>>>> = LazyLock::new(Default::default);

fn lookup(id: &ParamId) -> Option<Arc<Entry>> {
    TABLE.read().ok()?.get(id).cloned()
}

/// Drops the packed weights of `model` from the table (after the model is no longer used).
pub fn release<M: Module>(model: &M) {
    struct Ids(Vec<ParamId>);
    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.id);
        }
    }
    let mut ids = Ids(Vec::new());
    model.visit(&mut ids);
    if let Ok(mut table) = TABLE.write() {
        for id in ids.0 {
            table.remove(&id);
        }
    }
}

/// Whether the weight of `linear` is packed.
pub fn is_packed(linear: &Linear) -> bool {
    lookup(&linear.weight.id).is_some()
}

struct Packer {
    format: WeightFormat,
    /// (field name, container type) from the root.
    path: Vec<(String, String)>,
}

impl ModuleMapper for Packer {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if D != 2 || !packs(&self.path) {
            return param.map(|t| if t.dtype() == DType::F32 { t } else { t.cast(DType::F32) });
        }
        let id = param.id;
        let t = param.val();
        let dims = t.dims();
        let device = t.device();
        // Linear stores W^T as [in, out]; an embedding table is [vocab, dim] = W[n, k].
        let transposed = self.path.last().is_some_and(|(_, c)| c == "Struct:Linear");
        let (n, k) = if transposed { (dims[1], dims[0]) } else { (dims[0], dims[1]) };
        let data = t.into_data();
        let weight = match data.dtype() {
            DType::BF16 => {
                let values = data.as_slice::<half::bf16>().unwrap_or_default();
                let src = Matrix { data: values, cols: dims[1], transposed };
                PackedWeight::pack(&src, n, k, self.format)
            }
            _ => {
                let values = data.convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
                let src = Matrix { data: &values, cols: dims[1], transposed };
                PackedWeight::pack(&src, n, k, self.format)
            }
        };
        register(id, weight);
        placeholder(id, dims, &device)
    }
}

/// Collects each Linear's bias (f32) under its weight's id, and `in_proj_bias` under
/// `in_proj_weight`'s.
struct Biases<'a> {
    path: Vec<(String, String)>,
    weight: Option<ParamId>,
    out: &'a mut HashMap<ParamId, Vec<f32>>,
}

impl ModuleVisitor for Biases<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some((field, container)) = self.path.last() else { return };
        let linear = container == "Struct:Linear";
        if (linear && field == "weight") || field == "in_proj_weight" {
            self.weight = Some(param.id);
        } else if ((linear && field == "bias") || field == "in_proj_bias")
            && let Some(w) = self.weight.take()
        {
            self.out.insert(w, host_values(param.val()));
        }
    }
}

/// Packs the model's Linear weights (and `embed_tokens`) in `format` and makes every other
/// float parameter f32 (see the module docs): for a model already in memory. Checkpoints load
/// packed straight from their files (`Checkpoint::load_into` with a `LoadSpec` that packs).
pub fn pack<M: Module>(model: M, format: WeightFormat) -> M {
    let model = model.map(&mut Packer { format, path: Vec::new() });
    attach_biases(&model);
    pack_patch_embeddings(&model, format);
    model
}

/// Packs each patch-embedding convolution (a Conv2d in a field named `patch_embedding`) as
/// the product it is: `W[out, in * p * p]` over the image's patches, with its bias
/// ([`patch_embedding`] runs it). The f32 weight stays in the model (it is small) for any
/// other use. Called by [`pack`] and by packed checkpoint loading.
pub fn pack_patch_embeddings<M: Module>(model: &M, format: WeightFormat) {
    struct Convs {
        format: WeightFormat,
        path: Vec<(String, String)>,
        weight: Option<ParamId>,
        found: Vec<(ParamId, PackedWeight)>,
        biases: HashMap<ParamId, Vec<f32>>,
    }
    impl ModuleVisitor for Convs {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.push((name.to_string(), container_type.to_string()));
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            // The path ends with (field, container): ("weight" or "bias", "Struct:Conv2d") under
            // a field named patch_embedding.
            let n = self.path.len();
            let in_patch_conv =
                n >= 2 && self.path[n - 1].1 == "Struct:Conv2d" && self.path[n - 2].0 == "patch_embedding";
            if !in_patch_conv {
                return;
            }
            if D == 4 {
                let t = param.val();
                let dims = t.dims();
                let (rows, cols) = (dims[0], dims[1..].iter().product::<usize>());
                let values = host_values(t);
                let src = Matrix { data: &values, cols, transposed: false };
                self.found.push((param.id, PackedWeight::pack(&src, rows, cols, self.format)));
                self.weight = Some(param.id);
            } else if D == 1
                && let Some(w) = self.weight.take()
            {
                self.biases.insert(w, host_values(param.val()));
            }
        }
    }
    let mut convs =
        Convs { format, path: Vec::new(), weight: None, found: Vec::new(), biases: HashMap::new() };
    model.visit(&mut convs);
    if let Ok(mut table) = TABLE.write() {
        for (id, weight) in convs.found {
            let bias = convs.biases.remove(&id);
            table.insert(id, Arc::new(Entry { weight, bias }));
        }
    }
}

/// `embed_patches` of a packed patch-embedding convolution ([`pack_patch_embeddings`]): the
/// image cut into `p x p` patches (channel, row, column within a patch: the weight's order)
/// and multiplied on the host kernels, bias added: `[B, (H/p) (W/p), out]`, patches row by
/// row. `Err(pixels)` when the convolution is not packed or not a patch embedding (stride =
/// kernel, no padding, dilation 1, one group).
///
/// # Shapes
/// - `pixels`: `[B, in, H, W]`; output `[B, (H/p) * (W/p), out]`
#[allow(clippy::result_large_err)]
pub fn patch_embedding(conv: &Conv2d, pixels: Tensor<4>) -> Result<Tensor<3>, Tensor<4>> {
    let [kh, kw] = conv.kernel_size;
    let patch_like = conv.stride == conv.kernel_size
        && kh == kw
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && matches!(
            conv.padding,
            burn::nn::PaddingConfig2d::Valid | burn::nn::PaddingConfig2d::Explicit(0, 0, 0, 0)
        );
    let Some(entry) = lookup(&conv.weight.id).filter(|_| patch_like) else {
        return Err(pixels);
    };
    let [b, c, hh, ww] = pixels.dims();
    let p = kh;
    let (h, w) = (hh / p, ww / p);
    if p == 0 || h == 0 || w == 0 || entry.weight.k() != c * p * p {
        return Err(pixels);
    }
    let patches = pixels
        .slice([0..b, 0..c, 0..h * p, 0..w * p])
        .reshape([b, c, h, p, w, p])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b, h * w, c * p * p]);
    Ok(host_matmul(&[&entry], patches, None))
}

/// Registers `weight` as the packed form of parameter `id`.
pub fn register(id: ParamId, weight: PackedWeight) {
    if let Ok(mut table) = TABLE.write() {
        table.insert(id, Arc::new(Entry { weight, bias: None }));
    }
}

/// Runs `f` on parameter `id`'s packed weight, when it is packed.
pub fn with_weight<T>(id: &ParamId, f: impl FnOnce(&PackedWeight) -> T) -> Option<T> {
    lookup(id).map(|e| f(&e.weight))
}

/// Whether parameter `id` is packed.
pub fn contains(id: &ParamId) -> bool {
    lookup(id).is_some()
}

/// Whether a parameter at `path` (field names and container types from the root) is one
/// [`pack`] packs: a Linear weight, or the table of a field named `embed_tokens`.
pub fn packs(path: &[(String, String)]) -> bool {
    let n = path.len();
    match path.last().map(|(f, c)| (f.as_str(), c.as_str())) {
        Some(("weight", "Struct:Linear")) => true,
        Some(("weight", "Struct:Embedding")) => n >= 2 && path[n - 2].0 == "embed_tokens",
        // torch.nn.MultiheadAttention's q/k/v projection `[3C, C]` (SigLIP's pooling head).
        Some(("in_proj_weight", _)) => true,
        _ => false,
    }
}

/// Copies the biases of packed Linear layers (f32) into the table, where the host kernels add
/// them.
pub fn attach_biases<M: Module>(model: &M) {
    let mut biases = HashMap::new();
    model.visit(&mut Biases { path: Vec::new(), weight: None, out: &mut biases });
    if let Ok(mut table) = TABLE.write() {
        for (weight_id, bias) in biases {
            if let Some(entry) = table.get_mut(&weight_id)
                && let Some(e) = Arc::get_mut(entry)
            {
                e.bias = Some(bias);
            }
        }
    }
}

/// A parameter's replacement once its values live in the table: a zero-strided tensor of its
/// shape (what callers read), one element of memory.
pub fn placeholder<const D: usize>(id: ParamId, dims: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Param::initialized(id, Tensor::<D>::zeros([1; D], device).expand(dims))
}

/// Runs packed products on the host: `x[.., k] -> [.., n_1 + n_2 + ...]`, each weight's
/// columns after the previous ones', biases added and then `x_sigmoid` applied when given
/// (see [`crate::gemm::Epilogue`]); in `x`'s dtype.
fn host_matmul<const D: usize>(entries: &[&Entry], x: Tensor<D>, x_sigmoid: Option<(f32, f32)>) -> Tensor<D> {
    let dims = x.dims();
    let device = x.device();
    let dtype = x.dtype();
    let m = dims[..D - 1].iter().product::<usize>();
    let width: usize = entries.iter().map(|e| e.weight.n()).sum();
    let a = host_values(x);
    let products: Vec<(&PackedWeight, Epilogue)> =
        entries.iter().map(|e| (&e.weight, Epilogue { bias: e.bias.as_deref(), x_sigmoid })).collect();
    let out = PackedWeight::matmul_many_new(&products, &a, m);
    let mut shape = dims;
    shape[D - 1] = width;
    let t = Tensor::from_data(TensorData::new(out, shape), (&device, DType::F32));
    if dtype == DType::F32 { t } else { t.cast(dtype) }
}

/// Several Linear layers of the same input width applied to the same `x`, their outputs side
/// by side in one `[.., sum of out]` tensor (a block's q, k and v projections): one pass over
/// `x` and, on AMX, its bf16 rounding once for all. `Err(x)` unless every weight is packed for
/// inputs of `x`'s width.
///
/// # Shapes
/// - `x`: `[.., in]`; output `[.., out_1 + out_2 + ...]`
// The error gives `x` back for the per-projection path (a tensor handle, moved, not copied).
#[allow(clippy::result_large_err)]
pub fn linear_many<const D: usize>(linears: &[&Linear], x: Tensor<D>) -> Result<Tensor<D>, Tensor<D>> {
    let dims = x.dims();
    let k = dims[D - 1];
    let entries: Option<Vec<Arc<Entry>>> = linears.iter().map(|l| lookup(&l.weight.id)).collect();
    let Some(entries) = entries.filter(|e| !e.is_empty() && e.iter().all(|e| e.weight.k() == k)) else {
        return Err(x);
    };
    let entries: Vec<&Entry> = entries.iter().map(|e| &**e).collect();
    Ok(host_matmul(&entries, x, None))
}

/// `x_sigmoid(linear.forward(x), a, b)` ([`crate::fused::x_sigmoid`]: GELU-tanh, quick-GELU)
/// on the host kernels with the activation in the product's epilogue (no tensor between), when
/// the weight is packed; `Err(x)` otherwise.
///
/// # Shapes
/// - `x`: `[.., in]`; output `[.., out]`
#[allow(clippy::result_large_err)]
pub fn linear_x_sigmoid<const D: usize>(
    linear: &Linear,
    x: Tensor<D>,
    (a, b): (f32, f32),
) -> Result<Tensor<D>, Tensor<D>> {
    match lookup(&linear.weight.id) {
        Some(entry) if entry.weight.k() == x.dims()[D - 1] => Ok(host_matmul(&[&entry], x, Some((a, b)))),
        _ => Err(x),
    }
}

/// `x · Wᵀ + bias` for a weight parameter `W[n, k]` in PyTorch's layout that is not a
/// Linear's (`in_proj_weight`, see [`packs`]): on the host kernels when it is packed (its bias
/// attached), else as one fused product.
///
/// # Shapes
/// - `x`: `[.., k]`; `weight`: `[n, k]`; `bias`: `[n]`; output `[.., n]`
pub fn weight_product<const D: usize>(
    weight: &Param<Tensor<2>>,
    bias: Option<&Param<Tensor<1>>>,
    x: Tensor<D>,
) -> Tensor<D> {
    match lookup(&weight.id) {
        Some(entry) => host_matmul(&[&entry], x, None),
        None => {
            let y = crate::fused::matmul(x, weight.val().transpose().unsqueeze::<D>());
            match bias {
                Some(bias) => crate::fused::bias_add(y, bias.val()),
                None => y,
            }
        }
    }
}

/// `linear.forward(x)`, on the host kernels when its weight is packed.
///
/// # Shapes
/// - `x`: `[.., in]`; output `[.., out]`
pub fn linear<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    match lookup(&linear.weight.id) {
        Some(entry) => host_matmul(&[&entry], x, None),
        None if D >= 2 => {
            // Burn's `Linear::forward` with the product as one fused operation: the weight's
            // gradient is one product over all rows instead of one per batch entry then summed.
            let y = crate::fused::matmul(x, linear.weight.val().unsqueeze::<D>());
            match &linear.bias {
                Some(bias) => crate::fused::bias_add(y, bias.val()),
                None => y,
            }
        }
        None => linear.forward(x),
    }
}

/// `embedding.forward(ids)`: rows of the packed table when `embedding` is packed.
///
/// # Shapes
/// - `ids`: `int[B, L]`; output `[B, L, C]`
pub fn embedding(embedding: &Embedding, ids: Tensor<2, Int>) -> Tensor<3> {
    let Some(entry) = lookup(&embedding.weight.id) else {
        return embedding.forward(ids);
    };
    let [b, l] = ids.dims();
    let device = ids.device();
    let c = entry.weight.k();
    let ids: Vec<i64> = ids.into_data().convert::<i64>().try_into_vec::<i64>().unwrap_or_default();
    let mut out = vec![0f32; b * l * c];
    for (row, &id) in out.chunks_mut(c).zip(&ids) {
        // Out-of-range ids were rejected before the model (the tokenizer's vocabulary).
        let id = (id.max(0) as usize).min(entry.weight.n() - 1);
        entry.weight.row(id, row);
    }
    Tensor::from_data(TensorData::new(out, [b, l, c]), (&device, DType::F32))
}

/// `h @ embedding^T` (a tied output head) on the host kernels when `embedding` is packed;
/// `None` otherwise.
///
/// # Shapes
/// - `h`: `[B, L, C]`; output `[B, L, V]`
pub fn tied_logits(embedding: &Embedding, h: Tensor<3>) -> Option<Tensor<3>> {
    lookup(&embedding.weight.id).map(|entry| host_matmul(&[&entry], h, None))
}

/// A tensor's values on the host, as f32.
fn host_values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    // Cast to F32 first, so the data is f32 and the conversion cannot fail.
    t.cast(DType::F32).into_data().try_into_vec::<f32>().expect("data cast to f32 is f32")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, to_vec};

    /// A CPU device of the build (Flex first).
    fn device() -> Device {
        #[cfg(feature = "flex")]
        return Device::flex();
        #[cfg(all(not(feature = "flex"), feature = "ndarray"))]
        #[allow(deprecated)]
        return Device::ndarray();
    }
    use burn::nn::{EmbeddingConfig, LinearConfig};

    #[derive(Module, Debug)]
    struct Toy {
        fc: Linear,
        head: Linear,
        embed_tokens: Embedding,
    }

    #[test]
    fn packed_products_follow_the_f32_ones() {
        let dev = device();
        let toy = Toy {
            fc: LinearConfig::new(40, 24).init(&dev),
            head: LinearConfig::new(24, 7).with_bias(false).init(&dev),
            embed_tokens: EmbeddingConfig::new(11, 40).init(&dev),
        };
        let x = Tensor::<3>::random([2, 3, 40], burn::tensor::Distribution::Default, &dev);
        let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 3, 10, 5], [2, 2]), &dev);
        let want_fc = to_vec(toy.fc.forward(x.clone()));
        let want_head = to_vec(toy.head.forward(toy.fc.forward(x.clone())));
        let want_embed = to_vec(toy.embed_tokens.forward(ids.clone()));
        let w = toy.embed_tokens.weight.val();
        let want_tied = to_vec(x.clone().matmul(w.transpose().unsqueeze::<3>()));
        for (format, tol) in [(WeightFormat::Bf16, 1e-2), (WeightFormat::Q8, 3e-2)] {
            let toy = pack(toy.clone(), format);
            assert!(is_packed(&toy.fc) && is_packed(&toy.head));
            // Shapes are kept, memory is not.
            assert_eq!(toy.fc.weight.val().dims(), [40, 24]);
            assert_close(linear(&toy.fc, x.clone()), &want_fc, tol, "fc");
            assert_close(linear(&toy.head, linear(&toy.fc, x.clone())), &want_head, tol, "head");
            assert_close(embedding(&toy.embed_tokens, ids.clone()), &want_embed, tol, "embedding");
            let tied = tied_logits(&toy.embed_tokens, x.clone()).expect("packed");
            assert_close(tied, &want_tied, tol * 4.0, "tied head");
            release(&toy);
            assert!(!is_packed(&toy.fc));
        }
        // Unpacked modules take Burn's path.
        assert_close(linear(&toy.fc, x), &want_fc, 1e-6, "unpacked");
    }
}
