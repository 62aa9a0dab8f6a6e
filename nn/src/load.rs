//! Loading HuggingFace checkpoint folders into Burn modules.
//!
//! A checkpoint folder holds `config.json` and either `model.safetensors` or shards listed by
//! `model.safetensors.index.json` (`weight_map`: key -> shard file). Loading goes through
//! burn-store's [`SafetensorsStore`] (memory-mapped, lazy: a tensor is read, converted and
//! dropped one at a time, so a 6 GB checkpoint is never held twice in RAM) with:
//!
//! - a [`KeyMap`]: one documented table per model mapping checkpoint keys to module paths
//!   (regex rewrites applied in order), plus allow-lists for keys that may be missing (a tied
//!   `lm_head`) or unused;
//! - [`PyTorchToBurnAdapter`] (with a parallel tiled transpose of `Linear.weight`): `[out, in]` -> `[in, out]`, norm `weight`/`bias`
//!   -> `gamma`/`beta`;
//! - [`FloatCastAdapter`] to the model's float dtype (F32/BF16/F16 files all load on every
//!   backend).
//!
//! Every safetensors header is checked first (sizes, offsets, dtypes), so a truncated or lying
//! file is an error naming the file and key rather than a crash.

use crate::error::{NnError, Result};
use burn::tensor::DType;
use burn::tensor::{Shape, TensorData};
use burn_store::{
    ApplyError, BurnToPyTorchAdapter, FloatCastAdapter, KeyRemapper, ModuleAdapter, ModuleContext,
    ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
};
use regex::Regex;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The single-file weights name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The shard index name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Reads and deserialises a JSON file, naming the file in every error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| NnError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| NnError::Json { path: path.to_path_buf(), source })
}

/// The `model_type` of a checkpoint folder's config.json.
pub fn model_type(dir: &Path) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        model_type: Option<String>,
    }
    let path = dir.join("config.json");
    let head: Head = read_json(&path)?;
    head.model_type.ok_or_else(|| NnError::Config(format!("{}: no model_type", path.display())))
}

/// What a safetensors header says about one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The file holding it.
    pub file: PathBuf,
    /// The dtype as the header spells it (`F32`, `BF16`, ...).
    pub dtype: String,
    /// The shape.
    pub shape: Vec<usize>,
}

/// Bytes per element of a safetensors dtype, `None` for dtypes vlm-zoo does not read.
fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" => 1,
        _ => return None,
    })
}

/// Reads and checks the header of a safetensors file: the header length fits the file, every
/// tensor's byte range lies inside the data section and matches its shape and dtype.
pub fn read_safetensors_header(path: &Path) -> Result<BTreeMap<String, TensorInfo>> {
    let bad = |reason: String| NnError::Safetensors { path: path.to_path_buf(), reason };
    let mut file = std::fs::File::open(path).map_err(|e| NnError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| NnError::io(path, e))?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| bad(format!("file is {file_len} bytes, too short for a header")))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > file_len - 8 || header_len > 100 << 20 {
        return Err(bad(format!(
            "header length {header_len} exceeds the file size {file_len} (truncated or not safetensors)"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| NnError::io(path, e))?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
    let data_len = file_len - 8 - header_len;

    let mut out = BTreeMap::new();
    for (key, entry) in header {
        if key == "__metadata__" {
            continue;
        }
        let dtype =
            entry["dtype"].as_str().ok_or_else(|| bad(format!("tensor '{key}' has no dtype")))?.to_string();
        let size = dtype_size(&dtype).ok_or_else(|| NnError::Dtype {
            path: path.to_path_buf(),
            key: key.clone(),
            expected: "F32, F16, BF16, F64 or an integer type".into(),
            actual: dtype.clone(),
        })?;
        let shape: Vec<usize> = entry["shape"]
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| bad(format!("tensor '{key}' has no valid shape")))?;
        let offsets: Vec<u64> = entry["data_offsets"]
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_u64()).collect())
            .filter(|o: &Vec<u64>| o.len() == 2)
            .ok_or_else(|| bad(format!("tensor '{key}' has no valid data_offsets")))?;
        let (begin, end) = (offsets[0], offsets[1]);
        let needed = shape.iter().try_fold(size as u64, |acc, &d| acc.checked_mul(d as u64));
        if end < begin || end > data_len {
            return Err(bad(format!(
                "tensor '{key}' data_offsets [{begin}, {end}] run past the {data_len} data bytes (truncated file?)"
            )));
        }
        if needed != Some(end - begin) {
            return Err(bad(format!(
                "tensor '{key}' of {dtype} {shape:?} needs {} bytes but data_offsets span {}",
                needed.map_or("too many".into(), |n| n.to_string()),
                end - begin
            )));
        }
        out.insert(key, TensorInfo { file: path.to_path_buf(), dtype, shape });
    }
    Ok(out)
}

/// PyTorch scalar parameters (shape `[]`, e.g. CLIP's `logit_scale`) become `[1]` tensors, as a
/// Burn module holds them.
#[derive(Debug, Clone)]
struct ScalarAsVector;

impl ModuleAdapter for ScalarAsVector {
    fn adapt(
        &self,
        tensor: burn_store::burn_pack::Tensor,
        _ctx: ModuleContext<'_>,
    ) -> burn_store::burn_pack::Tensor {
        if tensor.shape.num_dims() != 0 {
            return tensor;
        }
        let (name, dtype) = (tensor.name.clone(), tensor.dtype);
        burn_store::bridge::map_data(tensor, name, dtype, Shape::new([1]), move |data: TensorData| {
            TensorData::from_bytes_vec(data.as_bytes().to_vec(), [1], dtype)
        })
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// burn-store's [`PyTorchToBurnAdapter`] with a fast transpose of `Linear` weights
/// (`[out, in]` -> `[in, out]`): burn-store copies element by element in source order, which
/// made loading PaliGemma-3B take 42 s against PyTorch's 27 s; here the copy goes tile by tile
/// over all cores. Norm renames and everything else are burn-store's.
#[derive(Debug, Clone)]
struct PyTorchToBurnFast;

/// burn-store's module type name of `burn::nn::Linear` (what its own adapter matches).
const LINEAR: &str = "Struct:Linear";

impl ModuleAdapter for PyTorchToBurnFast {
    fn adapt(
        &self,
        tensor: burn_store::burn_pack::Tensor,
        ctx: ModuleContext<'_>,
    ) -> burn_store::burn_pack::Tensor {
        let is_weight = tensor.name.rsplit('.').next() == Some("weight");
        let size = tensor.dtype.size();
        if ctx.module_type() != Some(LINEAR)
            || !is_weight
            || tensor.shape.num_dims() != 2
            || !matches!(size, 2 | 4 | 8)
            || matches!(tensor.dtype, DType::QFloat(_))
        {
            return PyTorchToBurnAdapter.adapt(tensor, ctx);
        }
        let (name, dtype) = (tensor.name.clone(), tensor.dtype);
        let (rows, cols) = (tensor.shape[0], tensor.shape[1]);
        burn_store::bridge::map_data(
            tensor,
            name,
            dtype,
            Shape::new([cols, rows]),
            move |data: TensorData| {
                let out = match size {
                    2 => transpose_bytes::<2>(data.as_bytes(), rows, cols),
                    4 => transpose_bytes::<4>(data.as_bytes(), rows, cols),
                    _ => transpose_bytes::<8>(data.as_bytes(), rows, cols),
                };
                TensorData::from_bytes_vec(out, [cols, rows], dtype)
            },
        )
    }

    fn get_alternative_param_name(&self, param_name: &str, container_type: &str) -> Option<String> {
        PyTorchToBurnAdapter.get_alternative_param_name(param_name, container_type)
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// [`FloatCastAdapter`] with a parallel widening of BF16/F16 files to F32 (burn-store converts
/// one element at a time on one core: 27 s of PaliGemma-3B's 35 s load). Other casts are
/// burn-store's.
#[derive(Debug, Clone)]
struct FloatCastFast(DType);

impl ModuleAdapter for FloatCastFast {
    fn adapt(
        &self,
        tensor: burn_store::burn_pack::Tensor,
        ctx: ModuleContext<'_>,
    ) -> burn_store::burn_pack::Tensor {
        if self.0 != DType::F32 || !matches!(tensor.dtype, DType::BF16 | DType::F16) {
            return FloatCastAdapter::to(self.0).adapt(tensor, ctx);
        }
        let (name, from, shape) = (tensor.name.clone(), tensor.dtype, tensor.shape.clone());
        burn_store::bridge::map_data(tensor, name, DType::F32, shape.clone(), move |data: TensorData| {
            use rayon::prelude::*;
            let bytes = data.as_bytes();
            let mut out = vec![0f32; bytes.len() / 2];
            out.par_chunks_mut(1 << 16).zip(bytes.par_chunks(2 << 16)).for_each(|(o, b)| {
                for (o, b) in o.iter_mut().zip(b.chunks_exact(2)) {
                    let bits = u16::from_le_bytes([b[0], b[1]]);
                    *o = if from == DType::BF16 {
                        f32::from_bits(u32::from(bits) << 16) // bf16 is the top half of an f32
                    } else {
                        half::f16::from_bits(bits).to_f32()
                    };
                }
            });
            TensorData::new(out, shape.clone())
        })
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// Transposes a row-major `rows x cols` matrix of `E`-byte elements: bands of 32 output rows
/// in parallel, 32 x 32 tiles inside a band (both sides stay in cache).
fn transpose_bytes<const E: usize>(src: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    use rayon::prelude::*;
    const T: usize = 32;
    let mut dst = vec![0u8; rows * cols * E];
    if rows == 0 || cols == 0 {
        return dst;
    }
    dst.par_chunks_mut(T * rows * E).enumerate().for_each(|(band, out)| {
        let j0 = band * T; // first output row = first source column of this band
        let jn = out.len() / (rows * E);
        for i0 in (0..rows).step_by(T) {
            for dj in 0..jn {
                let j = j0 + dj;
                for i in i0..(i0 + T).min(rows) {
                    let s = (i * cols + j) * E;
                    let d = (dj * rows + i) * E;
                    out[d..d + E].copy_from_slice(&src[s..s + E]);
                }
            }
        }
    });
    dst
}

/// The reverse of [`ScalarAsVector`] for saving: `[1]` tensors at the listed paths become `[]`.
#[derive(Debug, Clone)]
struct VectorAsScalar(Vec<Regex>);

impl ModuleAdapter for VectorAsScalar {
    fn adapt(
        &self,
        tensor: burn_store::burn_pack::Tensor,
        _ctx: ModuleContext<'_>,
    ) -> burn_store::burn_pack::Tensor {
        if tensor.shape.num_dims() != 1
            || tensor.shape[0] != 1
            || !self.0.iter().any(|r| r.is_match(&tensor.name))
        {
            return tensor;
        }
        let (name, dtype) = (tensor.name.clone(), tensor.dtype);
        burn_store::bridge::map_data(tensor, name, dtype, Shape::new([0usize; 0]), move |data: TensorData| {
            TensorData::from_bytes_vec(data.as_bytes().to_vec(), [0usize; 0], dtype)
        })
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// Writes a module as an HF-layout safetensors file, atomically (a scratch file renamed into
/// place, so a failed save leaves any previous file intact): Burn's `[in, out]` Linear weights
/// and norm `gamma`/`beta` go back to PyTorch's layout and names, `renames` (regex, replacement)
/// turn module paths into checkpoint keys, and `[1]` parameters whose path matches a `scalars`
/// regex are written as PyTorch scalars.
pub fn save_safetensors<M: ModuleSnapshot>(
    module: &M,
    path: &Path,
    renames: &[(&str, &str)],
    scalars: &[&str],
) -> Result<()> {
    let compile = |p: &str| Regex::new(p).map_err(|e| NnError::Config(format!("save pattern '{p}': {e}")));
    let scalars = scalars.iter().map(|p| compile(p)).collect::<Result<Vec<_>>>()?;
    let renames =
        renames.iter().map(|(f, t)| compile(f).map(|r| (r, t.to_string()))).collect::<Result<Vec<_>>>()?;
    let mut store = SafetensorsStore::from_file(path)
        .with_to_adapter(BurnToPyTorchAdapter.chain(VectorAsScalar(scalars)))
        .remap(KeyRemapper::from_compiled_patterns(renames))
        .skip_enum_variants(true)
        .overwrite(true)
        .metadata("format", "pt");
    module
        .save_into(&mut store)
        .map_err(|e| NnError::Load { path: path.to_path_buf(), reason: format!("saving: {e}") })
}

/// How checkpoint keys become module paths, and which differences are expected.
#[derive(Debug, Clone, Default)]
pub struct KeyMap {
    renames: Vec<(String, String)>,
    allow_missing: Vec<String>,
    allow_unused: Vec<String>,
}

impl KeyMap {
    /// An identity map (checkpoint keys are the module paths).
    pub fn new() -> Self {
        Self::default()
    }

    /// Rewrites keys matching regex `from` to `to` (`$1`-style groups allowed). Rules apply in
    /// order, each to the result of the previous ones.
    pub fn rename(mut self, from: &str, to: &str) -> Self {
        self.renames.push((from.to_string(), to.to_string()));
        self
    }

    /// Strips a literal prefix (e.g. `vision_tower.`) from checkpoint keys.
    pub fn strip_prefix(self, prefix: &str) -> Self {
        if prefix.is_empty() {
            return self;
        }
        self.rename(&format!("^{}", regex::escape(prefix)), "")
    }

    /// Module paths matching this regex may be absent from the checkpoint (they keep their
    /// initial value, e.g. a tied `lm_head`).
    pub fn allow_missing(mut self, pattern: &str) -> Self {
        self.allow_missing.push(pattern.to_string());
        self
    }

    /// Checkpoint keys (after renaming) matching this regex may go unused.
    pub fn allow_unused(mut self, pattern: &str) -> Self {
        self.allow_unused.push(pattern.to_string());
        self
    }

    fn compiled(&self) -> Result<Vec<(Regex, String)>> {
        self.renames
            .iter()
            .map(|(f, t)| {
                Regex::new(f)
                    .map(|r| (r, t.clone()))
                    .map_err(|e| NnError::Config(format!("key map pattern '{f}': {e}")))
            })
            .collect()
    }

    /// The module path a checkpoint key maps to.
    pub fn map_key(&self, key: &str) -> Result<String> {
        let mut k = key.to_string();
        for (re, to) in self.compiled()? {
            k = re.replace_all(&k, to.as_str()).into_owned();
        }
        Ok(k)
    }

    fn matcher(patterns: &[String]) -> Result<Option<Regex>> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let joined = patterns.iter().map(|p| format!("(?:{p})")).collect::<Vec<_>>().join("|");
        Regex::new(&joined).map(Some).map_err(|e| NnError::Config(format!("key map allow-list: {e}")))
    }
}

/// A HuggingFace checkpoint folder.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<PathBuf>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl Checkpoint {
    /// Opens a folder: finds its weight files and checks every header.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(NnError::io(
                &dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "checkpoint folder not found"),
            ));
        }
        let index = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        let (files, weight_map) = if index.is_file() {
            #[derive(serde::Deserialize)]
            struct Index {
                weight_map: BTreeMap<String, String>,
            }
            let idx: Index = read_json(&index)?;
            let files: BTreeSet<String> = idx.weight_map.values().cloned().collect();
            (files.into_iter().map(|f| dir.join(f)).collect::<Vec<_>>(), Some(idx.weight_map))
        } else if single.is_file() {
            (vec![single], None)
        } else {
            return Err(NnError::MissingFile {
                dir,
                what: "weights".into(),
                expected: format!("{SINGLE_FILE} or {INDEX_FILE}"),
            });
        };
        let mut tensors = BTreeMap::new();
        for file in &files {
            if !file.is_file() {
                return Err(NnError::MissingFile {
                    dir: dir.clone(),
                    what: format!("shard {}", file.display()),
                    expected: format!("every file named in {INDEX_FILE}"),
                });
            }
            tensors.extend(read_safetensors_header(file)?);
        }
        if let Some(map) = weight_map {
            for (key, file) in map {
                match tensors.get(&key) {
                    Some(info) if info.file == dir.join(&file) => {}
                    _ => {
                        return Err(NnError::Safetensors {
                            path: dir.join(&file),
                            reason: format!(
                                "{INDEX_FILE} places '{key}' in this file, but its header lacks it"
                            ),
                        });
                    }
                }
            }
        }
        Ok(Self { dir, files, tensors })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The weight files (one, or the shards).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Every tensor in the checkpoint, by key.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// Reads `config.json` (or another JSON file of the folder).
    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let path = self.dir.join(name);
        if !path.is_file() {
            return Err(NnError::MissingFile {
                dir: self.dir.clone(),
                what: name.into(),
                expected: name.into(),
            });
        }
        read_json(&path)
    }

    /// Loads the weights into `module`, converted to `dtype`.
    ///
    /// Errors name the file and key: a weight the model needs that the checkpoint lacks, a
    /// checkpoint weight the model has no place for, a shape or dtype that does not fit.
    pub fn load_into<M: ModuleSnapshot>(&self, module: &mut M, keys: &KeyMap, dtype: DType) -> Result<()> {
        let renames = keys.compiled()?;
        // module path -> checkpoint key, for messages.
        let mut origin = BTreeMap::new();
        for key in self.tensors.keys() {
            origin.insert(keys.map_key(key)?, key.clone());
        }
        let mut applied = BTreeSet::new();
        let mut module_paths = BTreeSet::new();
        let mut unused = BTreeSet::new();
        for file in &self.files {
            let adapter = PyTorchToBurnFast.chain(ScalarAsVector).chain(FloatCastFast(dtype));
            let mut store = SafetensorsStore::from_file(file)
                .remap(KeyRemapper::from_compiled_patterns(renames.clone()))
                .with_from_adapter(adapter)
                .skip_enum_variants(true)
                .allow_partial(true)
                .validate(false)
                .map_indices_contiguous(false);
            let result = module
                .load_from(&mut store)
                .map_err(|e| NnError::Load { path: file.clone(), reason: e.to_string() })?;
            if let Some(err) = result.errors.first() {
                return Err(self.apply_error(file, err, &origin));
            }
            module_paths.extend(result.applied.iter().cloned());
            module_paths.extend(result.missing.iter().map(|(p, _)| p.clone()));
            applied.extend(result.applied);
            unused.extend(result.unused);
        }
        let allow_missing = KeyMap::matcher(&keys.allow_missing)?;
        let missing: Vec<String> = module_paths
            .difference(&applied)
            .filter(|p| !allow_missing.as_ref().is_some_and(|r| r.is_match(p)))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(NnError::MissingKeys { dir: self.dir.clone(), keys: missing });
        }
        let allow_unused = KeyMap::matcher(&keys.allow_unused)?;
        let unused: Vec<String> = unused
            .into_iter()
            .filter(|p| !allow_unused.as_ref().is_some_and(|r| r.is_match(p)))
            .map(|p| origin.get(&p).cloned().unwrap_or(p))
            .collect();
        if !unused.is_empty() {
            return Err(NnError::UnusedKeys { dir: self.dir.clone(), keys: unused });
        }
        Ok(())
    }

    fn apply_error(&self, file: &Path, err: &ApplyError, origin: &BTreeMap<String, String>) -> NnError {
        let key_of = |path: &str| origin.get(path).cloned().unwrap_or_else(|| path.to_string());
        match err {
            ApplyError::ShapeMismatch { path, expected, found } => {
                let key = key_of(path);
                let actual = self.tensors.get(&key).map_or(found.to_vec(), |t| t.shape.clone());
                let mut expected = expected.to_vec();
                // A Linear weight was transposed to Burn's layout: report in the file's layout.
                if expected.len() == 2 && found.to_vec().iter().rev().eq(actual.iter()) {
                    expected.reverse();
                }
                NnError::Shape { path: file.to_path_buf(), key, expected, actual }
            }
            ApplyError::DTypeMismatch { path, expected, found } => NnError::Dtype {
                path: file.to_path_buf(),
                key: key_of(path),
                expected: format!("{expected:?}"),
                actual: format!("{found:?}"),
            },
            other => NnError::Load { path: file.to_path_buf(), reason: other.to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::norm::{Norm, NormConfig, NormKind};
    use crate::testing::{assert_slices_close, device, to_vec};
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn::prelude::*;
    use safetensors::{Dtype, tensor::TensorView};

    #[derive(Module, Debug)]
    struct Block {
        fc: Linear,
        norm: Norm,
    }

    #[derive(Module, Debug)]
    struct Tiny {
        layers: Vec<Block>,
        head: Linear,
    }

    fn tiny(device: &Device, kind: NormKind) -> Tiny {
        Tiny {
            layers: (0..2)
                .map(|_| Block {
                    fc: LinearConfig::new(3, 2).init(device),
                    norm: NormConfig::new(kind, 2, 1e-5).init(device),
                })
                .collect(),
            head: LinearConfig::new(2, 4).with_bias(false).init(device),
        }
    }

    /// Tensors of a checkpoint in PyTorch layout, under HF-style keys `model.layers.N.*`.
    fn pytorch_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let vals = |n: usize, s: f32| (0..n).map(|i| (i as f32 - 2.0) * s).collect::<Vec<_>>();
        let mut t = Vec::new();
        for l in 0..2 {
            let s = 0.1 * (l + 1) as f32;
            t.push((format!("model.layers.{l}.fc.weight"), vec![2, 3], vals(6, s))); // [out, in]
            t.push((format!("model.layers.{l}.fc.bias"), vec![2], vals(2, s)));
            t.push((format!("model.layers.{l}.norm.weight"), vec![2], vals(2, -s)));
            t.push((format!("model.layers.{l}.norm.bias"), vec![2], vals(2, 2.0 * s)));
        }
        t.push(("lm_head.weight".into(), vec![4, 2], vals(8, 0.3)));
        t
    }

    fn keymap() -> KeyMap {
        KeyMap::new().rename(r"^model\.", "").rename(r"^lm_head\.", "head.")
    }

    fn encode(tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) -> Vec<u8> {
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, v)| match dtype {
                Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Dtype::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
                Dtype::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
                _ => unreachable!(),
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .zip(&bytes)
            .map(|((k, s, _), b)| (k.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    fn write_single(dir: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) {
        std::fs::write(dir.join(SINGLE_FILE), encode(tensors, dtype)).unwrap();
    }

    /// The loaded module must hold the file's values (Linear weights transposed).
    fn check_values(model: &Tiny, tensors: &[(String, Vec<usize>, Vec<f32>)], tol: f32) {
        let get = |k: &str| tensors.iter().find(|t| t.0 == k).unwrap().2.clone();
        let transpose = |v: Vec<f32>, rows: usize, cols: usize| {
            (0..cols)
                .flat_map(|c| (0..rows).map(move |r| (r, c)))
                .map(|(r, c)| v[r * cols + c])
                .collect::<Vec<_>>()
        };
        for (l, block) in model.layers.iter().enumerate() {
            let w = transpose(get(&format!("model.layers.{l}.fc.weight")), 2, 3);
            assert_slices_close(&to_vec(block.fc.weight.val()), &w, tol, "fc.weight");
            let b = get(&format!("model.layers.{l}.fc.bias"));
            assert_slices_close(&to_vec(block.fc.bias.as_ref().unwrap().val()), &b, tol, "fc.bias");
            let Norm::Layer(ln) = &block.norm else { panic!("layer norm expected") };
            let g = get(&format!("model.layers.{l}.norm.weight"));
            assert_slices_close(&to_vec(ln.gamma.val()), &g, tol, "norm.weight");
        }
        let h = transpose(get("lm_head.weight"), 4, 2);
        assert_slices_close(&to_vec(model.head.weight.val()), &h, tol, "lm_head");
    }

    fn load(dir: &Path) -> Result<Tiny> {
        let dev = device();
        let mut model = tiny(&dev, NormKind::Layer);
        Checkpoint::open(dir)?.load_into(&mut model, &keymap(), DType::F32)?;
        Ok(model)
    }

    #[test]
    fn round_trip_f32_bf16_f16() {
        let tensors = pytorch_tensors();
        for (dtype, tol) in [(Dtype::F32, 0.0), (Dtype::BF16, 4e-3), (Dtype::F16, 5e-4)] {
            let dir = tempfile::tempdir().unwrap();
            write_single(dir.path(), &tensors, dtype);
            let model = load(dir.path()).unwrap();
            check_values(&model, &tensors, tol);
        }
    }

    #[test]
    fn round_trip_sharded() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = pytorch_tensors();
        let (a, b) = tensors.split_at(5);
        let mut weight_map = BTreeMap::new();
        for (name, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)]
        {
            std::fs::write(dir.path().join(name), encode(part, Dtype::BF16)).unwrap();
            for t in part {
                weight_map.insert(t.0.clone(), name.to_string());
            }
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.path().join(INDEX_FILE), index.to_string()).unwrap();
        let model = load(dir.path()).unwrap();
        check_values(&model, &tensors, 4e-3);
    }

    #[test]
    fn batch_norm_running_stats_load() {
        let dev = device();
        let dir = tempfile::tempdir().unwrap();
        let mut tensors = pytorch_tensors();
        for l in 0..2 {
            tensors.push((format!("model.layers.{l}.norm.running_mean"), vec![2], vec![0.5, -0.5]));
            tensors.push((format!("model.layers.{l}.norm.running_var"), vec![2], vec![2.0, 3.0]));
        }
        write_single(dir.path(), &tensors, Dtype::F32);
        let mut model = tiny(&dev, NormKind::Batch);
        Checkpoint::open(dir.path()).unwrap().load_into(&mut model, &keymap(), DType::F32).unwrap();
        let Norm::Batch(bn) = &model.layers[1].norm else { panic!() };
        assert_slices_close(&to_vec(bn.running_var.value()), &[2.0, 3.0], 0.0, "running_var");
        assert_slices_close(&to_vec(bn.gamma.val()), &[0.4, 0.2], 1e-6, "bn weight");
    }

    /// Replaces the first `from` in the JSON header by `to` (of the same length).
    fn patch_header(file: &[u8], from: &str, to: &str) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let end = 8 + u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&file[8..end]).unwrap();
        assert!(header.contains(from), "{from} not in header");
        let mut out = file.to_vec();
        out[8..end].copy_from_slice(header.replacen(from, to, 1).as_bytes());
        out
    }

    fn err_of(dir: &Path) -> String {
        load(dir).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn missing_folder_and_files() {
        let e = err_of(Path::new("/nonexistent/ckpt"));
        assert!(e.contains("/nonexistent/ckpt"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = err_of(dir.path());
        assert!(e.contains(SINGLE_FILE) && e.contains(INDEX_FILE), "{e}");
        // An index naming a shard that is not there.
        let index = serde_json::json!({"weight_map": {"lm_head.weight": "model-00001-of-00001.safetensors"}});
        std::fs::write(dir.path().join(INDEX_FILE), index.to_string()).unwrap();
        let e = err_of(dir.path());
        assert!(e.contains("model-00001-of-00001.safetensors"), "{e}");
    }

    #[test]
    fn malformed_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 3,").unwrap();
        write_single(dir.path(), &pytorch_tensors(), Dtype::F32);
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        let e = ckpt.read_json::<serde_json::Value>("config.json").unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("invalid JSON"), "{e}");
        let e = ckpt.read_json::<serde_json::Value>("preprocessor_config.json").unwrap_err().to_string();
        assert!(e.contains("preprocessor_config.json"), "{e}");
    }

    #[test]
    fn lying_and_truncated_headers_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let good = encode(&pytorch_tensors(), Dtype::F32);
        // Truncated: the last tensor's bytes run past the end.
        std::fs::write(dir.path().join(SINGLE_FILE), &good[..good.len() - 4]).unwrap();
        let e = err_of(dir.path());
        assert!(e.contains(SINGLE_FILE) && e.contains("run past"), "{e}");
        // A header length larger than the file.
        let mut lying = good.clone();
        lying[..8].copy_from_slice(&(good.len() as u64 * 2).to_le_bytes());
        std::fs::write(dir.path().join(SINGLE_FILE), &lying).unwrap();
        let e = err_of(dir.path());
        assert!(e.contains("header length"), "{e}");
        // A shape that disagrees with the byte range.
        let patched = patch_header(&good, "\"shape\":[4,2]", "\"shape\":[4,3]");
        std::fs::write(dir.path().join(SINGLE_FILE), patched).unwrap();
        let e = err_of(dir.path());
        assert!(e.contains("lm_head.weight") && e.contains("needs 48 bytes"), "{e}");
        // Not a safetensors file at all.
        std::fs::write(dir.path().join(SINGLE_FILE), b"abc").unwrap();
        assert!(err_of(dir.path()).contains("too short"));
    }

    #[test]
    fn wrong_shape_names_key_and_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let mut tensors = pytorch_tensors();
        tensors[0] = ("model.layers.0.fc.weight".into(), vec![2, 4], vec![0.0; 8]);
        write_single(dir.path(), &tensors, Dtype::F32);
        let e = err_of(dir.path());
        assert!(
            e.contains("model.layers.0.fc.weight") && e.contains("[2, 4]") && e.contains("[2, 3]"),
            "{e}"
        );
    }

    #[test]
    fn wrong_dtype_names_key() {
        let dir = tempfile::tempdir().unwrap();
        let good = encode(&pytorch_tensors(), Dtype::F32);
        let bytes = patch_header(&good, "\"dtype\":\"F32\"", "\"dtype\":\"I32\"");
        std::fs::write(dir.path().join(SINGLE_FILE), &bytes).unwrap();
        let e = err_of(dir.path());
        assert!(e.contains("dtype") && e.contains("I32"), "{e}");
        // An exotic dtype is refused at the header.
        let bytes = patch_header(&good, "\"dtype\":\"F32\"", "\"dtype\":\"F8\" ");
        std::fs::write(dir.path().join(SINGLE_FILE), &bytes).unwrap();
        let e = err_of(dir.path());
        assert!(e.contains("F8"), "{e}");
    }

    #[test]
    fn missing_and_unused_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut tensors = pytorch_tensors();
        tensors.retain(|t| t.0 != "lm_head.weight");
        tensors.push(("model.extra.weight".into(), vec![1], vec![1.0]));
        write_single(dir.path(), &tensors, Dtype::F32);
        let e = err_of(dir.path());
        assert!(e.contains("missing") && e.contains("head.weight"), "{e}");

        // With lm_head allowed to be missing (tied), the extra key is the error.
        let dev = device();
        let mut model = tiny(&dev, NormKind::Layer);
        let keys = keymap().allow_missing(r"^head\.");
        let e = Checkpoint::open(dir.path())
            .unwrap()
            .load_into(&mut model, &keys, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not use") && e.contains("model.extra.weight"), "{e}");
        let keys = keys.allow_unused(r"^extra\.");
        Checkpoint::open(dir.path()).unwrap().load_into(&mut model, &keys, DType::F32).unwrap();
    }

    #[test]
    fn tiled_transpose_equals_the_definition() {
        for (rows, cols) in [(1, 1), (3, 70), (65, 33), (32, 32), (100, 1)] {
            let src: Vec<u8> = (0..rows * cols * 4).map(|i| (i * 7 % 251) as u8).collect();
            let out = transpose_bytes::<4>(&src, rows, cols);
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        out[(j * rows + i) * 4..][..4],
                        src[(i * cols + j) * 4..][..4],
                        "{rows}x{cols}"
                    );
                }
            }
        }
    }
}
