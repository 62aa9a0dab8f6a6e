//! `pytorch_model.bin` checkpoints (PyTorch's zip + pickle state dicts), for repositories that
//! ship no safetensors. burn-store's PyTorch reader parses the pickle as data (no pickle code
//! runs); the tensors are then laid out as a safetensors buffer in memory, so they pass the same
//! header checks, key maps and adapters as every other checkpoint.

use super::raw::{RawTensor, write_safetensors};
use crate::error::{NnError, Result};
use burn::tensor::DType;
use burn_store::{ModuleStore, PytorchStore};
use std::path::Path;

fn dtype_name(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::F64 => "F64",
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::I64 => "I64",
        DType::I32 => "I32",
        DType::I16 => "I16",
        DType::I8 => "I8",
        DType::U8 => "U8",
        DType::Bool(_) => "BOOL",
        _ => return None,
    })
}

/// Reads a PyTorch state dict and returns it as the bytes of an equivalent safetensors file.
pub fn bin_to_safetensors(path: &Path) -> Result<Vec<u8>> {
    let bad = |reason: String| NnError::Load { path: path.to_path_buf(), reason };
    let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
    let tensors = store
        .get_all_tensors()
        .map_err(|e| bad(format!("not a PyTorch state dict (a .bin file of tensors by name): {e}")))?;
    if tensors.is_empty() {
        return Err(bad("no tensors: not a PyTorch state dict".into()));
    }
    let mut raw = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = dtype_name(t.dtype).ok_or_else(|| NnError::Dtype {
            path: path.to_path_buf(),
            key: name.clone(),
            expected: "a float or integer dtype".into(),
            actual: format!("{:?}", t.dtype),
        })?;
        let bytes = t.to_bytes().map_err(|e| bad(format!("tensor '{name}': {e:?}")))?;
        raw.push(RawTensor {
            name: name.clone(),
            dtype: dtype.into(),
            shape: t.shape.to_vec(),
            data: bytes.to_vec(),
        });
    }
    Ok(write_safetensors(&raw))
}
