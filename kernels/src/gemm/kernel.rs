//! The instruction set the tiles use, detected once per process.

/// The instruction set the kernels use, detected once per process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 f32 FMAs on weights widened in registers (bf16: a shift; int8: sign extension),
    /// activations in f32. The default on AVX-512 CPUs: on the machine docs/bench.md was
    /// measured on, `vfmadd231ps` retires 2 per cycle and `vdpbf16ps` 0.5, so FMAs do 2x the
    /// work per cycle of the bf16 dot product (`cargo bench --bench gemm` prints both).
    Avx512,
    /// `vdpbf16ps` (AVX512-BF16) on activations rounded to bf16: for CPUs whose bf16 dot
    /// product is faster than two FMAs (`VLM_ZOO_KERNEL=avx512bf16`).
    Avx512Bf16,
    /// The portable loop compiled for AVX2 + FMA.
    Avx2,
    /// The portable loop for the baseline target.
    Portable,
}

impl Kernel {
    /// The kernel this CPU runs: `VLM_ZOO_KERNEL=avx512|avx512bf16|avx2|portable` chooses one
    /// the CPU has (for benchmarks and tests); otherwise the fastest measured (see [`Kernel`]).
    pub fn detect() -> Kernel {
        static DETECTED: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            let has = available();
            let wanted = match std::env::var("VLM_ZOO_KERNEL").as_deref() {
                Ok("avx512") => Some(Kernel::Avx512),
                Ok("avx512bf16") => Some(Kernel::Avx512Bf16),
                Ok("avx2") => Some(Kernel::Avx2),
                Ok("portable") => Some(Kernel::Portable),
                _ => None,
            };
            wanted.filter(|k| has.contains(k)).unwrap_or(has[0])
        })
    }

    /// The kernels this CPU can run, the default first.
    pub fn available() -> &'static [Kernel] {
        available()
    }
}

/// The kernels this CPU can run, detected once (the check runs on every product).
pub(super) fn available() -> &'static [Kernel] {
    static HAS: std::sync::OnceLock<Vec<Kernel>> = std::sync::OnceLock::new();
    HAS.get_or_init(detect_available)
}

fn detect_available() -> Vec<Kernel> {
    let mut has = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
        {
            has.push(Kernel::Avx512);
            if is_x86_feature_detected!("avx512bf16") {
                has.push(Kernel::Avx512Bf16);
            }
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            has.push(Kernel::Avx2);
        }
    }
    has.push(Kernel::Portable);
    has
}
