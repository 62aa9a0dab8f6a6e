//! The portable tile, compiled for AVX2 + FMA or the baseline target.

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
