//! CPU matrix products over bf16 and int8 weights, for inference on the host.
//!
//! `out[m, n] = sum_k a[m, k] * W[n, k]` with `W` packed once at load ([`PackedWeight`]) in
//! bf16 or in int8 with one f32 scale per output (`--dtype q8`), and f32 accumulation. Burn's
//! CPU backends widen bf16 to f32 for every matmul (a copy of the whole weight per call); these
//! kernels read each weight byte once per call, which is what decode (a GEMV over all weights)
//! is bound by, and widen in registers.
//!
//! Layout: output columns in panels of 16, the reduction axis in pairs, so one 512-bit load is
//! `W[16 outputs, 2 k]`: for panel `p`, pair `t`, column `c`, element `e` the index is
//! `((p * kp2 + t) * 16 + c) * 2 + e`. `k` is padded to even and `n` to a multiple of 16 with
//! zeros. Int8 panels have the same layout.
//!
//! Kernels ([`Kernel`]): AMX-BF16 tiles (`tdpbf16ps`; the panel layout is AMX's weight-tile
//! layout, so bf16 panels are read in place) and AMX-INT8 tiles for int8 panels (`tdpbssd`,
//! pair rows interleaved into quad rows as a task stages them, activations quantised to int8
//! per row and group of 256 k), `vdpbf16ps` on bf16 activations (AVX512-BF16),
//! AVX-512 FMAs on weights widened in registers, and a portable loop compiled for AVX2+FMA or
//! the baseline. Which one runs is chosen per CPU and per class of product (decode GEMV,
//! prefill/encode GEMM) by timing them once and caching the result ([`Choice`]): the fastest
//! kernel differs between CPUs (`vdpbf16ps` loses to FMAs on some Xeons and wins by 1.6x on
//! Zen 4; AMX wins wherever it exists). Tiles are 8 rows x 32 outputs (AMX: 32 x 32); output
//! blocks are split over the cores with rayon; decode (`m = 1`) splits the panels.
//! `cargo bench --bench gemm` measures each against the memory bandwidth it measures.
//!
//! One file per part: `source` (what a weight is packed from), `weight` (packing and the
//! stored formats), `product` (the tiled products and their split over the cores), `kernel`
//! (what the CPU has and the measured choice), `x86`, `amx` and `portable` (the tiles).

// SIMD intrinsics run only after run-time CPU detection, and raw output pointers are split into
// disjoint blocks; each unsafe block states its argument.
#![allow(unsafe_code)]

mod aligned;
#[cfg(target_arch = "x86_64")]
mod amx;
mod attention;
mod dense;
mod kernel;
mod portable;
mod product;
mod source;
#[cfg(test)]
mod tests;
mod weight;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use attention::{AttentionMask, AttentionShape, Heads, attention_bf16, attention_bf16_available};
pub use dense::{StridedBf16, matmul_bf16, matmul_bf16_available};
pub use kernel::{Choice, GEMV_ROWS, Kernel, Pair, amx_peak, read_bandwidth};
pub use product::Epilogue;
pub use source::{Matrix, RawDtype, RawMatrix, Source};

/// An output pointer handed to rayon tasks that each write their own disjoint block of it.
struct SyncPtr<T = f32>(*mut T);
impl<T> Clone for SyncPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SyncPtr<T> {}
// SAFETY: only used to give tasks disjoint output blocks (each use says which).
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

/// `v` rounded half to even and clamped to [-127, 127], for |v| <= 127.5 as quantisation
/// makes it: adding and subtracting 1.5 * 2^23 rounds in the FPU's default mode (nearest even)
/// without a call to `rintf` (the baseline x86-64 target has no rounding instruction).
///
/// The integer is read from the low mantissa bits of the sum with integer operations: a float
/// to int cast saturates lane by lane, which kept the loops that call this scalar (a third of
/// PaliGemma-3B's q8 load). NaN gives 0, as the cast did.
#[inline(always)]
fn quantize(v: f32) -> i8 {
    to_int(v.clamp(-127.0, 127.0)) as i8
}

/// `max |x|` (0 for an empty slice; NaNs skipped) in 16 lanes, so that the loops that inline it
/// vectorise (a running `max` is a serial chain the compiler may not reorder).
#[inline(always)]
fn max_abs(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder().iter().fold(0f32, |m, v| m.max(v.abs()));
    for c in chunks {
        for l in 0..16 {
            acc[l] = acc[l].max(c[l].abs());
        }
    }
    acc.iter().fold(tail, |m, v| m.max(*v))
}

/// The largest `|x|` as its bits (0 for an empty slice): an integer max over the sign-cleared
/// bits, in 16 lanes, so a NaN or an infinity shows as bits >= `0x7f80_0000` (the float
/// [`max_abs`] skips NaNs).
#[inline(always)]
fn max_abs_bits(x: &[f32]) -> u32 {
    let mut acc = [0u32; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder().iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff));
    for c in chunks {
        for l in 0..16 {
            acc[l] = acc[l].max(c[l].to_bits() & 0x7fff_ffff);
        }
    }
    acc.iter().fold(tail, |m, v| m.max(*v))
}

/// `v` (finite, |v| < 2^22, or NaN) rounded to the nearest integer (ties to even), NaN as 0, in
/// operations that vectorise: adding 1.5 * 2^23 leaves the integer in the sum's low bits.
#[inline(always)]
fn to_int(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    let q = ((v + MAGIC).to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    if v.is_nan() { 0 } else { q }
}

/// Output columns per panel (one 512-bit register of f32 accumulators).
const PANEL: usize = 16;
/// Activation rows per tile.
const MR: usize = 8;
/// Panels per tile.
const NR: usize = 2;

/// How a [`PackedWeight`] stores its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// bf16 values (2 bytes each).
    Bf16,
    /// int8 values with one f32 scale per output, `w = q * scale` (1 byte each): symmetric
    /// round-to-nearest of `w / (max |w| / 127)` over each output's weights.
    Q8,
}

impl WeightFormat {
    /// `bf16` or `q8`, as `--dtype` spells it.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Q8 => "q8",
        }
    }
}

/// Bytes a weight can borrow in place: a mapped checkpoint file, or a buffer.
pub type Backing = std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>;

enum Values {
    Bf16(aligned::Aligned<u16>),
    Q8 {
        q: Vec<i8>,
        scale: Vec<f32>,
    },
    /// Row-major `W[n, k]` bf16 as the checkpoint stores it (`k * 2` bytes per row from byte
    /// `offset` of the backing), borrowed without a copy; each product stages the panels it
    /// needs in a small per-task buffer (L2-resident), so loading costs nothing and the
    /// weights are read once per product, as for packed panels.
    Bf16Rows {
        backing: Backing,
        offset: usize,
    },
    /// Int8 panels as [`Values::Q8`] keeps them, read in place from a saved file
    /// (`vlm-zoo quantize`): `len` bytes from `offset` of the backing.
    Q8Mapped {
        backing: Backing,
        offset: usize,
        len: usize,
        scale: Vec<f32>,
    },
}

/// A weight matrix `W[n, k]` (one row per output, PyTorch's Linear layout) packed for the
/// kernels of this module.
pub struct PackedWeight {
    n: usize,
    k: usize,
    /// Pairs along k (`k` rounded up to even, halved).
    kp2: usize,
    values: Values,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight {{ n: {}, k: {}, format: {:?} }}", self.n, self.k, self.format())
    }
}
