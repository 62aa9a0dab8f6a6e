//! Plain loops compiled for the widest vectors the CPU has, chosen at run time: the crate is
//! built for baseline x86-64, so without this the compiler vectorises the host kernels' loops
//! 4 lanes wide (SSE) on CPUs with 16-lane AVX-512.
//!
//! [`wide_fn!`] defines a function whose body is compiled three times: with AVX-512 (F, BW,
//! DQ, VL), with AVX2 and FMA, and for the baseline; a call runs the widest one the CPU has.
//! The body is the same source each time and Rust neither contracts `a * b + c` into an FMA
//! nor reorders float operations, so the three give the same results bit for bit.

/// The widest set of [`wide_fn!`] this CPU has: 2 = AVX-512, 1 = AVX2 + FMA, 0 = baseline.
pub fn level() -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static LEVEL: OnceLock<u8> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let has = |f: &str| match f {
                "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
                "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
                "avx512dq" => std::arch::is_x86_feature_detected!("avx512dq"),
                "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
                "avx2" => std::arch::is_x86_feature_detected!("avx2"),
                "fma" => std::arch::is_x86_feature_detected!("fma"),
                _ => false,
            };
            // `VLM_ZOO_WIDE=0|1` caps the level (for measuring what the width is worth).
            let cap = std::env::var("VLM_ZOO_WIDE").ok().and_then(|v| v.parse::<u8>().ok()).unwrap_or(2);
            let level =
                if ["avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma"].iter().all(|f| has(f)) {
                    2
                } else if has("avx2") && has("fma") {
                    1
                } else {
                    0
                };
            level.min(cap)
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    0
}

/// Defines `fn NAME(ARGS) -> R { BODY }` compiled for AVX-512, AVX2 + FMA and the baseline,
/// dispatching on [`level`] (see the module docs). The body sees only its arguments.
#[macro_export]
macro_rules! wide_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(unsafe_code)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
            fn v4($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn v3($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
            match $crate::wide::level() {
                // SAFETY: `level` detected the features each enables.
                #[cfg(target_arch = "x86_64")]
                2 => unsafe { v4($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                1 => unsafe { v3($($arg),*) },
                _ => body($($arg),*),
            }
        }
    };
}
