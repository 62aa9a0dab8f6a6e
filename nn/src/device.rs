//! Device selection: `cpu`, `ndarray`, `flex`, `cuda`, `cuda:N`.
//!
//! `cpu` is the default CPU backend of this build: Flex when the `flex` feature is on (it decodes
//! 3.2x faster than ndarray on a 100M-parameter Gemma, see docs/bench.md), else ndarray.

use crate::error::{NnError, Result};
use burn::tensor::{DType, Device, FloatDType};
use zoo_kernels::gemm::WeightFormat;

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

/// Parses a compute dtype as the CLI takes it: `f32`, `bf16` or `f16` (`q8` is a weight
/// format, see [`Compute`]).
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        _ => Err(NnError::Config(format!("--dtype '{name}': expected f32, bf16, f16 or q8"))),
    }
}

/// Where and how an inference command computes: the device, and on a CPU device with
/// `--dtype bf16` or `--dtype q8` the format its weights are packed in ([`crate::packed`]):
/// Linear weights and the tied head stay bf16 (or int8 with per-output scales) and run on the
/// host kernels of [`zoo_kernels::gemm`], activations and everything else are f32. On CUDA,
/// `bf16`/`f16` make every tensor that dtype, as before.
#[derive(Debug, Clone)]
pub struct Compute {
    /// The device (its default float dtype is the activations' dtype).
    pub device: Device,
    /// Packed weight format on the CPU; `None` keeps Burn's tensors.
    pub weights: Option<WeightFormat>,
}

impl Compute {
    /// f32 on `device`, weights as Burn tensors.
    pub fn on(device: Device) -> Self {
        Self { device, weights: None }
    }

    /// `--device NAME --dtype DTYPE` (`f32`, `bf16`, `f16`, `q8`).
    pub fn parse(device: &str, dtype: &str) -> Result<Self> {
        let cpu = matches!(device, "cpu" | "flex" | "ndarray");
        let weights = match dtype {
            "q8" if !cpu => {
                return Err(NnError::Device(
                    device.into(),
                    "--dtype q8 runs on CPU devices (cpu, flex, ndarray); on a GPU use bf16".into(),
                ));
            }
            "q8" => Some(WeightFormat::Q8),
            "bf16" if cpu => Some(WeightFormat::Bf16),
            _ => None,
        };
        let device = match weights {
            Some(_) => parse_device(device)?,
            None => device_with_dtype(device, parse_dtype(dtype)?)?,
        };
        Ok(Self { device, weights })
    }

    /// How loaders load: packed from the files in [`Compute::weights`]' format (the rest f32),
    /// or every tensor in the device's float dtype.
    pub fn load_spec(&self) -> crate::LoadSpec {
        match self.weights {
            Some(format) => crate::LoadSpec::packed(format),
            None => float_dtype(&self.device).into(),
        }
    }

    /// The activations' dtype (the device's float dtype).
    pub fn dtype(&self) -> DType {
        float_dtype(&self.device)
    }
}

/// The device named `name` with `dtype` as its default float type, so every float tensor made
/// on it (weights as loaded, pixels, RoPE tables, caches) uses that dtype. Norms and softmax
/// still accumulate in f32, as transformers does. ndarray computes in f32 only.
pub fn device_with_dtype(name: &str, dtype: DType) -> Result<Device> {
    let mut device = parse_device(name)?;
    let float = match dtype {
        DType::F32 => return Ok(device),
        DType::BF16 => FloatDType::BF16,
        DType::F16 => FloatDType::F16,
        other => return Err(NnError::Config(format!("--dtype {other:?}: expected f32, bf16 or f16"))),
    };
    let why = |e: &dyn std::fmt::Debug| {
        let hint = if name == "ndarray" || (name == "cpu" && flex_device().is_none()) {
            " (ndarray computes in f32 only; use --device flex)"
        } else {
            ""
        };
        NnError::Device(name.to_string(), format!("cannot compute in {dtype:?}: {e:?}{hint}"))
    };
    device.configure(float).map_err(|e| why(&e))?;
    Ok(device)
}

/// The default float dtype of `device` (what [`device_with_dtype`] set; f32 otherwise): the dtype
/// to load weights in.
pub fn float_dtype(device: &Device) -> DType {
    device.settings().float_dtype.into()
}

/// Runs `f` on a thread of the CPU pool (rayon's) when `device` is a CPU device and this thread
/// is not one already: each parallel product that `f` starts is then split with the other
/// threads in place, where from any other thread it is handed to the pool and waited for (a
/// hand-off per product, dozens a decode step: Gemma-100M decode 13-30% faster on the pool,
/// measured alternately). The calling thread waits. Other devices (and none) run `f` here.
pub fn on_cpu_pool<R: Send>(device: Option<&Device>, f: impl FnOnce() -> R + Send) -> R {
    let host =
        device.is_some_and(|d| flex_device().as_ref() == Some(d) || ndarray_device().as_ref() == Some(d));
    if host && rayon::current_thread_index().is_none() { rayon::scope(|_| f()) } else { f() }
}

/// The default CPU device of this build: Flex when compiled in (the faster one, measured in
/// docs/bench.md), else ndarray.
pub fn default_cpu() -> Option<Device> {
    flex_device().or_else(ndarray_device)
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

    /// Work for a CPU device runs on a pool thread, from outside the pool and nested inside it
    /// (in place, no second hand-off), and gives back its result.
    #[test]
    fn cpu_work_runs_on_the_pool() {
        let cpu = default_cpu().expect("a CPU backend");
        assert_eq!(rayon::current_thread_index(), None);
        let (outer, inner) = on_cpu_pool(Some(&cpu), || {
            let outer = rayon::current_thread_index();
            (outer, on_cpu_pool(Some(&cpu), rayon::current_thread_index))
        });
        assert!(outer.is_some() && inner == outer, "{outer:?} then {inner:?}");
    }

    #[test]
    fn parses_cpu_and_rejects_junk() {
        assert!(parse_device("cpu").is_ok());
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        assert!(parse_dtype("f64").unwrap_err().to_string().contains("expected f32, bf16, f16 or q8"));
        let c = Compute::parse("cpu", "q8").unwrap();
        assert_eq!((c.weights, c.dtype()), (Some(WeightFormat::Q8), DType::F32));
        assert_eq!(c.load_spec(), crate::LoadSpec::packed(WeightFormat::Q8));
        assert_eq!(Compute::parse("cpu", "bf16").unwrap().weights, Some(WeightFormat::Bf16));
        assert_eq!(Compute::parse("cpu", "f32").unwrap().weights, None);
        let e = Compute::parse("cuda", "q8").unwrap_err().to_string();
        assert!(e.contains("q8 runs on CPU devices"), "{e}");
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(e.contains("tpu") && e.contains("expected"), "{e}");
        let e = parse_device("cuda:x").unwrap_err().to_string();
        assert!(e.contains("cuda:x"), "{e}");
    }
}
