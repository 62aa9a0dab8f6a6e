//! Helpers for tests across the workspace: tensors from slices and tolerance comparisons that
//! print the largest difference they saw.

use burn::prelude::*;

/// The default CPU device of this build, for tests.
pub fn device() -> Device {
    crate::device::default_cpu().expect("a CPU backend is compiled in")
}

pub use zoo_kernels::testing::{assert_close, assert_slices_close, max_excess, tensor_from, to_vec};

/// Reference tensors written by `scripts/make_fixtures.py` (`reference.safetensors`).
#[derive(Debug)]
pub struct Reference {
    tensors: std::collections::BTreeMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Reference {
    /// Reads a reference file (F32 / F64 / I64 / I32 tensors).
    pub fn read(path: &std::path::Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid reference file");
        let mut tensors = std::collections::BTreeMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                    .collect(),
                safetensors::Dtype::F64 => {
                    data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect()
                }
                safetensors::Dtype::I64 => data
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64)
                    .collect(),
                safetensors::Dtype::I32 => data
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                    .collect(),
                other => panic!("{name}: unsupported reference dtype {other:?}"),
            };
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Self { tensors }
    }

    /// Every tensor name.
    pub fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    /// Whether the reference holds `name`.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Shape of `name`.
    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.get(name).0.clone()
    }

    fn get(&self, name: &str) -> &(Vec<usize>, Vec<f64>) {
        self.tensors.get(name).unwrap_or_else(|| panic!("reference has no tensor {name}"))
    }

    /// Values of `name` as f32.
    pub fn f32(&self, name: &str) -> Vec<f32> {
        self.get(name).1.iter().map(|&v| v as f32).collect()
    }

    /// Values of `name` as integers.
    pub fn i64(&self, name: &str) -> Vec<i64> {
        self.get(name).1.iter().map(|&v| v as i64).collect()
    }

    /// `name` as a float tensor on `device`.
    pub fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let shape: [usize; D] = self.shape(name).try_into().expect("rank");
        tensor_from(&self.f32(name), shape, device)
    }

    /// `name` as an int tensor on `device`.
    pub fn int_tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D, Int> {
        let shape: [usize; D] = self.shape(name).try_into().expect("rank");
        Tensor::from_data(TensorData::new(self.i64(name), shape), device)
    }

    /// Rows of an int matrix.
    pub fn rows(&self, name: &str) -> Vec<Vec<i64>> {
        let shape = self.shape(name);
        self.i64(name).chunks(shape[1]).map(<[i64]>::to_vec).collect()
    }
}

/// The workspace's `tests/fixtures/NAME`, from any member crate's tests.
pub fn fixture(name: &str) -> std::path::PathBuf {
    let mut dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("tests").join("fixtures").is_dir() {
        assert!(dir.pop(), "no tests/fixtures above {}", env!("CARGO_MANIFEST_DIR"));
    }
    dir.join("tests").join("fixtures").join(name)
}

/// The parity tolerance of the project: `1e-4 + 1e-4*|ref|`.
pub const PARITY_TOL: f32 = 1e-4;
