//! Safetensors headers, checked before any tensor is read: sizes, offsets, dtypes, so a
//! truncated or lying file is an error naming the file and key rather than a crash.

use crate::error::{NnError, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What a safetensors header says about one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The file holding it.
    pub file: PathBuf,
    /// The dtype as the header spells it (`F32`, `BF16`, ...).
    pub dtype: String,
    /// The shape.
    pub shape: Vec<usize>,
    /// Where its bytes start in the file (after the header).
    pub offset: u64,
}

/// Bytes per element of a safetensors dtype, `None` for dtypes vlm-zoo does not read.
pub(crate) fn dtype_size(dtype: &str) -> Option<usize> {
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
    let file = std::fs::File::open(path).map_err(|e| NnError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| NnError::io(path, e))?.len();
    parse_safetensors_header(path, file, file_len)
}

/// [`read_safetensors_header`] over any reader of `file_len` bytes (`path` names it in errors).
pub fn parse_safetensors_header(
    path: &Path,
    mut file: impl Read,
    file_len: u64,
) -> Result<BTreeMap<String, TensorInfo>> {
    let bad = |reason: String| NnError::Safetensors { path: path.to_path_buf(), reason };
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
    let mut ranges: Vec<(u64, u64, String)> = Vec::new();
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
        ranges.push((begin, end, key.clone()));
        out.insert(
            key,
            TensorInfo { file: path.to_path_buf(), dtype, shape, offset: 8 + header_len + begin },
        );
    }
    // Tensors must not share bytes (a crafted header could alias one tensor into another).
    ranges.sort();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(bad(format!(
                "tensors '{}' [{}, {}] and '{}' [{}, {}] overlap",
                w[0].2, w[0].0, w[0].1, w[1].2, w[1].0, w[1].1
            )));
        }
    }
    Ok(out)
}
