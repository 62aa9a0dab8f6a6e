//! [`Checkpoint`]: a HuggingFace checkpoint folder (single file or shards), its checked headers,
//! and loading it into a module.

use super::adapters::{FloatCastFast, PyTorchToBurnFast, ScalarAsVector};
use super::header::{TensorInfo, parse_safetensors_header, read_safetensors_header};
use super::keymap::KeyMap;
use super::{BIN_FILE, BIN_INDEX_FILE, INDEX_FILE, SINGLE_FILE, read_json};
use crate::error::{NnError, Result};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::DType;
use burn_store::{ApplyError, KeyRemapper, ModuleAdapter, ModuleSnapshot, SafetensorsStore};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zoo_kernels::gemm::{Backing, PackedWeight, RawDtype, RawMatrix, WeightFormat};
use zoo_kernels::mmap;

/// A HuggingFace checkpoint folder.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<PathBuf>,
    tensors: BTreeMap<String, TensorInfo>,
    /// `pytorch_model*.bin` files, converted to safetensors bytes in memory.
    converted: BTreeMap<PathBuf, Arc<Vec<u8>>>,
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
        let mut index = dir.join(INDEX_FILE);
        let mut single = dir.join(SINGLE_FILE);
        let bin = !index.is_file() && !single.is_file();
        if bin {
            index = dir.join(BIN_INDEX_FILE);
            single = dir.join(BIN_FILE);
        }
        let (files, weight_map) = if index.is_file() {
            #[derive(serde::Deserialize)]
            struct Index {
                weight_map: BTreeMap<String, String>,
            }
            let idx: Index = read_json(&index)?;
            let files: BTreeSet<String> = idx.weight_map.values().cloned().collect();
            // Shards live in the folder: no absolute paths, no `..`, no sub-folders.
            if let Some(bad) = files.iter().find(|f| {
                let p = Path::new(f.as_str());
                p.components().count() != 1
                    || !matches!(p.components().next(), Some(std::path::Component::Normal(_)))
            }) {
                return Err(NnError::Config(format!(
                    "{}: shard {bad:?} is not a file name inside the model folder",
                    index.display()
                )));
            }
            (files.into_iter().map(|f| dir.join(f)).collect::<Vec<_>>(), Some(idx.weight_map))
        } else if single.is_file() {
            (vec![single], None)
        } else {
            return Err(NnError::MissingFile {
                dir,
                what: "weights".into(),
                expected: format!("{SINGLE_FILE}, {INDEX_FILE}, {BIN_FILE} or {BIN_INDEX_FILE}"),
            });
        };
        let mut tensors = BTreeMap::new();
        let mut converted = BTreeMap::new();
        for file in &files {
            if !file.is_file() {
                return Err(NnError::MissingFile {
                    dir: dir.clone(),
                    what: format!("shard {}", file.display()),
                    expected: format!("every file named in {}", index.display()),
                });
            }
            if bin {
                let bytes = super::pytorch::bin_to_safetensors(file)?;
                let len = bytes.len() as u64;
                tensors.extend(parse_safetensors_header(file, std::io::Cursor::new(&bytes), len)?);
                converted.insert(file.clone(), Arc::new(bytes));
            } else {
                tensors.extend(read_safetensors_header(file)?);
            }
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
        Ok(Self { dir, files, tensors, converted })
    }

    /// A checkpoint held in memory: the bytes of one safetensors file, named `file` in
    /// messages (a converted checkpoint of `dir`).
    pub fn from_safetensors_bytes(dir: impl AsRef<Path>, file: PathBuf, bytes: Vec<u8>) -> Result<Self> {
        let len = bytes.len() as u64;
        let tensors = parse_safetensors_header(&file, std::io::Cursor::new(&bytes), len)?;
        let converted = BTreeMap::from([(file.clone(), Arc::new(bytes))]);
        Ok(Self { dir: dir.as_ref().to_path_buf(), files: vec![file], tensors, converted })
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

    /// Loads the weights into `module`: converted to `spec`'s dtype, or (a [`LoadSpec`] that
    /// packs) with the Linear weights packed straight from the files for the CPU kernels.
    ///
    /// Errors name the file and key: a weight the model needs that the checkpoint lacks, a
    /// checkpoint weight the model has no place for, a shape or dtype that does not fit.
    pub fn load_into<M: ModuleSnapshot + Module>(
        &self,
        module: &mut M,
        keys: &KeyMap,
        spec: impl Into<LoadSpec>,
    ) -> Result<()> {
        let spec = spec.into();
        match spec.pack {
            None => self.load_burn(module, keys, spec.dtype, &BTreeSet::new()),
            Some(format) => self.load_packed(module, keys, format, spec.save_q8),
        }
    }

    /// [`Checkpoint::load_into`] with [`crate::packed`]'s weights (Linear weights and
    /// `embed_tokens`) read from the files and packed in `format` (bf16 files without
    /// conversion, one tensor in memory at a time), everything else loaded as f32 by burn-store.
    fn load_packed<M: ModuleSnapshot + Module>(
        &self,
        module: &mut M,
        keys: &KeyMap,
        format: WeightFormat,
        save_q8: bool,
    ) -> Result<()> {
        // Saved q8 panels, when they were made from these very files.
        let saved = if format == WeightFormat::Q8 { self.q8_saved()? } else { None };
        let mut to_save: Vec<(String, ParamId)> = Vec::new();
        // Which parameters pack, by module path, with their ids and (lazy) shapes.
        let mut found = Packable::default();
        module.visit(&mut found);
        let mut by_path = BTreeMap::new();
        for key in self.tensors.keys() {
            by_path.insert(keys.map_key(key)?, key.clone());
        }
        let mut packed_paths = BTreeSet::new();
        let mut packed_keys = BTreeSet::new();
        let mut maps: HashMap<PathBuf, Backing> = HashMap::new();
        let mut shapes = HashMap::new();
        for (path, id, shape) in found.params {
            let Some(key) = by_path.get(&path) else { continue };
            let info = &self.tensors[key];
            let Some(dtype) = RawDtype::from_safetensors(&info.dtype) else { continue };
            // Linear stores [in, out], the file [out, in]; an embedding table is as stored.
            let linear = found.linear.contains(&path);
            let want: Vec<usize> = if linear { shape.iter().rev().copied().collect() } else { shape.clone() };
            if info.shape != want {
                return Err(NnError::Shape {
                    path: info.file.clone(),
                    key: key.clone(),
                    expected: want,
                    actual: info.shape.clone(),
                });
            }
            if let Some((backing, tensors)) = &saved
                && let (Some(q), Some(sc)) = (tensors.get(key), tensors.get(&format!("{key}.scale")))
            {
                let n_scales = (sc.shape.iter().product::<usize>()).min(1 << 28);
                let scale_bytes = (**backing)
                    .as_ref()
                    .get(sc.offset as usize..sc.offset as usize + n_scales * 4)
                    .unwrap_or_default();
                let scale: Vec<f32> = scale_bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                if let Some(weight) =
                    PackedWeight::from_q8_panels(backing.clone(), q.offset as usize, scale, want[0], want[1])
                {
                    crate::packed::register(id, weight);
                    shapes.insert(id, [shape[0], shape[1]]);
                    packed_paths.insert(path);
                    packed_keys.insert(key.clone());
                    continue;
                }
            }
            // The file's bytes in place: the converted bytes of a .bin; for bf16 kept in place,
            // the whole file mapped (kept); otherwise this tensor's range, dropped once packed.
            let in_place = format == WeightFormat::Bf16 && dtype == RawDtype::Bf16;
            let len = want[0] * want[1] * dtype.size();
            let (backing, offset): (Backing, usize) = match self.converted.get(&info.file) {
                Some(bytes) => (bytes.clone(), info.offset as usize),
                None if in_place => match maps.get(&info.file) {
                    Some(map) => (map.clone(), info.offset as usize),
                    None => {
                        let map: Backing = mmap::map(&info.file).map_err(|e| NnError::io(&info.file, e))?;
                        maps.insert(info.file.clone(), map.clone());
                        (map, info.offset as usize)
                    }
                },
                None => (
                    mmap::map_range(&info.file, info.offset, len).map_err(|e| NnError::io(&info.file, e))?,
                    0,
                ),
            };
            let bytes =
                (*backing).as_ref().get(offset..offset + len).ok_or_else(|| NnError::Safetensors {
                    path: info.file.clone(),
                    reason: format!("tensor '{key}' runs past the file (changed since its header was read?)"),
                })?;
            let raw = RawMatrix { bytes, dtype, cols: want[1] };
            if raw.has_non_finite() {
                return Err(NnError::Load {
                    path: self.dir.clone(),
                    reason: format!("tensor '{key}' holds NaN or infinite values"),
                });
            }
            let weight = if in_place {
                PackedWeight::from_bf16_rows(backing.clone(), offset, want[0], want[1])
            } else {
                PackedWeight::pack(&raw, want[0], want[1], format)
            };
            crate::packed::register(id, weight);
            to_save.push((key.clone(), id));
            shapes.insert(id, [shape[0], shape[1]]);
            packed_paths.insert(path);
            packed_keys.insert(key.clone());
        }
        if save_q8 && format == WeightFormat::Q8 && saved.is_none() {
            self.write_q8(&to_save)?;
        }
        // Placeholders where the packed weights were, then the rest through burn-store as f32.
        let mut swap = Placeholders { shapes };
        *module = module.clone().map(&mut swap);
        // Keys the model has no place for and may ignore (a duplicate lm_head) are not read.
        let allow_unused = KeyMap::matcher(&keys.allow_unused)?;
        for (path, key) in &by_path {
            if !found.all.contains(path) && allow_unused.as_ref().is_some_and(|r| r.is_match(path)) {
                packed_keys.insert(key.clone());
            }
        }
        let rest = self.without(&packed_keys)?;
        rest.load_burn(module, keys, DType::F32, &packed_paths)?;
        crate::packed::attach_biases(module);
        crate::packed::pack_patch_embeddings(module, format);
        Ok(())
    }

    /// The saved q8 panels of this checkpoint (mapped, with their header), when [`Q8_FILE`]
    /// exists and [`Q8_SOURCES`] matches the checkpoint's files as they are now.
    fn q8_saved(&self) -> Result<Option<(Backing, BTreeMap<String, TensorInfo>)>> {
        let (file, stamp) = (self.dir.join(Q8_FILE), self.dir.join(Q8_SOURCES));
        if !file.is_file() || !stamp.is_file() {
            return Ok(None);
        }
        let recorded: serde_json::Value = crate::read_json(&stamp)?;
        if recorded != q8_stamp(&self.files) {
            return Ok(None); // made from other files: quantised again
        }
        let tensors = super::header::read_safetensors_header(&file)?;
        let map: Backing = mmap::map(&file).map_err(|e| NnError::io(&file, e))?;
        Ok(Some((map, tensors)))
    }

    /// Writes the packed q8 weights `ids` (by checkpoint key) to [`Q8_FILE`] beside the
    /// checkpoint, streaming them from the packed table (no second copy), atomically, then
    /// [`Q8_SOURCES`].
    fn write_q8(&self, ids: &[(String, ParamId)]) -> Result<()> {
        use std::io::Write;
        let path = self.dir.join(Q8_FILE);
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({"format": "vlm-zoo-q8-panels-1"}));
        let mut offset = 0usize;
        let mut order = Vec::new();
        for (key, id) in ids {
            let Some((q, s)) =
                crate::packed::with_weight(id, |w| w.q8_panels().map(|(q, s)| (q.len(), s.len()))).flatten()
            else {
                continue;
            };
            header.insert(
                key.clone(),
                serde_json::json!({"dtype": "U8", "shape": [q], "data_offsets": [offset, offset + q]}),
            );
            offset += q;
            header.insert(
                format!("{key}.scale"),
                serde_json::json!({"dtype": "F32", "shape": [s], "data_offsets": [offset, offset + 4 * s]}),
            );
            offset += 4 * s;
            order.push(id);
        }
        let mut head = serde_json::to_vec(&header).map_err(|e| NnError::Config(e.to_string()))?;
        while head.len() % 8 != 0 {
            head.push(b' ');
        }
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let save = |e: std::io::Error| NnError::Save { path: path.clone(), reason: e.to_string() };
        let write = || -> std::io::Result<()> {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            f.write_all(&(head.len() as u64).to_le_bytes())?;
            f.write_all(&head)?;
            for id in &order {
                crate::packed::with_weight(id, |w| -> std::io::Result<()> {
                    if let Some((q, s)) = w.q8_panels() {
                        f.write_all(q)?;
                        for v in s {
                            f.write_all(&v.to_le_bytes())?;
                        }
                    }
                    Ok(())
                })
                .unwrap_or(Ok(()))?;
            }
            f.into_inner().map_err(|e| e.into_error())?.sync_all()
        };
        if let Err(e) = write().and_then(|_| std::fs::rename(&tmp, &path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(save(e));
        }
        let stamp =
            serde_json::to_vec_pretty(&q8_stamp(&self.files)).map_err(|e| NnError::Config(e.to_string()))?;
        std::fs::write(self.dir.join(Q8_SOURCES), stamp)
            .map_err(|e| NnError::io(self.dir.join(Q8_SOURCES), e))
    }

    /// The bytes of tensor `key` (`info` from the header; `size` bytes per element), from the
    /// converted bytes or the open `file`.
    fn read_bytes(
        &self,
        key: &str,
        info: &TensorInfo,
        size: usize,
        file: Option<&std::fs::File>,
    ) -> Result<Vec<u8>> {
        let len = info.shape.iter().product::<usize>() * size;
        if let Some(bytes) = self.converted.get(&info.file) {
            let start = info.offset as usize;
            return bytes.get(start..start + len).map(<[u8]>::to_vec).ok_or_else(|| NnError::Safetensors {
                path: info.file.clone(),
                reason: format!("tensor '{key}' runs past the converted bytes"),
            });
        }
        let file =
            file.ok_or_else(|| NnError::Load { path: info.file.clone(), reason: "not opened".into() })?;
        let mut buf = vec![0u8; len];
        read_at(file, &mut buf, info.offset).map_err(|e| NnError::io(&info.file, e))?;
        Ok(buf)
    }

    /// This checkpoint without the tensors `skip`: each file's other tensors as in-memory
    /// safetensors bytes (under the file's own name, for messages).
    fn without(&self, skip: &BTreeSet<String>) -> Result<Self> {
        let mut converted = BTreeMap::new();
        let mut tensors = BTreeMap::new();
        for file in &self.files {
            // One handle per shard (a .bin's converted bytes need none).
            let handle = match self.converted.contains_key(file) {
                true => None,
                false => Some(std::fs::File::open(file).map_err(|e| NnError::io(file, e))?),
            };
            let mut raw = Vec::new();
            for (key, info) in self.tensors.iter().filter(|(k, i)| &i.file == file && !skip.contains(*k)) {
                let size = super::header::dtype_size(&info.dtype).unwrap_or(4);
                raw.push(super::raw::RawTensor {
                    name: key.clone(),
                    dtype: info.dtype.clone(),
                    shape: info.shape.clone(),
                    data: self.read_bytes(key, info, size, handle.as_ref())?,
                });
            }
            let bytes = super::raw::write_safetensors(&raw);
            let len = bytes.len() as u64;
            tensors.extend(parse_safetensors_header(file, std::io::Cursor::new(&bytes), len)?);
            converted.insert(file.clone(), Arc::new(bytes));
        }
        Ok(Self { dir: self.dir.clone(), files: self.files.clone(), tensors, converted })
    }

    /// Loads through burn-store in `dtype`; module paths in `filled` were loaded already.
    fn load_burn<M: ModuleSnapshot + Module>(
        &self,
        module: &mut M,
        keys: &KeyMap,
        dtype: DType,
        filled: &BTreeSet<String>,
    ) -> Result<()> {
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
            let store = match self.converted.get(file) {
                Some(bytes) => SafetensorsStore::from_bytes(Some(bytes.as_ref().clone())),
                None => SafetensorsStore::from_file(file),
            };
            let mut store = store
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
            .filter(|p| !filled.contains(*p))
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
        // Non-finite weights: a per-tensor sum (one reduction, no copy) flags a tensor; the
        // exact test confirms it, so huge finite values are not mistaken for broken ones.
        let mut check = FiniteCheck::default();
        module.visit(&mut check);
        if let Some(path) = check.bad {
            // Burn names norm parameters gamma/beta; the checkpoint, weight/bias.
            let hf = path
                .strip_suffix(".gamma")
                .map(|p| format!("{p}.weight"))
                .or_else(|| path.strip_suffix(".beta").map(|p| format!("{p}.bias")))
                .unwrap_or_else(|| path.clone());
            let key = origin.get(&path).or_else(|| origin.get(&hf)).cloned().unwrap_or(hf);
            return Err(NnError::Load {
                path: self.dir.clone(),
                reason: format!("tensor '{key}' holds NaN or infinite values"),
            });
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

/// How [`Checkpoint::load_into`] loads: the dtype of Burn's tensors, or packed weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSpec {
    /// The dtype parameters load in (f32 for what is not packed).
    pub dtype: DType,
    /// Pack the Linear weights (and `embed_tokens`) for the CPU kernels in this format.
    pub pack: Option<WeightFormat>,
    /// With q8: write the quantised weights next to the checkpoint ([`Q8_FILE`]), so later q8
    /// loads use them in place instead of quantising again (`vlm-zoo quantize`).
    pub save_q8: bool,
}

/// The file `vlm-zoo quantize` writes next to a checkpoint: every packed weight's int8 panels
/// (`KEY`, U8) and scales (`KEY.scale`, F32), used in place by q8 loads while
/// [`Q8_SOURCES`] still describes the checkpoint's files.
pub const Q8_FILE: &str = "model.q8.safetensors";
/// The sizes and modification times of the files [`Q8_FILE`] was made from.
pub const Q8_SOURCES: &str = "model.q8.json";

/// What [`Q8_SOURCES`] records of `files`.
fn q8_stamp(files: &[PathBuf]) -> serde_json::Value {
    let files: Vec<serde_json::Value> = files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).ok();
            let modified = meta
                .as_ref()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            serde_json::json!({
                "file": f.file_name().map(|n| n.to_string_lossy().into_owned()),
                "bytes": meta.map_or(0, |m| m.len()),
                "modified": modified,
            })
        })
        .collect();
    serde_json::json!({"format": "vlm-zoo-q8-panels-1", "sources": files})
}

impl From<DType> for LoadSpec {
    fn from(dtype: DType) -> Self {
        Self { dtype, pack: None, save_q8: false }
    }
}

impl LoadSpec {
    /// Packed in `format`, the rest f32.
    pub fn packed(format: WeightFormat) -> Self {
        Self { dtype: DType::F32, pack: Some(format), save_q8: false }
    }
}

/// The parameters [`crate::packed`] packs, by module path (as burn-store names them), with id
/// and shape; read without initialising lazy parameters.
#[derive(Default)]
struct Packable {
    path: Vec<(String, String)>,
    params: Vec<(String, ParamId, Vec<usize>)>,
    linear: BTreeSet<String>,
    /// Every float parameter's path.
    all: BTreeSet<String>,
}

impl ModuleVisitor for Packable {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self
            .path
            .iter()
            .map(|(f, _)| f.as_str())
            .filter(|s| !s.is_empty() && !s.chars().next().is_some_and(char::is_uppercase))
            .collect::<Vec<_>>()
            .join(".");
        self.all.insert(path.clone());
        if D != 2 || !crate::packed::packs(&self.path) {
            return;
        }
        if self.path.last().is_some_and(|(_, c)| c == "Struct:Linear") {
            self.linear.insert(path.clone());
        }
        self.params.push((path, param.id, param.lazy_shape().dims::<2>().to_vec()));
    }
}

/// Replaces the parameters in `shapes` by placeholders (without initialising them).
struct Placeholders {
    shapes: HashMap<ParamId, [usize; 2]>,
}

impl ModuleMapper for Placeholders {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self.shapes.get(&param.id) {
            Some(&[a, b]) if D == 2 => {
                let device = param.lazy_device();
                let mut dims = [0; D];
                dims[0] = a;
                dims[1] = b;
                crate::packed::placeholder(param.id, dims, &device)
            }
            _ => param,
        }
    }
}

#[cfg(unix)]
fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_at(mut file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// Finds the first parameter holding a NaN or an infinity, by module path.
#[derive(Default)]
struct FiniteCheck {
    path: Vec<String>,
    bad: Option<String>,
}

impl ModuleVisitor for FiniteCheck {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // Packed weights were checked as they were read.
        if self.bad.is_some() || crate::packed::contains(&param.id) {
            return;
        }
        let t = param.val();
        let sum = crate::host::scalar(t.clone().sum());
        if sum.is_finite() {
            return;
        }
        let flags = t.clone().is_nan().any().bool_or(t.is_inf().any());
        if flags.into_data().iter::<bool>().any(|b| b) {
            let mut path: Vec<&str> =
                self.path.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
            path.retain(|s| !s.chars().next().is_some_and(char::is_uppercase));
            self.bad = Some(path.join("."));
        }
    }
}
