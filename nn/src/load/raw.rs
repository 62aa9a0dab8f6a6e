//! Tensors as bytes, for checkpoints that need converting before they load (PyTorch pickles,
//! OpenCLIP's key layout): read every tensor of a safetensors file, rearrange, and lay the result
//! out as a safetensors buffer that [`Checkpoint::from_safetensors_bytes`](super::Checkpoint)
//! loads through the usual checks.

use super::header::parse_safetensors_header;
use crate::error::{NnError, Result};
use std::path::Path;

/// One tensor: little-endian bytes in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Checkpoint key.
    pub name: String,
    /// safetensors dtype (`F32`, `BF16`, ...).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// The bytes.
    pub data: Vec<u8>,
}

impl RawTensor {
    /// Bytes per element.
    pub fn elem_size(&self) -> usize {
        self.data.len() / self.shape.iter().product::<usize>().max(1)
    }

    /// The matrix transposed (`[r, c]` -> `[c, r]`).
    pub fn transposed(&self, name: &str) -> Result<Self> {
        let [r, c] = self.shape[..] else {
            return Err(NnError::Config(format!("{}: expected a matrix, shape {:?}", self.name, self.shape)));
        };
        let e = self.elem_size();
        let mut data = vec![0u8; self.data.len()];
        for i in 0..r {
            for j in 0..c {
                data[(j * r + i) * e..][..e].copy_from_slice(&self.data[(i * c + j) * e..][..e]);
            }
        }
        Ok(Self { name: name.into(), dtype: self.dtype.clone(), shape: vec![c, r], data })
    }

    /// `parts` equal blocks along the first dimension (packed q/k/v).
    pub fn split_rows(&self, names: &[String]) -> Result<Vec<Self>> {
        let n = names.len();
        let rows = *self.shape.first().unwrap_or(&0);
        if n == 0 || !rows.is_multiple_of(n) {
            return Err(NnError::Config(format!("{}: {rows} rows do not split into {n}", self.name)));
        }
        let chunk = self.data.len() / n;
        let mut shape = self.shape.clone();
        shape[0] = rows / n;
        Ok(names
            .iter()
            .enumerate()
            .map(|(k, name)| Self {
                name: name.clone(),
                dtype: self.dtype.clone(),
                shape: shape.clone(),
                data: self.data[k * chunk..(k + 1) * chunk].to_vec(),
            })
            .collect())
    }
}

/// Every tensor of a safetensors file (headers checked first).
pub fn read_safetensors(path: &Path) -> Result<Vec<RawTensor>> {
    let bytes = std::fs::read(path).map_err(|e| NnError::io(path, e))?;
    read_safetensors_bytes(path, bytes)
}

/// [`read_safetensors`] over the bytes of a file (`path` names it in errors).
pub fn read_safetensors_bytes(path: &Path, bytes: Vec<u8>) -> Result<Vec<RawTensor>> {
    let infos = parse_safetensors_header(path, std::io::Cursor::new(&bytes), bytes.len() as u64)?;
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + header_len])
            .map_err(|e| NnError::Safetensors { path: path.to_path_buf(), reason: e.to_string() })?;
    let data = &bytes[8 + header_len..];
    let mut out = Vec::with_capacity(infos.len());
    for (name, info) in infos {
        let o = &header[&name]["data_offsets"];
        let (a, b) = (o[0].as_u64().unwrap_or(0) as usize, o[1].as_u64().unwrap_or(0) as usize);
        out.push(RawTensor { name, dtype: info.dtype, shape: info.shape, data: data[a..b].to_vec() });
    }
    Ok(out)
}

/// The bytes of a safetensors file holding `tensors`.
pub fn write_safetensors(tensors: &[RawTensor]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for t in tensors {
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.data.len()]}),
        );
        offset += t.data.len();
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    head.resize(head.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_split_and_round_trip() {
        let t = RawTensor {
            name: "w".into(),
            dtype: "F32".into(),
            shape: vec![2, 3],
            data: (0..6).flat_map(|v| (v as f32).to_le_bytes()).collect(),
        };
        let tt = t.transposed("wt").unwrap();
        let vals: Vec<f32> = tt.data.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!((tt.shape.clone(), vals), (vec![3, 2], vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]));
        let parts = t.split_rows(&["a".into(), "b".into()]).unwrap();
        assert_eq!(parts[1].shape, vec![1, 3]);
        assert_eq!(parts[1].data, t.data[12..]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, write_safetensors(&[t.clone(), tt.clone()])).unwrap();
        assert_eq!(read_safetensors(&path).unwrap(), vec![t, tt]);
    }
}
