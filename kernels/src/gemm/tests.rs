use super::*;
use half::bf16;

fn reference(format: WeightFormat, a: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    reference_on(Kernel::for_product(m, format), format, a, w, m, n, k)
}

/// The activations as `kernel` multiplies them by weights stored as `format`: rounded to
/// bf16, quantised to int8 per row and group of `Q8_GROUP` k with the scale `max |x| / 127` (AMX over
/// int8 weights), or as they are.
fn multiplied(kernel: Kernel, format: WeightFormat, a: &[f32], k: usize) -> Vec<f64> {
    if kernel == Kernel::Amx && format == WeightFormat::Q8 {
        let mut out = Vec::with_capacity(a.len());
        for row in a.chunks(k.max(1)) {
            for group in row.chunks(product::Q8_GROUP) {
                let max = group.iter().fold(0f32, |m, x| m.max(x.abs()));
                let (inv, s) = if max > 0.0 { (127.0 / max, max / 127.0) } else { (0.0, 0.0) };
                out.extend(
                    group.iter().map(|x| (x * inv).round_ties_even().clamp(-127.0, 127.0) as f64 * s as f64),
                );
            }
        }
        return out;
    }
    let round = |x: f32| if kernel.rounds_activations() { bf16::from_f32(x).to_f32() } else { x };
    a.iter().map(|x| round(*x) as f64).collect()
}

/// The f64 product of the values `kernel` multiplies (activations rounded or quantised where
/// it does so: [`multiplied`]).
#[allow(clippy::too_many_arguments)]
fn reference_on(
    kernel: Kernel,
    format: WeightFormat,
    a: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let a = multiplied(kernel, format, a, k);
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|kk| a[i * k + kk] * w[j * k + kk] as f64).sum::<f64>() as f32;
        }
    }
    out
}

/// `W[n, k]` as bf16 panels, int8 panels and bf16 rows used in place, each with the values
/// it stores.
fn every_format(w: &[f32], n: usize, k: usize) -> Vec<(PackedWeight, Vec<f32>)> {
    let mut bytes = Vec::new();
    for x in w {
        bytes.extend(bf16::from_f32(*x).to_bits().to_le_bytes());
    }
    let weights = [
        PackedWeight::pack(&Matrix { data: w, cols: k, transposed: false }, n, k, WeightFormat::Bf16),
        PackedWeight::pack(&Matrix { data: w, cols: k, transposed: false }, n, k, WeightFormat::Q8),
        PackedWeight::from_bf16_rows(std::sync::Arc::new(bytes), 0, n, k),
    ];
    weights
        .into_iter()
        .map(|packed| {
            let mut stored = vec![0f32; n * k];
            for (j, row) in stored.chunks_mut(k).enumerate() {
                packed.row(j, row);
            }
            (packed, stored)
        })
        .collect()
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
            let want = reference(format, &a, &stored, m, n, k);
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
        // A kernel that multiplies f32 activations (the first listed), as decode in place does.
        let kernel = Kernel::available()[0];
        packed.matmul_with(kernel, &a, m, &mut x);
        rows.matmul_with(kernel, &a, m, &mut y);
        // Decode (m <= 4) sums each dot product in another order.
        let worst = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "m {m} n {n} k {k}: {worst}");
        let (mut r1, mut r2) = (vec![0f32; k], vec![0f32; k]);
        packed.row(n - 1, &mut r1);
        rows.row(n - 1, &mut r2);
        assert_eq!(r1, r2);
    }
}

/// The magic-number rounding equals `round_ties_even` then clamp, ties included; NaN gives 0.
#[test]
fn quantize_rounds_half_to_even() {
    let mut v = -130.0f32;
    while v <= 130.0 {
        for x in [v, v + 0.5, v - 1e-4, v + 1e-4] {
            assert_eq!(quantize(x), x.round_ties_even().clamp(-127.0, 127.0) as i8, "{x}");
            assert_eq!(to_int(x * 200.0), (x * 200.0).round_ties_even() as i32, "{x}");
        }
        v += 0.25;
    }
    assert_eq!((quantize(f32::NAN), to_int(f32::NAN)), (0, 0));
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

/// Every kernel this CPU has equals the f64 product of the values it multiplies, on every
/// edge: one row, rows across the 8- and 32-row tiles, odd k, k across AMX's 32-k blocks (in
/// place and with a tail), n not a multiple of 16 or of 32, an odd panel count; bf16 panels,
/// int8 panels and bf16 rows used in place.
#[test]
fn every_kernel_equals_the_scalar_reference_on_edge_shapes() {
    let shapes = [
        (1, 16, 1),
        (1, 37, 65),
        (2, 48, 32),
        (4, 33, 33),
        (5, 40, 70),
        (8, 16, 64),
        (31, 17, 31),
        (32, 32, 32),
        (33, 50, 96),
        (40, 80, 100),
        (67, 47, 129),
        (40, 48, 600),
    ];
    for &(m, n, k) in &shapes {
        let (a, w) = (data(m * k, 5 + m as u32), data(n * k, 9 + k as u32));
        for (packed, stored) in every_format(&w, n, k) {
            for &kernel in Kernel::available() {
                let want = reference_on(kernel, packed.format(), &a, &stored, m, n, k);
                let mut got = vec![f32::NAN; m * n];
                packed.matmul_with(kernel, &a, m, &mut got);
                let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
                // Decode over bf16 rows in place multiplies f32 activations whatever the kernel.
                let in_place_decode = m <= 4 && packed.rows_bytes().is_some();
                let tol = if kernel.rounds_activations() && in_place_decode { 2e-2 } else { 1e-4 };
                assert!(worst < tol * (k as f32).sqrt(), "{packed:?} {kernel:?} m {m} n {n} k {k}: {worst}");
            }
        }
    }
}

/// `cargo test -p zoo-kernels --release -- --ignored kernel_timings --nocapture`: one prefill
/// shape on every kernel (a quick look; `cargo bench --bench gemm` is the benchmark).
#[test]
#[ignore]
fn kernel_timings() {
    let (m, n, k) = (267, 16384, 2048);
    let (a, w) = (data(m * k, 1), data(n * k, 2));
    for format in [WeightFormat::Bf16, WeightFormat::Q8] {
        let packed = PackedWeight::pack(&Matrix { data: &w, cols: k, transposed: false }, n, k, format);
        let mut out = vec![0f32; m * n];
        for &kernel in Kernel::available() {
            if matches!(kernel, Kernel::Portable | Kernel::Avx2) {
                continue;
            }
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = std::time::Instant::now();
                packed.matmul_with(kernel, &a, m, &mut out);
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{format:?} {kernel:?}: {:.1} ms, {:.0} GFLOP/s",
                best * 1e3,
                2.0 * (m * n * k) as f64 / best / 1e9
            );
        }
    }
}

/// The vector rounding of activations equals `bf16::from_f32` (nearest even) on every length
/// around the 16- and 32-lane edges, ties included.
#[cfg(target_arch = "x86_64")]
#[test]
fn vector_rounding_equals_the_scalar_one() {
    if !std::arch::is_x86_feature_detected!("avx512bf16") {
        return;
    }
    for len in [0, 1, 15, 16, 17, 31, 32, 33, 47, 64, 77] {
        let mut src = data(len, 5 + len as u32);
        // Exact ties (low 16 bits 0x8000) round to even both ways.
        for (i, v) in src.iter_mut().enumerate().step_by(3) {
            *v = f32::from_bits((v.to_bits() & 0xffff_0000) | 0x8000 | ((i as u32 & 1) << 16));
        }
        let mut got = vec![0xffffu16; len + 3];
        // SAFETY: the feature was detected; `got` is longer than `src`.
        unsafe { x86::round_bf16(&src, &mut got) };
        for (i, s) in src.iter().enumerate() {
            assert_eq!(got[i], bf16::from_f32(*s).to_bits(), "len {len}, element {i}");
        }
        assert!(got[len..].iter().all(|&g| g == 0xffff), "len {len}: wrote past the end");
    }
}

/// Products side by side in one buffer (`matmul_many`, `matmul_into`) equal each product on
/// its own, bit for bit: bf16 panels, int8 and bf16 rows of different widths, decode and
/// prefill row counts; columns outside a product are left alone.
#[test]
fn products_side_by_side_equal_each_alone() {
    let k = 70;
    let mut bytes = Vec::new();
    let w3 = data(24 * k, 23);
    for x in &w3 {
        bytes.extend(bf16::from_f32(*x).to_bits().to_le_bytes());
    }
    let weights = [
        PackedWeight::pack(
            &Matrix { data: &data(72 * k, 21), cols: k, transposed: false },
            72,
            k,
            WeightFormat::Bf16,
        ),
        PackedWeight::pack(
            &Matrix { data: &data(17 * k, 22), cols: k, transposed: false },
            17,
            k,
            WeightFormat::Q8,
        ),
        PackedWeight::from_bf16_rows(std::sync::Arc::new(bytes), 0, 24, k),
    ];
    let refs: Vec<(&PackedWeight, Epilogue)> = weights.iter().map(|w| (w, Epilogue::default())).collect();
    let width: usize = weights.iter().map(|w| w.n()).sum();
    // 40 and 70 rows: on AMX whole 32-row blocks are stored from the tiles (the bias their
    // start), the rest through the block's scratch.
    for m in [1, 3, 5, 40, 70] {
        let a = data(m * k, 31 + m as u32);
        let mut many = vec![0f32; m * width];
        PackedWeight::matmul_many(&refs, &a, m, &mut many);
        let mut at = 0;
        for w in &weights {
            let mut alone = vec![0f32; m * w.n()];
            w.matmul(&a, m, &mut alone);
            for i in 0..m {
                assert_eq!(
                    &many[i * width + at..i * width + at + w.n()],
                    &alone[i * w.n()..(i + 1) * w.n()],
                    "m {m}"
                );
            }
            let mut into = vec![-1f32; m * width];
            w.matmul_into(&a, m, &mut into[at..], width);
            for i in 0..m {
                assert_eq!(&into[i * width + at..i * width + at + w.n()], &alone[i * w.n()..(i + 1) * w.n()]);
                assert!(into[i * width..i * width + at].iter().all(|&x| x == -1.0), "left alone");
            }
            at += w.n();
        }
        // With epilogues (a bias on two of them, x * sigmoid on all), into a fresh buffer: the
        // plain products, then bias and activation as a scalar loop computes them.
        let biases: Vec<Vec<f32>> = weights.iter().map(|w| data(w.n(), 7 + w.n() as u32)).collect();
        let (a_s, b_s) = (1.6, 0.07);
        let with: Vec<(&PackedWeight, Epilogue)> = weights
            .iter()
            .zip(&biases)
            .enumerate()
            .map(|(i, (w, b))| {
                (w, Epilogue { bias: (i != 1).then_some(&b[..]), x_sigmoid: Some((a_s, b_s)) })
            })
            .collect();
        let fresh = PackedWeight::matmul_many_new(&with, &a, m);
        let mut at = 0;
        for (i, (w, b)) in weights.iter().zip(&biases).enumerate() {
            for r in 0..m {
                for j in 0..w.n() {
                    let mut x = many[r * width + at + j];
                    if i != 1 {
                        x += b[j];
                    }
                    let want = x / (1.0 + crate::host_ops::exp(-x * (a_s + b_s * x * x)));
                    let got = fresh[r * width + at + j];
                    assert!(
                        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "m {m}, weight {i}: {got} vs {want}"
                    );
                }
            }
            at += w.n();
        }
    }
}

/// On AMX over int8 weights (activations quantised per row and group of 256 k), a NaN or an
/// infinity in a row makes that row's outputs NaN and leaves the other rows as they were; an
/// all-zero row gives zeros.
#[test]
fn int8_activations_keep_non_finite_rows_apart() {
    if !Kernel::available().contains(&Kernel::Amx) {
        return;
    }
    let (m, n, k) = (40, 32, 300);
    let w = data(n * k, 8);
    let packed = PackedWeight::pack(&Matrix { data: &w, cols: k, transposed: false }, n, k, WeightFormat::Q8);
    let mut a = data(m * k, 9);
    let mut clean = vec![0f32; m * n];
    packed.matmul_with(Kernel::Amx, &a, m, &mut clean);
    a[3 * k + 270] = f32::NAN;
    a[5 * k + 1] = f32::INFINITY;
    a[7 * k..8 * k].fill(0.0);
    let mut got = vec![0f32; m * n];
    packed.matmul_with(Kernel::Amx, &a, m, &mut got);
    for i in 0..m {
        let row = &got[i * n..(i + 1) * n];
        match i {
            3 | 5 => assert!(row.iter().all(|x| x.is_nan()), "row {i}: {row:?}"),
            7 => assert!(row.iter().all(|&x| x == 0.0), "row {i}: {row:?}"),
            _ => assert_eq!(row, &clean[i * n..(i + 1) * n], "row {i}"),
        }
    }
}

/// AMX products whose activations exceed L2 run their reduction in chunks (the accumulators
/// kept between chunks) or in smaller row blocks: with a partial last block of k, a partial row block and an odd panel
/// count, each weight format equals the reference.
#[test]
fn chunked_reductions_equal_the_scalar_reference() {
    if !Kernel::available().contains(&Kernel::Amx) {
        return;
    }
    // 33 rows are two row blocks: 4 KiB of bf16 activations per block of 32 k, so k = 16400
    // (513 blocks, the last half full) is over the 2 MiB that chunks.
    // And 300 rows of k = 3000 (1.9 MiB): split into two row blocks that fit in L2 instead.
    // Int8 activations are half the bytes: 300 rows of k = 20000 (6.1 MiB) chunk.
    for (m, n, k) in [(33, 40, 16400), (300, 40, 3000), (300, 40, 20000)] {
        let (a, w) = (data(m * k, 3), data(n * k, 4));
        for (packed, stored) in every_format(&w, n, k) {
            if k == 20000 && packed.format() != WeightFormat::Q8 {
                continue;
            }
            let want = reference_on(Kernel::Amx, packed.format(), &a, &stored, m, n, k);
            let mut got = vec![f32::NAN; m * n];
            packed.matmul_with(Kernel::Amx, &a, m, &mut got);
            let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4 * (k as f32).sqrt(), "{m} x {k}, {packed:?}: {worst}");
        }
    }
}

/// The AVX-512 layouts of the bf16 products equal their scalar definitions on edge shapes:
/// k below and not a multiple of 16, odd k, fewer than 16 columns, odd row counts; nothing
/// past the written extent is touched.
#[cfg(target_arch = "x86_64")]
#[test]
fn vector_layouts_equal_their_definitions() {
    if crate::wide::level() < 2 {
        return;
    }
    let val = |i: usize| (i as u16).wrapping_mul(40_503) | 1;
    for (rows, k, cols) in [(1, 1, 1), (3, 5, 16), (32, 17, 7), (31, 33, 16), (2, 48, 15)] {
        // rows_from_columns: dst[i * ld + c] = src[c * cs + i].
        let (cs, ld) = (rows + 3, k + 5);
        let src: Vec<u16> = (0..k * cs).map(val).collect();
        let mut dst = vec![0xEEEEu16; rows * ld];
        // SAFETY: level 2 has AVX512F/BW/VL; `src` holds k rows of `cs >= rows`.
        unsafe { x86::rows_from_columns(src.as_ptr(), cs, rows, k, dst.as_mut_ptr(), ld) };
        for i in 0..rows {
            for c in 0..ld {
                let want = if c < k { src[c * cs + i] } else { 0xEEEE };
                assert_eq!(dst[i * ld + c], want, "rows_from_columns {rows}x{k}: ({i}, {c})");
            }
        }
        // panel_from_rows / panel_from_columns: dst[(t * 16 + c) * 2 + e] = W[2t + e][c], zeros
        // past k and cols; one pair more than k needs, and a guard after.
        let pairs = k.div_ceil(2) + 1;
        let want = |w: &dyn Fn(usize, usize) -> u16| -> Vec<u16> {
            let mut v: Vec<u16> = (0..pairs * 32)
                .map(|i| {
                    let (t, c, e) = (i / 32, (i / 2) % 16, i % 2);
                    if c < cols && 2 * t + e < k { w(2 * t + e, c) } else { 0 }
                })
                .collect();
            v.push(0xEEEE);
            v
        };
        let rs = cols + 2;
        let by_rows: Vec<u16> = (0..k * rs).map(val).collect();
        let mut got = vec![0xEEEEu16; pairs * 32 + 1];
        // SAFETY: as above; `by_rows` holds k rows of `rs >= cols`.
        unsafe { x86::panel_from_rows(by_rows.as_ptr(), rs, cols, k, got.as_mut_ptr(), pairs) };
        assert_eq!(got, want(&|r, c| by_rows[r * rs + c]), "panel_from_rows {k}x{cols}");
        let cs = k + 3;
        let by_cols: Vec<u16> = (0..cols * cs).map(val).collect();
        let mut got = vec![0xEEEEu16; pairs * 32 + 1];
        // SAFETY: as above; `by_cols` holds `cols` columns of `cs >= k`.
        unsafe { x86::panel_from_columns(by_cols.as_ptr(), cs, cols, k, got.as_mut_ptr(), pairs) };
        assert_eq!(got, want(&|r, c| by_cols[c * cs + r]), "panel_from_columns {k}x{cols}");
    }
}

/// Every source reads its rows as its elements: f32, bf16 and f16 bytes and a transposed
/// matrix.
#[test]
fn sources_read_rows_as_their_elements() {
    let (n, k) = (5, 7);
    let w = data(n * k, 11);
    let t: Vec<f32> = (0..n * k).map(|i| w[(i % n) * k + i / n]).collect(); // W^T [k, n]
    let f32_bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    let bf16_bytes: Vec<u8> = w.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect();
    let f16_bytes: Vec<u8> = w.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    let raw = |bytes: &[u8], dtype| -> Vec<f32> {
        let m = RawMatrix { bytes, dtype, cols: k };
        let mut out = vec![0f32; 3 * k];
        m.rows_f32(1, k, &mut out);
        assert!(out.iter().enumerate().all(|(i, v)| *v == m.get(1 + i / k, i % k)));
        out
    };
    assert_eq!(raw(&f32_bytes, RawDtype::F32), w[k..4 * k]);
    raw(&bf16_bytes, RawDtype::Bf16);
    raw(&f16_bytes, RawDtype::F16);
    for (src, transposed) in [(&w, false), (&t, true)] {
        let m = Matrix { data: &src[..], cols: if transposed { n } else { k }, transposed };
        let mut out = vec![0f32; 3 * k];
        m.rows_f32(1, k, &mut out);
        assert_eq!(out, w[k..4 * k], "transposed: {transposed}");
    }
}
