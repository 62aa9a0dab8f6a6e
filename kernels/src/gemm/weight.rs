//! Packing a weight into panels (bf16 or int8) or using its bytes in place, and reading it back.

use super::{Backing, PANEL, PackedWeight, Source, Values, WeightFormat, quantize};
#[cfg(target_arch = "x86_64")]
use super::{Kernel, kernel::available, x86};
use rayon::prelude::*;

impl PackedWeight {
    /// Packs `W[n, k]` read through `source` into `format`. Panels are packed in parallel, each
    /// reading its 16 outputs' rows at once ([`Source::rows_f32`]: `k` runs of 16 in Burn's
    /// transposed Linear layout) or a checkpoint's bf16 rows in place.
    pub fn pack<S: Source>(source: &S, n: usize, k: usize, format: WeightFormat) -> Self {
        let kp2 = k.div_ceil(2);
        let panels = n.div_ceil(PANEL);
        let panel_len = kp2 * PANEL * 2;
        let values = match format {
            WeightFormat::Bf16 => {
                let mut v = super::aligned::Aligned::<u16>::zeroed(panels * panel_len);
                v.par_chunks_mut(panel_len).enumerate().for_each(|(p, panel)| {
                    // Each output's row as bf16 bits (in place for bf16 bytes; else the
                    // panel's rows read as f32 and rounded in vector code), then into the panel.
                    let cols = PANEL.min(n - p * PANEL);
                    let bf16_bytes = source.bf16_row(p * PANEL).is_some();
                    let mut rows = vec![0f32; if bf16_bytes { 0 } else { cols * k }];
                    source.rows_f32(p * PANEL, k, &mut rows);
                    let mut bits = Vec::with_capacity(k);
                    for c in 0..cols {
                        bits.clear();
                        match source.bf16_row(p * PANEL + c) {
                            Some(bytes) => {
                                bits.extend(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])))
                            }
                            None => {
                                let row = &rows[c * k..(c + 1) * k];
                                bits.extend(crate::convert::to_bf16(row).iter().map(|v| v.to_bits()));
                            }
                        }
                        into_panel(panel, c, &bits);
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
                        // The panel's rows as f32 (one pass over their bytes), each output's
                        // scale and values in vector code, then its pairs of k into the panel.
                        let (mut rows, mut qrow) = (vec![0f32; cols * k], vec![0i8; k]);
                        source.rows_f32(p * PANEL, k, &mut rows);
                        for c in 0..cols {
                            scales[c] = quantize_row(&rows[c * k..(c + 1) * k], &mut qrow);
                            into_panel(panel, c, &qrow);
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
    pub(super) fn rows_bytes(&self) -> Option<&[u8]> {
        match &self.values {
            Values::Bf16Rows { backing, offset } => {
                Some(&(**backing).as_ref()[*offset..*offset + self.n * self.k * 2])
            }
            _ => None,
        }
    }

    /// Lays pairs `pairs` (starting at a multiple of 16) of panels `p..p + np` of row-major
    /// bf16 `rows` out as packed panels in `scratch`, `panel_len` elements apart (at least
    /// `pairs.len() * 32`; the rest zeros).
    pub(super) fn stage(
        &self,
        rows: &[u8],
        p: usize,
        np: usize,
        pairs: std::ops::Range<usize>,
        panel_len: usize,
        scratch: &mut super::aligned::Aligned<u16>,
    ) {
        scratch.reset(np * panel_len);
        let row_bytes = self.k * 2;
        let count = pairs.end.min(self.kp2).saturating_sub(pairs.start);
        for j in 0..np {
            let panel = &mut scratch[j * panel_len..(j + 1) * panel_len];
            let first = (p + j) * PANEL;
            let cols = PANEL.min(self.n.saturating_sub(first));
            // Whole blocks of 16 pairs transposed in registers, the rest pair by pair.
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if available().contains(&Kernel::Avx512) && cols > 0 {
                let blocks = (count / 16).min((self.k / 32).saturating_sub(pairs.start / 16));
                let at = first * row_bytes + pairs.start * 4;
                let start = rows[at..].as_ptr();
                assert!(
                    panel.len() >= blocks * 512 && rows.len() >= at + (cols - 1) * row_bytes + blocks * 64
                );
                // SAFETY: AVX-512 was detected; the bounds were checked above.
                unsafe { x86::stage_pairs(start, row_bytes, cols, blocks, panel.as_mut_ptr().cast()) };
                done = blocks * 16;
            }
            // The loop below writes pairs `done..count` of columns `0..cols`: the rest of the
            // panel (a tail of under 16 pairs and the padding) zeroed first.
            let written = (done * PANEL * 2).min(panel.len());
            panel[written..].fill(0);
            for c in 0..cols {
                let row_start = (first + c) * row_bytes;
                let end = (row_start + (pairs.start + count) * 4).min(row_start + row_bytes);
                let row = &rows[row_start + (pairs.start + done) * 4..end];
                let quads = row.chunks_exact(4);
                let tail = quads.remainder();
                let mut t = done;
                let from = ((done * PANEL + c) * 2).min(panel.len());
                for (pair, dst) in quads.zip(panel[from..].chunks_mut(PANEL * 2)) {
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
    pub(super) fn q8(&self) -> Option<(&[i8], &[f32])> {
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
}

crate::wide_fn! {
    /// One output's int8 row: the scale `max |row| / 127` (1 for an all-zero row) and
    /// `dst[i] = quantize(row[i] / scale)`, returned and written in vector code (the running
    /// max in 16 lanes).
    fn quantize_row(row: &[f32], dst: &mut [i8]) -> f32 {
        let max = super::max_abs(row);
        let s = if max > 0.0 { max / 127.0 } else { 1.0 };
        for (d, &x) in dst.iter_mut().zip(row) {
            *d = quantize(x / s);
        }
        s
    }
}

/// Output `c`'s row (`k` values) into its panel: pair `t` of k at `(t * 16 + c) * 2`, an odd
/// k's last pair completed by a zero.
fn into_panel<T: Copy + Default>(panel: &mut [T], c: usize, row: &[T]) {
    for (t, pair) in row.chunks(2).enumerate() {
        let dst = &mut panel[(t * PANEL + c) * 2..][..2];
        dst[0] = pair[0];
        dst[1] = pair.get(1).copied().unwrap_or_default();
    }
}
