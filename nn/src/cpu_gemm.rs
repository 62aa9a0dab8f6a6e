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
//! Kernels ([`Kernel`], chosen at run time): AVX-512 FMAs on weights widened in registers (the
//! default where AVX-512 exists), `vdpbf16ps` on bf16 activations (AVX512-BF16, opt-in: on the
//! benchmark machine it retires a quarter as many per cycle as FMAs, so it does half the work),
//! and a portable loop compiled for AVX2+FMA or the baseline. Tiles are 8 rows x 32 outputs;
//! output blocks are split over the cores with rayon; decode (`m = 1`) splits the panels.
//! `cargo bench --bench gemm` measures each against the memory bandwidth it measures.

// The second audited exception to the workspace's `unsafe_code = "deny"`: SIMD intrinsics run
// only after run-time CPU detection, and raw output pointers are split into disjoint blocks.
#![allow(unsafe_code)]

use half::bf16;
use rayon::prelude::*;

/// `v` rounded half to even and clamped to [-127, 127], for |v| <= 127.5 as quantisation
/// makes it: adding and subtracting 1.5 * 2^23 rounds in the FPU's default mode (nearest even)
/// without a call to `rintf` (the baseline x86-64 target has no rounding instruction).
#[inline(always)]
fn quantize(v: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0;
    ((v.clamp(-127.0, 127.0) + MAGIC) - MAGIC) as i8
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
    Bf16(Vec<u16>),
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

/// Where element `(row, col)` of the source matrix is, as f32.
pub trait Source: Sync {
    /// `W[row, col]`.
    fn get(&self, row: usize, col: usize) -> f32;

    /// `W[row, col]` rounded to bf16 (nearest even), as bits.
    fn bf16_bits(&self, row: usize, col: usize) -> u16 {
        bf16::from_f32(self.get(row, col)).to_bits()
    }

    /// Row `row` as little-endian bf16 bytes, when the source stores it so (the fast path).
    fn bf16_row(&self, _row: usize) -> Option<&[u8]> {
        None
    }
}

/// A row-major `[rows, cols]` slice (`transposed = false`: `W[n, k]`; `true`: `W^T[k, n]`,
/// Burn's Linear layout).
pub struct Matrix<'a, T> {
    /// The values.
    pub data: &'a [T],
    /// Columns of the stored matrix.
    pub cols: usize,
    /// Whether the stored matrix is `W^T`.
    pub transposed: bool,
}

impl<T: Copy + Sync + Into<f32>> Source for Matrix<'_, T> {
    #[inline]
    fn get(&self, row: usize, col: usize) -> f32 {
        let i = if self.transposed { col * self.cols + row } else { row * self.cols + col };
        self.data[i].into()
    }
}

/// The element type of a [`RawMatrix`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawDtype {
    /// 4-byte IEEE floats.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl RawDtype {
    /// A safetensors dtype name (`F32`, `BF16`, `F16`), `None` for others.
    pub fn from_safetensors(name: &str) -> Option<Self> {
        match name {
            "F32" => Some(Self::F32),
            "BF16" => Some(Self::Bf16),
            "F16" => Some(Self::F16),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        if self == Self::F32 { 4 } else { 2 }
    }
}

/// A row-major `W[n, k]` in a checkpoint's little-endian bytes, read in place (no aligned copy,
/// no conversion of the whole matrix).
pub struct RawMatrix<'a> {
    /// The bytes (`n * k * dtype.size()`).
    pub bytes: &'a [u8],
    /// Their element type.
    pub dtype: RawDtype,
    /// Columns (`k`).
    pub cols: usize,
}

impl RawMatrix<'_> {
    #[inline]
    fn bits16(&self, i: usize) -> u16 {
        u16::from_le_bytes([self.bytes[2 * i], self.bytes[2 * i + 1]])
    }

    /// Whether any element is NaN or infinite (an all-ones exponent), checked over all cores.
    pub fn has_non_finite(&self) -> bool {
        let bytes = self.bytes;
        match self.dtype {
            RawDtype::F32 => bytes.par_chunks(1 << 18).any(|c| {
                c.chunks_exact(4)
                    .any(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000)
            }),
            RawDtype::Bf16 | RawDtype::F16 => {
                let mask = if self.dtype == RawDtype::Bf16 { 0x7f80 } else { 0x7c00 };
                bytes.par_chunks(1 << 18).any(|c| {
                    c.chunks_exact(2)
                        .fold(false, |bad, b| bad | (u16::from_le_bytes([b[0], b[1]]) & mask == mask))
                })
            }
        }
    }
}

impl Source for RawMatrix<'_> {
    #[inline]
    fn get(&self, row: usize, col: usize) -> f32 {
        let i = row * self.cols + col;
        match self.dtype {
            RawDtype::F32 => {
                let b = &self.bytes[4 * i..4 * i + 4];
                f32::from_le_bytes([b[0], b[1], b[2], b[3]])
            }
            RawDtype::Bf16 => f32::from_bits((self.bits16(i) as u32) << 16),
            RawDtype::F16 => half::f16::from_bits(self.bits16(i)).to_f32(),
        }
    }

    #[inline]
    fn bf16_bits(&self, row: usize, col: usize) -> u16 {
        match self.dtype {
            RawDtype::Bf16 => self.bits16(row * self.cols + col),
            _ => bf16::from_f32(self.get(row, col)).to_bits(),
        }
    }

    fn bf16_row(&self, row: usize) -> Option<&[u8]> {
        (self.dtype == RawDtype::Bf16).then(|| &self.bytes[row * self.cols * 2..(row + 1) * self.cols * 2])
    }
}

impl PackedWeight {
    /// Packs `W[n, k]` read through `source` into `format`. Panels are packed in parallel, each
    /// reading `k` runs of its 16 outputs (contiguous in Burn's transposed Linear layout).
    pub fn pack<S: Source>(source: &S, n: usize, k: usize, format: WeightFormat) -> Self {
        let kp2 = k.div_ceil(2);
        let panels = n.div_ceil(PANEL);
        let panel_len = kp2 * PANEL * 2;
        let at = |kk: usize, c: usize| ((kk / 2) * PANEL + c) * 2 + kk % 2;
        let values = match format {
            WeightFormat::Bf16 => {
                let mut v = vec![0u16; panels * panel_len];
                v.par_chunks_mut(panel_len).enumerate().for_each(|(p, panel)| {
                    let cols = PANEL.min(n - p * PANEL);
                    if source.bf16_row(0).is_some() {
                        // Rows of bf16 bytes: pair t of row c is 4 bytes at 4t.
                        for c in 0..cols {
                            let row = source.bf16_row(p * PANEL + c).unwrap_or_default();
                            for (t, pair) in row.chunks(4).enumerate() {
                                let dst = &mut panel[(t * PANEL + c) * 2..][..2];
                                dst[0] = u16::from_le_bytes([pair[0], pair[1]]);
                                dst[1] = pair.get(2..4).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
                            }
                        }
                        return;
                    }
                    for kk in 0..k {
                        for c in 0..cols {
                            panel[at(kk, c)] = source.bf16_bits(p * PANEL + c, kk);
                        }
                    }
                });
                Values::Bf16(v)
            }
            WeightFormat::Q8 => {
                let mut q = vec![0i8; panels * panel_len];
                let mut scale = vec![0f32; panels * PANEL];
                q.par_chunks_mut(panel_len).zip(scale.par_chunks_mut(PANEL)).enumerate().for_each(
                    |(p, (panel, scales))| {
                        let cols = PANEL.min(n - p * PANEL);
                        if source.bf16_row(0).is_some() {
                            // Rows of bf16 bytes: widen a row, scale it, round it.
                            let mut row = vec![0f32; k];
                            for c in 0..cols {
                                let bytes = source.bf16_row(p * PANEL + c).unwrap_or_default();
                                for (x, b) in row.iter_mut().zip(bytes.chunks_exact(2)) {
                                    *x = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
                                }
                                let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
                                let s = if max > 0.0 { max / 127.0 } else { 1.0 };
                                scales[c] = s;
                                for (kk, x) in row.iter().enumerate() {
                                    panel[at(kk, c)] = quantize(x / s);
                                }
                            }
                            return;
                        }
                        let mut max = [0f32; PANEL];
                        for kk in 0..k {
                            for c in 0..cols {
                                max[c] = max[c].max(source.get(p * PANEL + c, kk).abs());
                            }
                        }
                        for c in 0..cols {
                            scales[c] = if max[c] > 0.0 { max[c] / 127.0 } else { 1.0 };
                        }
                        for kk in 0..k {
                            for c in 0..cols {
                                panel[at(kk, c)] = quantize(source.get(p * PANEL + c, kk) / scales[c]);
                            }
                        }
                    },
                );
                Values::Q8 { q, scale }
            }
        };
        Self { n, k, kp2, values }
    }

    /// `W[n, k]` in bf16 bytes at `offset` of `backing` (little-endian, row-major), used in
    /// place.
    ///
    /// # Panics
    /// When the backing holds fewer than `offset + n * k * 2` bytes.
    pub fn from_bf16_rows(backing: Backing, offset: usize, n: usize, k: usize) -> Self {
        assert!((*backing).as_ref().len() >= offset + n * k * 2, "bf16 rows run past their bytes");
        Self { n, k, kp2: k.div_ceil(2), values: Values::Bf16Rows { backing, offset } }
    }

    /// The bf16 rows of a [`Values::Bf16Rows`] weight.
    fn rows_bytes(&self) -> Option<&[u8]> {
        match &self.values {
            Values::Bf16Rows { backing, offset } => {
                Some(&(**backing).as_ref()[*offset..*offset + self.n * self.k * 2])
            }
            _ => None,
        }
    }

    /// Lays panels `p..p + np` of row-major bf16 `rows` out as packed panels in `scratch`.
    fn stage(&self, rows: &[u8], p: usize, np: usize, scratch: &mut Vec<u16>) {
        let panel_len = self.kp2 * PANEL * 2;
        scratch.clear();
        scratch.resize(np * panel_len, 0);
        let row_bytes = self.k * 2;
        for j in 0..np {
            let panel = &mut scratch[j * panel_len..(j + 1) * panel_len];
            let first = (p + j) * PANEL;
            for c in 0..PANEL.min(self.n.saturating_sub(first)) {
                let row = &rows[(first + c) * row_bytes..(first + c + 1) * row_bytes];
                let pairs = row.chunks_exact(4);
                let tail = pairs.remainder();
                let mut t = 0;
                for (pair, dst) in pairs.zip(panel[c * 2..].chunks_mut(PANEL * 2)) {
                    dst[0] = u16::from_le_bytes([pair[0], pair[1]]);
                    dst[1] = u16::from_le_bytes([pair[2], pair[3]]);
                    t += 1;
                }
                if let [lo0, lo1] = tail {
                    panel[(t * PANEL + c) * 2] = u16::from_le_bytes([*lo0, *lo1]);
                }
            }
        }
    }

    /// Outputs (rows of `W`).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inputs (columns of `W`).
    pub fn k(&self) -> usize {
        self.k
    }

    /// The storage format.
    pub fn format(&self) -> WeightFormat {
        match self.values {
            Values::Bf16(_) | Values::Bf16Rows { .. } => WeightFormat::Bf16,
            Values::Q8 { .. } | Values::Q8Mapped { .. } => WeightFormat::Q8,
        }
    }

    /// The int8 panels and per-output scales of a q8 weight.
    fn q8(&self) -> Option<(&[i8], &[f32])> {
        match &self.values {
            Values::Q8 { q, scale } => Some((q, scale)),
            Values::Q8Mapped { backing, offset, len, scale } => {
                let bytes = &(**backing).as_ref()[*offset..*offset + *len];
                // SAFETY: i8 and u8 have the same size, alignment and validity (every bit
                // pattern is a valid i8); the slice borrows the backing, which `self` keeps.
                let q = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), bytes.len()) };
                Some((q, scale))
            }
            _ => None,
        }
    }

    /// A q8 weight's panels as bytes and its scales (what `vlm-zoo quantize` saves).
    pub fn q8_panels(&self) -> Option<(&[u8], &[f32])> {
        let (q, scale) = self.q8()?;
        // SAFETY: as in `q8`, the other way: every i8 is a valid u8 of the same layout.
        let bytes = unsafe { std::slice::from_raw_parts(q.as_ptr().cast::<u8>(), q.len()) };
        Some((bytes, scale))
    }

    /// Bytes of the int8 panels of an `n x k` weight (scales: `n` rounded up to 16).
    pub fn q8_panel_len(n: usize, k: usize) -> usize {
        n.div_ceil(PANEL) * k.div_ceil(2) * PANEL * 2
    }

    /// A q8 weight from panels saved by [`PackedWeight::q8_panels`]: `q8_panel_len(n, k)` bytes
    /// at `offset` of `backing`, used in place, and its scales. `None` when the sizes disagree.
    pub fn from_q8_panels(
        backing: Backing,
        offset: usize,
        scale: Vec<f32>,
        n: usize,
        k: usize,
    ) -> Option<Self> {
        let len = Self::q8_panel_len(n, k);
        let fits = (*backing).as_ref().len() >= offset + len && scale.len() == n.div_ceil(PANEL) * PANEL;
        fits.then(|| Self {
            n,
            k,
            kp2: k.div_ceil(2),
            values: Values::Q8Mapped { backing, offset, len, scale },
        })
    }

    /// Bytes the packed values take (what one full product reads).
    pub fn bytes(&self) -> usize {
        match &self.values {
            Values::Bf16(v) => v.len() * 2,
            Values::Q8 { q, scale } => q.len() + scale.len() * 4,
            Values::Q8Mapped { len, scale, .. } => len + scale.len() * 4,
            Values::Bf16Rows { .. } => self.n * self.k * 2,
        }
    }

    /// `W[row, :]` as f32 (the stored, rounded values), into `out` (length `k`).
    pub fn row(&self, row: usize, out: &mut [f32]) {
        if let Some(rows) = self.rows_bytes() {
            let bytes = &rows[row * self.k * 2..(row + 1) * self.k * 2];
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
            return;
        }
        let (p, c) = (row / PANEL, row % PANEL);
        let base = p * self.kp2 * PANEL * 2;
        let q8 = self.q8();
        for (kk, o) in out.iter_mut().enumerate().take(self.k) {
            let i = base + ((kk / 2) * PANEL + c) * 2 + kk % 2;
            *o = match (&self.values, q8) {
                (Values::Bf16(v), _) => f32::from_bits((v[i] as u32) << 16),
                (_, Some((q, scale))) => q[i] as f32 * scale[row],
                _ => unreachable!("bf16 rows are read above"),
            };
        }
    }

    /// `out[m, n] = a[m, k] · W[n, k]^T` (`a` row-major `[m, k]`, `out` row-major `[m, n]`).
    ///
    /// # Panics
    /// When `a` or `out` does not have `m * k` or `m * n` elements.
    pub fn matmul(&self, a: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_with(Kernel::detect(), a, m, out)
    }

    /// [`PackedWeight::matmul`] on a chosen kernel (one of [`Kernel::available`]).
    ///
    /// # Panics
    /// As `matmul`, and when this CPU lacks `kernel`.
    pub fn matmul_with(&self, kernel: Kernel, a: &[f32], m: usize, out: &mut [f32]) {
        assert!(available().contains(&kernel), "this CPU cannot run {kernel:?}");
        assert_eq!(a.len(), m * self.k, "activations");
        assert_eq!(out.len(), m * self.n, "output");
        if let Some(rows) = self.rows_bytes()
            && m <= 4
        {
            return self.dot_rows(kernel, rows, a, m, out);
        }
        let ab = self.pack_activations(a, m, kernel);
        let panels = self.n.div_ceil(PANEL);
        let threads = rayon::current_num_threads().max(1);
        // Rows per task: enough that one task's tiles reuse each panel from cache; panels per
        // task: about 4 tasks per thread.
        // Weights staged from rows are staged once per row block: up to 512 rows in one.
        let mc = if m <= 4 * MR {
            m.next_multiple_of(MR.min(m))
        } else if self.rows_bytes().is_some() {
            m.min(512).next_multiple_of(MR)
        } else {
            (m.div_ceil(threads)).clamp(MR, 128).next_multiple_of(MR)
        };
        let row_blocks = m.div_ceil(mc);
        let per_task = (panels * row_blocks).div_ceil(4 * threads).div_ceil(row_blocks).max(1);
        let per_task = if per_task > NR { per_task.next_multiple_of(NR) } else { per_task };
        let panel_blocks = panels.div_ceil(per_task);
        let out_ptr = SyncPtr(out.as_mut_ptr());
        (0..row_blocks * panel_blocks).into_par_iter().for_each(|task| {
            let (rb, pb) = (task / panel_blocks, task % panel_blocks);
            let rows = rb * mc..((rb + 1) * mc).min(m);
            let ps = pb * per_task..((pb + 1) * per_task).min(panels);
            let out = out_ptr;
            // SAFETY: tasks write disjoint (row, panel) blocks of `out`, whose length was checked.
            unsafe { self.block(kernel, &ab, m, rows, ps, out.0) };
        });
    }

    /// Few activation rows against row-major bf16 weights (decode): one dot product per output
    /// over the rows as stored, output rows split over the cores.
    fn dot_rows(&self, kernel: Kernel, rows: &[u8], a: &[f32], m: usize, out: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        let threads = rayon::current_num_threads().max(1);
        let chunk = n.div_ceil(4 * threads).next_multiple_of(8).max(8);
        let out_ptr = SyncPtr(out.as_mut_ptr());
        (0..n.div_ceil(chunk)).into_par_iter().for_each(|c| {
            let range = c * chunk..((c + 1) * chunk).min(n);
            let out = out_ptr;
            #[cfg(target_arch = "x86_64")]
            if matches!(kernel, Kernel::Avx512 | Kernel::Avx512Bf16) {
                // SAFETY: AVX-512 was detected; tasks write disjoint output columns.
                unsafe { x86::dot_rows(a.as_ptr(), m, rows.as_ptr(), k, n, range, out.0) };
                return;
            }
            let _ = kernel;
            for j in range {
                let w = &rows[j * k * 2..(j + 1) * k * 2];
                for i in 0..m {
                    let x = &a[i * k..(i + 1) * k];
                    let mut sum = [0f32; 8];
                    for (xs, ws) in x.chunks(8).zip(w.chunks(16)) {
                        for (l, (xv, wb)) in xs.iter().zip(ws.chunks_exact(2)).enumerate() {
                            sum[l] += xv * f32::from_bits((u16::from_le_bytes([wb[0], wb[1]]) as u32) << 16);
                        }
                    }
                    // SAFETY: (i, j) is in this task's columns of the checked output.
                    unsafe { *out.0.add(i * n + j) = sum.iter().sum() };
                }
            }
        });
    }

    /// The activations laid out for the tiles: in blocks of `h = min(MR, m)` rows (the last
    /// one zero-padded), pair `t` of the block's rows together: block `b`, pair `t`, row `i` at
    /// `(b * kp2 + t) * h + i` (a pair of f32, or for [`Kernel::Avx512Bf16`] two bf16 rounded
    /// to nearest even in one u32).
    fn pack_activations(&self, a: &[f32], m: usize, kernel: Kernel) -> Activations {
        let h = MR.min(m);
        let blocks = m.div_ceil(h);
        let (k, kp2) = (self.k, self.kp2);
        let pair = |b: usize, i: usize, t: usize| {
            let row = &a[(b * h + i) * k..(b * h + i + 1) * k];
            (row[2 * t], row.get(2 * t + 1).copied().unwrap_or(0.0))
        };
        if kernel == Kernel::Avx512Bf16 {
            let mut packed = vec![0u32; blocks * kp2 * h];
            packed.par_chunks_mut(kp2 * h).enumerate().for_each(|(b, block)| {
                for i in 0..h.min(m - b * h) {
                    for t in 0..kp2 {
                        let (lo, hi) = pair(b, i, t);
                        block[t * h + i] = bf16::from_f32(lo).to_bits() as u32
                            | ((bf16::from_f32(hi).to_bits() as u32) << 16);
                    }
                }
            });
            return Activations::Bf16(packed);
        }
        let mut packed = vec![0f32; blocks * kp2 * h * 2];
        packed.par_chunks_mut(kp2 * h * 2).enumerate().for_each(|(b, block)| {
            for i in 0..h.min(m - b * h) {
                for t in 0..kp2 {
                    let (lo, hi) = pair(b, i, t);
                    block[(t * h + i) * 2] = lo;
                    block[(t * h + i) * 2 + 1] = hi;
                }
            }
        });
        Activations::F32(packed)
    }

    /// One task: output rows `rows` x panels `ps`.
    ///
    /// # Safety
    /// `out` points to `m * n` f32 and no other task writes this block.
    unsafe fn block(
        &self,
        kernel: Kernel,
        a: &Activations,
        m: usize,
        rows: std::ops::Range<usize>,
        ps: std::ops::Range<usize>,
        out: *mut f32,
    ) {
        let panel_len = self.kp2 * PANEL * 2;
        let h = MR.min(m);
        let block_len = self.kp2 * h;
        debug_assert!(rows.start.is_multiple_of(h));
        let mut scratch = Vec::new();
        let scales = self.q8().map(|(_, s)| s);
        let mut p = ps.start;
        while p < ps.end {
            let np = if ps.end - p >= NR { NR } else { 1 };
            // The bf16 panels to multiply by: packed, or staged from the checkpoint's rows.
            let bf: Option<&[u16]> = match &self.values {
                Values::Bf16(v) => Some(&v[p * panel_len..(p + np) * panel_len]),
                Values::Bf16Rows { .. } => {
                    self.stage(self.rows_bytes().unwrap_or_default(), p, np, &mut scratch);
                    Some(&scratch[..])
                }
                Values::Q8 { .. } | Values::Q8Mapped { .. } => None,
            };
            let q8: Option<&[i8]> = self.q8().map(|(q, _)| &q[p * panel_len..(p + np) * panel_len]);
            let mut r = rows.start;
            while r < rows.end {
                let mr = (rows.end - r).min(h);
                let mut acc = [[0f32; PANEL * NR]; MR];
                let b = r / h;
                match (bf, q8, a, kernel) {
                    #[cfg(target_arch = "x86_64")]
                    (Some(w), _, Activations::Bf16(a), Kernel::Avx512Bf16) => unsafe {
                        let a = a.as_ptr().add(b * block_len);
                        x86::dp_bf16(a, h, w.as_ptr(), panel_len, self.kp2, np, &mut acc)
                    },
                    #[cfg(target_arch = "x86_64")]
                    (_, Some(w), Activations::Bf16(a), Kernel::Avx512Bf16) => unsafe {
                        let a = a.as_ptr().add(b * block_len);
                        x86::dp_q8(a, h, w.as_ptr(), panel_len, self.kp2, np, &mut acc)
                    },
                    #[cfg(target_arch = "x86_64")]
                    (Some(w), _, Activations::F32(a), Kernel::Avx512) => unsafe {
                        let a = a.as_ptr().add(b * block_len * 2);
                        x86::fma_bf16(a, h, w.as_ptr(), panel_len, self.kp2, np, &mut acc)
                    },
                    #[cfg(target_arch = "x86_64")]
                    (_, Some(w), Activations::F32(a), Kernel::Avx512) => unsafe {
                        let a = a.as_ptr().add(b * block_len * 2);
                        x86::fma_q8(a, h, w.as_ptr(), panel_len, self.kp2, np, &mut acc)
                    },
                    (Some(w), _, Activations::F32(a), k) => {
                        let a = &a[b * block_len * 2..(b + 1) * block_len * 2];
                        let f = |x: u16| f32::from_bits((x as u32) << 16);
                        portable::tile(k, a, h, w, panel_len, self.kp2, mr, np, f, &mut acc)
                    }
                    (_, Some(w), Activations::F32(a), k) => {
                        let a = &a[b * block_len * 2..(b + 1) * block_len * 2];
                        portable::tile(k, a, h, w, panel_len, self.kp2, mr, np, |x: i8| x as f32, &mut acc)
                    }
                    _ => unreachable!("a weight is bf16 or q8; bf16 activations go with Avx512Bf16"),
                }
                // Store, scaled for int8, clipped to the real columns.
                for (i, acc_row) in acc.iter().enumerate().take(mr) {
                    for j in 0..np * PANEL {
                        let col = p * PANEL + j;
                        if col >= self.n {
                            break;
                        }
                        let v = match scales {
                            Some(scale) => acc_row[j] * scale[col],
                            None => acc_row[j],
                        };
                        unsafe { *out.add((r + i) * self.n + col) = v };
                    }
                }
                r += h;
            }
            p += np;
        }
    }
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: used only to hand disjoint output blocks to rayon tasks.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

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
fn available() -> &'static [Kernel] {
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

/// Activations laid out for the tiles (see [`PackedWeight::pack_activations`]).
enum Activations {
    /// Pairs of f32.
    F32(Vec<f32>),
    /// Pairs of bf16 in one u32, for `vdpbf16ps`.
    Bf16(Vec<u32>),
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MR, NR, PANEL};
    use std::arch::x86_64::*;

    /// Dispatches a tile of `h` rows (the block height) and `np` panels to the monomorphic
    /// kernel `$tile::<R, P>`.
    macro_rules! dispatch {
        ($name:ident, $tile:ident, $at:ty, $wt:ty) => {
            /// One tile: the `h` rows of an activation block x `np` panels.
            ///
            /// # Safety
            /// The CPU has the kernel's features; `a` holds a packed block of `h` rows,
            /// `w` `np` panels of `kp2 * 32` values `panel_len` apart.
            pub unsafe fn $name(
                a: *const $at,
                h: usize,
                w: *const $wt,
                panel_len: usize,
                kp2: usize,
                np: usize,
                acc: &mut [[f32; PANEL * NR]; MR],
            ) {
                unsafe {
                    match (h, np) {
                        (8, 2) => $tile::<8, 2>(a, w, panel_len, kp2, acc),
                        (7, 2) => $tile::<7, 2>(a, w, panel_len, kp2, acc),
                        (6, 2) => $tile::<6, 2>(a, w, panel_len, kp2, acc),
                        (5, 2) => $tile::<5, 2>(a, w, panel_len, kp2, acc),
                        (4, 2) => $tile::<4, 2>(a, w, panel_len, kp2, acc),
                        (3, 2) => $tile::<3, 2>(a, w, panel_len, kp2, acc),
                        (2, 2) => $tile::<2, 2>(a, w, panel_len, kp2, acc),
                        (1, 2) => $tile::<1, 2>(a, w, panel_len, kp2, acc),
                        (8, _) => $tile::<8, 1>(a, w, panel_len, kp2, acc),
                        (7, _) => $tile::<7, 1>(a, w, panel_len, kp2, acc),
                        (6, _) => $tile::<6, 1>(a, w, panel_len, kp2, acc),
                        (5, _) => $tile::<5, 1>(a, w, panel_len, kp2, acc),
                        (4, _) => $tile::<4, 1>(a, w, panel_len, kp2, acc),
                        (3, _) => $tile::<3, 1>(a, w, panel_len, kp2, acc),
                        (2, _) => $tile::<2, 1>(a, w, panel_len, kp2, acc),
                        _ => $tile::<1, 1>(a, w, panel_len, kp2, acc),
                    }
                }
            }
        };
    }

    /// `vdpbf16ps` tiles over bf16 activation pairs; `$load` gives 16 columns x 2 k as bf16.
    macro_rules! dp_tile {
        ($tile:ident, $wt:ty, $load:ident) => {
            #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
            unsafe fn $tile<const R: usize, const P: usize>(
                a: *const u32,
                w: *const $wt,
                panel_len: usize,
                kp2: usize,
                out: &mut [[f32; PANEL * NR]; MR],
            ) {
                unsafe {
                    let bcast =
                        |i: usize| -> __m512bh { std::mem::transmute(_mm512_set1_epi32(*a.add(i) as i32)) };
                    // Two chains per accumulator hide the dot product's latency in decode.
                    let mut acc = [[[_mm512_setzero_ps(); P]; R]; 2];
                    for t in 0..kp2 {
                        for j in 0..P {
                            let wv = $load(w.add(j * panel_len + t * 32));
                            for i in 0..R {
                                let c = if R == 1 { t & 1 } else { 0 };
                                acc[c][i][j] = _mm512_dpbf16_ps(acc[c][i][j], bcast(t * R + i), wv);
                            }
                        }
                    }
                    for i in 0..R {
                        for j in 0..P {
                            _mm512_storeu_ps(
                                out[i].as_mut_ptr().add(j * PANEL),
                                _mm512_add_ps(acc[0][i][j], acc[1][i][j]),
                            );
                        }
                    }
                }
            }
        };
    }

    /// f32-FMA tiles over f32 activation pairs; `$load` gives 16 columns at k even and odd.
    macro_rules! fma_tile {
        ($tile:ident, $wt:ty, $load:ident) => {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
            unsafe fn $tile<const R: usize, const P: usize>(
                a: *const f32,
                w: *const $wt,
                panel_len: usize,
                kp2: usize,
                out: &mut [[f32; PANEL * NR]; MR],
            ) {
                unsafe {
                    // Even and odd k accumulate apart: two chains, and four in decode.
                    let mut even = [[[_mm512_setzero_ps(); P]; R]; 2];
                    let mut odd = [[[_mm512_setzero_ps(); P]; R]; 2];
                    for t in 0..kp2 {
                        let c = if R == 1 { t & 1 } else { 0 };
                        let mut we = [_mm512_setzero_ps(); P];
                        let mut wo = [_mm512_setzero_ps(); P];
                        for j in 0..P {
                            (we[j], wo[j]) = $load(w.add(j * panel_len + t * 32));
                        }
                        for i in 0..R {
                            let a0 = _mm512_set1_ps(*a.add((t * R + i) * 2));
                            let a1 = _mm512_set1_ps(*a.add((t * R + i) * 2 + 1));
                            for j in 0..P {
                                even[c][i][j] = _mm512_fmadd_ps(a0, we[j], even[c][i][j]);
                                odd[c][i][j] = _mm512_fmadd_ps(a1, wo[j], odd[c][i][j]);
                            }
                        }
                    }
                    for i in 0..R {
                        for j in 0..P {
                            let sum = _mm512_add_ps(
                                _mm512_add_ps(even[0][i][j], odd[0][i][j]),
                                _mm512_add_ps(even[1][i][j], odd[1][i][j]),
                            );
                            _mm512_storeu_ps(out[i].as_mut_ptr().add(j * PANEL), sum);
                        }
                    }
                }
            }
        };
    }

    /// 16 columns x 2 k of bf16, as bf16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn load_bf16(w: *const u16) -> __m512bh {
        unsafe { std::mem::transmute(_mm512_loadu_si512(w as *const _)) }
    }

    /// 16 columns x 2 k of int8, widened to bf16 (exact for |q| <= 127).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn load_q8(w: *const i8) -> __m512bh {
        unsafe {
            let x = _mm256_loadu_si256(w as *const __m256i);
            let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(x)));
            let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(x)));
            _mm512_cvtne2ps_pbh(hi, lo)
        }
    }

    /// 16 columns x 2 k of bf16 as f32: (k even, k odd).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn split_bf16(w: *const u16) -> (__m512, __m512) {
        unsafe {
            let x = _mm512_loadu_si512(w as *const _);
            let even = _mm512_slli_epi32::<16>(x);
            let odd = _mm512_and_si512(x, _mm512_set1_epi32(0xffff_0000u32 as i32));
            (_mm512_castsi512_ps(even), _mm512_castsi512_ps(odd))
        }
    }

    /// 16 columns x 2 k of int8 as f32: (k even, k odd).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn split_q8(w: *const i8) -> (__m512, __m512) {
        unsafe {
            // Each 32-bit lane: the pair sign-extended from 16 bits, `e0 | e1 << 8`.
            let x = _mm512_cvtepi16_epi32(_mm256_loadu_si256(w as *const __m256i));
            let even = _mm512_srai_epi32::<24>(_mm512_slli_epi32::<24>(x));
            let odd = _mm512_srai_epi32::<8>(x);
            (_mm512_cvtepi32_ps(even), _mm512_cvtepi32_ps(odd))
        }
    }

    /// `out[i, j] = a[i, :] · W[j, :]` for `m <= 4` rows and outputs `rows`, W row-major bf16
    /// bytes (any alignment): eight outputs at a time for one row (eight read streams keep the
    /// memory system busy), four for more.
    ///
    /// # Safety
    /// AVX-512F/BW present; `a` holds `m * k` f32, `w` `n * k` bf16, `out` `m * n` f32.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn dot_rows(
        a: *const f32,
        m: usize,
        w: *const u8,
        k: usize,
        n: usize,
        rows: std::ops::Range<usize>,
        out: *mut f32,
    ) {
        unsafe {
            match m {
                1 => dot::<1, 8>(a, w, k, n, rows, out),
                2 => dot::<2, 4>(a, w, k, n, rows, out),
                3 => dot::<3, 4>(a, w, k, n, rows, out),
                _ => dot::<4, 4>(a, w, k, n, rows, out),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn dot<const M: usize, const J: usize>(
        a: *const f32,
        w: *const u8,
        k: usize,
        n: usize,
        rows: std::ops::Range<usize>,
        out: *mut f32,
    ) {
        unsafe {
            let mut j = rows.start;
            while j < rows.end {
                let nj = (rows.end - j).min(J);
                let mut acc = [[_mm512_setzero_ps(); M]; J];
                let mut kk = 0;
                while kk < k {
                    let mask: u16 = if kk + 16 <= k { 0xffff } else { (1u16 << (k - kk)) - 1 };
                    let mut av = [_mm512_setzero_ps(); M];
                    for (i, x) in av.iter_mut().enumerate() {
                        *x = _mm512_maskz_loadu_ps(mask, a.add(i * k + kk));
                    }
                    for o in 0..J {
                        if o < nj {
                            let p = w.add(((j + o) * k + kk) * 2) as *const i16;
                            let bits = _mm256_maskz_loadu_epi16(mask, p);
                            let wv =
                                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)));
                            for i in 0..M {
                                acc[o][i] = _mm512_fmadd_ps(av[i], wv, acc[o][i]);
                            }
                        }
                    }
                    kk += 16;
                }
                for o in 0..nj {
                    for i in 0..M {
                        *out.add(i * n + j + o) = _mm512_reduce_add_ps(acc[o][i]);
                    }
                }
                j += nj;
            }
        }
    }

    dp_tile!(dp_bf16_tile, u16, load_bf16);
    dp_tile!(dp_q8_tile, i8, load_q8);
    fma_tile!(fma_bf16_tile, u16, split_bf16);
    fma_tile!(fma_q8_tile, i8, split_q8);
    dispatch!(dp_bf16, dp_bf16_tile, u32, u16);
    dispatch!(dp_q8, dp_q8_tile, u32, i8);
    dispatch!(fma_bf16, fma_bf16_tile, f32, u16);
    dispatch!(fma_q8, fma_q8_tile, f32, i8);
}

mod portable {
    use super::{Kernel, MR, NR, PANEL};

    /// One tile with f32 arithmetic: `mr` rows x `np` panels of `w` (values widened by `f`).
    #[allow(clippy::too_many_arguments)]
    pub fn tile<W: Copy>(
        kernel: Kernel,
        a: &[f32],
        lda: usize,
        w: &[W],
        panel_len: usize,
        kp2: usize,
        mr: usize,
        np: usize,
        f: impl Fn(W) -> f32 + Copy,
        acc: &mut [[f32; PANEL * NR]; MR],
    ) {
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Avx2 {
            // SAFETY: Avx2 is chosen only when the CPU has AVX2 and FMA.
            return unsafe { tile_avx2(a, lda, w, panel_len, kp2, mr, np, f, acc) };
        }
        let _ = kernel;
        tile_body(a, lda, w, panel_len, kp2, mr, np, f, acc)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_avx2<W: Copy>(
        a: &[f32],
        lda: usize,
        w: &[W],
        panel_len: usize,
        kp2: usize,
        mr: usize,
        np: usize,
        f: impl Fn(W) -> f32 + Copy,
        acc: &mut [[f32; PANEL * NR]; MR],
    ) {
        tile_body(a, lda, w, panel_len, kp2, mr, np, f, acc)
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn tile_body<W: Copy>(
        a: &[f32],
        lda: usize,
        w: &[W],
        panel_len: usize,
        kp2: usize,
        mr: usize,
        np: usize,
        f: impl Fn(W) -> f32 + Copy,
        acc: &mut [[f32; PANEL * NR]; MR],
    ) {
        for j in 0..np {
            let panel = &w[j * panel_len..(j + 1) * panel_len];
            for (i, acc_row) in acc.iter_mut().enumerate().take(mr) {
                let mut sum = [0f32; PANEL];
                for t in 0..kp2 {
                    let (a0, a1) = (a[(t * lda + i) * 2], a[(t * lda + i) * 2 + 1]);
                    let wt = &panel[t * 2 * PANEL..(t + 1) * 2 * PANEL];
                    for c in 0..PANEL {
                        sum[c] += a0 * f(wt[2 * c]) + a1 * f(wt[2 * c + 1]);
                    }
                }
                acc_row[j * PANEL..(j + 1) * PANEL].copy_from_slice(&sum);
            }
        }
    }
}

/// One operand of [`matmul_f32`]: `data[offset_b + r * row_stride + c * col_stride]` is
/// element `(r, c)` of matrix `b`, with `offsets` holding `offset_b` for every matrix of the
/// batch (one entry: the same matrix for all, as a Linear weight is).
#[derive(Debug, Clone, Copy)]
pub struct Strided<'a> {
    /// The buffer holding every matrix.
    pub data: &'a [f32],
    /// Start of each matrix in `data` (length 1 or the batch size).
    pub offsets: &'a [usize],
    /// Element step between rows.
    pub row_stride: usize,
    /// Element step between columns.
    pub col_stride: usize,
}

impl Strided<'_> {
    /// Whether every element of every `rows x cols` matrix lies inside `data`.
    fn in_bounds(&self, rows: usize, cols: usize) -> bool {
        let last = |o: usize| {
            let r = rows.checked_sub(1)?.checked_mul(self.row_stride)?;
            let c = cols.checked_sub(1)?.checked_mul(self.col_stride)?;
            o.checked_add(r)?.checked_add(c)
        };
        rows == 0 || cols == 0 || self.offsets.iter().all(|&o| last(o).is_some_and(|l| l < self.data.len()))
    }

    fn offset(&self, b: usize) -> usize {
        self.offsets[if self.offsets.len() == 1 { 0 } else { b }]
    }
}

/// `out[b] = lhs[b] (m x k) · rhs[b] (k x n)` for `batch` matrices, row-major in a fresh buffer
/// of `batch * m * n` (not zeroed first: the product writes every element), through the same
/// `gemm` crate as Flex's matmul, reading strided operands in place (transposes are free). Large
/// products use every core; batches of small ones are split over the cores. `None` when an
/// operand's offsets or strides reach outside its buffer or the sizes overflow.
pub fn matmul_f32(
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    lhs: Strided,
    rhs: Strided,
) -> Option<Vec<f32>> {
    let per = m.checked_mul(n)?;
    let len = per.checked_mul(batch)?;
    let batch_ok = |s: &Strided| s.offsets.len() == 1 || s.offsets.len() == batch;
    if !(batch_ok(&lhs) && batch_ok(&rhs) && lhs.in_bounds(m, k) && rhs.in_bounds(k, n)) {
        return None;
    }
    let isize_ok = |v: usize| isize::try_from(v).is_ok();
    if ![lhs.row_stride, lhs.col_stride, rhs.row_stride, rhs.col_stride, n].into_iter().all(isize_ok) {
        return None;
    }
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return Some(out);
    }
    // Work per product; below ~7M multiply-adds gemm's own threading does not pay (Flex's
    // thresholds).
    let ops = m.saturating_mul(n).saturating_mul(k);
    let run = |dst: *mut f32, b: usize, parallelism: gemm::Parallelism| {
        // SAFETY: `dst` points at `m * n` writable f32s (one matrix of `out`'s capacity, disjoint
        // per `b`); with `read_dst = false` gemm writes each of them once and reads none. Every
        // operand element gemm reads, `offset + r * row_stride + c * col_stride` for `r < rows`,
        // `c < cols`, was checked above to lie inside its slice, and the strides fit `isize`.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst,
                1,
                n as isize,
                false,
                lhs.data.as_ptr().add(lhs.offset(b)),
                lhs.col_stride as isize,
                lhs.row_stride as isize,
                rhs.data.as_ptr().add(rhs.offset(b)),
                rhs.col_stride as isize,
                rhs.row_stride as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    };
    let spare = &mut out.spare_capacity_mut()[..len];
    if k == 0 {
        spare.iter_mut().for_each(|v| {
            v.write(0.0);
        });
    } else if ops >= 192 * 192 * 192 && (batch < 4 || batch.saturating_mul(ops) < 128 * 128 * 128) {
        for (b, dst) in spare.chunks_mut(per).enumerate() {
            run(dst.as_mut_ptr().cast(), b, gemm::Parallelism::Rayon(0));
        }
    } else if batch > 1 && batch.saturating_mul(ops) >= 128 * 128 * 128 {
        spare
            .par_chunks_mut(per)
            .enumerate()
            .for_each(|(b, dst)| run(dst.as_mut_ptr().cast(), b, gemm::Parallelism::None));
    } else {
        let parallelism =
            if ops >= 192 * 192 * 192 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        for (b, dst) in spare.chunks_mut(per).enumerate() {
            run(dst.as_mut_ptr().cast(), b, parallelism);
        }
    }
    // SAFETY: every one of the `len` elements was written above (gemm writes each output once;
    // `k == 0` wrote zeros).
    unsafe { out.set_len(len) };
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(a: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let round =
            |x: f32| if Kernel::detect() == Kernel::Avx512Bf16 { bf16::from_f32(x).to_f32() } else { x };
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] =
                    (0..k).map(|kk| round(a[i * k + kk]) as f64 * w[j * k + kk] as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Every shape class: odd k, n not a multiple of 16, m across the tile edges, decode.
    #[test]
    fn products_equal_the_f64_reference_of_the_rounded_values() {
        for &(m, n, k) in &[(1, 37, 65), (1, 512, 300), (3, 16, 2), (9, 50, 33), (17, 40, 128), (70, 33, 31)]
        {
            let (a, w) = (data(m * k, 7), data(n * k, 11));
            for format in [WeightFormat::Bf16, WeightFormat::Q8] {
                let packed =
                    PackedWeight::pack(&Matrix { data: &w, cols: k, transposed: false }, n, k, format);
                // The reference multiplies by the stored (rounded) weights.
                let mut stored = vec![0f32; n * k];
                for (j, row) in stored.chunks_mut(k).enumerate() {
                    packed.row(j, row);
                }
                let want = reference(&a, &stored, m, n, k);
                let mut got = vec![0f32; m * n];
                packed.matmul(&a, m, &mut got);
                let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-4 * (k as f32).sqrt(), "{format:?} m {m} n {n} k {k}: {worst}");
                // And the stored weights are the originals within the format's rounding.
                let tol = if format == WeightFormat::Bf16 { 2f32.powi(-9) } else { 0.5 / 127.0 };
                let err = stored.iter().zip(&w).map(|(s, w)| (s - w).abs()).fold(0f32, f32::max);
                assert!(err <= tol * 0.5 + 1e-7, "{format:?} storage error {err}");
            }
        }
    }

    /// Weights used in place from row-major bf16 bytes multiply as packed bf16 panels do.
    #[test]
    fn bf16_rows_in_place_equal_packed_panels() {
        for &(m, n, k) in &[(1, 37, 65), (3, 40, 64), (20, 33, 31)] {
            let (a, w) = (data(m * k, 1), data(n * k, 2));
            let packed = PackedWeight::pack(
                &Matrix { data: &w, cols: k, transposed: false },
                n,
                k,
                WeightFormat::Bf16,
            );
            let mut bytes = vec![7u8; 3]; // an odd offset: rows need not be aligned
            for x in &w {
                bytes.extend(bf16::from_f32(*x).to_bits().to_le_bytes());
            }
            let rows = PackedWeight::from_bf16_rows(std::sync::Arc::new(bytes), 3, n, k);
            let (mut x, mut y) = (vec![0f32; m * n], vec![0f32; m * n]);
            packed.matmul(&a, m, &mut x);
            rows.matmul(&a, m, &mut y);
            // Decode (m <= 4) sums each dot product in another order.
            let worst = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "m {m} n {n} k {k}: {worst}");
            let (mut r1, mut r2) = (vec![0f32; k], vec![0f32; k]);
            packed.row(n - 1, &mut r1);
            rows.row(n - 1, &mut r2);
            assert_eq!(r1, r2);
        }
    }

    /// The magic-number rounding equals `round_ties_even` then clamp, ties included.
    #[test]
    fn quantize_rounds_half_to_even() {
        let mut v = -130.0f32;
        while v <= 130.0 {
            for x in [v, v + 0.5, v - 1e-4, v + 1e-4] {
                assert_eq!(quantize(x), x.round_ties_even().clamp(-127.0, 127.0) as i8, "{x}");
            }
            v += 0.25;
        }
    }

    #[test]
    fn transposed_sources_pack_the_same() {
        let (n, k) = (20, 9);
        let w = data(n * k, 3);
        let mut wt = vec![0f32; n * k];
        for j in 0..n {
            for kk in 0..k {
                wt[kk * n + j] = w[j * k + kk];
            }
        }
        let a =
            PackedWeight::pack(&Matrix { data: &w, cols: k, transposed: false }, n, k, WeightFormat::Bf16);
        let b =
            PackedWeight::pack(&Matrix { data: &wt, cols: n, transposed: true }, n, k, WeightFormat::Bf16);
        let (mut ra, mut rb) = (vec![0f32; k], vec![0f32; k]);
        for j in 0..n {
            a.row(j, &mut ra);
            b.row(j, &mut rb);
            assert_eq!(ra, rb);
        }
    }

    /// Every kernel this CPU has equals the portable loop.
    #[test]
    fn portable_path_equals_the_detected_one() {
        let (m, n, k) = (5, 40, 70);
        let (a, w) = (data(m * k, 5), data(n * k, 9));
        for format in [WeightFormat::Bf16, WeightFormat::Q8] {
            let packed = PackedWeight::pack(&Matrix { data: &w, cols: k, transposed: false }, n, k, format);
            let run = |kernel| {
                let ab = packed.pack_activations(&a, m, kernel);
                let mut out = vec![0f32; m * n];
                unsafe { packed.block(kernel, &ab, m, 0..m, 0..n.div_ceil(PANEL), out.as_mut_ptr()) };
                out
            };
            let base = run(Kernel::Portable);
            for &kernel in Kernel::available() {
                // bf16 activations (Avx512Bf16) round the inputs: a looser bound.
                let tol = if kernel == Kernel::Avx512Bf16 { 2e-2 } else { 1e-5 };
                let got = run(kernel);
                let worst = base.iter().zip(&got).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                assert!(worst < tol, "{format:?} {kernel:?}: {worst}");
            }
        }
    }

    /// `matmul_f32` on each of its three schedules (one large product on every core, a batch of
    /// small ones split over the cores, small work inline) against a plain triple loop, with a
    /// transposed (column-major) rhs; out-of-bounds operands are refused.
    #[test]
    fn strided_f32_products_equal_the_definition() {
        for (batch, m, k, n) in [(1, 200, 200, 200), (9, 64, 64, 64), (3, 5, 7, 4)] {
            let a: Vec<f32> = (0..batch * m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect(); // [n, k] rows
            let a_off: Vec<usize> = (0..batch).map(|i| i * m * k).collect();
            let lhs = Strided { data: &a, offsets: &a_off, row_stride: k, col_stride: 1 };
            let rhs = Strided { data: &b, offsets: &[0], row_stride: 1, col_stride: k };
            let got = matmul_f32(batch, m, k, n, lhs, rhs).expect("in bounds");
            for bi in 0..batch {
                for r in 0..m {
                    for c in 0..n {
                        let want: f64 =
                            (0..k).map(|j| a[bi * m * k + r * k + j] as f64 * b[c * k + j] as f64).sum();
                        let v = got[(bi * m + r) * n + c] as f64;
                        assert!(
                            (v - want).abs() < 1e-3 * (1.0 + want.abs()),
                            "{batch}x{m}x{k}x{n} [{bi},{r},{c}]: {v} vs {want}"
                        );
                    }
                }
            }
            let short = Strided { data: &b[..k * n - 1], ..rhs };
            assert!(matmul_f32(batch, m, k, n, lhs, short).is_none());
        }
    }
}
