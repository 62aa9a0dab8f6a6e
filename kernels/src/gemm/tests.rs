use super::*;
use half::bf16;

fn reference(a: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let round = |x: f32| if Kernel::detect() == Kernel::Avx512Bf16 { bf16::from_f32(x).to_f32() } else { x };
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
    for &(m, n, k) in &[(1, 37, 65), (1, 512, 300), (3, 16, 2), (9, 50, 33), (17, 40, 128), (70, 33, 31)] {
        let (a, w) = (data(m * k, 7), data(n * k, 11));
        for format in [WeightFormat::Bf16, WeightFormat::Q8] {
            let packed = PackedWeight::pack(&Matrix { data: &w, cols: k, transposed: false }, n, k, format);
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
        let packed =
            PackedWeight::pack(&Matrix { data: &w, cols: k, transposed: false }, n, k, WeightFormat::Bf16);
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
    let a = PackedWeight::pack(&Matrix { data: &w, cols: k, transposed: false }, n, k, WeightFormat::Bf16);
    let b = PackedWeight::pack(&Matrix { data: &wt, cols: n, transposed: true }, n, k, WeightFormat::Bf16);
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
