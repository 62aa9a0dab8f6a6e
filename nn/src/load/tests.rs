//! Loading round trips (F32/BF16/F16, sharded, BatchNorm statistics) and every bad-input error.

use super::adapters::transpose_bytes;
use super::*;
use crate::layers::norm::{Norm, NormConfig, NormKind};
use crate::testing::{assert_slices_close, device, to_vec};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::DType;
use safetensors::{Dtype, tensor::TensorView};
use std::collections::BTreeMap;
use zoo_kernels::gemm::WeightFormat;

#[derive(Module, Debug)]
struct Block {
    fc: Linear,
    norm: Norm,
}

#[derive(Module, Debug)]
struct Tiny {
    layers: Vec<Block>,
    head: Linear,
}

fn tiny(device: &Device, kind: NormKind) -> Tiny {
    Tiny {
        layers: (0..2)
            .map(|_| Block {
                fc: LinearConfig::new(3, 2).init(device),
                norm: NormConfig::new(kind, 2, 1e-5).init(device),
            })
            .collect(),
        head: LinearConfig::new(2, 4).with_bias(false).init(device),
    }
}

/// Tensors of a checkpoint in PyTorch layout, under HF-style keys `model.layers.N.*`.
fn pytorch_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let vals = |n: usize, s: f32| (0..n).map(|i| (i as f32 - 2.0) * s).collect::<Vec<_>>();
    let mut t = Vec::new();
    for l in 0..2 {
        let s = 0.1 * (l + 1) as f32;
        t.push((format!("model.layers.{l}.fc.weight"), vec![2, 3], vals(6, s))); // [out, in]
        t.push((format!("model.layers.{l}.fc.bias"), vec![2], vals(2, s)));
        t.push((format!("model.layers.{l}.norm.weight"), vec![2], vals(2, -s)));
        t.push((format!("model.layers.{l}.norm.bias"), vec![2], vals(2, 2.0 * s)));
    }
    t.push(("lm_head.weight".into(), vec![4, 2], vals(8, 0.3)));
    t
}

fn keymap() -> KeyMap {
    KeyMap::new().rename(r"^model\.", "").rename(r"^lm_head\.", "head.")
}

fn encode(tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| match dtype {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
            Dtype::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
            _ => unreachable!(),
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((k, s, _), b)| (k.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn write_single(dir: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) {
    std::fs::write(dir.join(SINGLE_FILE), encode(tensors, dtype)).unwrap();
}

/// The loaded module must hold the file's values (Linear weights transposed).
fn check_values(model: &Tiny, tensors: &[(String, Vec<usize>, Vec<f32>)], tol: f32) {
    let get = |k: &str| tensors.iter().find(|t| t.0 == k).unwrap().2.clone();
    let transpose = |v: Vec<f32>, rows: usize, cols: usize| {
        (0..cols)
            .flat_map(|c| (0..rows).map(move |r| (r, c)))
            .map(|(r, c)| v[r * cols + c])
            .collect::<Vec<_>>()
    };
    for (l, block) in model.layers.iter().enumerate() {
        let w = transpose(get(&format!("model.layers.{l}.fc.weight")), 2, 3);
        assert_slices_close(&to_vec(block.fc.weight.val()), &w, tol, "fc.weight");
        let b = get(&format!("model.layers.{l}.fc.bias"));
        assert_slices_close(&to_vec(block.fc.bias.as_ref().unwrap().val()), &b, tol, "fc.bias");
        let Norm::Layer(ln) = &block.norm else { panic!("layer norm expected") };
        let g = get(&format!("model.layers.{l}.norm.weight"));
        assert_slices_close(&to_vec(ln.gamma.val()), &g, tol, "norm.weight");
    }
    let h = transpose(get("lm_head.weight"), 4, 2);
    assert_slices_close(&to_vec(model.head.weight.val()), &h, tol, "lm_head");
}

fn load(dir: &Path) -> Result<Tiny> {
    let dev = device();
    let mut model = tiny(&dev, NormKind::Layer);
    Checkpoint::open(dir)?.load_into(&mut model, &keymap(), DType::F32)?;
    Ok(model)
}

#[test]
fn round_trip_f32_bf16_f16() {
    let tensors = pytorch_tensors();
    for (dtype, tol) in [(Dtype::F32, 0.0), (Dtype::BF16, 4e-3), (Dtype::F16, 5e-4)] {
        let dir = tempfile::tempdir().unwrap();
        write_single(dir.path(), &tensors, dtype);
        let model = load(dir.path()).unwrap();
        check_values(&model, &tensors, tol);
    }
}

#[test]
fn round_trip_sharded() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = pytorch_tensors();
    let (a, b) = tensors.split_at(5);
    let mut weight_map = BTreeMap::new();
    for (name, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
        std::fs::write(dir.path().join(name), encode(part, Dtype::BF16)).unwrap();
        for t in part {
            weight_map.insert(t.0.clone(), name.to_string());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.path().join(INDEX_FILE), index.to_string()).unwrap();
    let model = load(dir.path()).unwrap();
    check_values(&model, &tensors, 4e-3);
}

#[test]
fn batch_norm_running_stats_load() {
    let dev = device();
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = pytorch_tensors();
    for l in 0..2 {
        tensors.push((format!("model.layers.{l}.norm.running_mean"), vec![2], vec![0.5, -0.5]));
        tensors.push((format!("model.layers.{l}.norm.running_var"), vec![2], vec![2.0, 3.0]));
    }
    write_single(dir.path(), &tensors, Dtype::F32);
    let mut model = tiny(&dev, NormKind::Batch);
    Checkpoint::open(dir.path()).unwrap().load_into(&mut model, &keymap(), DType::F32).unwrap();
    let Norm::Batch(bn) = &model.layers[1].norm else { panic!() };
    assert_slices_close(&to_vec(bn.running_var.value()), &[2.0, 3.0], 0.0, "running_var");
    assert_slices_close(&to_vec(bn.gamma.val()), &[0.4, 0.2], 1e-6, "bn weight");
}

/// Replaces the first `from` in the JSON header by `to` (of the same length).
fn patch_header(file: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let end = 8 + u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&file[8..end]).unwrap();
    assert!(header.contains(from), "{from} not in header");
    let mut out = file.to_vec();
    out[8..end].copy_from_slice(header.replacen(from, to, 1).as_bytes());
    out
}

fn err_of(dir: &Path) -> String {
    load(dir).map(|_| ()).unwrap_err().to_string()
}

#[test]
fn missing_folder_and_files() {
    let e = err_of(Path::new("/nonexistent/ckpt"));
    assert!(e.contains("/nonexistent/ckpt"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let e = err_of(dir.path());
    assert!(e.contains(SINGLE_FILE) && e.contains(INDEX_FILE), "{e}");
    // An index naming a shard that is not there.
    let index = serde_json::json!({"weight_map": {"lm_head.weight": "model-00001-of-00001.safetensors"}});
    std::fs::write(dir.path().join(INDEX_FILE), index.to_string()).unwrap();
    let e = err_of(dir.path());
    assert!(e.contains("model-00001-of-00001.safetensors"), "{e}");
}

#[test]
fn malformed_json_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 3,").unwrap();
    write_single(dir.path(), &pytorch_tensors(), Dtype::F32);
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let e = ckpt.read_json::<serde_json::Value>("config.json").unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("invalid JSON"), "{e}");
    let e = ckpt.read_json::<serde_json::Value>("preprocessor_config.json").unwrap_err().to_string();
    assert!(e.contains("preprocessor_config.json"), "{e}");
}

#[test]
fn lying_and_truncated_headers_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = encode(&pytorch_tensors(), Dtype::F32);
    // Truncated: the last tensor's bytes run past the end.
    std::fs::write(dir.path().join(SINGLE_FILE), &good[..good.len() - 4]).unwrap();
    let e = err_of(dir.path());
    assert!(e.contains(SINGLE_FILE) && e.contains("run past"), "{e}");
    // A header length larger than the file.
    let mut lying = good.clone();
    lying[..8].copy_from_slice(&(good.len() as u64 * 2).to_le_bytes());
    std::fs::write(dir.path().join(SINGLE_FILE), &lying).unwrap();
    let e = err_of(dir.path());
    assert!(e.contains("header length"), "{e}");
    // A shape that disagrees with the byte range.
    let patched = patch_header(&good, "\"shape\":[4,2]", "\"shape\":[4,3]");
    std::fs::write(dir.path().join(SINGLE_FILE), patched).unwrap();
    let e = err_of(dir.path());
    assert!(e.contains("lm_head.weight") && e.contains("needs 48 bytes"), "{e}");
    // Not a safetensors file at all.
    std::fs::write(dir.path().join(SINGLE_FILE), b"abc").unwrap();
    assert!(err_of(dir.path()).contains("too short"));
}

#[test]
fn wrong_shape_names_key_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = pytorch_tensors();
    tensors[0] = ("model.layers.0.fc.weight".into(), vec![2, 4], vec![0.0; 8]);
    write_single(dir.path(), &tensors, Dtype::F32);
    let e = err_of(dir.path());
    assert!(e.contains("model.layers.0.fc.weight") && e.contains("[2, 4]") && e.contains("[2, 3]"), "{e}");
}

#[test]
fn wrong_dtype_names_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = encode(&pytorch_tensors(), Dtype::F32);
    let bytes = patch_header(&good, "\"dtype\":\"F32\"", "\"dtype\":\"I32\"");
    std::fs::write(dir.path().join(SINGLE_FILE), &bytes).unwrap();
    let e = err_of(dir.path());
    assert!(e.contains("dtype") && e.contains("I32"), "{e}");
    // An exotic dtype is refused at the header.
    let bytes = patch_header(&good, "\"dtype\":\"F32\"", "\"dtype\":\"F8\" ");
    std::fs::write(dir.path().join(SINGLE_FILE), &bytes).unwrap();
    let e = err_of(dir.path());
    assert!(e.contains("F8"), "{e}");
}

#[test]
fn missing_and_unused_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = pytorch_tensors();
    tensors.retain(|t| t.0 != "lm_head.weight");
    tensors.push(("model.extra.weight".into(), vec![1], vec![1.0]));
    write_single(dir.path(), &tensors, Dtype::F32);
    let e = err_of(dir.path());
    assert!(e.contains("missing") && e.contains("head.weight"), "{e}");

    // With lm_head allowed to be missing (tied), the extra key is the error.
    let dev = device();
    let mut model = tiny(&dev, NormKind::Layer);
    let keys = keymap().allow_missing(r"^head\.");
    let e = Checkpoint::open(dir.path())
        .unwrap()
        .load_into(&mut model, &keys, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not use") && e.contains("model.extra.weight"), "{e}");
    let keys = keys.allow_unused(r"^extra\.");
    Checkpoint::open(dir.path()).unwrap().load_into(&mut model, &keys, DType::F32).unwrap();
}

#[test]
fn tiled_transpose_equals_the_definition() {
    for (rows, cols) in [(1, 1), (3, 70), (65, 33), (32, 32), (100, 1)] {
        let src: Vec<u8> = (0..rows * cols * 4).map(|i| (i * 7 % 251) as u8).collect();
        let out = transpose_bytes::<4>(&src, rows, cols);
        for i in 0..rows {
            for j in 0..cols {
                assert_eq!(out[(j * rows + i) * 4..][..4], src[(i * cols + j) * 4..][..4], "{rows}x{cols}");
            }
        }
    }
}

#[test]
fn save_failures_are_named_as_saves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/folder/model.safetensors");
    let e = save_safetensors(&tiny(&device(), NormKind::Layer), &path, &[], &[]).unwrap_err().to_string();
    assert!(e.contains("cannot save") && e.contains("model.safetensors"), "{e}");
}

/// Packed loading (`--dtype bf16|q8` on the CPU): every Linear weight packed from the file
/// (bf16 files in place, f32 and f16 converted), biases and norms loaded as f32; products
/// equal the f32-loaded model's within the format's rounding; a NaN in a packed weight and a
/// packed weight of the wrong shape are named by key.
#[test]
fn packed_loading_follows_the_f32_model_and_names_bad_tensors() {
    let dev = device();
    let tensors = pytorch_tensors();
    let x = Tensor::<2>::from_data(TensorData::new(vec![0.3f32, -1.2, 0.7, 1.1, 0.0, -0.4], [2, 3]), &dev);
    let dir = tempfile::tempdir().unwrap();
    write_single(dir.path(), &tensors, Dtype::F32);
    let reference = load(dir.path()).unwrap();
    let run = |m: &Tiny| {
        let h = crate::packed::linear(&m.layers[1].fc, x.clone());
        to_vec(crate::packed::linear(&m.head, h))
    };
    let want = run(&reference);
    for (file_dtype, format, tol) in [
        (Dtype::BF16, WeightFormat::Bf16, 1e-2),
        (Dtype::F32, WeightFormat::Bf16, 1e-2),
        (Dtype::F16, WeightFormat::Q8, 3e-2),
        (Dtype::BF16, WeightFormat::Q8, 3e-2),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_single(dir.path(), &tensors, file_dtype);
        let mut model = tiny(&dev, NormKind::Layer);
        Checkpoint::open(dir.path())
            .unwrap()
            .load_into(&mut model, &keymap(), LoadSpec::packed(format))
            .unwrap();
        assert!(crate::packed::is_packed(&model.head) && crate::packed::is_packed(&model.layers[0].fc));
        assert_eq!(model.head.weight.val().dims(), [2, 4], "the placeholder keeps Burn's shape");
        assert_slices_close(&run(&model), &want, tol, &format!("{file_dtype:?} as {format:?}"));
        crate::packed::release(&model);
    }
    // A NaN in a packed weight.
    let mut bad = tensors.clone();
    bad[0].2[1] = f32::NAN;
    let dir = tempfile::tempdir().unwrap();
    write_single(dir.path(), &bad, Dtype::BF16);
    let mut model = tiny(&dev, NormKind::Layer);
    let e = Checkpoint::open(dir.path()).unwrap().load_into(
        &mut model,
        &keymap(),
        LoadSpec::packed(WeightFormat::Bf16),
    );
    let e = e.unwrap_err().to_string();
    assert!(e.contains("model.layers.0.fc.weight") && e.contains("NaN"), "{e}");
    // A packed weight of the wrong shape.
    let mut bad = tensors.clone();
    bad[0] = (bad[0].0.clone(), vec![3, 2], bad[0].2.clone());
    let dir = tempfile::tempdir().unwrap();
    write_single(dir.path(), &bad, Dtype::F32);
    let mut model = tiny(&dev, NormKind::Layer);
    let e = Checkpoint::open(dir.path()).unwrap().load_into(
        &mut model,
        &keymap(),
        LoadSpec::packed(WeightFormat::Q8),
    );
    let e = e.unwrap_err().to_string();
    assert!(e.contains("model.layers.0.fc.weight") && e.contains("[2, 3]") && e.contains("[3, 2]"), "{e}");
}
