//! Device selection: `cpu`, `ndarray`, `flex`, `cuda`, `cuda:N`.
//!
//! `cpu` is the default CPU backend of this build (the `ndarray` feature when enabled, else `flex`).

use crate::error::{NnError, Result};
use burn::tensor::Device;

/// Parses a device name as the CLI takes it.
///
/// `cpu` maps to the default CPU backend compiled in; `ndarray` and `flex` name one explicitly;
/// `cuda` and `cuda:N` select an NVIDIA GPU (feature `cuda`).
pub fn parse_device(name: &str) -> Result<Device> {
    let err = |why: &str| NnError::Device(name.to_string(), why.to_string());
    match name {
        "cpu" => default_cpu().ok_or_else(|| err("no CPU backend compiled in (features ndarray, flex)")),
        "ndarray" => {
            ndarray_device().ok_or_else(|| err("this build lacks ndarray; rebuild with --features ndarray"))
        }
        "flex" => flex_device().ok_or_else(|| err("this build lacks Flex; rebuild with --features flex")),
        s if s == "cuda" || s.starts_with("cuda:") => cuda_device(s).map_err(|why| err(&why)),
        _ => Err(err("expected cpu, ndarray, flex, cuda or cuda:N")),
    }
}

/// The default CPU device of this build: ndarray when compiled in, else Flex.
pub fn default_cpu() -> Option<Device> {
    ndarray_device().or_else(flex_device)
}

/// The ndarray device, when the `ndarray` feature is on.
#[allow(deprecated)] // Burn 0.22 deprecates ndarray in favour of Flex; both are offered.
pub fn ndarray_device() -> Option<Device> {
    #[cfg(feature = "ndarray")]
    return Some(Device::ndarray());
    #[cfg(not(feature = "ndarray"))]
    None
}

/// The Flex device, when the `flex` feature is on.
pub fn flex_device() -> Option<Device> {
    #[cfg(feature = "flex")]
    return Some(Device::flex());
    #[cfg(not(feature = "flex"))]
    None
}

/// Turns on CubeCL's persistent caches of compiled kernels and autotune results, so a second run
/// of the CLI does not pay NVRTC compilation and autotuning again. Call before the first CUDA
/// tensor is made; a `cubecl.toml` found from the current directory and `CUBECL_*` variables are
/// still honoured for everything else.
#[cfg(feature = "cuda")]
pub fn enable_persistent_caches() {
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    config.compilation.cache = true;
    // Already set or read: keep what the application chose.
    let _ = CubeClRuntimeConfig::try_set(config);
}

#[cfg(feature = "cuda")]
fn cuda_device(s: &str) -> std::result::Result<Device, String> {
    let index = match s.strip_prefix("cuda:") {
        Some(n) => n.parse::<usize>().map_err(|_| format!("'{n}' is not a GPU index"))?,
        None => 0,
    };
    enable_persistent_caches();
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_s: &str) -> std::result::Result<Device, String> {
    Err("this build has no CUDA support; rebuild with --features cuda".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_junk() {
        assert!(parse_device("cpu").is_ok());
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(e.contains("tpu") && e.contains("expected"), "{e}");
        let e = parse_device("cuda:x").unwrap_err().to_string();
        assert!(e.contains("cuda:x"), "{e}");
    }
}
