//! The AVX-512 tiles (FMA on widened weights, and `vdpbf16ps`).

use super::{MR, NR, PANEL};
use std::arch::x86_64::*;

/// Calls the monomorphic tile `$tile::<R, P>` for `h` rows (1..=8) and `np` panels (1 or 2).
macro_rules! by_shape {
    ($tile:ident, $h:expr, $np:expr, ($($arg:expr),*)) => {
        match ($h, $np) {
            (8, 2) => $tile::<8, 2>($($arg),*),
            (7, 2) => $tile::<7, 2>($($arg),*),
            (6, 2) => $tile::<6, 2>($($arg),*),
            (5, 2) => $tile::<5, 2>($($arg),*),
            (4, 2) => $tile::<4, 2>($($arg),*),
            (3, 2) => $tile::<3, 2>($($arg),*),
            (2, 2) => $tile::<2, 2>($($arg),*),
            (1, 2) => $tile::<1, 2>($($arg),*),
            (8, _) => $tile::<8, 1>($($arg),*),
            (7, _) => $tile::<7, 1>($($arg),*),
            (6, _) => $tile::<6, 1>($($arg),*),
            (5, _) => $tile::<5, 1>($($arg),*),
            (4, _) => $tile::<4, 1>($($arg),*),
            (3, _) => $tile::<3, 1>($($arg),*),
            (2, _) => $tile::<2, 1>($($arg),*),
            _ => $tile::<1, 1>($($arg),*),
        }
    };
}

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
            unsafe { by_shape!($tile, h, np, (a, w, panel_len, kp2, acc)) }
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
                        if R <= 2 && (size_of::<$wt>() == 2 || t % 2 == 0) {
                            let at = w.wrapping_add(j * panel_len + t * 32) as *const i8;
                            decode_prefetch(at, panel_len * size_of::<$wt>(), P);
                        }
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
                        // Decode: as in `vnni_tile`, the line `DECODE_AHEAD` bytes on, once per
                        // 64-byte line (a pair of k of 16 columns is 64 bytes of bf16, 32 of int8).
                        if R <= 2 && (size_of::<$wt>() == 2 || t % 2 == 0) {
                            let at = w.wrapping_add(j * panel_len + t * 32) as *const i8;
                            decode_prefetch(at, panel_len * size_of::<$wt>(), P);
                        }
                        (we[j], wo[j]) = $load(w.add(j * panel_len + t * 32));
                    }
                    for i in 0..R {
                        let a0 = _mm512_set1_ps(*a.add((t * R + i) * 2));
                        let a1 = _mm512_set1_ps(*a.add((t * R + i) * 2 + 1));
                        for j in 0..P {
                            if R * P >= 12 {
                                // Enough chains already: one accumulator a column block, so
                                // that they and the weights fit the 32 registers (even and
                                // odd apart, 8 x 2 x 2 do not). SigLIP-B/16's fc1 at batch 8
                                // on the FMA tiles (bf16): 22.6-23.3 -> 21.0-21.8 ms.
                                even[c][i][j] =
                                    _mm512_fmadd_ps(a1, wo[j], _mm512_fmadd_ps(a0, we[j], even[c][i][j]));
                            } else {
                                even[c][i][j] = _mm512_fmadd_ps(a0, we[j], even[c][i][j]);
                                odd[c][i][j] = _mm512_fmadd_ps(a1, wo[j], odd[c][i][j]);
                            }
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
                    // Rows are short streams (a few KiB each): ask for the next rows' line at
                    // this k while these are read, once per line, and the line of the rows
                    // after those into L2 (more lines in flight: PaliGemma-3B bf16 decode 5.42
                    // -> 5.73 tokens/s alternating). Hints: past the end of the weights they
                    // fetch nothing and cannot fault.
                    if kk % 32 == 0 {
                        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(((j + J + o) * k + kk) * 2) as *const i8);
                        _mm_prefetch::<_MM_HINT_T1>(
                            w.wrapping_add(((j + 2 * J + o) * k + kk) * 2) as *const i8
                        );
                    }
                    if o < nj {
                        let p = w.add(((j + o) * k + kk) * 2) as *const i16;
                        let bits = _mm256_maskz_loadu_epi16(mask, p);
                        let wv = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)));
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

/// Lays out pairs `0..16 * blocks` of up to 16 bf16 rows as one panel's pairs: `dst[t * 16 + c]`
/// (a u32, two bf16) = pair `t` of row `c` (rows from `cols` on are zeros). One 16 x 16
/// transpose of 32-bit pairs per block, in registers.
///
/// # Safety
/// AVX-512F present; row `c < cols` has `64 * blocks` readable bytes at `rows + c * row_bytes`;
/// `dst` has `256 * blocks` writable u32.
#[target_feature(enable = "avx512f")]
pub unsafe fn stage_pairs(rows: *const u8, row_bytes: usize, cols: usize, blocks: usize, dst: *mut u32) {
    unsafe {
        for b in 0..blocks {
            let mut r = [_mm512_setzero_si512(); 16];
            for (c, x) in r.iter_mut().enumerate().take(cols) {
                _mm_prefetch::<_MM_HINT_T0>(
                    rows.wrapping_add(c * row_bytes + (b + STAGE_AHEAD) * 64) as *const i8
                );
                *x = _mm512_loadu_si512(rows.add(c * row_bytes + b * 64) as *const _);
            }
            // 32-bit interleave of row pairs, then 64-bit of those: register 4j + c holds, in
            // lane L, pair 4L + c of rows 4j..4j + 4.
            let mut a = [_mm512_setzero_si512(); 16];
            for i in 0..8 {
                a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
                a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
            }
            let mut q = [_mm512_setzero_si512(); 16];
            for j in 0..4 {
                q[4 * j] = _mm512_unpacklo_epi64(a[4 * j], a[4 * j + 2]);
                q[4 * j + 1] = _mm512_unpackhi_epi64(a[4 * j], a[4 * j + 2]);
                q[4 * j + 2] = _mm512_unpacklo_epi64(a[4 * j + 1], a[4 * j + 3]);
                q[4 * j + 3] = _mm512_unpackhi_epi64(a[4 * j + 1], a[4 * j + 3]);
            }
            // Lane L of the four row groups side by side: pair 4L + c of all 16 rows.
            for c in 0..4 {
                let s0 = _mm512_shuffle_i32x4::<0x44>(q[c], q[4 + c]);
                let s1 = _mm512_shuffle_i32x4::<0xEE>(q[c], q[4 + c]);
                let s2 = _mm512_shuffle_i32x4::<0x44>(q[8 + c], q[12 + c]);
                let s3 = _mm512_shuffle_i32x4::<0xEE>(q[8 + c], q[12 + c]);
                let out = [
                    _mm512_shuffle_i32x4::<0x88>(s0, s2),
                    _mm512_shuffle_i32x4::<0xDD>(s0, s2),
                    _mm512_shuffle_i32x4::<0x88>(s1, s3),
                    _mm512_shuffle_i32x4::<0xDD>(s1, s3),
                ];
                for (l, v) in out.into_iter().enumerate() {
                    _mm512_storeu_si512(dst.add((b * 16 + 4 * l + c) * 16) as *mut _, v);
                }
            }
        }
    }
}

/// `dst[i] = bf16(src[i])` rounded to nearest even (`vcvtne2ps2bf16`, 32 at a time; subnormal
/// inputs become zero, as the instruction treats them).
///
/// # Safety
/// The CPU has AVX512F and AVX512_BF16; `dst.len() >= src.len()`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn round_bf16(src: &[f32], dst: &mut [u16]) {
    debug_assert!(dst.len() >= src.len());
    // SAFETY: as the caller vouches.
    unsafe { round_bf16_to(src, dst.as_mut_ptr()) }
}

/// [`round_bf16`] into memory that may not be written yet.
///
/// # Safety
/// The CPU has AVX512F and AVX512_BF16; `dst` is valid for `src.len()` writes.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn round_bf16_to(src: &[f32], dst: *mut u16) {
    let n = src.len();
    let (s, d) = (src.as_ptr(), dst);
    let mut i = 0;
    unsafe {
        while i + 32 <= n {
            let lo = _mm512_loadu_ps(s.add(i));
            let hi = _mm512_loadu_ps(s.add(i + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(d.add(i) as *mut _, v);
            i += 32;
        }
        if i < n {
            let rest = n - i;
            let mask = if rest >= 16 { 0xffff } else { (1u16 << rest) - 1 };
            let lo = _mm512_maskz_loadu_ps(mask, s.add(i));
            let mask_hi = if rest > 16 { ((1u32 << (rest - 16)) - 1) as u16 } else { 0 };
            let hi = _mm512_maskz_loadu_ps(mask_hi, s.add(i + 16.min(rest)));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            let keep = if rest >= 32 { u32::MAX } else { (1u32 << rest) - 1 };
            _mm512_mask_storeu_epi16(d.add(i) as *mut _, keep, v);
        }
    }
}

/// Int8 panel rows in pairs (64 bytes: two pair rows of 16 outputs x 2 k) as AMX-INT8 weight
/// tile rows (16 outputs x 4 k): output `c`'s two k of the first pair row, then its two of the
/// second. `lines` rows of 64 bytes from `src` to `dst`, one `vpermw` each.
///
/// # Safety
/// The CPU has AVX512F and AVX512BW; `src` and `dst` are valid for `lines * 64` bytes.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn pairs_to_quads(src: *const i8, dst: *mut i8, lines: usize) {
    // 16-bit lane 2c takes lane c (the first row's output c), lane 2c + 1 lane 16 + c.
    let mut index = [0i16; 32];
    for c in 0..16 {
        index[2 * c] = c as i16;
        index[2 * c + 1] = 16 + c as i16;
    }
    // SAFETY: as the caller vouches; unaligned loads and stores.
    unsafe {
        let index = _mm512_loadu_si512(index.as_ptr() as *const _);
        for l in 0..lines {
            let v = _mm512_loadu_si512(src.add(l * 64) as *const _);
            _mm512_storeu_si512(dst.add(l * 64) as *mut _, _mm512_permutexvar_epi16(index, v));
        }
    }
}

/// `acc[i][j] = (first ? 0 : acc[i][j]) + ints[i][j] * scales[i]` over a 32 x 32 block (the
/// int32 tile sums of one group of k; each row's activation scale of that group), two vectors
/// a row. (Plain loops let the compiler vectorise across rows with gathers: 0.4x as fast.)
///
/// # Safety
/// The CPU has AVX512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn add_scaled_block(acc: &mut [f32; 1024], ints: &[i32; 1024], scales: &[f32; 32], first: bool) {
    let (a, x) = (acc.as_mut_ptr(), ints.as_ptr());
    for (i, s) in scales.iter().enumerate() {
        let s = _mm512_set1_ps(*s);
        for at in [i * 32, i * 32 + 16] {
            // SAFETY: `at + 16 <= 1024` in both arrays.
            unsafe {
                let v = _mm512_cvtepi32_ps(_mm512_loadu_si512(x.add(at) as *const _));
                let base = if first { _mm512_setzero_ps() } else { _mm512_loadu_ps(a.add(at)) };
                _mm512_storeu_ps(a.add(at), _mm512_fmadd_ps(v, s, base));
            }
        }
    }
}

/// The last group of an int8 product's 32 x 32 block into the output: row `i < live`, column
/// `j < cols` of `out` (rows `ldc` apart) is `(acc[i][j] + ints[i][j] * scales[i]) *
/// w_scale[j] + bias[j]` (`acc` 0 when `None`, no bias when `bias` is null).
///
/// # Safety
/// The CPU has AVX512F; `out` is valid for those writes, `w_scale` (and `bias`, unless null)
/// for `cols <= 32` reads.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn store_scaled_block(
    out: *mut f32,
    ldc: usize,
    live: usize,
    cols: usize,
    acc: Option<&[f32; 1024]>,
    ints: &[i32; 1024],
    scales: &[f32; 32],
    w_scale: *const f32,
    bias: *const f32,
) {
    let mask = |from: usize| -> u16 {
        let c = cols.saturating_sub(from).min(16);
        if c == 16 { u16::MAX } else { (1u16 << c) - 1 }
    };
    let masks = [mask(0), mask(16)];
    // SAFETY: masked loads read only the `cols` valid columns (the second half's address is
    // formed with `wrapping_add`: past a bias of fewer than 32 columns it is never read); the
    // caller vouches for the rest.
    unsafe {
        let ws = [
            _mm512_maskz_loadu_ps(masks[0], w_scale),
            _mm512_maskz_loadu_ps(masks[1], w_scale.wrapping_add(16)),
        ];
        let b = if bias.is_null() {
            [_mm512_setzero_ps(); 2]
        } else {
            [_mm512_maskz_loadu_ps(masks[0], bias), _mm512_maskz_loadu_ps(masks[1], bias.wrapping_add(16))]
        };
        for i in 0..live {
            let s = _mm512_set1_ps(scales[i]);
            for h in 0..2 {
                if masks[h] == 0 {
                    continue;
                }
                let at = i * 32 + h * 16;
                let v = _mm512_cvtepi32_ps(_mm512_loadu_si512(ints.as_ptr().add(at) as *const _));
                let base = match acc {
                    Some(acc) => _mm512_loadu_ps(acc.as_ptr().add(at)),
                    None => _mm512_setzero_ps(),
                };
                let sum = _mm512_fmadd_ps(v, s, base);
                let y = _mm512_fmadd_ps(sum, ws[h], b[h]);
                _mm512_mask_storeu_ps(out.add(i * ldc + h * 16), masks[h], y);
            }
        }
    }
}

/// Pairs of k per block of the int16 activations: each block has its own scale per row, and
/// its int32 sums (at most 2 * 128 * 32767 * 127 < 2^31) are converted to f32 at its end.
pub const I16_BLOCK: usize = 128;

/// `vpdpwssd` tiles (AVX512-VNNI) over int8 weights widened to int16 and activations quantised
/// to int16 per row and block of [`I16_BLOCK`] pairs: exact integer sums within a block, f32
/// across blocks.
///
/// # Safety
/// The CPU has AVX512-VNNI and BW; `a` holds a packed block of `h` rows of int16 pairs, `s`
/// its scales (`kp2.div_ceil(I16_BLOCK) * h`), `w` `np` int8 panels `panel_len` apart.
#[allow(clippy::too_many_arguments)]
pub unsafe fn vnni_q8(
    a: *const u32,
    s: *const f32,
    h: usize,
    w: *const i8,
    panel_len: usize,
    kp2: usize,
    np: usize,
    acc: &mut [[f32; PANEL * NR]; MR],
) {
    unsafe { by_shape!(vnni_tile, h, np, (a, s, w, panel_len, kp2, acc)) }
}

/// Bytes of a weight panel prefetched ahead of the decode tiles (a hint: an address past the
/// end of the weights fetches nothing and cannot fault). Few rows read the panels faster than
/// the hardware prefetcher brings them: Gemma-100M bf16 decode 165 -> 205 tokens/s with it on
/// the FMA tiles (32 pairs ahead; 4-16 pairs were slower, 64 no faster).
const DECODE_AHEAD: usize = 2048;

/// Blocks of 64 bytes a row that [`stage_pairs`] asks for ahead of its loads (a hint). Its 16
/// rows are 16 short streams (a row of Gemma-2B's up projection is one 4 KiB page), which the
/// hardware prefetcher barely starts on: PaliGemma-3B bf16 prefill 0.94 -> 0.89 s with 4
/// (alternating runs; 8 gained less, 12 nothing).
const STAGE_AHEAD: usize = 4;

/// Decode's prefetches at `at` (a line of one of a tile's `p` panels, `panel_bytes` apart):
/// the line [`DECODE_AHEAD`] bytes on into L1, and into L2 either, when the tile's panels span
/// at most [`DECODE_NEXT_BYTES`], the same line of the panel `p` on (the next call's), or else
/// the line [`DECODE_FAR`] bytes on. That keeps twice the streams in flight: `cargo bench
/// --bench gemm -- "from memory"`, Gemma-2B's projections with their weights in memory (2
/// cores, alternating runs): q8 6% (q/o), 12% (up) and 17% (down) faster, bf16 12% (up).
/// Hints only: an address past the weights fetches nothing and cannot fault.
#[inline(always)]
fn decode_prefetch(at: *const i8, panel_bytes: usize, p: usize) {
    // SAFETY: prefetches neither fault nor change memory, whatever the address.
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(DECODE_AHEAD));
        if p * panel_bytes <= DECODE_NEXT_BYTES {
            _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(p * panel_bytes));
        } else {
            _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(DECODE_FAR));
        }
    }
}

/// The largest span of a decode tile's panels whose next panels are prefetched into L2.
const DECODE_NEXT_BYTES: usize = 512 * 1024;

/// Bytes ahead in its own panel that a decode tile whose panels span more than
/// [`DECODE_NEXT_BYTES`] asks for into L2 (a next call 1 MiB on was 5% slower than none, as
/// the lines wait too long in L2). bf16's down projection of Gemma-2B from memory (1 MiB a
/// tile; 3 alternating runs): 25.8 -> 30.1 GB/s with 8 KiB (4 KiB: 29.4).
const DECODE_FAR: usize = 8192;

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_tile<const R: usize, const P: usize>(
    a: *const u32,
    s: *const f32,
    w: *const i8,
    panel_len: usize,
    kp2: usize,
    out: &mut [[f32; PANEL * NR]; MR],
) {
    unsafe {
        let mut total = [[_mm512_setzero_ps(); P]; R];
        let mut t0 = 0;
        let mut kb = 0;
        while t0 < kp2 {
            let t1 = (t0 + I16_BLOCK).min(kp2);
            let mut sum = [[_mm512_setzero_si512(); P]; R];
            for t in t0..t1 {
                for j in 0..P {
                    // Few rows (decode) read the panels faster than the hardware prefetcher
                    // brings them: ask for the line `DECODE_AHEAD` bytes on, once per line.
                    if R <= 2 && t % 2 == 0 {
                        decode_prefetch(w.wrapping_add(j * panel_len + t * 32), panel_len, P);
                    }
                    // 16 columns x 2 k of int8, sign-extended to int16 pairs.
                    let wv = _mm512_cvtepi8_epi16(_mm256_loadu_si256(
                        w.add(j * panel_len + t * 32) as *const __m256i
                    ));
                    for i in 0..R {
                        let av = _mm512_set1_epi32(*a.add(t * R + i) as i32);
                        sum[i][j] = _mm512_dpwssd_epi32(sum[i][j], av, wv);
                    }
                }
            }
            for i in 0..R {
                let scale = _mm512_set1_ps(*s.add(kb * R + i));
                for j in 0..P {
                    total[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[i][j]), scale, total[i][j]);
                }
            }
            t0 = t1;
            kb += 1;
        }
        for i in 0..R {
            for j in 0..P {
                _mm512_storeu_ps(out[i].as_mut_ptr().add(j * PANEL), total[i][j]);
            }
        }
    }
}

/// Whether the layout kernels below may read a matrix whose other axis is `stride` elements
/// apart: their gathers index 16 of them with 32-bit offsets.
pub fn gather_stride_ok(stride: usize) -> bool {
    stride.checked_mul(16).is_some_and(|s| s <= i32::MAX as usize)
}

/// `(0, s, 2s, ..., 15s)`: the gathers' offsets for stride `s` ([`gather_stride_ok`]).
#[target_feature(enable = "avx512f")]
fn offsets(s: usize) -> __m512i {
    let s = s as i32;
    _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(s),
    )
}

/// Lanes `0..n` of 16 (all for `n >= 16`).
fn lanes(n: usize) -> u16 {
    if n >= 16 { u16::MAX } else { (1u16 << n) - 1 }
}

/// Rows of a transposed matrix laid out for the tiles: `dst[i * ld + c] = src[c * cs + i]`
/// for `i < rows`, `c < k` (element `i` of each of `k` source rows `cs` apart; a bf16 matrix
/// read through its transpose, as the gradient of a weight reads the activations). Pairs of
/// rows come from one 32-bit gather of 16 source rows, split into the two rows' 16 values.
///
/// # Safety
/// AVX512F/BW/VL; `src` is readable at `c * cs + i` for those `i, c`; `dst` writable at
/// `i * ld + c`; [`gather_stride_ok`]`(cs)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn rows_from_columns(src: *const u16, cs: usize, rows: usize, k: usize, dst: *mut u16, ld: usize) {
    let idx = offsets(cs);
    let pairs = rows / 2;
    let mut c = 0;
    // SAFETY (all blocks): the gathers read lanes `j < k - c` at `(c + j) * cs + i` and
    // `+ i + 1` (both rows `< rows`), the stores write `dst` rows `i`, `i + 1` at `c..`.
    unsafe {
        while c < k {
            let mask = lanes(k - c);
            for p in 0..pairs {
                let i = 2 * p;
                let base = src.add(c * cs + i) as *const i32;
                let v = _mm512_mask_i32gather_epi32::<2>(_mm512_setzero_si512(), mask, idx, base);
                _mm256_mask_storeu_epi16(dst.add(i * ld + c) as *mut _, mask, _mm512_cvtepi32_epi16(v));
                let hi = _mm512_srli_epi32::<16>(v);
                _mm256_mask_storeu_epi16(
                    dst.add((i + 1) * ld + c) as *mut _,
                    mask,
                    _mm512_cvtepi32_epi16(hi),
                );
            }
            c += 16;
        }
        if rows % 2 == 1 {
            let i = rows - 1;
            for c in 0..k {
                *dst.add(i * ld + c) = *src.add(c * cs + i);
            }
        }
    }
}

/// One AMX weight panel of 16 columns from a matrix whose rows are contiguous: the panel's
/// pair `t` holds, for each column `c < cols`, rows `2t` and `2t + 1` side by side
/// (`dst[(t * 16 + c) * 2 + e] = src[(2t + e) * rs + c]`), zeros past `k` rows and `cols`
/// columns; `pairs` pairs are written (at least `k / 2` rounded up).
///
/// # Safety
/// AVX512F/BW/VL; `src` readable at `r * rs + c` for `r < k`, `c < cols <= 16`; `dst` writable
/// for `pairs * 32` elements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn panel_from_rows(
    src: *const u16,
    rs: usize,
    cols: usize,
    k: usize,
    dst: *mut u16,
    pairs: usize,
) {
    // Output lane j takes row (j & 1) (the upper half of the pair) at column j / 2.
    let perm = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18,
        2, 17, 1, 16, 0,
    );
    let mask = lanes(cols);
    // SAFETY: rows are read only below `k`, columns only below `cols` (masked loads); each
    // pair writes its 32 elements of `dst`.
    unsafe {
        let row = |r: usize| {
            if r < k {
                _mm256_maskz_loadu_epi16(mask, src.add(r * rs) as *const _)
            } else {
                _mm256_setzero_si256()
            }
        };
        for t in 0..pairs {
            let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(row(2 * t)), row(2 * t + 1));
            _mm512_storeu_si512(dst.add(t * 32) as *mut _, _mm512_permutexvar_epi16(perm, v));
        }
    }
}

/// One AMX weight panel of 16 columns from a matrix whose columns are contiguous (a transposed
/// view: column `c` at `src + c * cs`), as [`panel_from_rows`] lays it out: each pair of a
/// column is one 32-bit element, so pair `t` is one gather across the columns.
///
/// # Safety
/// AVX512F; `src` readable at `c * cs + r` for `c < cols <= 16`, `r < k`; `dst` writable for
/// `pairs * 32` elements; [`gather_stride_ok`]`(cs)`.
#[target_feature(enable = "avx512f")]
pub unsafe fn panel_from_columns(
    src: *const u16,
    cs: usize,
    cols: usize,
    k: usize,
    dst: *mut u16,
    pairs: usize,
) {
    let idx = offsets(cs);
    let mask = lanes(cols);
    let full = (k / 2).min(pairs);
    // SAFETY: pair `t < k / 2` reads rows `2t`, `2t + 1 < k` of columns `< cols`; an odd last
    // row is read alone; each pair writes its 32 elements of `dst`.
    unsafe {
        for t in 0..full {
            let base = src.add(2 * t) as *const i32;
            let v = _mm512_mask_i32gather_epi32::<2>(_mm512_setzero_si512(), mask, idx, base);
            _mm512_storeu_si512(dst.add(t * 32) as *mut _, v);
        }
        for t in full..pairs {
            let d = dst.add(t * 32);
            for c in 0..16 {
                let r = 2 * t;
                *d.add(2 * c) = if c < cols && r < k { *src.add(c * cs + r) } else { 0 };
                *d.add(2 * c + 1) = 0;
            }
        }
    }
}
