//! `vlm-zoo finetune` end to end on the PaliGemma fixture: the exported folder answers as the
//! fine-tuned model did (full and LoRA, merged), a run resumed from its checkpoint gives the same
//! losses as an uninterrupted one, a composed VLM fine-tunes through the same path, and bad input
//! gets one clear line. (Loss and gradient parity with transformers: paligemma/tests/finetune.rs.)
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/paligemma-a")
}

fn vlm_zoo(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vlm-zoo")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn finetune(data: &Path, out: &Path, extra: &[&str]) -> (bool, String, String) {
    let model = fixture();
    let mut a = vec![
        "finetune",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        "8",
        "--samples",
        "4",
    ];
    a.extend(extra);
    vlm_zoo(&a)
}

/// The last epoch's sampled answers: (image, prefix, generated).
fn samples(out: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(out.join("samples.tsv")).unwrap();
    let rows: Vec<Vec<String>> =
        text.lines().skip(1).map(|l| l.split('\t').map(str::to_string).collect()).collect();
    let last = rows.iter().map(|r| r[0].clone()).max_by_key(|e| e.parse::<u32>().unwrap()).unwrap();
    rows.into_iter().filter(|r| r[0] == last).map(|r| (r[1].clone(), r[2].clone(), r[3].clone())).collect()
}

#[test]
fn the_export_answers_as_the_fine_tuned_model_did() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_detection_dataset(&tmp.path().join("data"), 48, 56, 3).unwrap();
    for (name, extra) in [
        ("full", vec!["--train", "all", "--epochs", "2", "--lr", "3e-3"]),
        (
            "lora",
            vec![
                "--lora-rank",
                "4",
                "--lora-targets",
                "q_proj,v_proj,down_proj",
                "--epochs",
                "2",
                "--lr",
                "1e-2",
            ],
        ),
    ] {
        let out = tmp.path().join(name);
        let (ok, stdout, stderr) = finetune(&data, &out, &extra);
        assert!(ok, "{name}: {stderr}");
        assert!(stdout.contains("before fine-tuning: held-out exact match"), "{stdout}");
        for f in [
            "losses.csv",
            "metrics.csv",
            "metrics.png",
            "samples.tsv",
            "model/config.json",
            "model/model.safetensors",
            "model/tokenizer.json",
        ] {
            assert!(out.join(f).is_file(), "{name}: {f}");
        }
        let png = image::open(out.join("metrics.png")).unwrap();
        assert_eq!((png.width(), png.height()), vlm_zoo::draw::plot::SIZE);
        // The merged export, loaded by `generate`, gives the answers the training process gave.
        let s = samples(&out);
        assert_eq!(s.len(), 4);
        for (image, prefix, generated) in s {
            let (ok, stdout, stderr) = vlm_zoo(&[
                "generate",
                "--model",
                out.join("model").to_str().unwrap(),
                "--image",
                &image,
                "--prompt",
                &prefix,
                "--max-new-tokens",
                "30",
                "--json",
            ]);
            assert!(ok, "{stderr}");
            let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
            // Training's evaluation stops at the longest answer + 2 tokens; generate goes on.
            let text = v["text"].as_str().unwrap().trim();
            assert!(
                !generated.is_empty() && text.starts_with(&generated),
                "{name}: {prefix} on {image}: {text:?} vs {generated:?}"
            );
        }
    }
    // LoRA trained only its targets: in the merged export the vision tower is the fixture's own,
    // the adapted projections changed.
    let read = |p: &Path| std::fs::read(p).unwrap();
    let (a, b) =
        (read(&fixture().join("model.safetensors")), read(&tmp.path().join("lora/model/model.safetensors")));
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    // The two files name keys in different layouts (transformers 5's and the hub's): found by
    // tower and suffix.
    let find = |st: &safetensors::SafeTensors, tower: &str, suffix: &str| -> Vec<u8> {
        let names = st.names();
        let name = names
            .iter()
            .find(|n| n.contains(tower) && n.ends_with(suffix))
            .unwrap_or_else(|| panic!("{tower} {suffix} in {names:?}"));
        st.tensor(name).unwrap().data().to_vec()
    };
    let (v, l) = ("vision_tower", "language_model");
    let fc1 = "encoder.layers.0.mlp.fc1.weight";
    assert_eq!(find(&a, v, fc1), find(&b, v, fc1), "frozen vision weights");
    let q = "layers.0.self_attn.q_proj.weight";
    assert_ne!(find(&a, l, q), find(&b, l, q), "adapted q_proj merged");
    let k = "layers.0.self_attn.k_proj.weight";
    assert_eq!(find(&a, l, k), find(&b, l, k), "k_proj not a LoRA target");
}

#[test]
fn a_resumed_run_gives_the_uninterrupted_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_detection_dataset(&tmp.path().join("data"), 40, 56, 5).unwrap();
    let full = tmp.path().join("full");
    let (ok, _, stderr) = finetune(&data, &full, &["--epochs", "2", "--lora-rank", "2"]);
    assert!(ok, "{stderr}");
    let cut = tmp.path().join("cut");
    let (ok, _, stderr) = finetune(&data, &cut, &["--epochs", "1", "--lora-rank", "2"]);
    assert!(ok, "{stderr}");
    // Without --resume the folder is refused, nothing overwritten.
    let (ok, _, stderr) = finetune(&data, &cut, &["--epochs", "2", "--lora-rank", "2"]);
    assert!(!ok && stderr.contains("--resume"), "{stderr}");
    let (ok, _, stderr) = finetune(&data, &cut, &["--epochs", "2", "--lora-rank", "2", "--resume"]);
    assert!(ok, "{stderr}");
    let losses = |d: &Path| std::fs::read_to_string(d.join("losses.csv")).unwrap();
    assert_eq!(losses(&full), losses(&cut));
}

#[test]
fn a_composed_vlm_fine_tunes_through_the_same_path() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = tmp.path().join("demo");
    let (ok, _, stderr) = vlm_zoo(&[
        "demo",
        "--out",
        demo.to_str().unwrap(),
        "--train-images",
        "64",
        "--test-images",
        "4",
        "--epochs",
        "1",
    ]);
    assert!(ok, "{stderr}");
    let rows: String = (0..16)
        .map(|i| format!("{{\"image\": \"test/img{:05}.png\", \"prefix\": \"caption\", \"suffix\": \"a red circle\"}}\n", i % 4))
        .collect();
    let data = demo.join("data/rows.jsonl");
    std::fs::write(&data, rows).unwrap();
    let out = tmp.path().join("ft");
    let (ok, stdout, stderr) = vlm_zoo(&[
        "finetune",
        "--model",
        demo.join("model").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "4",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("fine-tuned model written"), "{stdout}");
    assert!(out.join("model/model.safetensors").is_file());
}

#[test]
fn bad_input_gets_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_detection_dataset(&tmp.path().join("data"), 24, 56, 9).unwrap();
    let one_line = |stderr: &str| stderr.trim().lines().count() == 1;

    // LoRA targets that name no layer: the valid names are listed.
    let (ok, _, stderr) =
        finetune(&data, &tmp.path().join("a"), &["--lora-rank", "2", "--lora-targets", "qkv"]);
    assert!(
        !ok && one_line(&stderr) && stderr.contains("qkv") && stderr.contains("q_proj, k_proj"),
        "{stderr}"
    );

    // A line without a suffix is named.
    let bad = tmp.path().join("data/bad.jsonl");
    std::fs::write(&bad, "{\"image\": \"img00000.png\", \"prefix\": \"detect circle\"}\n").unwrap();
    let (ok, _, stderr) = finetune(&bad, &tmp.path().join("b"), &[]);
    assert!(
        !ok && one_line(&stderr) && stderr.contains("bad.jsonl:1") && stderr.contains("suffix"),
        "{stderr}"
    );

    // A suffix longer than the positions left (the fixture has 64).
    let long = tmp.path().join("data/long.jsonl");
    let suffix = "<loc0001>".repeat(60);
    std::fs::write(
        &long,
        format!("{{\"image\": \"img00000.png\", \"prefix\": \"detect circle\", \"suffix\": \"{suffix}\"}}\n"),
    )
    .unwrap();
    let (ok, _, stderr) = finetune(&long, &tmp.path().join("c"), &[]);
    assert!(
        !ok && one_line(&stderr) && stderr.contains("row 1") && stderr.contains("64 positions"),
        "{stderr}"
    );

    // An image that does not decode is skipped and counted; the run goes on.
    std::fs::write(tmp.path().join("data/img00003.png"), b"not a png").unwrap();
    let (ok, stdout, stderr) = finetune(&data, &tmp.path().join("d"), &["--epochs", "1", "--max-steps", "1"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("1 skipped") && stderr.contains("skipped 1 rows") && stderr.contains("img00003.png"),
        "{stdout}\n{stderr}"
    );

    // Not a PaliGemma folder.
    let (ok, _, stderr) = vlm_zoo(&[
        "finetune",
        "--model",
        tmp.path().join("nope").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        tmp.path().join("e").to_str().unwrap(),
    ]);
    assert!(!ok && one_line(&stderr), "{stderr}");
}

#[test]
fn bf16_precision_trains_full_and_lora() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_detection_dataset(&tmp.path().join("data"), 48, 56, 13).unwrap();
    for (name, extra) in [
        ("full", vec!["--train", "decoder", "--lr", "3e-3"]),
        ("lora", vec!["--lora-rank", "4", "--lr", "1e-2"]),
    ] {
        let out = tmp.path().join(name);
        let mut a = vec!["--precision", "bf16", "--epochs", "2"];
        a.extend(extra);
        let (ok, _, stderr) = finetune(&data, &out, &a);
        assert!(ok, "{name}: {stderr}");
        let losses: Vec<f64> = std::fs::read_to_string(out.join("losses.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
            .collect();
        assert!(losses.iter().all(|l| l.is_finite()), "{name}: {losses:?}");
        assert!(losses[losses.len() - 1] < losses[0], "{name}: {losses:?}");
        let header = zoo_nn::load::read_safetensors_header(&out.join("model/model.safetensors")).unwrap();
        assert!(header.values().all(|t| t.dtype == "F32"), "{name}: the export is f32");
    }
}

/// `--devices cpu,cpu`: two replicas, each with half of every batch's rows weighted by its share
/// of the answer tokens, gradients summed: the losses of one device on the whole batch, full
/// fine-tuning and LoRA.
#[test]
fn two_cpu_replicas_fine_tune_as_one_device() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_detection_dataset(&tmp.path().join("data"), 40, 56, 5).unwrap();
    for extra in [&["--lora-rank", "2"][..], &["--train", "all"][..]] {
        let mut losses = Vec::new();
        for devices in [None, Some("cpu,cpu")] {
            let out = tmp.path().join(format!("{}-{}", extra.join(""), devices.is_some()));
            let mut a = vec!["--epochs", "2"];
            a.extend(extra);
            if let Some(d) = devices {
                a.extend(["--devices", d]);
            }
            let (ok, _, stderr) = finetune(&data, &out, &a);
            assert!(ok, "{stderr}");
            let text = std::fs::read_to_string(out.join("losses.csv")).unwrap();
            let values: Vec<f64> =
                text.lines().skip(1).map(|l| l.split(',').nth(1).unwrap().parse().unwrap()).collect();
            losses.push(values);
        }
        assert!(losses[0].len() >= 4 && losses[0].len() == losses[1].len(), "{extra:?}: {losses:?}");
        for (x, y) in losses[0].iter().zip(&losses[1]) {
            assert!(
                (x - y).abs() <= 1e-4 * x.abs().max(1.0),
                "{extra:?}: {:?} vs {:?}",
                losses[0],
                losses[1]
            );
        }
    }
}
