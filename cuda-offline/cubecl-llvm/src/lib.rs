//! Offline stand-in for `cubecl-llvm` (see Cargo.toml). Only the items `cubecl-cuda` names exist;
//! compiling a kernel through them is an error, since vlm-zoo's CUDA builds select NVRTC.

use cubecl_core::Compiler;
use cubecl_core::ir::nvidia::SmArch;
use cubecl_core::prelude::KernelDefinition;
use cubecl_environment::backtrace::BackTrace;
use cubecl_runtime::compiler::CompilationError;
use cubecl_runtime::kernel::BufferIOAttr;

/// Where the (absent) LLVM backend would compile to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LlvmTarget {
    /// CPU JIT.
    #[default]
    Cpu,
    /// NVIDIA PTX.
    Nvptx,
}

/// The LLVM compiler, which this stand-in cannot run.
#[derive(Clone, Debug, Default)]
pub struct PlironCompiler {
    /// The target.
    pub target: LlvmTarget,
}

/// Options of the LLVM compiler (accepted and ignored).
#[derive(Clone, Debug, Default)]
pub struct PlironOptions {
    /// AMD architecture (unused).
    pub arch: Option<()>,
    /// NVIDIA architecture.
    pub sm_arch: Option<SmArch>,
    /// PTX ISA version.
    pub ptx_version: Option<nvptx::ptx_version::PtxVersion>,
    /// Kernel parameters in the constant bank.
    pub grid_constants: bool,
}

/// A PTX module the LLVM backend would have produced.
#[derive(Clone, Debug)]
pub struct NvptxModule {
    /// NUL-terminated PTX.
    pub ptx: Vec<core::ffi::c_char>,
    /// Entry point.
    pub entrypoint: String,
    /// IR text.
    pub ir: String,
    /// Shared memory per launch in bytes.
    pub shared_memory_size: usize,
    /// Buffer access modes.
    pub io: Vec<BufferIOAttr>,
}

/// A compiled artifact.
#[derive(Clone, Debug)]
pub enum PlironArtifact {
    /// PTX code.
    NvptxCode(NvptxModule),
    /// Never produced here.
    Unavailable,
}

impl core::fmt::Display for PlironArtifact {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PlironArtifact::NvptxCode(m) => write!(f, "{}", m.ir),
            PlironArtifact::Unavailable => write!(f, "<no LLVM backend in this build>"),
        }
    }
}

impl Compiler for PlironCompiler {
    type Representation = PlironArtifact;
    type CompilationOptions = PlironOptions;

    fn buffer_io(repr: &Self::Representation) -> Option<Vec<BufferIOAttr>> {
        match repr {
            PlironArtifact::NvptxCode(m) => Some(m.io.clone()),
            PlironArtifact::Unavailable => None,
        }
    }

    fn compile(
        &mut self,
        _kernel: KernelDefinition,
        _options: &Self::CompilationOptions,
    ) -> Result<Self::Representation, CompilationError> {
        Err(CompilationError::Generic {
            reason: "this build's cubecl-llvm is the offline stand-in: the LLVM backend is \
                     unavailable; build cubecl-cuda with its `cpp` (NVRTC) feature"
                .to_string(),
            backtrace: BackTrace::capture(),
        })
    }

    fn extension(&self) -> &'static str {
        "ll"
    }

    fn lang_tag(&self) -> &'static str {
        "llvm"
    }
}

/// NVPTX items.
pub mod nvptx {
    /// PTX ISA versions.
    pub mod ptx_version {
        use core::fmt;

        /// A PTX ISA version as `major * 10 + minor` (8.7 is `87`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct PtxVersion(u32);

        impl PtxVersion {
            /// The newest PTX ISA a CUDA driver of version `driver` (12.8 = 12080) loads.
            /// (CUDA 12.x ships PTX 8.x, CUDA 13.x PTX 9.x; the minor versions track the
            /// toolkit's, except 12.5-12.7 which stay at 8.5.)
            pub fn for_driver(driver: i32) -> Option<Self> {
                let (major, minor) = (driver / 1000, (driver % 1000) / 10);
                let v = match major {
                    13 => 90 + minor.min(3) as u32,
                    12 if minor >= 9 => 88,
                    12 if minor == 8 => 87,
                    12 if minor >= 5 => 85,
                    12 => 80 + minor as u32,
                    11 => 70 + minor.min(8) as u32,
                    m if m > 13 => 93,
                    _ => return None,
                };
                Some(Self(v))
            }
        }

        impl fmt::Display for PtxVersion {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "ptx{}", self.0)
            }
        }
    }
}

/// Shared items.
pub mod shared {
    /// Device feature narrowing for the LLVM backend.
    pub mod lowered_features {
        use cubecl_core::ir::DeviceProperties;

        /// The GPU target.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum GpuTarget {
            /// NVIDIA.
            Nvptx,
        }

        /// Narrows the advertised features to what the LLVM backend lowers. Only called when the
        /// LLVM backend is selected, which this stand-in never supports: nothing to narrow.
        pub fn restrict_features(_props: &mut DeviceProperties, _target: GpuTarget) {}
    }
}
