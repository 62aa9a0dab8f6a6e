//! The `vlm-zoo` command line on the committed fixtures.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use zoo_nn::testing::{PARITY_TOL, Reference, assert_slices_close};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn vlm_zoo(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vlm-zoo")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A copy of fixture `name` in `dst` (to damage or edit), leaving out the files named in `skip`.
fn fixture_copy(name: &str, dst: &Path, skip: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let p = e.unwrap().path();
        if !skip.iter().any(|s| p.file_name().unwrap() == *s) {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
    dst.to_path_buf()
}

/// `zero-shot` of one fixture image against the text "a".
fn zero_shot_one(dir: &Path) -> (bool, String, String) {
    let img = fixtures().join("images/rgb_64x48.png");
    vlm_zoo(&["zero-shot", "--model", dir.to_str().unwrap(), "--image", img.to_str().unwrap(), "--text", "a"])
}

/// Edits a JSON file in place.
fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

fn zero_shot_json(model: &Path, name: &str) {
    zero_shot_json_with(model, name, &[], PARITY_TOL);
}

/// `zero-shot --json` with `extra` arguments, checked against the transformers reference with
/// tolerance `tol` (absolute and relative).
fn zero_shot_json_with(model: &Path, name: &str, extra: &[&str], tol: f32) {
    let dir = fixtures();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(name).join("reference.json")).unwrap())
            .unwrap();
    let mut args =
        vec!["zero-shot".to_string(), "--model".into(), model.display().to_string(), "--json".into()];
    for img in meta["images"].as_array().unwrap() {
        args.push("--image".into());
        args.push(dir.join("images").join(img.as_str().unwrap()).display().to_string());
    }
    for t in meta["texts"].as_array().unwrap() {
        args.push("--text".into());
        args.push(t.as_str().unwrap().into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = vlm_zoo(&args);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let flat = |k: &str| -> Vec<f32> {
        v[k].as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
            .collect()
    };
    let r = Reference::read(&dir.join(name).join("reference.safetensors"));
    for key in ["image_embeds", "text_embeds", "logits_per_image", "probs"] {
        let want = r.f32(key);
        // In half precision the logits (logit_scale x cosine) carry the cosines' noise times
        // the scale: their tolerance is relative to the largest logit.
        let half = extra.contains(&"--dtype");
        let tol = if half && key == "logits_per_image" {
            tol * want.iter().fold(1f32, |m, x| m.max(x.abs()))
        } else {
            tol
        };
        assert_slices_close(&flat(key), &want, tol, &format!("cli {name} {extra:?} {key}"));
    }
}

#[test]
fn every_cpu_backend_equals_transformers() {
    let dir = fixtures();
    for device in ["ndarray", "flex"] {
        for name in ["siglip-b", "clip-a"] {
            zero_shot_json_with(&dir.join(name), name, &["--device", device], PARITY_TOL);
        }
    }
}

/// bf16 keeps 8 significant bits (relative step 2^-8 = 0.004) and f16 11 (0.0005): after a few
/// layers the outputs carry a few steps of that noise, so they are held to 8 steps. On the CPU
/// `bf16` packs the Linear weights in bf16 (activations f32) and `q8` in int8 with per-output
/// scales (127 steps of each output's largest weight): q8 is held to 16 bf16 steps. Measured
/// largest differences on these fixtures: bf16 embeddings 3.8e-3, logits 1.2% of the largest;
/// q8 embeddings 8.0e-3, logits 3.4% (clip-b); q8 on AMX-INT8 (activations of products over 4
/// rows quantised to int8 as well) embeddings 1.0e-2 (siglip-a), logits 6.9e-2 (siglip-a).
#[test]
fn half_precision_stays_within_its_own_noise() {
    let dir = fixtures();
    for (dtype, device, tol) in [
        ("bf16", "flex", 8.0 / 256.0),
        ("f16", "flex", 8.0 / 2048.0),
        ("q8", "flex", 16.0 / 256.0),
        ("bf16", "ndarray", 8.0 / 256.0),
        ("q8", "ndarray", 16.0 / 256.0),
    ] {
        for name in ["siglip-a", "clip-b", "hub-siglip2-naflex"] {
            if dtype == "f16" && name.starts_with("hub") {
                continue;
            }
            zero_shot_json_with(&dir.join(name), name, &["--dtype", dtype, "--device", device], tol);
        }
    }
    let (ok, _, stderr) = vlm_zoo(&[
        "zero-shot",
        "--model",
        dir.join("siglip-a").to_str().unwrap(),
        "--image",
        dir.join("images/rgb_64x48.png").to_str().unwrap(),
        "--text",
        "x",
        "--device",
        "ndarray",
        "--dtype",
        "f16",
    ]);
    assert!(!ok);
    assert!(stderr.contains("ndarray computes in f32 only; use --device flex"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let (ok, _, stderr) = vlm_zoo(&["bench", "--model", "x", "--dtype", "f64"]);
    assert!(!ok);
    assert!(stderr.contains("--dtype 'f64': expected f32, bf16, f16 or q8"), "{stderr}");
}

/// Greedy generation with packed CPU weights: `--dtype bf16` gives transformers' f32 ids on the
/// Gemma fixture and PaliGemma's first prompt (PaliGemma's second flips at a margin below
/// bf16's rounding; its logits are checked in paligemma/tests/parity.rs); `--dtype q8` changes
/// the model more than the smallest margins (0.09 at gemma-gqa's second step), so its ids are
/// those of the transformers model with the same int8-rounded weights
/// (`scripts/make_q8_reference.py` -> `reference-q8.json`). Where the prompt's products run on
/// AMX-INT8 (activations quantised to int8 too), the script's `_a8` ids: that model with the
/// prompt's products' inputs quantised as the kernel does (the first id differs: 63 against
/// 38, whose margin in the q8 model is 0.10).
#[test]
fn packed_cpu_weights_keep_the_greedy_ids() {
    let expected = |dir: &Path, r: &Reference, dtype: &str, key: &str| -> Vec<i64> {
        if dtype != "q8" {
            return r.i64(key);
        }
        let q8: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference-q8.json")).unwrap()).unwrap();
        use zoo_nn::kernels::gemm::{Kernel, WeightFormat};
        let prompt_rows = zoo_nn::kernels::gemm::GEMV_ROWS + 1;
        let a8 = Kernel::for_product(prompt_rows, WeightFormat::Q8) == Kernel::Amx;
        let key = if a8 { format!("{key}_a8") } else { key.to_string() };
        q8[&key].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
    };
    let f = fixtures();
    for dtype in ["bf16", "q8"] {
        let (v, r) = gemma_gqa_generate(&["--dtype", dtype]);
        let ids = token_ids(&v);
        let dir = f.join("gemma-gqa");
        let want = expected(&dir, &r, dtype, "generated_1");
        let cut = want.iter().position(|&t| t == 1).unwrap_or(want.len());
        assert_eq!(ids, want[..cut], "gemma-gqa {dtype}");
        if dtype == "q8" {
            continue;
        }

        let dir = f.join("paligemma-a");
        let r = Reference::read(&dir.join("reference.safetensors"));
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        let image = f.join("images").join(meta["images"][0].as_str().unwrap());
        let (ok, stdout, stderr) = vlm_zoo(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--prompt",
            meta["prompts"][0].as_str().unwrap(),
            "--max-new-tokens",
            "6",
            "--json",
            "--dtype",
            dtype,
        ]);
        assert!(ok, "{stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        let ids: Vec<i64> = v["token_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        let want = r.i64("generated_0");
        let cut = want.iter().position(|&t| t == 1).unwrap_or(want.len());
        assert_eq!(ids, want[..cut], "paligemma-a {dtype}");
    }
    let (ok, _, stderr) = vlm_zoo(&["bench", "--model", "x", "--device", "cuda", "--dtype", "q8"]);
    assert!(!ok && stderr.contains("q8 runs on CPU devices"), "{stderr}");
}

/// Each kind of benchmark runs on the tiny fixtures and reports what it measured.
#[test]
fn bench_reports_every_kind() {
    let dir = fixtures();
    let run = |args: &[&str]| -> serde_json::Value {
        let (ok, stdout, stderr) = vlm_zoo(args);
        assert!(ok, "{args:?}: {stderr}");
        serde_json::from_str(stdout.trim()).unwrap()
    };
    let m = |name: &str| dir.join(name).display().to_string();
    let v = run(&["bench", "--model", &m("gemma2-a"), "--prompt-len", "5", "--new-tokens", "4"]);
    assert_eq!((v["prompt_tokens"].as_u64(), v["decode_tokens"].as_u64()), (Some(6), Some(3)));
    assert!(v["decode_tok_s"].as_f64().unwrap() > 0.0 && v["total_s"].as_f64().unwrap() > 0.0);
    let v = run(&[
        "bench",
        "--model",
        &m("paligemma-a"),
        "--prompt-len",
        "3",
        "--new-tokens",
        "2",
        "--dtype",
        "bf16",
    ]);
    assert_eq!(v["model_type"], "paligemma");
    assert!(v["prefill_s"].as_f64().unwrap() > 0.0);
    let v = run(&["bench", "--model", &m("clip-a"), "--batch", "1,3", "--iters", "1"]);
    let batches: Vec<u64> =
        v["encode"].as_array().unwrap().iter().map(|e| e["batch"].as_u64().unwrap()).collect();
    assert_eq!(batches, [1, 3]);
    assert!(v["encode"][1]["images_per_s"].as_f64().unwrap() > 0.0);
    let v = run(&[
        "bench",
        "--model",
        &m("siglip-a"),
        "--train",
        "--batch",
        "2",
        "--steps",
        "1",
        "--device",
        "ndarray",
    ]);
    assert_eq!((v["task"].as_str(), v["batch"].as_u64()), (Some("train"), Some(2)));
    assert!(v["steps_per_s"].as_f64().unwrap() > 0.0);
    let (ok, _, stderr) = vlm_zoo(&["bench", "--model", &m("clip-a"), "--batch", "0"]);
    assert!(!ok && stderr.contains("every --batch must be at least 1"), "{stderr}");
}

/// Every family zero-shot accepts, bench accepts: a SigLIP 2 NaFlex folder encodes square
/// images whose patch grid fills its position table (4 x 4 patches of 8 px here); `bench
/// --train` (fixed-size steps) refuses it in one line: NaFlex trains through `train --init`.
#[test]
fn bench_encodes_siglip2_naflex() {
    let m = fixtures().join("hub-siglip2-naflex").display().to_string();
    let (ok, stdout, stderr) = vlm_zoo(&["bench", "--model", &m, "--batch", "1,2", "--iters", "1"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((v["model_type"].as_str(), v["task"].as_str()), (Some("siglip2"), Some("encode_images")));
    let batches: Vec<u64> =
        v["encode"].as_array().unwrap().iter().map(|e| e["batch"].as_u64().unwrap()).collect();
    assert_eq!(batches, [1, 2]);
    assert!(v["encode"][1]["images_per_s"].as_f64().unwrap() > 0.0);
    let (ok, _, stderr) = vlm_zoo(&["bench", "--model", &m, "--train", "--steps", "1"]);
    assert!(
        !ok && stderr.contains("'siglip2' is not supported by bench --train (expected siglip or clip)"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// The library's front door gives the CLI's answers: `vlm_zoo::Model` calls the same Generator
/// and Scorer.
#[test]
fn the_front_door_answers_as_the_cli() {
    use vlm_zoo::Model;
    let f = fixtures();
    let compute = zoo_nn::Compute::parse("cpu", "f32").unwrap();
    let img_path = f.join("images/rgb_64x48.png");
    let img = img_path.to_str().unwrap();
    let image = zoo_nn::open_image(&img_path).unwrap();
    let cli = |args: &[&str]| -> serde_json::Value {
        let (ok, stdout, stderr) = vlm_zoo(args);
        assert!(ok, "{args:?}: {stderr}");
        serde_json::from_str(stdout.trim()).unwrap()
    };
    let close = |a: &[f32], b: &serde_json::Value, what: &str| {
        let b: Vec<f32> = b.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        zoo_nn::testing::assert_slices_close(a, &b, 1e-5, what);
    };
    for name in ["siglip-a", "hub-siglip2-naflex", "clip-b"] {
        let dir = f.join(name);
        let model = Model::load(&dir, &compute).unwrap();
        let texts = ["a red square", "a blue circle"];
        let z = model.zero_shot(std::slice::from_ref(&image), &texts).unwrap();
        let v = cli(&[
            "zero-shot",
            "--model",
            dir.to_str().unwrap(),
            "--image",
            img,
            "--text",
            texts[0],
            "--text",
            texts[1],
            "--json",
        ]);
        assert_eq!(v["model_type"], model.kind(), "{name}");
        close(&z.probs[0], &v["probs"][0], name);
        close(&model.embed_images(std::slice::from_ref(&image)).unwrap()[0], &v["image_embeds"][0], name);
        close(&model.embed_texts(&texts).unwrap()[1], &v["text_embeds"][1], name);
        let e = model.caption(&image).unwrap_err().to_string();
        assert!(e.contains("does not generate text"), "{e}");
    }
    let dir = f.join("paligemma-a");
    let pali = Model::load(&dir, &compute).unwrap();
    assert_eq!(pali.family(), vlm_zoo::Family::PaliGemma);
    let generate = |prompt: &str| {
        cli(&["generate", "--model", dir.to_str().unwrap(), "--image", img, "--prompt", prompt, "--json"])
    };
    assert_eq!(pali.caption(&image).unwrap(), generate("caption en")["text"]);
    assert_eq!(pali.answer(&image, "what is it").unwrap(), generate("answer en what is it")["text"]);
    let boxes = serde_json::to_value(pali.detect(&image, &["square", "dot"]).unwrap()).unwrap();
    assert_eq!(boxes, generate("detect square ; dot")["detections"]);
    let e = pali.embed_texts(&["x"]).unwrap_err().to_string();
    assert!(e.contains("generates text"), "{e}");
    let dir = f.join("gemma-gqa");
    let gemma = Model::load(&dir, &compute).unwrap();
    let sampling = zoo_nn::Sampling { max_new_tokens: 6, ..Default::default() };
    let out = gemma.generate("hello", &sampling).unwrap();
    let v = cli(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "hello",
        "--max-new-tokens",
        "6",
        "--json",
    ]);
    assert_eq!(serde_json::to_value(&out).unwrap(), v);
    let e = gemma.caption(&image).unwrap_err().to_string();
    assert!(e.contains("text-only"), "{e}");
}

#[test]
fn zero_shot_json_equals_transformers() {
    let dir = fixtures();
    for name in ["siglip-a", "siglip-b", "clip-a", "clip-b"] {
        zero_shot_json(&dir.join(name), name);
    }
}

#[test]
fn zero_shot_falls_back_to_config_image_size_and_says_so() {
    // siglip-a's preprocessor is SigLIP's default (mean = std = 0.5), so the fallback must agree.
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("siglip-a")).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap() != "preprocessor_config.json" {
            std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    zero_shot_json(tmp.path(), "siglip-a");
    let img = fixtures().join("images/rgb_64x48.png");
    let (ok, _, stderr) = vlm_zoo(&[
        "zero-shot",
        "--model",
        tmp.path().to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--text",
        "a",
    ]);
    assert!(ok && stderr.contains("no preprocessor_config.json"), "{stderr}");
}

#[test]
fn zero_shot_table_is_readable() {
    let f = fixtures();
    let (ok, stdout, stderr) = vlm_zoo(&[
        "zero-shot",
        "--model",
        f.join("clip-a").to_str().unwrap(),
        "--image",
        f.join("images/rgb_64x48.png").to_str().unwrap(),
        "--text",
        "a red circle",
        "--text",
        "a blue square",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("softmax") && stdout.contains("a red circle") && stdout.contains("rgb_64x48.png"),
        "{stdout}"
    );
}

#[test]
fn bad_input_gets_one_line_errors() {
    let f = fixtures();
    let img = f.join("images/rgb_64x48.png");
    let img = img.to_str().unwrap();
    let not_image = f.join("siglip-a/config.json");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--model".into(),
                f.join("siglip-a").display().to_string(),
                "--image".into(),
                "missing.png".into(),
                "--text".into(),
                "a".into(),
            ],
            "missing.png",
        ),
        (
            vec![
                "--model".into(),
                f.join("siglip-a").display().to_string(),
                "--image".into(),
                not_image.display().to_string(),
                "--text".into(),
                "a".into(),
            ],
            "cannot read image",
        ),
        (
            vec![
                "--model".into(),
                f.join("siglip-vision-nohead").display().to_string(),
                "--image".into(),
                img.into(),
                "--text".into(),
                "a".into(),
            ],
            "siglip_vision_model",
        ),
        (
            vec![
                "--model".into(),
                "/no/such/model".into(),
                "--image".into(),
                img.into(),
                "--text".into(),
                "a".into(),
            ],
            "/no/such/model",
        ),
        (
            vec![
                "--model".into(),
                f.join("clip-a").display().to_string(),
                "--image".into(),
                img.into(),
                "--text".into(),
                "a".into(),
                "--device".into(),
                "tpu".into(),
            ],
            "tpu",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["zero-shot"];
        all.extend(args.iter().map(String::as_str));
        let (ok, _, stderr) = vlm_zoo(&all);
        assert!(!ok, "{all:?} should fail");
        assert!(stderr.contains(needle) && stderr.trim().lines().count() == 1, "{all:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // No texts: clap refuses before anything runs.
    let (ok, _, stderr) = vlm_zoo(&["zero-shot", "--model", "x", "--image", img]);
    assert!(!ok && stderr.contains("--text"), "{stderr}");
}

#[test]
fn tokenizer_that_does_not_fit_the_vocabulary_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("clip-a")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    // clip-b's tokenizer has 420 tokens; clip-a's model 400.
    std::fs::copy(fixtures().join("clip-b/tokenizer.json"), tmp.path().join("tokenizer.json")).unwrap();
    let img = fixtures().join("images/rgb_64x48.png");
    let (ok, _, stderr) = vlm_zoo(&[
        "zero-shot",
        "--model",
        tmp.path().to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--text",
        "a",
    ]);
    assert!(!ok && stderr.contains("tokenizer.json") && stderr.contains("vocab_size is 400"), "{stderr}");
}

#[test]
fn inspect_reads_headers() {
    let (ok, stdout, stderr) =
        vlm_zoo(&["inspect", "--model", fixtures().join("clip-b").to_str().unwrap(), "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["model_type"], "clip");
    assert!(v["parameters"].as_u64().unwrap() > 10_000);
}

/// `generate --json` on gemma-gqa's second reference prompt (8 new tokens) plus `extra`: the
/// output and the fixture's reference.
fn gemma_gqa_generate(extra: &[&str]) -> (serde_json::Value, Reference) {
    gemma_gqa_generate_with(&[&["--prompt", &gemma_gqa_prompt()][..], extra].concat())
}

/// gemma-gqa's second reference prompt.
fn gemma_gqa_prompt() -> String {
    let path = fixtures().join("gemma-gqa/reference.json");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    meta["prompts"][1].as_str().unwrap().to_string()
}

/// `generate --json` on gemma-gqa with `args` (the prompt among them), 8 new tokens.
fn gemma_gqa_generate_with(args: &[&str]) -> (serde_json::Value, Reference) {
    let dir = fixtures().join("gemma-gqa");
    let r = Reference::read(&dir.join("reference.safetensors"));
    let mut args = [&["generate", "--model", dir.to_str().unwrap()][..], args].concat();
    args.extend(["--max-new-tokens", "8", "--json"]);
    let (ok, stdout, stderr) = vlm_zoo(&args);
    assert!(ok, "{stderr}");
    (serde_json::from_str(stdout.trim()).unwrap(), r)
}

/// The `token_ids` of one `generate --json` output.
fn token_ids(v: &serde_json::Value) -> Vec<i64> {
    v["token_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

#[test]
fn generate_json_equals_transformers_greedy_ids() {
    let dir = fixtures().join("gemma-gqa");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let prompt = meta["prompts"][1].as_str().unwrap();
    // The fixture generated without stopping at eos; the CLI stops there, so compare the prefix.
    let (v, r) = gemma_gqa_generate(&[]);
    let ids = token_ids(&v);
    let want = r.i64("generated_1");
    let cut = want.iter().position(|&t| t == 1).unwrap_or(want.len());
    assert_eq!(ids, want[..cut]);
    assert_eq!(v["model_type"], "gemma");
    let prompt_ids: Vec<i64> =
        v["prompt_token_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    assert_eq!(prompt_ids, r.i64("input_ids_1"));
    // Streaming prints the same text.
    let (ok, streamed, _) =
        vlm_zoo(&["generate", "--model", dir.to_str().unwrap(), "--prompt", prompt, "--max-new-tokens", "8"]);
    assert!(ok);
    assert_eq!(streamed.trim_end_matches('\n'), v["text"].as_str().unwrap());
}

#[test]
fn generate_chat_reads_a_conversation() {
    // gemma-gqa's tokenizer has no turn tokens: no chat format, so the prompt is the last user
    // message (as the server's chat endpoint makes it), and the answer that of --prompt.
    let dir = fixtures().join("gemma-gqa");
    let prompt = &gemma_gqa_prompt();
    let (want, _) = gemma_gqa_generate(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let chat = tmp.path().join("chat.json");
    let messages = serde_json::json!([{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
        {"role": "user", "content": prompt}]);
    std::fs::write(&chat, messages.to_string()).unwrap();
    let (got, _) = gemma_gqa_generate_with(&["--chat", chat.to_str().unwrap()]);
    assert_eq!(got["prompt_token_ids"], want["prompt_token_ids"]);
    assert_eq!(got["token_ids"], want["token_ids"]);
    // Streamed, as one prompt is.
    let d = dir.to_str().unwrap();
    let (ok, streamed, stderr) =
        vlm_zoo(&["generate", "--model", d, "--chat", chat.to_str().unwrap(), "--max-new-tokens", "8"]);
    assert!(ok, "{stderr}");
    assert_eq!(streamed.trim_end_matches('\n'), want["text"].as_str().unwrap());
    // A role the chat format does not know, and --chat with --prompt.
    std::fs::write(&chat, r#"{"messages": [{"role": "tool", "content": "x"}]}"#).unwrap();
    let (ok, _, stderr) = vlm_zoo(&["generate", "--model", d, "--chat", chat.to_str().unwrap()]);
    assert!(!ok && stderr.contains("messages[0].role 'tool'"), "{stderr}");
    let (ok, _, stderr) =
        vlm_zoo(&["generate", "--model", d, "--chat", chat.to_str().unwrap(), "--prompt", "hi"]);
    assert!(!ok && stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn generate_refuses_bad_input() {
    let f = fixtures();
    let g = f.join("gemma-mqa");
    let g = g.to_str().unwrap();
    let img = f.join("images/rgb_64x48.png");
    for (args, needle) in [
        (vec!["--prompt", "hi", "--image", img.to_str().unwrap()], "text-only"),
        (vec!["--prompt", ""], "empty prompt"),
        (vec!["--prompt", "hi", "--max-new-tokens", "0"], "max_new_tokens"),
        (vec!["--prompt", "hi", "--temperature", "-1"], "temperature"),
        (vec!["--prompt", "hi", "--top-p", "1.5"], "top_p"),
    ] {
        let mut all = vec!["generate", "--model", g];
        all.extend(args);
        let (ok, _, stderr) = vlm_zoo(&all);
        assert!(!ok && stderr.contains(needle) && stderr.trim().lines().count() == 1, "{all:?}: {stderr}");
    }
    let long = "word ".repeat(200);
    let (ok, _, stderr) = vlm_zoo(&["generate", "--model", g, "--prompt", &long]);
    assert!(!ok && stderr.contains("does not fit the context"), "{stderr}");
}

#[test]
fn paligemma_batch_json_equals_transformers_greedy_ids() {
    let f = fixtures();
    for name in ["paligemma-a", "paligemma2-a", "paligemma-a-hub-sharded"] {
        let reference = if name.ends_with("sharded") { "paligemma-a" } else { name };
        let r = Reference::read(&f.join(reference).join("reference.safetensors"));
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f.join(reference).join("reference.json")).unwrap())
                .unwrap();
        let mut args = vec![
            "generate".to_string(),
            "--model".into(),
            f.join(name).display().to_string(),
            "--json".into(),
        ];
        for i in 0..2 {
            args.extend([
                "--image".into(),
                f.join("images").join(meta["images"][i].as_str().unwrap()).display().to_string(),
            ]);
            args.extend(["--prompt".into(), meta["prompts"][i].as_str().unwrap().to_string()]);
        }
        args.extend(["--max-new-tokens".into(), "6".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, stdout, stderr) = vlm_zoo(&args);
        assert!(ok, "{stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        for i in 0..2 {
            let ids: Vec<i64> =
                v[i]["token_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
            let want = r.i64(&format!("generated_{i}"));
            let cut = want.iter().position(|&t| t == 1).unwrap_or(want.len());
            assert_eq!(ids, want[..cut], "{name} row {i}");
            let prompt: Vec<i64> =
                v[i]["prompt_token_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
            assert_eq!(prompt, r.i64(&format!("input_ids_{i}")));
        }
        assert!(v[0].get("detections").is_none() && v[1]["detections"].is_array(), "{v}");
    }
}

#[test]
fn paligemma_refuses_missing_or_unreadable_images() {
    let f = fixtures();
    let m = f.join("paligemma-a");
    let m = m.to_str().unwrap();
    let (ok, _, stderr) = vlm_zoo(&["generate", "--model", m, "--prompt", "caption en"]);
    assert!(!ok && stderr.contains("needs an --image"), "{stderr}");
    let cfg = f.join("paligemma-a/config.json");
    let (ok, _, stderr) =
        vlm_zoo(&["generate", "--model", m, "--prompt", "caption en", "--image", cfg.to_str().unwrap()]);
    assert!(!ok && stderr.contains("cannot read image") && stderr.trim().lines().count() == 1, "{stderr}");
    let img = f.join("images/rgb_64x48.png");
    let img = img.to_str().unwrap();
    let (ok, _, stderr) = vlm_zoo(&[
        "generate", "--model", m, "--prompt", "a", "--prompt", "b", "--prompt", "c", "--image", img,
        "--image", img,
    ]);
    assert!(!ok && stderr.contains("2 images for 3 prompts"), "{stderr}");
    let long = "word ".repeat(100);
    let (ok, _, stderr) = vlm_zoo(&["generate", "--model", m, "--prompt", &long, "--image", img]);
    assert!(!ok && stderr.contains("does not fit the context"), "{stderr}");
}

#[test]
fn truncated_shard_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("paligemma-a-hub-sharded");
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    let shard = tmp.path().join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let img = fixtures().join("images/rgb_64x48.png");
    let (ok, _, stderr) = vlm_zoo(&[
        "generate",
        "--model",
        tmp.path().to_str().unwrap(),
        "--prompt",
        "caption en",
        "--image",
        img.to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains("model-00002-of-00002.safetensors") && stderr.contains("truncated"),
        "{stderr}"
    );
}

#[test]
fn demo_in_a_reduced_setting_saves_a_paligemma_folder_that_generate_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let (ok, stdout, stderr) = vlm_zoo(&[
        "demo",
        "--out",
        out.to_str().unwrap(),
        "--train-images",
        "128",
        "--test-images",
        "8",
        "--epochs",
        "1",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("held-out exact-caption accuracy"), "{stdout}");
    assert!(out.join("captions.png").is_file() && out.join("metrics.png").is_file());
    let img = out.join("data/test/img00000.png");
    let (ok, stdout, stderr) = vlm_zoo(&[
        "generate",
        "--model",
        out.join("model").to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--prompt",
        "caption en",
        "--max-new-tokens",
        "4",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["model_type"], "paligemma");
}

#[test]
fn detections_are_drawn() {
    let img = fixtures().join("images/rgb_300x200.png");
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("boxes.png");
    let dets = vec![zoo_paligemma::Detection { label: "circle".into(), bbox: [10.0, 20.0, 120.0, 150.0] }];
    vlm_zoo::draw::overlay::draw_detections(&img, &dets, &png).unwrap();
    let drawn = image::open(&png).unwrap().to_rgb8();
    assert_eq!(drawn.dimensions(), (300, 200));
    assert_eq!(drawn.get_pixel(10, 60).0, [230, 25, 75], "box edge");
    let (ok, _, stderr) = vlm_zoo(&[
        "generate",
        "--model",
        fixtures().join("paligemma-a").to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--prompt",
        "detect circle",
        "--max-new-tokens",
        "4",
        "--draw",
        png.to_str().unwrap(),
    ]);
    assert!(ok && stderr.contains("boxes.png"), "{stderr}");
}

#[test]
fn segment_prompts_give_masks_and_report_malformed_groups() {
    let img = fixtures().join("images/rgb_300x200.png");
    let model = fixtures().join("paligemma-a");
    let npz = fixtures().join("paligemma-seg/vae-oid.npz");
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("masks.png");
    let base = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> =
            ["generate", "--model", model.to_str().unwrap(), "--image", img.to_str().unwrap()]
                .map(String::from)
                .to_vec();
        a.extend(["--prompt", "segment circle", "--max-new-tokens", "24"].map(String::from));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |args: Vec<String>, cache: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_vlm-zoo"))
            .args(&args)
            .env("HF_HUB_CACHE", cache)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let empty = tmp.path().join("hub");
    let (ok, stdout, stderr) =
        run(base(&["--seg-model", npz.to_str().unwrap(), "--json", "--draw", png.to_str().unwrap()]), &empty);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    // The random fixture writes <loc>/<seg> tokens out of order: every group it wrote is either a
    // mask or a reported error, as the library's parser sees the same text.
    let parsed = zoo_paligemma::parse_segments(v["text"].as_str().unwrap(), 300, 200);
    assert_eq!(v["masks"].as_array().unwrap().len(), parsed.groups.len(), "{v}");
    let errors: Vec<&str> = v["segment_errors"]
        .as_array()
        .map(|a| a.iter().map(|e| e.as_str().unwrap()).collect())
        .unwrap_or_default();
    assert_eq!(errors, parsed.errors.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!errors.is_empty() && stderr.contains(errors[0]), "{stderr}");
    assert_eq!(image::open(&png).unwrap().to_rgb8().dimensions(), (300, 200));

    // Found in the HF cache when not given (a space's snapshot, as the PaliGemma space ships it).
    let snap = empty.join("spaces--big-vision--paligemma-hf/snapshots/abc");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::copy(&npz, snap.join("vae-oid.npz")).unwrap();
    let (ok, stdout, stderr) = run(base(&["--json"]), &empty);
    assert!(ok && !stderr.contains("need the decoder"), "{stderr}");
    assert!(serde_json::from_str::<serde_json::Value>(stdout.trim()).unwrap()["masks"].is_array());

    // Nowhere to be found: the text and a note saying what is missing.
    let (ok, stdout, stderr) = run(base(&["--json"]), &tmp.path().join("none"));
    assert!(ok && stderr.contains("vae-oid.npz") && stderr.contains("--seg-model"), "{stderr}");
    assert!(serde_json::from_str::<serde_json::Value>(stdout.trim()).unwrap().get("masks").is_none());

    // A bad --seg-model fails before generating and names the file.
    let bad = tmp.path().join("bad.npz");
    std::fs::write(&bad, b"PK\x03\x04 truncated").unwrap();
    let (ok, _, stderr) = run(base(&["--seg-model", bad.to_str().unwrap()]), &empty);
    assert!(!ok && stderr.contains("bad.npz") && stderr.lines().count() == 1, "{stderr}");
}

#[test]
fn masks_are_drawn_translucently() {
    let img = fixtures().join("images/rgb_300x200.png");
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("masks.png");
    let mut inside = vec![false; 300 * 200];
    for y in 50..100 {
        for x in 100..150 {
            inside[y * 300 + x] = true;
        }
    }
    let mask = zoo_paligemma::SegmentMask {
        label: "circle".into(),
        bbox: [90, 40, 160, 110],
        mask_rle: zoo_paligemma::segment::CocoRle::encode(&inside, 300, 200),
    };
    vlm_zoo::draw::overlay::draw_masks(&img, &[mask], &png).unwrap();
    let (orig, drawn) = (image::open(&img).unwrap().to_rgb8(), image::open(&png).unwrap().to_rgb8());
    let blend = |o: [u8; 3]| -> [u8; 3] {
        std::array::from_fn(|k| ((o[k] as u16 + [230, 25, 75][k] as u16) / 2) as u8)
    };
    assert_eq!(drawn.get_pixel(125, 75).0, blend(orig.get_pixel(125, 75).0), "inside the mask");
    assert_eq!(drawn.get_pixel(95, 75).0, orig.get_pixel(95, 75).0, "in the box, outside the mask");
    assert_eq!(drawn.get_pixel(90, 75).0, [230, 25, 75], "box edge");
}

#[test]
fn train_init_takes_hub_ids_like_every_model_argument() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_dataset(&tmp.path().join("data"), 40, 32, 1).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vlm-zoo"))
        .args(["train", "--arch", "siglip", "--data", data.to_str().unwrap(), "--out"])
        .arg(tmp.path().join("out"))
        .args(["--init", "acme/absent", "--batch-size", "4"])
        .env("HF_HUB_CACHE", tmp.path().join("hub"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("acme/absent") && stderr.contains("not in the HF cache"), "{stderr}");
}

#[test]
fn hub_shaped_folders_equal_transformers() {
    // Laid out file for file like google/siglip-base-patch16-224 (minimal config.json,
    // spiece.model, no tokenizer.json), google/siglip-so400m-patch14-384 (image size not a
    // multiple of the patch), openai/clip-vit-base-patch32 (legacy preprocessor and ids) and an
    // OpenCLIP export (open_clip_config.json + open_clip_model.safetensors; reference: open_clip).
    for name in [
        "hub-siglip-base",
        "hub-siglip-so400m",
        "hub-siglip2",
        "hub-siglip2-naflex",
        "hub-clip-legacy",
        "hub-open-clip",
    ] {
        zero_shot_json(&fixtures().join(name), name);
    }
}

/// `--text-mask on|off` equal transformers' text tower with and without the padding mask on a
/// SiglipTokenizer folder (auto = off: the tokenizer returns no mask) and a SigLIP 2 Gemma one
/// (auto = on); the defaults are checked against reference.safetensors above.
#[test]
fn text_mask_on_and_off_equal_transformers_both_ways() {
    for name in ["hub-siglip-base", "hub-siglip2"] {
        let dir = fixtures().join(name);
        let r = Reference::read(&dir.join("reference-text-mask.safetensors"));
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        let img = fixtures().join("images/rgb_64x48.png");
        for mask in ["on", "off"] {
            let mut args =
                vec!["zero-shot", "--model", dir.to_str().unwrap(), "--image", img.to_str().unwrap()];
            for t in meta["texts"].as_array().unwrap() {
                args.extend(["--text", t.as_str().unwrap()]);
            }
            args.extend(["--json", "--text-mask", mask]);
            let (ok, stdout, stderr) = vlm_zoo(&args);
            assert!(ok, "{stderr}");
            let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
            let got: Vec<f32> = v["text_embeds"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
                .collect();
            let want = r.f32(&format!("text_embeds_{mask}"));
            assert_slices_close(&got, &want, PARITY_TOL, &format!("{name} --text-mask {mask}"));
        }
    }
    let dir = fixtures().join("hub-siglip-base");
    let (ok, _, stderr) = vlm_zoo(&[
        "zero-shot",
        "--model",
        dir.to_str().unwrap(),
        "--image",
        "x",
        "--text",
        "a",
        "--text-mask",
        "maybe",
    ]);
    assert!(!ok && stderr.contains("maybe") && stderr.contains("auto") && stderr.contains("off"), "{stderr}");
}

#[test]
fn pytorch_bin_only_repos_load_and_bad_bins_are_named() {
    // openai/clip-vit-base-patch32 as older mirrors have it: pytorch_model.bin, no safetensors.
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_copy("hub-clip-legacy", &tmp.path().join("clip-bin"), &["model.safetensors"]);
    zero_shot_json(&dir, "hub-clip-legacy");
    std::fs::write(dir.join("pytorch_model.bin"), b"this is not a zip archive of tensors").unwrap();
    let (ok, _, stderr) = vlm_zoo(&["inspect", "--model", dir.to_str().unwrap()]);
    assert!(
        !ok && stderr.contains("pytorch_model.bin") && stderr.contains("not a PyTorch state dict"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// An OpenCLIP export without tokenizer.json (apple/DFN*, many laion repos) tokenises with
/// open_clip's built-in BPE (its ids: zoo-nn's corpus test); this fixture's 300-token vocabulary
/// is too small for it, which is named. A config naming another tokenizer is named too.
#[test]
fn open_clip_repos_without_tokenizer_json_use_the_built_in_bpe() {
    let tmp = tempfile::tempdir().unwrap();
    let dir =
        fixture_copy("hub-open-clip", &tmp.path().join("oc"), &["tokenizer.json", "tokenizer_config.json"]);
    let (ok, _, stderr) = zero_shot_one(&dir);
    assert!(!ok && stderr.contains("49408 tokens") && stderr.contains("vocab_size is 300"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    edit_json(&dir.join("open_clip_config.json"), |v| {
        v["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = "timm/ViT-B-16-SigLIP".into()
    });
    let (ok, _, stderr) = zero_shot_one(&dir);
    assert!(
        !ok && stderr.contains("open_clip_config.json") && stderr.contains("timm/ViT-B-16-SigLIP"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn open_clip_variants_not_mapped_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_copy("hub-open-clip", &tmp.path().join("oc"), &[]);
    edit_json(&dir.join("open_clip_config.json"), |v| {
        v["model_cfg"]["vision_cfg"]["timm_model_name"] = "vit_base_patch16_siglip_224".into()
    });
    let (ok, _, stderr) = zero_shot_one(&dir);
    assert!(
        !ok && stderr.contains("open_clip_config.json") && stderr.contains("timm_model_name"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn a_config_value_of_the_wrong_type_names_the_key_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_copy("hub-siglip-base", &tmp.path().join("m"), &[]);
    edit_json(&dir.join("config.json"), |v| v["text_config"]["hidden_size"] = "big".into());
    let (ok, _, stderr) = zero_shot_one(&dir);
    assert!(
        !ok && stderr.contains("config.json") && stderr.contains("'text_config.hidden_size'"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn sentencepiece_folders_with_bad_models_or_other_classes_get_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_copy("hub-siglip-base", &tmp.path().join("m"), &[]);
    let model = std::fs::read(dir.join("spiece.model")).unwrap();
    std::fs::write(dir.join("spiece.model"), &model[..model.len() / 3]).unwrap();
    let (ok, _, stderr) = zero_shot_one(&dir);
    assert!(
        !ok && stderr.contains("spiece.model") && stderr.contains("not a valid SentencePiece model"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let dir = fixture_copy("hub-siglip-base", &tmp.path().join("t5"), &[]);
    edit_json(&dir.join("tokenizer_config.json"), |v| v["tokenizer_class"] = "T5Tokenizer".into());
    let (ok, _, stderr) = zero_shot_one(&dir);
    assert!(!ok && stderr.contains("T5Tokenizer") && stderr.contains("not supported"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// `vlm-zoo quantize` saves the q8 panels once; `--dtype q8` then uses them in place (the same
/// answers as quantising at load), notices when the checkpoint changed, and really reads them.
#[test]
fn saved_q8_weights_load_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_copy("gemma-gqa", &tmp.path().join("m"), &[]);
    let d = dir.to_str().unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let prompt = meta["prompts"][1].as_str().unwrap();
    let run = || {
        let (ok, stdout, stderr) = vlm_zoo(&[
            "generate",
            "--model",
            d,
            "--prompt",
            prompt,
            "--max-new-tokens",
            "8",
            "--json",
            "--dtype",
            "q8",
        ]);
        assert!(ok, "{stderr}");
        token_ids(&serde_json::from_str(stdout.trim()).unwrap())
    };
    let quantised_at_load = run();
    let (ok, stdout, stderr) = vlm_zoo(&["quantize", "--model", d]);
    assert!(ok && stdout.contains("wrote") && dir.join("model.q8.safetensors").is_file(), "{stdout}{stderr}");
    let (_, stdout, _) = vlm_zoo(&["quantize", "--model", d]);
    assert!(stdout.contains("up to date"), "{stdout}");
    assert_eq!(run(), quantised_at_load, "saved panels give the same ids");
    // The saved panels are what a q8 load reads: zeroed, the answer changes.
    let q8 = dir.join("model.q8.safetensors");
    let mut bytes = std::fs::read(&q8).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + header..].iter_mut().for_each(|b| *b = 0);
    std::fs::write(&q8, &bytes).unwrap();
    assert_ne!(run(), quantised_at_load, "the saved file is read");
    // A checkpoint that changed makes the saved file stale: quantised at load again.
    let weights = dir.join("model.safetensors");
    let data = std::fs::read(&weights).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(&weights, data).unwrap();
    assert_eq!(run(), quantised_at_load, "a stale file is not used");
    let (_, stdout, _) = vlm_zoo(&["quantize", "--model", d]);
    assert!(stdout.contains("wrote"), "{stdout}");
    assert_eq!(run(), quantised_at_load);
}
