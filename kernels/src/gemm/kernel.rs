//! The instruction set the tiles use: what this CPU has, and which of those runs each class of
//! product, chosen by measurement on this CPU (cached) or by `VLM_ZOO_KERNEL`.

use super::{Matrix, PackedWeight, WeightFormat};
use std::path::PathBuf;
use std::time::Instant;

/// The instruction set the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AMX tiles: over bf16 weights AMX-BF16 (`tdpbf16ps`, 16 x 16 x 32 per instruction) on
    /// activations rounded to bf16; over int8 weights AMX-INT8 (`tdpbssd`, 16 x 16 x 64) on
    /// activations quantised to int8 per row and group of 256 k (scale `max |x| / 127`, as
    /// llama.cpp's Q8_0 products quantise theirs per 32), twice the products per tile load.
    Amx,
    /// AVX-512 f32 FMAs on weights widened in registers (bf16: a shift; int8: sign extension),
    /// activations in f32.
    Avx512,
    /// `vdpbf16ps` (AVX512-BF16) on activations rounded to bf16.
    Avx512Bf16,
    /// `vpdpwssd` (AVX512-VNNI) on int8 weights and activations quantised to int16 per row and
    /// block of 256 k (the rounding is 2^-16 of the block's largest value); bf16 weights run
    /// the AVX-512 FMA kernel.
    Avx512Vnni,
    /// The portable loop compiled for AVX2 + FMA.
    Avx2,
    /// The portable loop for the baseline target.
    Portable,
}

/// Most activation rows of a product of the "gemv" class (decode); more are "gemm" (prefill,
/// image encoding, batched decode).
pub const GEMV_ROWS: usize = 4;

impl Kernel {
    /// Every kernel, in the order [`Kernel::available`] lists them.
    pub const ALL: [Kernel; 6] =
        [Kernel::Avx512, Kernel::Avx512Vnni, Kernel::Avx512Bf16, Kernel::Amx, Kernel::Avx2, Kernel::Portable];

    /// The name `VLM_ZOO_KERNEL` and the cache use.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Amx => "amx",
            Kernel::Avx512 => "avx512",
            Kernel::Avx512Bf16 => "avx512bf16",
            Kernel::Avx512Vnni => "avx512vnni",
            Kernel::Avx2 => "avx2",
            Kernel::Portable => "portable",
        }
    }

    /// The kernel of a name, `None` for another.
    pub fn from_name(name: &str) -> Option<Kernel> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the kernel rounds activations to bf16 (the others multiply them in f32).
    pub fn rounds_activations(self) -> bool {
        matches!(self, Kernel::Amx | Kernel::Avx512Bf16)
    }

    /// The kernel for a product of `m` activation rows over weights stored as `format`
    /// (see [`Choice`]).
    pub fn for_product(m: usize, format: WeightFormat) -> Kernel {
        Choice::get().of(format).for_rows(m)
    }

    /// The kernels this CPU can run.
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
            if is_x86_feature_detected!("avx512vnni") {
                has.push(Kernel::Avx512Vnni);
            }
            if is_x86_feature_detected!("avx512bf16") {
                has.push(Kernel::Avx512Bf16);
            }
            // `VLM_ZOO_AMX=0` leaves the AMX tiles unused (as on CPUs without them: Zen 4).
            if super::amx::usable() && std::env::var("VLM_ZOO_AMX").as_deref() != Ok("0") {
                has.push(Kernel::Amx);
            }
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            has.push(Kernel::Avx2);
        }
    }
    has.push(Kernel::Portable);
    has
}

/// The kernels of one weight format: one per class of product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    /// Decode: products of at most [`GEMV_ROWS`] rows (bound by the weight bytes read).
    pub gemv: Kernel,
    /// Prefill, image encoding, batched decode (bound by the arithmetic).
    pub gemm: Kernel,
}

impl Pair {
    /// The kernel for `m` rows.
    pub fn for_rows(self, m: usize) -> Kernel {
        if m <= GEMV_ROWS { self.gemv } else { self.gemm }
    }
}

/// Which kernel runs each class of product over each weight format, and how it was chosen.
///
/// Chosen once per process: `VLM_ZOO_KERNEL` (one name for everything, or
/// `gemv=NAME,gemm=NAME`) when it names kernels this CPU has; otherwise the choice cached for
/// this CPU (model name, kernels, build) in `kernels.txt` of the cache folder (`VLM_ZOO_CACHE`,
/// else `$XDG_CACHE_HOME/vlm-zoo`, else `~/.cache/vlm-zoo`); otherwise measured: each kernel
/// times each class of product over bf16 and over int8 weights (a 4096 x 4096 GEMV, larger than
/// the caches as decode's weights are; a 128 x 1024 x 1024 GEMM) and the fastest wins (a tie
/// within 5% goes to the first listed, which keeps f32 activations), then is cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// Over bf16 weights.
    pub bf16: Pair,
    /// Over int8 weights.
    pub q8: Pair,
    /// How it was chosen: `VLM_ZOO_KERNEL`, `cached in PATH` or `measured: ...`.
    pub how: String,
}

impl std::fmt::Display for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bf16 gemv={} gemm={}, q8 gemv={} gemm={} ({})",
            self.bf16.gemv.name(),
            self.bf16.gemm.name(),
            self.q8.gemv.name(),
            self.q8.gemm.name(),
            self.how
        )
    }
}

impl Choice {
    /// This process's choice (chosen on first use).
    pub fn get() -> &'static Choice {
        static CHOICE: std::sync::OnceLock<Choice> = std::sync::OnceLock::new();
        CHOICE.get_or_init(Self::choose)
    }

    /// The kernels of `format`.
    pub fn of(&self, format: WeightFormat) -> Pair {
        match format {
            WeightFormat::Bf16 => self.bf16,
            WeightFormat::Q8 => self.q8,
        }
    }

    fn choose() -> Choice {
        let has = available();
        if let Ok(wanted) = std::env::var("VLM_ZOO_KERNEL") {
            match parse(&wanted, has) {
                Ok((gemv, gemm)) => {
                    let pair = Pair { gemv, gemm };
                    return Choice { bf16: pair, q8: pair, how: "VLM_ZOO_KERNEL".into() };
                }
                Err(e) => eprintln!("warning: VLM_ZOO_KERNEL={wanted}: {e}; measuring instead"),
            }
        }
        let key = cpu_key(has);
        let file = cache_dir().map(|d| d.join("kernels.txt"));
        if let Some(file) = &file
            && let Some((bf16, q8)) = read_cached(file, &key, has)
        {
            return Choice { bf16, q8, how: format!("cached in {}", file.display()) };
        }
        let (bf16, q8, how) = measure(has);
        if let Some(file) = &file {
            write_cached(file, &key, bf16, q8);
        }
        Choice { bf16, q8, how }
    }
}

/// `NAME` (both classes) or `gemv=NAME,gemm=NAME` (a class left out gets the first kernel this
/// CPU lists).
fn parse(s: &str, has: &[Kernel]) -> Result<(Kernel, Kernel), String> {
    let names = || Kernel::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ");
    let has_names = || has.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ");
    let one = |name: &str| -> Result<Kernel, String> {
        let k = Kernel::from_name(name.trim())
            .ok_or_else(|| format!("'{}' is not a kernel (expected one of {})", name.trim(), names()))?;
        if has.contains(&k) {
            Ok(k)
        } else {
            Err(format!("this CPU cannot run {} (it has {})", k.name(), has_names()))
        }
    };
    if !s.contains('=') {
        let k = one(s)?;
        return Ok((k, k));
    }
    let (mut gemv, mut gemm) = (has[0], has[0]);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("gemv", name)) => gemv = one(name)?,
            Some(("gemm", name)) => gemm = one(name)?,
            _ => return Err(format!("'{part}' is not gemv=NAME or gemm=NAME")),
        }
    }
    Ok((gemv, gemm))
}

/// The cache folder, when one can be named.
fn cache_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("VLM_ZOO_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("vlm-zoo")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("vlm-zoo")))
}

/// Raised whenever a kernel changes enough to reorder the timings (choices cached by an earlier
/// revision are measured again): 2 = decode GEMVs that prefetch, 4 = FMA GEMM tiles that keep
/// their accumulators in registers, no AMX for the GEMV class.
const KERNELS_REVISION: u32 = 4;

/// What identifies this CPU to the cache: its model name, the kernels it can run, and the build.
fn cpu_key(has: &[Kernel]) -> String {
    let names: Vec<&str> = has.iter().map(|k| k.name()).collect();
    // A debug build's kernels run at other relative speeds than a release build's.
    let build = if cfg!(debug_assertions) { " debug" } else { "" };
    let version = env!("CARGO_PKG_VERSION");
    let key = format!("{} [{}] v{version} r{KERNELS_REVISION}{build}", cpu_name(), names.join(","));
    key.replace(['\t', '\n'], " ")
}

#[cfg(target_arch = "x86_64")]
fn cpu_name() -> String {
    use std::arch::x86_64::__cpuid;
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 0x80000000 says which extended leaves do.
    #[allow(unused_unsafe)]
    let max = unsafe { __cpuid(0x8000_0000) }.eax;
    if max < 0x8000_0004 {
        return "x86-64".into();
    }
    let mut bytes = Vec::with_capacity(48);
    for leaf in 0x8000_0002u32..=0x8000_0004 {
        // SAFETY: as above, the leaf exists.
        #[allow(unused_unsafe)]
        let r = unsafe { __cpuid(leaf) };
        for v in [r.eax, r.ebx, r.ecx, r.edx] {
            bytes.extend(v.to_le_bytes());
        }
    }
    String::from_utf8_lossy(&bytes).trim_matches(char::from(0)).trim().to_string()
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_name() -> String {
    std::env::consts::ARCH.into()
}

/// The cached choice for `key`, if the file has one naming kernels this CPU has. Anything
/// unreadable is ignored (the choice is measured again).
fn read_cached(file: &std::path::Path, key: &str, has: &[Kernel]) -> Option<(Pair, Pair)> {
    let meta = std::fs::metadata(file).ok()?;
    if meta.len() > 1 << 20 {
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.split('\t').next() == Some(key))?;
    let mut parts = line.split('\t').skip(1);
    let mut get = |class: &str| {
        let name = parts.next()?.strip_prefix(class)?.strip_prefix('=')?;
        Kernel::from_name(name).filter(|k| has.contains(k))
    };
    let bf16 = Pair { gemv: get("bf16.gemv")?, gemm: get("bf16.gemm")? };
    let q8 = Pair { gemv: get("q8.gemv")?, gemm: get("q8.gemm")? };
    Some((bf16, q8))
}

/// Adds (or replaces) `key`'s line, written atomically; a failure only costs a measurement
/// next time.
fn write_cached(file: &std::path::Path, key: &str, bf16: Pair, q8: Pair) {
    let Some(dir) = file.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let old = std::fs::read_to_string(file).unwrap_or_default();
    let mut text: String = if old.len() < 1 << 20 {
        old.lines().filter(|l| l.split('\t').next() != Some(key)).map(|l| format!("{l}\n")).collect()
    } else {
        String::new()
    };
    text.push_str(&format!(
        "{key}\tbf16.gemv={}\tbf16.gemm={}\tq8.gemv={}\tq8.gemm={}\n",
        bf16.gemv.name(),
        bf16.gemm.name(),
        q8.gemv.name(),
        q8.gemm.name()
    ));
    let tmp = dir.join(format!(".kernels.txt.{}", std::process::id()));
    if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, file).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Times every kernel on one product of each class over each format and returns the fastest.
fn measure(has: &[Kernel]) -> (Pair, Pair, String) {
    // The portable loop is timed only where it is all there is.
    let candidates: Vec<Kernel> = if has.len() > 1 {
        has.iter().copied().filter(|&k| k != Kernel::Portable).collect()
    } else {
        has.to_vec()
    };
    // The AVX2 loop on a 128-row product takes long where AVX-512 exists and never wins.
    let gemm_list: Vec<Kernel> = if candidates.contains(&Kernel::Avx512) {
        candidates.iter().copied().filter(|&k| k != Kernel::Avx2).collect()
    } else {
        candidates.clone()
    };
    // AMX tiles multiply 16 or 32 rows: a GEMV would use one of them (a debug build, where the
    // other kernels' intrinsics are not inlined, timed it fastest all the same).
    let gemv_list: Vec<Kernel> = candidates.iter().copied().filter(|&k| k != Kernel::Amx).collect();
    let data = |len: usize, seed: usize| -> Vec<f32> {
        (0..len).map(|i| (((i * 2_654_435_761 + seed) >> 7) % 1001) as f32 / 1000.0 - 0.5).collect()
    };
    let time = |weight: &PackedWeight, m: usize, reps: usize, list: &[Kernel]| -> Vec<(Kernel, f64)> {
        let a = data(m * weight.k(), 7);
        let mut out = vec![0f32; m * weight.n()];
        list.iter()
            .map(|&kernel| {
                let mut t = f64::MAX;
                for _ in 0..reps {
                    let start = Instant::now();
                    weight.matmul_with(kernel, &a, m, &mut out);
                    t = t.min(start.elapsed().as_secs_f64());
                }
                (kernel, t)
            })
            .collect()
    };
    // The first listed within 5% of the fastest: a tie goes to the kernel that keeps f32
    // activations (listed first), not to measurement noise.
    let fastest = |times: &[(Kernel, f64)]| {
        let best = times.iter().map(|t| t.1).fold(f64::MAX, f64::min);
        times.iter().find(|t| t.1 <= best * 1.05).map_or(times[0].0, |t| t.0)
    };
    let show = |times: &[(Kernel, f64)]| {
        times.iter().map(|(k, t)| format!("{} {:.2} ms", k.name(), t * 1e3)).collect::<Vec<_>>().join(", ")
    };
    let (small_w, tall_w) = (data(1024 * 1024, 3), data(4096 * 4096, 5));
    let mut how = Vec::new();
    let mut pairs = Vec::new();
    for format in [WeightFormat::Bf16, WeightFormat::Q8] {
        let small =
            PackedWeight::pack(&Matrix { data: &small_w, cols: 1024, transposed: false }, 1024, 1024, format);
        let tall =
            PackedWeight::pack(&Matrix { data: &tall_w, cols: 4096, transposed: false }, 4096, 4096, format);
        let gemv = time(&tall, 1, 5, &gemv_list);
        let gemm = time(&small, 128, 3, &gemm_list);
        how.push(format!("{} gemv {}; gemm {}", format.name(), show(&gemv), show(&gemm)));
        pairs.push(Pair { gemv: fastest(&gemv), gemm: fastest(&gemm) });
    }
    (pairs[0], pairs[1], format!("measured: {}", how.join("; ")))
}

crate::wide_fn! {
    /// The wrapping sum of `c`, in 16 lanes compiled for the widest vectors the CPU has, its
    /// four quarters read side by side (four streams).
    fn sum_streams(c: &[u64]) -> u64 {
        let q = c.len() / 4 / 16 * 16;
        let (a, rest) = c.split_at(q);
        let (b, rest) = rest.split_at(q);
        let (d, rest) = rest.split_at(q);
        let (e, rest) = rest.split_at(q);
        let mut acc = [0u64; 16];
        for (((a, b), d), e) in a.chunks_exact(16).zip(b.chunks_exact(16)).zip(d.chunks_exact(16)).zip(e.chunks_exact(16)) {
            for i in 0..16 {
                acc[i] = acc[i].wrapping_add(a[i]).wrapping_add(b[i]).wrapping_add(d[i]).wrapping_add(e[i]);
            }
        }
        rest.iter().chain(acc.iter()).fold(0u64, |s, &x| s.wrapping_add(x))
    }
}

/// The memory's read bandwidth in bytes/s, the bound of products that read their weights
/// from memory: all cores summing a 2 GiB buffer in 8 MiB chunks, four streams a core (as the
/// decode kernels read several panels at once), best of 5 passes. Where the CPU has AVX-512 the
/// sum is written with its intrinsics: the compiled loop above read 23-24 GB/s on the 2-core
/// Xeon of docs/bench.md, where these (and a C probe) read 30-32.5.
pub fn read_bandwidth() -> f64 {
    use rayon::prelude::*;
    let words = (2usize << 30) / 8;
    let buf: Vec<u64> = (0..words as u64).into_par_iter().map(|i| i.wrapping_mul(0x9E37_79B9)).collect();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let s: u64 = buf.par_chunks(1 << 20).map(sum_lines).sum();
        std::hint::black_box(s);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (words * 8) as f64 / best
}

/// [`sum_streams`], with AVX-512 intrinsics where the CPU has them.
fn sum_lines(c: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected.
        return unsafe { sum_streams_avx512(c) };
    }
    sum_streams(c)
}

/// [`sum_streams`] in AVX-512 registers.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_streams_avx512(c: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let q = c.len() / 4 / 8 * 8;
    let mut acc = [_mm512_setzero_si512(); 4];
    for i in (0..q).step_by(8) {
        for (part, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `part * q + i + 8 <= 4 * q <= c.len()`.
            let v = unsafe { _mm512_loadu_si512(c.as_ptr().add(part * q + i) as *const _) };
            *acc = _mm512_add_epi64(*acc, v);
        }
    }
    let total = _mm512_add_epi64(_mm512_add_epi64(acc[0], acc[1]), _mm512_add_epi64(acc[2], acc[3]));
    c[4 * q..].iter().fold(_mm512_reduce_add_epi64(total) as u64, |s, &x| s.wrapping_add(x))
}

/// The AMX tiles' operations per second on all cores at once (one measuring thread per rayon
/// thread, ~0.4 s): `[bf16 tile products alone (the units' peak), bf16 32 x 32 steps that load
/// their four tiles from L1 (what a product's inner loop can reach), the same two for int8]`;
/// `None` without AMX.
pub fn amx_peak() -> Option<[f64; 4]> {
    if !available().contains(&Kernel::Amx) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let rate = |with_loads: bool, int8: bool| -> f64 {
            // SAFETY: `available` lists Amx only when the tiles are usable.
            rayon::broadcast(|_| unsafe { super::amx::throughput(with_loads, int8, 1 << 20) }).iter().sum()
        };
        // One run first, as the products' timing does.
        rate(false, false);
        return Some([rate(false, false), rate(true, false), rate(false, true), rate(true, true)]);
    }
    #[allow(unreachable_code)]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_refuse() {
        let has = available();
        let first = has[0];
        assert_eq!(parse(first.name(), has), Ok((first, first)));
        assert_eq!(parse(&format!("gemm={}", first.name()), has), Ok((has[0], first)));
        let e = parse("avx9000", has).unwrap_err();
        assert!(e.contains("avx9000") && e.contains("portable"), "{e}");
        assert!(parse("gemv", has).is_err());
        assert!(parse("fast=portable", has).unwrap_err().contains("fast=portable"));
        for k in Kernel::ALL {
            assert_eq!(Kernel::from_name(k.name()), Some(k));
        }
    }

    #[test]
    fn the_cache_keeps_other_cpus_and_ignores_junk() {
        let dir = std::env::temp_dir().join(format!("zoo-kernel-cache-{}", std::process::id()));
        let file = dir.join("kernels.txt");
        let has = available();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&file, "other cpu\tbf16.gemv=avx2\nthis cpu\tbf16.gemv=bogus\n").unwrap();
        assert_eq!(read_cached(&file, "this cpu", has), None);
        let p = Pair { gemv: Kernel::Portable, gemm: Kernel::Portable };
        write_cached(&file, "this cpu", p, p);
        assert_eq!(read_cached(&file, "this cpu", has), Some((p, p)));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("other cpu\t") && text.lines().count() == 2, "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn measuring_picks_kernels_this_cpu_has() {
        let (bf16, q8, how) = measure(available());
        for k in [bf16.gemv, bf16.gemm, q8.gemv, q8.gemm] {
            assert!(available().contains(&k), "{how}");
        }
        assert!(how.contains("q8 gemv") && how.contains(bf16.gemm.name()), "{how}");
    }
}
