//! [`Checkpoint`]: a HuggingFace checkpoint folder (single file or shards), its checked headers,
//! and loading it into a module.

use super::adapters::{FloatCastFast, PyTorchToBurnFast, ScalarAsVector};
use super::header::{TensorInfo, parse_safetensors_header, read_safetensors_header};
use super::keymap::KeyMap;
use super::{BIN_FILE, BIN_INDEX_FILE, INDEX_FILE, SINGLE_FILE, read_json};
use crate::error::{NnError, Result};
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::DType;
use burn_store::{ApplyError, KeyRemapper, ModuleAdapter, ModuleSnapshot, SafetensorsStore};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

    /// Loads the weights into `module`, converted to `dtype`.
    ///
    /// Errors name the file and key: a weight the model needs that the checkpoint lacks, a
    /// checkpoint weight the model has no place for, a shape or dtype that does not fit.
    pub fn load_into<M: ModuleSnapshot + Module>(
        &self,
        module: &mut M,
        keys: &KeyMap,
        dtype: DType,
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
        if self.bad.is_some() {
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
