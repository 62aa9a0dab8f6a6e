//! The bf16 / int8 weight kernels of `zoo_nn::kernels::gemm` against the hardware bound
//! (`cargo bench --bench gemm`): memory read bandwidth measured here (all cores summing a
//! buffer larger than the caches), then the decode GEMVs (bound: weight bytes / bandwidth) and
//! prefill/encode GEMMs (FLOP/s) of the bench models' shapes, beside Flex's f32 and bf16
//! matmuls on the same shapes; where the CPU has AMX, the tiles' FLOP/s first (the units'
//! peak, and 32 x 32 steps that load their tiles as the products do). The rows "decode from
//! memory" cycle through copies of a weight (1 GiB) so that, as in a model, each product reads
//! its weight from memory; the other rows repeat one weight, which a large L3 may keep. One
//! JSON line per row;
//! `--bandwidth` measures only those bounds; a word keeps only the rows whose name contains it.

use burn::prelude::*;
use rayon::prelude::*;
use zoo_nn::kernels::gemm::{Choice, Kernel, Matrix, PackedWeight, WeightFormat};

mod common;
use common::time;

/// Read bandwidth in bytes/s ([`zoo_nn::kernels::gemm::read_bandwidth`]).
fn read_bandwidth() -> f64 {
    zoo_nn::kernels::gemm::read_bandwidth()
}

fn main() {
    let bandwidth = read_bandwidth();
    println!(
        "{{\"row\":\"read bandwidth\",\"GB/s\":{:.2},\"threads\":{}}}",
        bandwidth / 1e9,
        rayon::current_num_threads()
    );
    // The FLOP bound: the AMX tiles' peak, and what steps that load their tiles reach.
    if let Some([products, with_loads, i8_products, i8_with_loads]) = zoo_nn::kernels::gemm::amx_peak() {
        println!(
            "{{\"row\":\"amx peak\",\"GFLOP/s\":{:.1},\"GFLOP/s with tile loads\":{:.1},\"int8 GOP/s\":{:.1},\"int8 GOP/s with tile loads\":{:.1},\"threads\":{}}}",
            products / 1e9,
            with_loads / 1e9,
            i8_products / 1e9,
            i8_with_loads / 1e9,
            rayon::current_num_threads()
        );
    }
    if std::env::args().any(|a| a == "--bandwidth") {
        return;
    }
    // The kernel each class of product gets on this CPU, and how it was chosen.
    let choice = Choice::get();
    println!("{{\"row\":\"kernel choice\",\"choice\":{:?}}}", choice.to_string());
    // (what, m, n, k): PaliGemma-3B / Gemma-2B decode and prefill rows, SigLIP-B/16 batch 8.
    let shapes = [
        ("gemma-2b mlp up, decode", 1, 16384, 2048),
        ("gemma-2b mlp down, decode", 1, 2048, 16384),
        ("paligemma lm head, decode", 1, 257216, 2048),
        ("gemma-2b mlp up, prefill 267", 267, 16384, 2048),
        ("gemma-2b mlp down, prefill 267", 267, 2048, 16384),
        ("siglip-b16 mlp fc1, batch 8", 8 * 196, 3072, 768),
        ("siglip-b16 mlp fc2, batch 8", 8 * 196, 768, 3072),
        ("siglip-b16 qkv, batch 8", 8 * 196, 2304, 768),
        ("siglip-b16 out_proj, batch 8", 8 * 196, 768, 768),
        ("clip-b32 mlp fc1, batch 8", 8 * 50, 3072, 768),
        ("clip-b32 mlp fc2, batch 8", 8 * 50, 768, 3072),
    ];
    // `cargo bench --bench gemm -- prefill`: only the rows whose name contains "prefill".
    // A second word keeps only the kernels whose name contains it (`-- fc1 Amx`).
    let words: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let filter = words.first().cloned().unwrap_or_default();
    let only = words.get(1).cloned().unwrap_or_default();
    // Decode as a model runs it: each product's weights from memory, not from the caches
    // (copies of the weight cycled through, 1 GiB in all; the rows above repeat one weight,
    // which a large L3 keeps).
    for (what, n, k) in [
        ("gemma-2b q/o proj, decode from memory", 2048, 2048),
        ("gemma-2b mlp up, decode from memory", 16384, 2048),
        ("gemma-2b mlp down, decode from memory", 2048, 16384),
    ] {
        if !what.contains(filter.as_str()) {
            continue;
        }
        let w: Vec<f32> =
            (0..n * k).into_par_iter().map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0).collect();
        let a: Vec<f32> = (0..k).map(|i| ((i * 13 % 29) as f32 - 14.0) / 30.0).collect();
        // Packed bf16 and int8 panels, and a mapped checkpoint's bf16 rows read in place
        // (PaliGemma's bf16 decode).
        let bytes: Vec<u8> = w.iter().flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes()).collect();
        let packed =
            |format| PackedWeight::pack(&Matrix { data: &w, cols: k, transposed: false }, n, k, format);
        let rows = || PackedWeight::from_bf16_rows(std::sync::Arc::new(bytes.clone()), 0, n, k);
        let variants: [(&str, WeightFormat, &dyn Fn() -> PackedWeight); 3] = [
            ("bf16", WeightFormat::Bf16, &|| packed(WeightFormat::Bf16)),
            ("q8", WeightFormat::Q8, &|| packed(WeightFormat::Q8)),
            ("bf16 rows", WeightFormat::Bf16, &rows),
        ];
        for (name, format, make) in variants {
            let one = make();
            let copies = ((1usize << 30) / one.bytes()).max(2);
            let all: Vec<PackedWeight> = (0..copies).map(|_| make()).collect();
            let mut out = vec![0f32; n];
            let kernel = Kernel::for_product(1, format);
            let mut at = 0;
            let s = time(|| {
                all[at % copies].matmul_with(kernel, &a, 1, &mut out);
                at += 1;
            });
            println!(
                "{{\"row\":\"{what}\",\"impl\":\"cpu_gemm {name} {kernel:?}\",\"ms\":{:.3},\"weight GB/s\":{:.2},\"of bandwidth bound\":{:.2}}}",
                s * 1e3,
                one.bytes() as f64 / s / 1e9,
                one.bytes() as f64 / bandwidth / s
            );
        }
    }
    for (what, m, n, k) in shapes.into_iter().filter(|s| s.0.contains(filter.as_str())) {
        let w: Vec<f32> =
            (0..n * k).into_par_iter().map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0).collect();
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 13 % 29) as f32 - 14.0) / 30.0).collect();
        let flop = 2.0 * (m * n * k) as f64;
        for format in [WeightFormat::Bf16, WeightFormat::Q8] {
            let packed = PackedWeight::pack(&Matrix { data: &w, cols: k, transposed: false }, n, k, format);
            let mut out = vec![0f32; m * n];
            for &kernel in Kernel::available() {
                if kernel == Kernel::Portable || (kernel == Kernel::Avx2 && m > 1) {
                    continue; // minutes; the AVX2 loop is timed on decode.
                }
                if !format!("{kernel:?}").contains(only.as_str()) {
                    continue;
                }
                let s = time(|| packed.matmul_with(kernel, &a, m, &mut out));
                let bound = packed.bytes() as f64 / bandwidth;
                println!(
                    "{{\"row\":\"{what}\",\"impl\":\"cpu_gemm {} {kernel:?}\",\"ms\":{:.3},\"GFLOP/s\":{:.1},\"weight GB/s\":{:.2},\"of bandwidth bound\":{:.2}}}",
                    format.name(),
                    s * 1e3,
                    flop / s / 1e9,
                    packed.bytes() as f64 / s / 1e9,
                    bound / s
                );
            }
        }
        // The weight as a checkpoint's bf16 rows, staged per product (how a mapped bf16 file
        // is used).
        let bytes: Vec<u8> = w.iter().flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes()).collect();
        let rows = PackedWeight::from_bf16_rows(std::sync::Arc::new(bytes), 0, n, k);
        let mut out = vec![0f32; m * n];
        let kernel = Kernel::for_product(m, WeightFormat::Bf16);
        let s = time(|| rows.matmul_with(kernel, &a, m, &mut out));
        println!(
            "{{\"row\":\"{what}\",\"impl\":\"cpu_gemm bf16 rows {kernel:?}\",\"ms\":{:.3},\"GFLOP/s\":{:.1}}}",
            s * 1e3,
            flop / s / 1e9
        );
        drop(rows);
        drop(w);
        if n * k > 100_000_000 || !only.is_empty() {
            continue; // Flex would widen 0.5 G weights per call: minutes.
        }
        let device = zoo_nn::device::flex_device().expect("flex");
        for (name, dtype) in
            [("flex f32", burn::tensor::DType::F32), ("flex bf16", burn::tensor::DType::BF16)]
        {
            let x = Tensor::<2>::random([m, k], burn::tensor::Distribution::Default, &device).cast(dtype);
            let wt = Tensor::<2>::random([k, n], burn::tensor::Distribution::Default, &device).cast(dtype);
            let s = time(|| {
                let _ = x.clone().matmul(wt.clone()).slice([0..1, 0..1]).into_data();
            });
            let bytes = (n * k * dtype.size()) as f64;
            println!(
                "{{\"row\":\"{what}\",\"impl\":\"{name}\",\"ms\":{:.3},\"GFLOP/s\":{:.1},\"weight GB/s\":{:.2},\"of bandwidth bound\":{:.2}}}",
                s * 1e3,
                flop / s / 1e9,
                bytes / s / 1e9,
                bytes / bandwidth / s
            );
        }
    }
}
