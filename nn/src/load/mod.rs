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
//! file is an error naming the file and key rather than a crash.//!
//! One file per job: [`header`] (safetensors header checks), [`adapters`] (layout and dtype
//! conversions on the way in and out), [`keymap`] (checkpoint keys -> module paths),
//! [`checkpoint`] (the folder: files, headers, loading), [`save`] (writing HF-layout files).

mod adapters;
pub mod checkpoint;
pub mod header;
pub mod keymap;
pub mod pytorch;
pub mod raw;
pub mod save;
#[cfg(test)]
mod tests;

pub use checkpoint::{Checkpoint, LoadSpec, Q8_FILE, Q8_SOURCES};
pub use header::{TensorInfo, read_safetensors_header};
pub use keymap::KeyMap;
pub use save::save_safetensors;

use crate::error::{NnError, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// The single-file weights name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The shard index name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The PyTorch weights name (repositories without safetensors).
pub const BIN_FILE: &str = "pytorch_model.bin";
/// The PyTorch shard index name.
pub const BIN_INDEX_FILE: &str = "pytorch_model.bin.index.json";

/// Largest JSON file read (configs, indexes, tokenizer configs).
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// Reads a text file that must be a regular file of at most `limit` bytes (not a FIFO, not
/// `/dev/zero`), naming it in errors.
pub fn read_text(path: &Path, limit: u64) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| NnError::io(path, e))?;
    let refuse = |why: String| NnError::io(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if meta.len() > limit {
        return Err(refuse(format!("{} bytes, more than the {limit}-byte limit", meta.len())));
    }
    std::fs::read_to_string(path).map_err(|e| NnError::io(path, e))
}

/// Reads and deserialises a JSON file, naming the file in every error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_text(path, MAX_JSON_BYTES)?;
    let mut de = serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| NnError::Json {
        path: path.to_path_buf(),
        key: e.path().to_string(),
        source: e.into_inner(),
    })
}

/// The `model_type` of a checkpoint folder's config.json.
/// Deserialises an already parsed JSON document of `path`, naming the key of a bad value.
pub fn from_json_value<T: DeserializeOwned>(path: &Path, value: serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| NnError::Json {
        path: path.to_path_buf(),
        key: e.path().to_string(),
        source: e.into_inner(),
    })
}

/// An OpenCLIP export (`open_clip_config.json`, no config.json) is a `clip` folder.
pub fn model_type(dir: &Path) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        model_type: Option<String>,
    }
    let path = dir.join("config.json");
    if !path.is_file() && dir.join("open_clip_config.json").is_file() {
        return Ok("clip".into());
    }
    let head: Head = read_json(&path)?;
    head.model_type.ok_or_else(|| NnError::Config(format!("{}: no model_type", path.display())))
}
