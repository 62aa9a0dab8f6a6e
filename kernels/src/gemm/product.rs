//! The products: activations packed for the tiles, output blocks split over the cores, and
//! decode's dot products over rows used in place.

use super::aligned::Aligned;
#[cfg(target_arch = "x86_64")]
use super::aligned::Line;
use super::{Kernel, MR, NR, PANEL, PackedWeight, SyncPtr, Values, kernel::available, portable};
#[cfg(target_arch = "x86_64")]
use super::{amx, x86};
use half::bf16;
use rayon::prelude::*;

/// What a product does to each output besides computing it: `act(v + bias[column])`. On AMX
/// the bias is added in the store of each block, while the block is in cache, and the
/// activation over each task's block once its tiles are done (still in L2; in the store,
/// between tile products, it took 1.5x as long); the other kernels apply both in a parallel
/// pass after the product.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added to each row: one value per output column.
    pub bias: Option<&'a [f32]>,
    /// `Some((a, b))`: `x * sigmoid(x (a + b x^2))` of the biased output
    /// ([`crate::host_ops::x_sigmoid`]: GELU-tanh and quick-GELU).
    pub x_sigmoid: Option<(f32, f32)>,
}

impl Epilogue<'_> {
    fn is_identity(&self) -> bool {
        self.bias.is_none() && self.x_sigmoid.is_none()
    }
}

crate::wide_fn! {
    /// [`Epilogue`] of one output row in place: `dst` holds `n` products, `bias` at least `n`.
    fn finish_row(dst: &mut [f32], bias: Option<&[f32]>, x_sigmoid: Option<(f32, f32)>) {
        if let Some(bias) = bias {
            for (d, b) in dst.iter_mut().zip(bias) {
                *d += b;
            }
        }
        if let Some((a, b)) = x_sigmoid {
            for d in dst.iter_mut() {
                *d = crate::host_ops::x_sigmoid_one(*d, a, b);
            }
        }
    }
}

crate::wide_fn! {
    /// One activation row for AMX-INT8: `src` (k values) quantised into `dst` (the padded row,
    /// zeros past k) in groups of [`Q8_GROUP`] k, each with its scale `s = max |x| / 127` in
    /// `scales`: `dst = round(x * 127 / max)`, ties to even. A group holding a NaN or an
    /// infinity gets a NaN scale (the row's products come out NaN, as f32 ones would not be
    /// finite either); an all-zero group, or one so small that `127 / max` overflows, scale 0.
    fn quantize_i8_row(src: &[f32], dst: &mut [i8], scales: &mut [f32]) {
        dst[src.len()..].fill(0);
        for ((part, d), s) in src.chunks(Q8_GROUP).zip(dst.chunks_mut(Q8_GROUP)).zip(scales.iter_mut()) {
            let bits = super::max_abs_bits(part);
            if bits >= 0x7f80_0000 {
                *s = f32::NAN;
                d[..part.len()].fill(0);
                continue;
            }
            let max = f32::from_bits(bits);
            let inv = 127.0 / max;
            if !inv.is_finite() {
                *s = 0.0;
                d[..part.len()].fill(0);
                continue;
            }
            for (d, v) in d.iter_mut().zip(part) {
                *d = super::quantize(v * inv);
            }
            *s = max / 127.0;
        }
    }
}

impl PackedWeight {
    /// `out[m, n] = a[m, k] · W[n, k]^T` (`a` row-major `[m, k]`, `out` row-major `[m, n]`).
    ///
    /// # Panics
    /// When `a` or `out` does not have `m * k` or `m * n` elements.
    pub fn matmul(&self, a: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_with(Kernel::for_product(m, self.format()), a, m, out)
    }

    /// [`PackedWeight::matmul`] on a chosen kernel (one of [`Kernel::available`]).
    ///
    /// # Panics
    /// As `matmul`, and when this CPU lacks `kernel`.
    pub fn matmul_with(&self, kernel: Kernel, a: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(out.len(), m * self.n, "output");
        self.product(kernel, a, m, Out::of(out), self.n)
    }

    /// `out[i * ldc + j] = (a · W^T)[i, j]` for the `m x n` product, rows `ldc >= n` apart
    /// (several products side by side in one buffer); the other elements are left as they are.
    ///
    /// # Panics
    /// When `a` does not have `m * k` elements, `ldc < n`, or `out` is shorter than
    /// `(m - 1) * ldc + n`.
    pub fn matmul_into(&self, a: &[f32], m: usize, out: &mut [f32], ldc: usize) {
        self.product(Kernel::for_product(m, self.format()), a, m, Out::of(out), ldc)
    }

    /// Several weights of the same `k` applied to the same rows, side by side, each with its
    /// [`Epilogue`]: `out` is `[m, sum of n]`, weight `i`'s columns after those of the
    /// weights before it (a block's q, k and v projections in one buffer). On AMX the
    /// activations are rounded once for all.
    ///
    /// # Panics
    /// When the weights' `k` differ, `a` does not have `m * k` elements, `out` not
    /// `m * sum of n`, or a bias is shorter than its weight's `n`.
    pub fn matmul_many(products: &[(&PackedWeight, Epilogue<'_>)], a: &[f32], m: usize, out: &mut [f32]) {
        Self::many(products, a, m, Out::of(out))
    }

    /// [`PackedWeight::matmul_many`] into a new buffer (not zeroed first: every element is
    /// written once).
    ///
    /// # Panics
    /// As `matmul_many`.
    pub fn matmul_many_new(products: &[(&PackedWeight, Epilogue<'_>)], a: &[f32], m: usize) -> Vec<f32> {
        let len = m * products.iter().map(|(w, _)| w.n).sum::<usize>();
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let ptr = out.spare_capacity_mut().as_mut_ptr() as *mut f32;
        Self::many(products, a, m, Out { ptr: SyncPtr(ptr), len });
        // SAFETY: `many` wrote each of the `m * sum of n = len` elements.
        unsafe { out.set_len(len) };
        out
    }

    fn many(products: &[(&PackedWeight, Epilogue<'_>)], a: &[f32], m: usize, out: Out) {
        let ldc: usize = products.iter().map(|(w, _)| w.n).sum();
        assert_eq!(out.len, m * ldc, "output");
        let k = products.first().map_or(0, |(w, _)| w.k);
        assert!(products.iter().all(|(w, _)| w.k == k), "weights of different k");
        assert!(products.iter().all(|(w, e)| e.bias.is_none_or(|b| b.len() >= w.n)), "bias");
        #[cfg(target_arch = "x86_64")]
        if products.iter().all(|(w, _)| {
            Kernel::for_product(m, w.format()) == Kernel::Amx && w.rows_bytes().is_none_or(|_| m > 4)
        }) {
            // Rounded once per format (bf16, or int8 for int8 weights).
            let (mut bf16, mut int8) = (None, None);
            let mut at = 0;
            for (w, epilogue) in products {
                let slot = if w.q8().is_some() { &mut int8 } else { &mut bf16 };
                let rounded = slot.get_or_insert_with(|| w.amx_activations(a, m));
                // The bias in the store; the activation over each task's block once its tiles
                // are done (still in L2): in the store, between tile products, it took 1.5x as
                // long (SigLIP-B/16's fc1: 7.2 against 5.0 ms), and as a pass over the whole
                // product after it, it read the output back from memory.
                w.amx_product(rounded, m, out.from(at), ldc, *epilogue);
                at += w.n;
            }
            return;
        }
        let mut at = 0;
        for (w, epilogue) in products {
            w.product(Kernel::for_product(m, w.format()), a, m, out.from(at), ldc);
            finish_pass(out.from(at), m, w.n, ldc, *epilogue);
            at += w.n;
        }
    }

    /// The product on `kernel` into rows `ldc` apart (see [`PackedWeight::matmul_into`]).
    fn product(&self, kernel: Kernel, a: &[f32], m: usize, out: Out, ldc: usize) {
        assert!(available().contains(&kernel), "this CPU cannot run {kernel:?}");
        assert_eq!(a.len(), m * self.k, "activations");
        assert!(ldc >= self.n && (m == 0 || out.len >= (m - 1) * ldc + self.n), "output");
        if let Some(rows) = self.rows_bytes()
            && m <= 4
        {
            return self.dot_rows(kernel, rows, a, m, out.ptr, ldc);
        }
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Amx {
            let rounded = self.amx_activations(a, m);
            return self.amx_product(&rounded, m, out, ldc, Epilogue { bias: None, x_sigmoid: None });
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
        let out_ptr = out.ptr;
        (0..row_blocks * panel_blocks).into_par_iter().for_each(|task| {
            let (rb, pb) = (task / panel_blocks, task % panel_blocks);
            let rows = rb * mc..((rb + 1) * mc).min(m);
            let ps = pb * per_task..((pb + 1) * per_task).min(panels);
            let out = out_ptr;
            // SAFETY: tasks write disjoint (row, panel) blocks of `out`, whose length was checked.
            unsafe { self.block(kernel, &ab, m, rows, ps, out.0, ldc) };
        });
    }

    /// Few activation rows against row-major bf16 weights (decode): one dot product per output
    /// over the rows as stored, output rows split over the cores.
    fn dot_rows(&self, kernel: Kernel, rows: &[u8], a: &[f32], m: usize, out_ptr: SyncPtr, ldc: usize) {
        let (n, k) = (self.n, self.k);
        let threads = rayon::current_num_threads().max(1);
        let chunk = n.div_ceil(4 * threads).next_multiple_of(8).max(8);
        (0..n.div_ceil(chunk)).into_par_iter().for_each(|c| {
            let range = c * chunk..((c + 1) * chunk).min(n);
            let out = out_ptr;
            #[cfg(target_arch = "x86_64")]
            if matches!(kernel, Kernel::Avx512 | Kernel::Avx512Bf16 | Kernel::Amx | Kernel::Avx512Vnni) {
                // SAFETY: AVX-512 was detected; tasks write disjoint output columns.
                unsafe { x86::dot_rows(a.as_ptr(), m, rows.as_ptr(), k, ldc, range, out.0) };
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
                    unsafe { *out.0.add(i * ldc + j) = sum.iter().sum() };
                }
            }
        });
    }

    /// The activations laid out for the tiles: in blocks of `h = min(MR, m)` rows (the last
    /// one zero-padded), pair `t` of the block's rows together: block `b`, pair `t`, row `i` at
    /// `(b * kp2 + t) * h + i` (a pair of f32, or for [`Kernel::Avx512Bf16`] two bf16 rounded
    /// to nearest even in one u32).
    pub(super) fn pack_activations(&self, a: &[f32], m: usize, kernel: Kernel) -> Activations {
        let h = MR.min(m);
        let blocks = m.div_ceil(h);
        let (k, kp2) = (self.k, self.kp2);
        let pair = |b: usize, i: usize, t: usize| {
            let row = &a[(b * h + i) * k..(b * h + i + 1) * k];
            (row[2 * t], row.get(2 * t + 1).copied().unwrap_or(0.0))
        };
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Avx512Vnni && self.q8().is_some() {
            // Int16 pairs, one scale per row and block of I16_BLOCK pairs: `s = max |a| / 32767`.
            let kblocks = kp2.div_ceil(x86::I16_BLOCK);
            let mut packed = vec![0u32; blocks * kp2 * h];
            let mut scales = vec![0f32; blocks * kblocks * h];
            packed.par_chunks_mut(kp2 * h).zip(scales.par_chunks_mut(kblocks * h)).enumerate().for_each(
                |(b, (block, scale))| {
                    let mut q = [0i16; 2 * x86::I16_BLOCK];
                    for i in 0..h.min(m - b * h) {
                        let row = &a[(b * h + i) * k..(b * h + i + 1) * k];
                        for kb in 0..kblocks {
                            let (t0, t1) = (kb * x86::I16_BLOCK, ((kb + 1) * x86::I16_BLOCK).min(kp2));
                            let part = &row[2 * t0..(2 * t1).min(k)];
                            // An odd k's last pair has a zero above it.
                            q[part.len()..2 * (t1 - t0)].fill(0);
                            scale[kb * h + i] = quantize_i16(part, &mut q[..part.len()]);
                            for (t, pair) in (t0..t1).zip(q.chunks_exact(2)) {
                                block[t * h + i] = pair[0] as u16 as u32 | ((pair[1] as u16 as u32) << 16);
                            }
                        }
                    }
                },
            );
            return Activations::I16 { pairs: packed, scales };
        }
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
    /// `out` points to `m` rows of `n` f32, `ldc` apart, and no other task writes this block.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        &self,
        kernel: Kernel,
        a: &Activations,
        m: usize,
        rows: std::ops::Range<usize>,
        ps: std::ops::Range<usize>,
        out: *mut f32,
        ldc: usize,
    ) {
        let panel_len = self.kp2 * PANEL * 2;
        let h = MR.min(m);
        let block_len = self.kp2 * h;
        debug_assert!(rows.start.is_multiple_of(h));
        let mut scratch = Aligned::default();
        let scales = self.q8().map(|(_, s)| s);
        let mut p = ps.start;
        while p < ps.end {
            let np = if ps.end - p >= NR { NR } else { 1 };
            // The bf16 panels to multiply by: packed, or staged from the checkpoint's rows.
            let bf: Option<&[u16]> = match &self.values {
                Values::Bf16(v) => Some(&v[p * panel_len..(p + np) * panel_len]),
                Values::Bf16Rows { .. } => {
                    let rows = self.rows_bytes().unwrap_or_default();
                    self.stage(rows, p, np, 0..self.kp2, panel_len, &mut scratch);
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
                    (_, Some(w), Activations::I16 { pairs, scales }, Kernel::Avx512Vnni) => unsafe {
                        let a = pairs.as_ptr().add(b * block_len);
                        let s = scales.as_ptr().add(b * self.kp2.div_ceil(x86::I16_BLOCK) * h);
                        x86::vnni_q8(a, s, h, w.as_ptr(), panel_len, self.kp2, np, &mut acc)
                    },
                    #[cfg(target_arch = "x86_64")]
                    (Some(w), _, Activations::F32(a), Kernel::Avx512 | Kernel::Avx512Vnni) => unsafe {
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
                // Store, scaled for int8, clipped to the real columns (slices, so that the
                // loops vectorise: SigLIP-B/16's fc1 on the FMA tiles 21.3-21.5 -> 20.1-20.9 ms).
                let (c0, cols) = (p * PANEL, (self.n - p * PANEL).min(np * PANEL));
                for (i, acc_row) in acc.iter().enumerate().take(mr) {
                    // SAFETY: row `r + i` < m, columns `c0..c0 + cols` <= n <= ldc: this task's
                    // block of the checked output, which no other task writes (it may not be
                    // initialised yet: `matmul_many_new`).
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            out.add((r + i) * ldc + c0) as *mut std::mem::MaybeUninit<f32>,
                            cols,
                        )
                    };
                    match scales {
                        Some(scale) => {
                            for ((d, v), s) in dst.iter_mut().zip(acc_row).zip(&scale[c0..c0 + cols]) {
                                d.write(v * s);
                            }
                        }
                        None => {
                            for (d, v) in dst.iter_mut().zip(acc_row) {
                                d.write(*v);
                            }
                        }
                    }
                }
                r += h;
            }
            p += np;
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl PackedWeight {
    /// The activations for [`PackedWeight::amx_product`]: rounded to bf16 once (bf16 weights)
    /// or quantised to int8 per row and group of [`Q8_GROUP`] k (int8 weights), rows padded to
    /// 32 and k to the tile's block with zeros (any weight of this `k` and format can use them).
    fn amx_activations(&self, a: &[f32], m: usize) -> AmxActivations {
        let k = self.k;
        let lda = self.amx_lda();
        let mp = m.next_multiple_of(amx::ROWS);
        if self.q8().is_some() {
            let groups = k.div_ceil(Q8_GROUP).max(1);
            let mut q = Aligned::<i8>::zeroed(mp * lda);
            let mut scales = vec![0f32; mp * groups];
            q.par_chunks_mut(lda)
                .zip(scales.par_chunks_mut(groups))
                .take(m)
                .enumerate()
                .for_each(|(i, (row, scales))| quantize_i8_row(&a[i * k..(i + 1) * k], row, scales));
            return AmxActivations { values: AmxValues::Int8 { q, scales, groups }, lda, mp };
        }
        // Every element written once (rows, their padding, the padding rows): no zeroing first.
        let vector = std::arch::is_x86_feature_detected!("avx512bf16");
        let ab = Aligned::<u16>::filled(mp * lda, |fresh| {
            fresh.par_chunks_mut(lda).enumerate().for_each(|(i, row)| {
                let (values, pad) = row.split_at_mut(if i < m { k } else { 0 });
                if i < m {
                    let src = &a[i * k..(i + 1) * k];
                    if vector {
                        // SAFETY: AVX512_BF16 was detected; `values` has room for the `k` results.
                        unsafe { x86::round_bf16_to(src, values.as_mut_ptr() as *mut u16) };
                    } else {
                        for (d, s) in values.iter_mut().zip(src) {
                            d.write(bf16::from_f32(*s).to_bits());
                        }
                    }
                }
                for d in pad {
                    d.write(0);
                }
            })
        });
        AmxActivations { values: AmxValues::Bf16(ab), lda, mp }
    }

    /// The product on AMX tiles: bf16 weight panels read in place or staged per panel pair
    /// into a task's buffer (bf16 rows laid out as panels), int8 ones staged as AMX-INT8
    /// tiles ([`PackedWeight::amx_task_q8`]).
    /// Tasks are (row block, run of panel pairs); each stages a pair once for all its rows.
    /// Output rows `ldc` apart; `bias` (one per column) the accumulators' start or added as
    /// each block is stored.
    fn amx_product(&self, rounded: &AmxActivations, m: usize, out: Out, ldc: usize, epilogue: Epilogue<'_>) {
        let AmxActivations { values, lda, mp } = rounded;
        let (lda, mp) = (*lda, *mp);
        let n = self.n;
        let panels = n.div_ceil(PANEL);
        let pairs = panels.div_ceil(2);
        let threads = rayon::current_num_threads().max(1);
        let mc = if mp <= 512 { mp } else { 256 };
        // A row block's activations over ROWS_BYTES (CLIP-B/32's fc2 at batch 8: 416 rows of
        // k = 3072, 2.5 MiB) but within 4x: split into row blocks that stay in L2, rather than
        // chunking the reduction (each block then reads the weights again, which is cheaper
        // here: 1.65-1.94 -> 2.24-2.53 TFLOP/s on that product). Larger ones (Gemma-2B's down
        // projection, k = 16384) stay chunked, as a split would read the weights many times.
        let row_bytes = if matches!(values, AmxValues::Int8 { .. }) { lda } else { lda * 2 };
        let mc = if mc * row_bytes > ROWS_BYTES
            && mc * row_bytes <= 4 * ROWS_BYTES
            && self.bytes() <= SPLIT_WEIGHT_BYTES
        {
            let blocks = mp.div_ceil((ROWS_BYTES / row_bytes).max(amx::ROWS));
            mp.div_ceil(blocks).next_multiple_of(amx::ROWS)
        } else {
            mc
        };
        let row_blocks = mp.div_ceil(mc);
        let per_task = (pairs * row_blocks).div_ceil(4 * threads).div_ceil(row_blocks).max(1);
        let pair_blocks = pairs.div_ceil(per_task);
        let out_ptr = out.ptr;
        (0..row_blocks * pair_blocks).into_par_iter().for_each(|task| {
            let (rb, pb) = (task / pair_blocks, task % pair_blocks);
            let rows = rb * mc..((rb + 1) * mc).min(mp);
            let pps = pb * per_task..((pb + 1) * per_task).min(pairs);
            let out = out_ptr;
            // SAFETY: `available` listed Amx, so tiles are usable; tasks write disjoint
            // (row, panel) blocks of `out`, whose length was checked; the activations are
            // those of this weight's format (`amx_activations`).
            unsafe {
                match values {
                    AmxValues::Bf16(ab) => {
                        self.amx_task(ab, lda, m, rows.clone(), pps.clone(), out.0, ldc, epilogue.bias)
                    }
                    AmxValues::Int8 { q, scales, groups } => self.amx_task_q8(
                        (q, scales, *groups),
                        lda,
                        m,
                        rows.clone(),
                        pps.clone(),
                        out.0,
                        ldc,
                        epilogue.bias,
                    ),
                }
            };
            if let Some(act) = epilogue.x_sigmoid {
                let (c0, c1) = (pps.start * 2 * PANEL, (pps.end * 2 * PANEL).min(n));
                for r in rows.start..rows.end.min(m) {
                    // SAFETY: row `r`, columns `c0..c1` are this task's block, just written.
                    let row = unsafe { std::slice::from_raw_parts_mut(out.0.add(r * ldc + c0), c1 - c0) };
                    finish_row(row, None, Some(act));
                }
            }
        });
    }

    /// The row length of this weight's AMX activations, in values: k padded to the tile's block
    /// (32 bf16, 64 int8), plus 64 bytes (rows 64 bytes more than a multiple of 4 KiB apart:
    /// 16 rows a tile would otherwise fall in one L1 set).
    fn amx_lda(&self) -> usize {
        if self.q8().is_some() {
            (self.kp2 * 2).next_multiple_of(64) + 64
        } else {
            self.kp2.next_multiple_of(amx::PAIRS) * 2 + 32
        }
    }

    /// One AMX task: rows `rows` (multiples of 32 of the padded activations) x panel pairs `pps`.
    ///
    /// # Safety
    /// AMX is usable; `ab` holds the padded bf16 activations; `out` points to `m` rows of `n`
    /// f32, `ldc` apart, and no other task writes this block.
    #[allow(clippy::too_many_arguments)]
    unsafe fn amx_task(
        &self,
        ab: &[u16],
        lda: usize,
        m: usize,
        rows: std::ops::Range<usize>,
        pps: std::ops::Range<usize>,
        out: *mut f32,
        ldc: usize,
        bias: Option<&[f32]>,
    ) {
        let (n, kp2) = (self.n, self.kp2);
        let panel_len = kp2 * PANEL * 2;
        let kp16 = kp2.next_multiple_of(amx::PAIRS);
        // Blocks of 32 k (the last one partial when `rem > 0`), `step` u16 a block in a panel.
        let (blocks, full, rem) = (kp16 / amx::PAIRS, kp2 / amx::PAIRS, kp2 % amx::PAIRS);
        let step = amx::PAIRS * PANEL * 2;
        let panels = n.div_ceil(PANEL);
        let starts: Vec<usize> = rows.clone().step_by(amx::ROWS).filter(|&r| r < m).collect();
        // The reduction in chunks when the task's rows of activations would not stay in L2
        // (over 2 MiB; Gemma-2B's down projection, k = 16384): a chunk of CHUNK_BYTES of them
        // is read from L2 by every panel pair of the task, the accumulators kept in `partial`
        // between chunks (2x on that product; smaller products lose by chunking).
        let block_bytes = starts.len().max(1) * amx::ROWS * 64;
        let kc = if block_bytes * blocks > 2 << 20 { (CHUNK_BYTES / block_bytes).max(16) } else { blocks };
        let chunks = blocks.div_ceil(kc.max(1)).max(1);
        let mut partial: Vec<Block> = (0..if chunks > 1 { pps.len() * starts.len() } else { 0 })
            .map(|_| Block([0f32; amx::ROWS * 32]))
            .collect();
        let mut staged = Aligned::<u16>::default();
        let mut tail = Aligned::<u16>::zeroed(2 * step);
        let mut c = Block([0f32; amx::ROWS * 32]);
        let mut init = Block([0f32; amx::ROWS * 32]);
        // SAFETY: the caller checked AMX is usable.
        unsafe { amx::configure() };
        for chunk in 0..chunks {
            let (k0, k1) = (chunk * kc, ((chunk + 1) * kc).min(blocks));
            let last = chunk + 1 == chunks;
            for (pi, pp) in pps.clone().enumerate() {
                let p = pp * 2;
                let np = (panels - p).min(2);
                // The two panels' blocks k0..k1: `in_place` of them read where they are (and
                // the partial last block from `tail`), or all staged in `staged`.
                let (b0, b1, in_place): (*const u16, *const u16, Option<usize>) = match &self.values {
                    Values::Bf16(v) => {
                        let first = &v[p * panel_len..];
                        let second = if np == 2 { &v[(p + 1) * panel_len..] } else { first };
                        if rem > 0 && k1 > full {
                            let (at, len) = (full * step, rem * PANEL * 2);
                            tail.fill(0);
                            tail[..len].copy_from_slice(&first[at..at + len]);
                            tail[step..step + len].copy_from_slice(&second[at..at + len]);
                        }
                        (first[k0 * step..].as_ptr(), second[k0 * step..].as_ptr(), Some(k1.min(full) - k0))
                    }
                    Values::Bf16Rows { .. } => {
                        let rows = self.rows_bytes().unwrap_or_default();
                        let len = (k1 - k0) * step;
                        self.stage(rows, p, np, k0 * amx::PAIRS..k1 * amx::PAIRS, len, &mut staged);
                        let second = if np == 2 { len } else { 0 };
                        (staged.as_ptr(), staged[second..].as_ptr(), None)
                    }
                    Values::Q8 { .. } | Values::Q8Mapped { .. } => {
                        unreachable!("int8 weights run amx_task_q8")
                    }
                };
                let cols = (np * PANEL).min(n - p * PANEL);
                // Whole 32-column blocks: the bias is the accumulators' start and full row
                // blocks are stored from the tiles straight into the output.
                let direct = cols == 2 * PANEL;
                let biased = match bias {
                    Some(bias) if direct => {
                        for row in init.0.chunks_exact_mut(2 * PANEL) {
                            row.copy_from_slice(&bias[p * PANEL..p * PANEL + 2 * PANEL]);
                        }
                        true
                    }
                    _ => false,
                };
                for (ri, &r) in starts.iter().enumerate() {
                    let a = ab[r * lda + k0 * 32..].as_ptr();
                    let live = amx::ROWS.min(m - r);
                    // 16 live rows or fewer (a product's last block): the first tile's only.
                    let accumulate = if live <= 16 { amx::accumulate_16 } else { amx::accumulate };
                    // SAFETY: configured above; `a` has 32 rows of `lda` (padded) from block k0,
                    // the panels the blocks described above and the tail one block.
                    unsafe {
                        if chunk == 0 && biased {
                            amx::load(&init.0);
                        } else if chunk == 0 {
                            amx::zero();
                        } else {
                            amx::load(&partial[pi * starts.len() + ri].0);
                        }
                        if last && direct && live == amx::ROWS {
                            amx::prefetch_block_for_write(out.add(r * ldc + p * PANEL), ldc);
                        }
                        match in_place {
                            Some(blocks) => {
                                accumulate(a, lda, b0, b1, blocks);
                                if rem > 0 && k1 > full {
                                    let t = tail.as_ptr();
                                    accumulate(a.add(blocks * 32), lda, t, t.add(step), 1);
                                }
                            }
                            None => accumulate(a, lda, b0, b1, k1 - k0),
                        }
                        if !last {
                            amx::store(&mut partial[pi * starts.len() + ri].0);
                            continue;
                        }
                        if direct && live == amx::ROWS {
                            // SAFETY: rows r..r + 32, columns p * 16..+32 are this task's
                            // block of the checked output.
                            amx::store_rows(out.add(r * ldc + p * PANEL), ldc);
                            continue;
                        }
                        amx::store(&mut c.0);
                    }
                    // The bias when it was not the accumulators' start.
                    let bias = if biased { None } else { bias };
                    for i in 0..live {
                        let src = &c.0[i * 32..i * 32 + cols];
                        // SAFETY: row r + i, columns p * 16.. + cols are this task's block of
                        // the checked output, written by no one else.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(out.add((r + i) * ldc + p * PANEL), cols)
                        };
                        dst.copy_from_slice(src);
                        if let Some(bias) = bias {
                            finish_row(dst, Some(&bias[p * PANEL..]), None);
                        }
                    }
                }
            }
        }
        // SAFETY: configured above.
        unsafe { amx::release() };
    }

    /// One AMX-INT8 task over int8 weights: rows `rows` (multiples of 32 of the padded
    /// activations) x panel pairs `pps`. Each panel pair's blocks are staged as weight tiles
    /// (pair rows interleaved into quad rows); each group of [`Q8_GROUP`] k is summed in int32
    /// on the tiles, then added into f32 accumulators scaled by each row's scale of that
    /// group; the output is those times the weight's per-column scales, plus the bias.
    ///
    /// # Safety
    /// AMX is usable; `q` holds the padded int8 activations (`lda` bytes a row) and `scales`
    /// their `groups` scales a row; `out` points to `m` rows of `n` f32, `ldc` apart, and no
    /// other task writes this block.
    #[allow(clippy::too_many_arguments)]
    unsafe fn amx_task_q8(
        &self,
        (q, scales, groups): (&[i8], &[f32], usize),
        lda: usize,
        m: usize,
        rows: std::ops::Range<usize>,
        pps: std::ops::Range<usize>,
        out: *mut f32,
        ldc: usize,
        bias: Option<&[f32]>,
    ) {
        let Some((w, w_scale)) = self.q8() else { unreachable!("amx_task_q8 runs int8 weights") };
        let (n, kp2) = (self.n, self.kp2);
        // Bytes of a panel (pairs of k, 32 bytes each); blocks of 64 k (16 quad rows).
        let panel_len = kp2 * PANEL * 2;
        let blocks = (kp2 * 2).div_ceil(64);
        const GROUP_BLOCKS: usize = Q8_GROUP / 64;
        let panels = n.div_ceil(PANEL);
        let starts: Vec<usize> = rows.clone().step_by(amx::ROWS).filter(|&r| r < m).collect();
        // As in `amx_task`: the reduction in chunks (whole groups) when the task's rows of
        // activations would not stay in L2, the f32 accumulators kept between chunks.
        let block_bytes = starts.len().max(1) * amx::ROWS * 64;
        let gc = if block_bytes * blocks > 2 << 20 {
            (CHUNK_BYTES / (block_bytes * GROUP_BLOCKS)).max(1)
        } else {
            groups
        };
        let chunks = groups.div_ceil(gc.max(1)).max(1);
        let mut partial: Vec<Block> = (0..if chunks > 1 { pps.len() * starts.len() } else { 0 })
            .map(|_| Block([0f32; amx::ROWS * 32]))
            .collect();
        let mut staged: Vec<Line> = Vec::new();
        let mut acc = Block([0f32; amx::ROWS * 32]);
        let mut ints = Block([0f32; amx::ROWS * 32]);
        let mut row_scales = [0f32; amx::ROWS];
        // SAFETY: the caller checked AMX is usable.
        unsafe { amx::configure() };
        for chunk in 0..chunks {
            let (g0, g1) = (chunk * gc, ((chunk + 1) * gc).min(groups));
            let (kb0, kb1) = (g0 * GROUP_BLOCKS, (g1 * GROUP_BLOCKS).min(blocks));
            let last = chunk + 1 == chunks;
            let len = (kb1 - kb0) * 16;
            for (pi, pp) in pps.clone().enumerate() {
                let p = pp * 2;
                let np = (panels - p).min(2);
                // The two panels' blocks kb0..kb1 as weight tiles, zeros past k.
                // Every line is written below (quads, or zeros past k): no clearing first.
                staged.resize(np * len, Line([0; 64]));
                for j in 0..np {
                    let panel = &w[(p + j) * panel_len..(p + j + 1) * panel_len];
                    let from = kb0 * 1024;
                    let whole = (panel_len.saturating_sub(from) / 64).min(len);
                    let dst = &mut staged[j * len..(j + 1) * len];
                    // SAFETY: AVX512BW comes with AMX here (`available`); `whole` lines of the
                    // panel from `from` and of `dst`.
                    unsafe { x86::pairs_to_quads(panel[from..].as_ptr(), dst.as_mut_ptr().cast(), whole) };
                    let rest = panel_len.saturating_sub(from + whole * 64).min(64);
                    if whole < len && rest > 0 {
                        let mut line = [0i8; 64];
                        line[..rest].copy_from_slice(&panel[from + whole * 64..from + whole * 64 + rest]);
                        // SAFETY: as above, one line.
                        unsafe { x86::pairs_to_quads(line.as_ptr(), dst[whole..].as_mut_ptr().cast(), 1) };
                    }
                    let written = if whole < len && rest > 0 { whole + 1 } else { whole };
                    dst[written..].fill(Line([0; 64]));
                }
                let b0 = staged.as_ptr().cast::<i8>();
                // SAFETY: inside `staged` (np * len lines).
                let b1 = unsafe { b0.add(if np == 2 { len * 64 } else { 0 }) };
                let cols = (np * PANEL).min(n - p * PANEL);
                for (ri, &r) in starts.iter().enumerate() {
                    let live = amx::ROWS.min(m - r);
                    // 16 live rows or fewer (a product's last block): the first tile's only.
                    let accumulate = if live <= 16 { amx::accumulate_i8_16 } else { amx::accumulate_i8 };
                    let acc = if chunks > 1 { &mut partial[pi * starts.len() + ri] } else { &mut acc };
                    if last && live == amx::ROWS {
                        amx::prefetch_block_for_write(out.wrapping_add(r * ldc + p * PANEL), ldc);
                    }
                    for g in g0..g1 {
                        let (kb, kbe) = (g * GROUP_BLOCKS, ((g + 1) * GROUP_BLOCKS).min(blocks));
                        for (i, s) in row_scales.iter_mut().enumerate() {
                            *s = scales[(r + i) * groups + g];
                        }
                        // SAFETY: configured above; `q` has 32 rows of `lda` from row `r`, the
                        // staged panels `len` quad rows from block kb0.
                        unsafe {
                            amx::zero();
                            let a = q.as_ptr().add(r * lda + kb * 64);
                            let off = (kb - kb0) * 1024;
                            accumulate(a, lda, b0.add(off), b1.add(off), kbe - kb);
                            amx::store_to(ints.0.as_mut_ptr());
                        }
                        // SAFETY: the tiles stored int32 sums in the block's 4-byte slots.
                        let ints = unsafe { &*ints.0.as_ptr().cast::<[i32; 1024]>() };
                        if last && g + 1 == g1 {
                            // SAFETY: AVX-512 comes with AMX here (`available`); rows r..r + live,
                            // columns p * 16.. + cols are this task's block of the checked
                            // output; the scales are padded to whole panels, the bias has n.
                            unsafe {
                                let bias = bias.map_or(std::ptr::null(), |b| b[p * PANEL..].as_ptr());
                                let acc = (g > 0).then_some(&acc.0);
                                let out = out.add(r * ldc + p * PANEL);
                                let ws = w_scale[p * PANEL..].as_ptr();
                                x86::store_scaled_block(
                                    out,
                                    ldc,
                                    live,
                                    cols,
                                    acc,
                                    ints,
                                    &row_scales,
                                    ws,
                                    bias,
                                );
                            }
                        } else {
                            // SAFETY: AVX-512 comes with AMX here (`available`).
                            unsafe { x86::add_scaled_block(&mut acc.0, ints, &row_scales, g == 0) };
                        }
                    }
                }
            }
        }
        // SAFETY: configured above.
        unsafe { amx::release() };
    }
}

/// `epilogue` over the written `m x n` product at `out`, rows `ldc` apart, rows split over the
/// cores.
fn finish_pass(out: Out, m: usize, n: usize, ldc: usize, epilogue: Epilogue<'_>) {
    if epilogue.is_identity() {
        return;
    }
    (0..m).into_par_iter().with_min_len(16).for_each(|i| {
        // SAFETY: row `i`'s `n` columns of the product, written, are inside the checked output;
        // each task takes its own rows.
        let row = unsafe { std::slice::from_raw_parts_mut(out.at(i * ldc), n) };
        finish_row(row, epilogue.bias, epilogue.x_sigmoid);
    });
}

/// Bytes of activations (rows x a chunk of the reduction) an AMX task keeps in L2 while its
/// panel pairs pass over them, when the reduction is chunked (measured: 512 and 800 KiB
/// alike).
#[cfg(target_arch = "x86_64")]
const CHUNK_BYTES: usize = 640 * 1024;

/// The largest weight whose products split their rows into L2-sized blocks (each block reads
/// the weights again): larger ones come from memory, where reading them once and chunking the
/// reduction is cheaper.
#[cfg(target_arch = "x86_64")]
const SPLIT_WEIGHT_BYTES: usize = 16 << 20;

/// Bytes of a row block's activations that an AMX task keeps in L2 (of 2 MiB a core) while
/// its panel pairs pass over them.
#[cfg(target_arch = "x86_64")]
const ROWS_BYTES: usize = 1536 * 1024;

/// An output buffer of `len` f32 (possibly not yet written), split among tasks by pointer.
#[derive(Clone, Copy)]
struct Out {
    ptr: SyncPtr,
    len: usize,
}

impl Out {
    fn of(out: &mut [f32]) -> Self {
        Self { ptr: SyncPtr(out.as_mut_ptr()), len: out.len() }
    }

    /// Element `i`'s address (a method, so closures capture the whole `Out`, which is `Sync`).
    fn at(self, i: usize) -> *mut f32 {
        self.ptr.0.wrapping_add(i)
    }

    /// The buffer from element `at` (a product's first column among several side by side).
    fn from(self, at: usize) -> Self {
        assert!(at <= self.len, "output");
        // SAFETY: `at` is inside the buffer (checked).
        Self { ptr: SyncPtr(unsafe { self.ptr.0.add(at) }), len: self.len - at }
    }
}

/// One 32 x 32 f32 block of accumulators, aligned to cache lines for the tiles.
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct Block([f32; amx::ROWS * 32]);

/// Activations rounded for the AMX tiles: `mp` rows (`m` padded to 32), `lda` values apart.
#[cfg(target_arch = "x86_64")]
pub(super) struct AmxActivations {
    values: AmxValues,
    lda: usize,
    mp: usize,
}

/// What [`AmxActivations`] holds: bf16 (for bf16 weights), or int8 with one scale per row and
/// group of [`Q8_GROUP`] k (for int8 weights; row `r`, group `g` at `r * groups + g`).
#[cfg(target_arch = "x86_64")]
enum AmxValues {
    Bf16(Aligned<u16>),
    Int8 { q: Aligned<i8>, scales: Vec<f32>, groups: usize },
}

/// k per scale of the int8 activations of AMX-INT8 products (four 64-k tile blocks): each
/// group's int32 sums are scaled into f32 accumulators as the group ends. (Outside x86-64 only
/// the tests' reference names it.)
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) const Q8_GROUP: usize = 256;

/// Activations laid out for the tiles (see [`PackedWeight::pack_activations`]).
pub(super) enum Activations {
    /// Pairs of f32.
    F32(Vec<f32>),
    /// Pairs of bf16 in one u32, for `vdpbf16ps`.
    Bf16(Vec<u32>),
    /// Pairs of int16 in one u32 and their scales (block `b`, k-block `kb`, row `i` at
    /// `(b * kblocks + kb) * h + i`), for `vpdpwssd` on int8 weights.
    I16 { pairs: Vec<u32>, scales: Vec<f32> },
}

crate::wide_fn! {
    /// Quantises `src` to int16 with one scale `s = max |src| / 32767` (1 for an all-zero or
    /// non-finite block): `dst[i] = round(src[i] / s)` (ties to even), returning `s`. Vectorised
    /// (the running max in 16 lanes, the rounding and conversion by `to_int`): a scalar `round`
    /// is a libm call, ~30 us a decode product of k = 3072.
    #[cfg(target_arch = "x86_64")]
    fn quantize_i16(src: &[f32], dst: &mut [i16]) -> f32 {
        let max = super::max_abs(src);
        let s = if max > 0.0 && max.is_finite() { max / 32767.0 } else { 1.0 };
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = super::to_int((v / s).clamp(-32767.0, 32767.0)) as i16;
        }
        s
    }
}
