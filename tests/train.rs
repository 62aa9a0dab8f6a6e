//! Contrastive training end to end: resume after a kill reproduces the loss sequence, bad data
//! gets clear errors, the export is transformers' layout.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use vlm_zoo::models::Arch;
use vlm_zoo::train::TrainArgs;
use vlm_zoo::training::Precision;

fn args(data: &Path, out: &Path, arch: Arch) -> TrainArgs {
    TrainArgs {
        arch,
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        epochs: 2,
        batch_size: 16,
        lr: 2e-3,
        warmup_steps: 3,
        checkpoint_every: 3,
        vocab_size: 300,
        progress: false,
        ..Default::default()
    }
}

fn read_losses(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("losses.csv")).unwrap().lines().skip(1).map(str::to_string).collect()
}

#[test]
fn killed_run_resumes_to_the_same_loss_sequence() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_dataset(&tmp.path().join("data"), 200, 32, 3).unwrap();
    // An uninterrupted run, and the same run killed once a checkpoint past step 6 exists, then
    // resumed: each in its own process, as users run them.
    let full = tmp.path().join("full");
    let out = tmp.path().join("killed");
    let cli = |out: &Path, extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vlm-zoo"));
        c.args([
            "train",
            "--arch",
            "clip",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--lr",
            "0.002",
            "--warmup-steps",
            "3",
            "--checkpoint-every",
            "3",
            "--vocab-size",
            "300",
        ]);
        c.args(extra);
        c
    };
    let done = cli(&full, &[]).output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(read_losses(&full).len() >= 20);
    let mut child = cli(&out, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap_or_default();
        if latest.trim() >= "step-00000006" || std::time::Instant::now() > deadline {
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let killed_at = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    println!("killed after checkpoint {killed_at}");
    let status = cli(&out, &["--resume"]).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert_eq!(read_losses(&out), read_losses(&full), "resumed loss sequence");
}

#[test]
fn siglip_trains_with_chunked_loss_and_exports_hf() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_dataset(&tmp.path().join("data"), 120, 32, 4).unwrap();
    let out = tmp.path().join("out");
    let mut a = args(&data, &out, Arch::Siglip);
    a.chunk_size = Some(5);
    a.norm = zoo_nn::NormKind::Rms;
    let labels = tmp.path().join("labels.txt");
    std::fs::write(&labels, "circle\nsquare\ntriangle\ncross\n").unwrap();
    a.labels = Some(labels);
    let report = vlm_zoo::train::train(&a).unwrap();
    assert!(report.losses.iter().all(|l| l.is_finite()));
    assert!(report.zero_shot_accuracy.is_some());
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
        "metrics.csv",
        "metrics.png",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // The export loads back through the HF loader with the RMS norm it was trained with.
    let dev = zoo_nn::testing::device();
    let (_, config) = vlm_zoo::siglip::load_siglip(&out, burn::tensor::DType::F32, &dev).unwrap();
    assert_eq!(config.vision_config.norm, zoo_nn::NormKind::Rms);
}

#[test]
fn export_is_transformers_layout() {
    // Loading an HF checkpoint and exporting it again gives the same keys, shapes and values.
    for name in ["siglip-a", "clip-a"] {
        let dir = zoo_nn::testing::fixture(name);
        let dev = zoo_nn::testing::device();
        let (model, _) = vlm_zoo::models::Towers::load(&dir, burn::tensor::DType::F32, &dev).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("model.safetensors");
        model.save_hf(&file).unwrap();
        let ours = zoo_nn::load::read_safetensors_header(&file).unwrap();
        let theirs = zoo_nn::load::read_safetensors_header(&dir.join("model.safetensors")).unwrap();
        let shapes = |m: &std::collections::BTreeMap<String, zoo_nn::load::TensorInfo>| {
            m.iter().map(|(k, v)| (k.clone(), v.shape.clone())).collect::<Vec<_>>()
        };
        assert_eq!(shapes(&ours), shapes(&theirs), "{name}: keys and shapes");
        let a = zoo_nn::testing::Reference::read(&file);
        let b = zoo_nn::testing::Reference::read(&dir.join("model.safetensors"));
        for k in b.names() {
            assert_eq!(a.f32(&k), b.f32(&k), "{name}: {k}");
        }
    }
}

#[test]
fn bad_data_gets_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_dataset(&tmp.path().join("data"), 40, 32, 5).unwrap();
    let out = tmp.path().join("out");
    // A CSV without the needed columns.
    let csv = tmp.path().join("data/pairs.csv");
    std::fs::write(&csv, "file,text\nimg00000.png,a cat\n").unwrap();
    let e = vlm_zoo::train::train(&args(&csv, &out, Arch::Clip)).unwrap_err().to_string();
    assert!(
        e.contains("pairs.csv") && e.contains("image/caption") && e.contains("\"file\", \"text\""),
        "{e}"
    );
    // A batch larger than the data.
    let mut a = args(&data, &out, Arch::Clip);
    a.batch_size = 64;
    let e = vlm_zoo::train::train(&a).unwrap_err().to_string();
    assert!(e.contains("--batch-size 64"), "{e}");
    // Missing and corrupt images are skipped and counted, or refused with --strict.
    let csv = tmp.path().join("data/mixed.csv");
    let mut rows = String::from("image,caption\n");
    for i in 0..36 {
        rows.push_str(&format!("img{i:05}.png,\"a shape, number {i}\"\n"));
    }
    rows.push_str("missing.png,a ghost\ncaptions.jsonl,not an image\nimg00001.png,\n");
    std::fs::write(&csv, rows).unwrap();
    let (pairs, skipped) = vlm_zoo::training::data::load_pairs(&csv, false).unwrap();
    assert_eq!((pairs.len(), skipped.bad_images.len(), skipped.empty_captions), (36, 2, 1));
    let e = vlm_zoo::training::data::load_pairs(&csv, true).unwrap_err().to_string();
    assert!(e.contains("missing.png") || e.contains("empty caption"), "{e}");
}

/// What `AutoProcessor.from_pretrained(export)(text=..., padding=...)` does, from the exported
/// files alone: tokenizer.json's encoding, `model_max_length` / `padding_side` / `pad_token` /
/// `model_input_names` from tokenizer_config.json, padding to `model_max_length` (SigLIP,
/// `padding="max_length"`) or to the longest text (CLIP, `padding=True`). The ids so made give
/// `zero-shot`'s text embeddings (scripts/check_train_export.py runs transformers itself: equal
/// within 1.2e-7 for both archs when this was written).
#[test]
fn the_export_gives_zero_shot_numbers_through_transformers_documented_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_dataset(&tmp.path().join("data"), 64, 32, 4).unwrap();
    let texts = ["a red circle at the top left".to_string(), "a blue square".to_string()];
    let image = tmp.path().join("data/img00000.png");
    for arch in [Arch::Siglip, Arch::Clip] {
        let out = tmp.path().join(format!("{arch:?}"));
        let mut a = args(&data, &out, arch);
        a.epochs = 1;
        vlm_zoo::train::train(&a).unwrap();
        let json = |f: &str| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(out.join(f)).unwrap()).unwrap()
        };
        let (config, tok_config) = (json("config.json"), json("tokenizer_config.json"));
        let processor = json("processor_config.json");
        let max_len = tok_config["model_max_length"].as_u64().unwrap() as usize;
        assert_eq!(max_len as u64, config["text_config"]["max_position_embeddings"].as_u64().unwrap());
        assert_eq!(tok_config["padding_side"], "right");
        let want_class = if arch == Arch::Siglip { "SiglipProcessor" } else { "CLIPProcessor" };
        assert_eq!(processor["processor_class"], want_class);
        assert!(json("preprocessor_config.json")["image_processor_type"].is_string());
        // Every special id the config names is inside the vocabulary (or null).
        let vocab = config["text_config"]["vocab_size"].as_u64().unwrap();
        for k in ["bos_token_id", "eos_token_id", "pad_token_id"] {
            let v = &config["text_config"][k];
            assert!(v.is_null() || v.as_u64().unwrap() < vocab, "{arch:?} {k} = {v}");
        }
        let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
        let pad = tok.token_to_id(tok_config["pad_token"].as_str().unwrap()).unwrap();
        let mut ids: Vec<Vec<u32>> =
            texts.iter().map(|t| tok.encode(t.as_str(), true).unwrap().get_ids().to_vec()).collect();
        let width = if arch == Arch::Siglip { max_len } else { ids.iter().map(Vec::len).max().unwrap() };
        let mask: Vec<Vec<bool>> = ids.iter().map(|r| (0..width).map(|i| i < r.len()).collect()).collect();
        for r in &mut ids {
            r.resize(width, pad);
        }
        let dev = zoo_nn::testing::device();
        let (model, _) = vlm_zoo::models::Towers::load(&out, burn::tensor::DType::F32, &dev).unwrap();
        let txt = match &model {
            vlm_zoo::models::Towers::Siglip(m) => {
                // No attention mask: SigLIP's tokenizer gives only input_ids.
                assert_eq!(tok_config["model_input_names"], serde_json::json!(["input_ids"]));
                m.text_features(zoo_nn::host::ids_tensor(&ids, &dev))
            }
            vlm_zoo::models::Towers::Clip(m) => m.text_features(&ids, &mask, &dev),
            vlm_zoo::models::Towers::Siglip2(_) => unreachable!("train exports siglip or clip"),
        };
        let txt = zoo_nn::testing::to_vec(zoo_nn::l2_normalize(txt));
        let compute = zoo_nn::Compute::parse("cpu", "f32").unwrap();
        let z = vlm_zoo::zero_shot::zero_shot(&out, std::slice::from_ref(&image), &texts, &compute).unwrap();
        let want: Vec<f32> = z.text_embeds.concat();
        zoo_nn::testing::assert_slices_close(
            &txt,
            &want,
            zoo_nn::testing::PARITY_TOL,
            &format!("{arch:?} text embeds"),
        );
    }
}

/// `--precision bf16` on the CPU (flex): the loss falls as in f32 and the export holds the f32
/// master weights.
#[test]
fn bf16_mixed_precision_trains_and_exports_f32_masters() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_dataset(&tmp.path().join("data"), 96, 32, 2).unwrap();
    let out = tmp.path().join("bf16");
    let mut a = args(&data, &out, Arch::Siglip);
    a.precision = vlm_zoo::training::Precision::Bf16;
    a.epochs = 3;
    a.device = vlm_zoo::args::DeviceArgs { device: "flex".into() };
    let r = vlm_zoo::train::train(&a).unwrap();
    assert!(r.losses.iter().all(|l| l.is_finite()));
    let (first, last) =
        (r.losses[..3].iter().sum::<f64>(), r.losses[r.losses.len() - 3..].iter().sum::<f64>());
    assert!(last < first, "{:?}", r.losses);
    let header = zoo_nn::load::read_safetensors_header(&out.join("model.safetensors")).unwrap();
    assert!(header.values().all(|t| t.dtype == "F32"), "master weights exported in f32");
}

/// `--gradient-checkpointing` recomputes activations in the backward pass: the same losses.
#[test]
fn gradient_checkpointing_gives_the_same_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_dataset(&tmp.path().join("data"), 48, 32, 6).unwrap();
    let mut losses = Vec::new();
    for (name, on) in [("plain", false), ("checkpointed", true)] {
        let mut a = args(&data, &tmp.path().join(name), Arch::Clip);
        a.epochs = 2;
        a.gradient_checkpointing = on;
        losses.push(vlm_zoo::train::train(&a).unwrap().losses);
    }
    assert_eq!(losses[0].len(), losses[1].len());
    for (x, y) in losses[0].iter().zip(&losses[1]) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{:?} vs {:?}", losses[0], losses[1]);
    }
}

/// `--devices cpu,cpu`: two replicas on threads, each embedding half of every batch and scoring
/// it against the other's embeddings (the all-gather), gradients summed: the same losses and
/// the same trained weights as one device on the whole batch, for SigLIP (whole and chunked
/// sigmoid loss) and CLIP (softmax loss), in f32 and under bf16 autocast.
#[test]
fn two_cpu_replicas_train_as_one_device_on_the_whole_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_dataset(&tmp.path().join("data"), 48, 32, 6).unwrap();
    let cases = [
        (Arch::Siglip, None, Precision::F32),
        (Arch::Siglip, Some(4), Precision::F32),
        (Arch::Clip, None, Precision::F32),
        (Arch::Clip, None, Precision::Bf16),
    ];
    for (i, (arch, chunk, precision)) in cases.into_iter().enumerate() {
        let mut runs = Vec::new();
        for devices in [vec![], vec!["cpu".to_string(), "cpu".to_string()]] {
            let out = tmp.path().join(format!("{i}-{}", devices.len()));
            let mut a = args(&data, &out, arch);
            a.epochs = 2;
            a.chunk_size = chunk;
            a.precision = precision;
            a.devices = devices;
            let losses = vlm_zoo::train::train(&a).unwrap().losses;
            let weights = zoo_nn::testing::Reference::read(&out.join("model.safetensors"));
            runs.push((losses, weights));
        }
        let what = format!("{arch:?} chunk {chunk:?} {precision:?}");
        let (one, two) = (&runs[0], &runs[1]);
        assert_eq!(one.0.len(), two.0.len(), "{what}");
        // bf16 autocast rounds each replica's half batch as the whole batch is rounded: the
        // same arithmetic, summed in another order.
        let tol = if precision == Precision::Bf16 { 2e-3 } else { 2e-5 };
        for (x, y) in one.0.iter().zip(&two.0) {
            assert!((x - y).abs() <= tol * x.abs().max(1.0), "{what}: {:?} vs {:?}", one.0, two.0);
        }
        assert!(one.0.len() >= 4, "{what}: several steps");
        for name in one.1.names() {
            let (p, q) = (one.1.f32(&name), two.1.f32(&name));
            let worst = p.iter().zip(&q).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let scale = p.iter().fold(1f32, |m, v| m.max(v.abs()));
            assert!(worst <= 10.0 * tol as f32 * scale, "{what}: {name} differs by {worst}");
        }
    }
}

/// `--devices` refuses what it cannot run, in one line.
#[test]
fn devices_that_cannot_train_together_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_dataset(&tmp.path().join("data"), 48, 32, 6).unwrap();
    let refuse = |devices: &[&str], batch: usize, want: &str| {
        let mut a = args(&data, &tmp.path().join("refused"), Arch::Siglip);
        a.devices = devices.iter().map(|d| d.to_string()).collect();
        a.batch_size = batch;
        let e = vlm_zoo::train::train(&a).unwrap_err().to_string();
        assert!(e.contains(want) && !e.contains('\n'), "{devices:?}: {e}");
    };
    refuse(&["cpu", "cpu", "cpu"], 16, "not divisible by the 3 devices");
    refuse(&["cpu", "tpu"], 16, "tpu");
    refuse(&["cpu", "cuda:0"], 16, "not a mix");
    assert!(!tmp.path().join("refused").join("losses.csv").exists());
}

/// SigLIP 2 NaFlex fine-tunes from its folder (`--init`) with each image as NaFlex patches at
/// its own aspect ratio: the loss falls, the export loads as a NaFlex model again (its
/// processor settings kept) and scores as the trained model did.
#[test]
fn siglip2_naflex_trains_on_naflex_patches_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_dataset(&tmp.path().join("data"), 48, 40, 6).unwrap();
    let out = tmp.path().join("naflex");
    let mut a = args(&data, &out, Arch::Siglip);
    a.init = Some(vlm_zoo::args::ModelSource(zoo_nn::testing::fixture("hub-siglip2-naflex")));
    a.epochs = 3;
    a.lr = 1e-3;
    let r = vlm_zoo::train::train(&a).unwrap();
    let (first, last) = (r.losses[0], *r.losses.last().unwrap());
    assert!(r.losses.iter().all(|l| l.is_finite()) && last < first, "{:?}", r.losses);
    let pre: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("preprocessor_config.json")).unwrap())
            .unwrap();
    assert!(pre.get("max_num_patches").is_some(), "{pre}");
    let family = vlm_zoo::models::Family::of(&out).unwrap();
    assert_eq!(family, vlm_zoo::models::Family::Siglip2NaFlex);
    let image = zoo_nn::testing::fixture("images").join("rgb_64x48.png");
    let compute = zoo_nn::Compute::parse("cpu", "f32").unwrap();
    let z =
        vlm_zoo::zero_shot::zero_shot(&out, &[image], &["a photo".into(), "red".into()], &compute).unwrap();
    assert!(z.probs[0].iter().all(|p| p.is_finite()));
}

/// A NaFlex model refuses the fixed-size augmentations, in one line.
#[test]
fn siglip2_naflex_refuses_crops() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_dataset(&tmp.path().join("data"), 48, 40, 6).unwrap();
    let mut a = args(&data, &tmp.path().join("x"), Arch::Siglip);
    a.init = Some(vlm_zoo::args::ModelSource(zoo_nn::testing::fixture("hub-siglip2-naflex")));
    a.augment.flip = true;
    let e = vlm_zoo::train::train(&a).unwrap_err().to_string();
    assert!(e.contains("--flip") && e.contains("NaFlex") && !e.contains('\n'), "{e}");
}
