//! Bad input and faults get one-line errors, never panics, hangs, OOM kills or silent NaN
//! (issue 14). Each case failed before its fix.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vlm-zoo"))
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = bin().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One line on stderr that says `needles`, no panic.
#[track_caller]
fn one_line_error(args: &[&str], needles: &[&str]) {
    let (ok, _, stderr) = run(args);
    assert!(!ok, "{args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} not in {stderr}");
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
}

#[test]
fn closed_pipes_and_full_disks_do_not_panic() {
    let m = fixtures().join("gemma2-a");
    let mut child = bin()
        .args(["generate", "--model", m.to_str().unwrap(), "--prompt", "hello", "--max-new-tokens", "40"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away, as `| head -c 0` does
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(stderr.trim().is_empty(), "{stderr}");
    if Path::new("/dev/full").exists() {
        let out = bin()
            .args(["inspect", "--model", m.to_str().unwrap()])
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("cannot write to stdout") && !stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn generation_that_fills_the_context_says_so() {
    let m = fixtures().join("gemma2-a");
    let (ok, stdout, stderr) = run(&[
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "hello",
        "--max-new-tokens",
        "5000",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["stop_reason"], "context", "{stdout}");
}

/// A PNG that declares `w` x `h` pixels (grey) and holds no pixel data.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn chunk(png: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        let mut body = kind.to_vec();
        body.extend(data);
        png.extend((data.len() as u32).to_be_bytes());
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    }
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &[]);
    chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn images_are_bounded_before_they_are_decoded_or_resized() {
    let tmp = tempfile::tempdir().unwrap();
    let siglip = fixtures().join("siglip-a");
    let clip = fixtures().join("clip-a");
    let zs = |model: &Path, image: &Path, needles: &[&str]| {
        one_line_error(
            &[
                "zero-shot",
                "--model",
                model.to_str().unwrap(),
                "--image",
                image.to_str().unwrap(),
                "--text",
                "a",
            ],
            needles,
        )
    };
    // A 22000 x 22000 image is refused from its header (it took 4.7 GB before).
    let huge = tmp.path().join("huge.png");
    std::fs::write(&huge, png_header_only(22000, 22000)).unwrap();
    zs(&siglip, &huge, &["huge.png", "22000x22000", "limit"]);
    // Not a regular file: /dev/zero read until memory ran out; a FIFO blocked forever.
    zs(&siglip, Path::new("/dev/zero"), &["/dev/zero", "not a regular file"]);
    let fifo = tmp.path().join("fifo.png");
    if Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
        zs(&siglip, &fifo, &["fifo.png", "not a regular file"]);
    }
    // 1 x 3,000,000 pixels through CLIP's shortest-edge resize (12.4 GB before).
    let thin = tmp.path().join("thin.png");
    image::GrayImage::from_pixel(3_000_000, 1, image::Luma([128])).save(&thin).unwrap();
    zs(&clip, &thin, &["3000000x1", "resizes to", "aspect ratio"]);
}

#[test]
fn broken_configs_give_errors_not_nan() {
    let tmp = tempfile::tempdir().unwrap();
    let img = fixtures().join("images/rgb_64x48.png");
    let zs = |dir: &Path, needles: &[&str]| {
        one_line_error(
            &["zero-shot", "--model", dir.to_str().unwrap(), "--image", img.to_str().unwrap(), "--text", "a"],
            needles,
        )
    };
    // layer_norm_eps -1 and image_std 0: NaN scores printed with exit 0 before.
    let dir = tmp.path().join("siglip");
    copy_dir(&fixtures().join("siglip-a"), &dir);
    let cfg = dir.join("config.json");
    let orig = std::fs::read_to_string(&cfg).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&orig).unwrap();
    v["vision_config"]["layer_norm_eps"] = (-1.0).into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    zs(&dir, &["layer_norm_eps -1"]);
    std::fs::write(&cfg, &orig).unwrap();
    let pre = dir.join("preprocessor_config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&pre).unwrap()).unwrap();
    v["image_std"] = serde_json::json!([0, 0, 0]);
    std::fs::write(&pre, v.to_string()).unwrap();
    zs(&dir, &["preprocessor_config.json", "image_std"]);
    // NaN weights: the output check names the stage.
    copy_dir(&fixtures().join("siglip-a"), &dir);
    let st = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let info = meta.info("vision_model.post_layernorm.weight").unwrap();
    let at = 8 + n + info.data_offsets.0;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&st, bytes).unwrap();
    zs(&dir, &["vision_model.post_layernorm.weight", "NaN or infinite"]);
    // rope_theta 0: token 0 generated forever before.
    let dir = tmp.path().join("gemma");
    copy_dir(&fixtures().join("gemma-mqa"), &dir);
    let cfg = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["rope_theta"] = 0.into();
    if v["rope_parameters"].is_object() {
        v["rope_parameters"]["rope_theta"] = 0.into();
    }
    std::fs::write(&cfg, v.to_string()).unwrap();
    one_line_error(
        &["generate", "--model", dir.to_str().unwrap(), "--prompt", "hello world"],
        &["rope_theta 0"],
    );
}

#[test]
fn nonsensical_training_options_are_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_dataset(&tmp.path().join("data"), 40, 32, 1).unwrap();
    let out = tmp.path().join("out");
    let train = |extra: &[&str], needles: &[&str]| {
        let mut args = vec![
            "train",
            "--arch",
            "siglip",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        one_line_error(&args, needles);
    };
    train(&["--lr", "-1"], &["--lr -1"]);
    train(&["--val-fraction", "-0.5"], &["--val-fraction"]);
    train(&["--val-fraction", "NaN"], &["--val-fraction"]);
    train(&["--grad-clip", "NaN"], &["--grad-clip"]);
    train(&["--random-crop", "5"], &["--random-crop 5"]);
    train(&["--grad-accum", "1000", "--batch-size", "8", "--epochs", "1"], &["--grad-accum 1000"]);
    train(&["--labels", "/no/such/labels.txt"], &["labels.txt"]);
    train(&["--init", fixtures().join("clip-a").to_str().unwrap()], &["--arch siglip", "clip checkpoint"]);
    assert!(!out.join("model.safetensors").exists(), "nothing is written by a refused run");
    let m = fixtures().join("clip-a");
    one_line_error(&["bench", "--model", m.to_str().unwrap(), "--iters", "0"], &["--iters"]);
}

fn train_args(data: &Path, out: &Path) -> vlm_zoo::train::TrainArgs {
    vlm_zoo::train::TrainArgs {
        arch: vlm_zoo::models::Arch::Clip,
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        epochs: 1,
        batch_size: 8,
        checkpoint_every: 2,
        vocab_size: 300,
        progress: false,
        ..Default::default()
    }
}

#[test]
fn a_corrupt_image_is_skipped_and_named_or_refused_with_strict() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_dataset(&tmp.path().join("data"), 40, 32, 2).unwrap();
    // Truncate one PNG mid-data: its header still reads, the pixels do not (this aborted the run
    // at its step before, and --resume died on the same row forever).
    let victim = tmp.path().join("data/img00003.png");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let mut args = train_args(&data, &tmp.path().join("out"));
    args.val_fraction = 0.0;
    let report = vlm_zoo::train::train(&args).unwrap();
    assert_eq!(report.skipped_images, 1, "{:?}", report.skipped_samples);
    assert!(report.skipped_samples[0].contains("img00003.png"), "{:?}", report.skipped_samples);
    assert!(report.losses.iter().all(|l| l.is_finite()));
    let mut strict = train_args(&data, &tmp.path().join("strict"));
    strict.strict = true;
    let e = vlm_zoo::train::train(&strict).unwrap_err().to_string();
    assert!(e.contains("img00003.png") && e.contains("--strict"), "{e}");
}

#[test]
fn checkpoints_are_never_lost_to_a_second_run_or_a_bad_pointer() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vlm_zoo::synthetic::write_dataset(&tmp.path().join("data"), 40, 32, 3).unwrap();
    let out = tmp.path().join("out");
    vlm_zoo::train::train(&train_args(&data, &out)).unwrap();
    let latest = out.join("checkpoints/latest");
    let kept = std::fs::read_to_string(&latest).unwrap();
    // A new run into the same folder without --resume would overwrite the checkpoints.
    let e = vlm_zoo::train::train(&train_args(&data, &out)).unwrap_err().to_string();
    assert!(e.contains("--resume") && e.contains("earlier run"), "{e}");
    // Two runs at once: the second names the first.
    let lock = vlm_zoo::training::checkpoint::lock(&out).unwrap();
    let mut resume = train_args(&data, &out);
    resume.resume = true;
    let e = vlm_zoo::train::train(&resume).unwrap_err().to_string();
    assert!(e.contains("another training run") && e.contains(&std::process::id().to_string()), "{e}");
    drop(lock);
    // A pointer that dangles or leaves the folder: refused, nothing restarted from step 0.
    for bad in ["step-99999999", "../../etc", ""] {
        std::fs::write(&latest, bad).unwrap();
        let e = vlm_zoo::train::train(&resume).unwrap_err().to_string();
        assert!(e.contains("refusing to resume"), "{bad}: {e}");
    }
    std::fs::write(&latest, &kept).unwrap();
    assert!(out.join("checkpoints").join(kept.trim()).join("state.json").is_file());
    let leftovers: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name().to_string_lossy().contains("partial")
                || e.file_name().to_string_lossy().contains("tmp")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn errors_name_the_right_thing_and_come_before_the_work() {
    let tmp = tempfile::tempdir().unwrap();
    let img = fixtures().join("images/rgb_64x48.png");
    // --draw into a missing folder: refused before generating (it failed after, as "cannot read image").
    let pg = fixtures().join("paligemma-a");
    one_line_error(
        &[
            "generate",
            "--model",
            pg.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
            "--prompt",
            "detect cat",
            "--draw",
            "/no/such/folder/out.png",
        ],
        &["/no/such/folder/out.png", "--draw"],
    );
    // A corrupt --tokenizer is named as the user's file, not the copy in --out.
    let data = vlm_zoo::synthetic::write_dataset(&tmp.path().join("data"), 20, 32, 5).unwrap();
    let bad_tok = tmp.path().join("my-tokenizer.json");
    std::fs::write(&bad_tok, "{ not json").unwrap();
    let out = tmp.path().join("out");
    one_line_error(
        &[
            "train",
            "--arch",
            "clip",
            "--batch-size",
            "4",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--tokenizer",
            bad_tok.to_str().unwrap(),
        ],
        &["my-tokenizer.json"],
    );
    // Overlapping tensor data: named, and inspect says so too (it called the file fine).
    let dir = tmp.path().join("overlap");
    copy_dir(&fixtures().join("siglip-a"), &dir);
    let st = dir.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let (a, b) = ("logit_bias", "logit_scale");
    let off = header[a]["data_offsets"].clone();
    header[b]["data_offsets"] = off;
    let mut h = header.to_string().into_bytes();
    h.resize(n, b' ');
    let mut patched = bytes[..8].to_vec();
    patched.extend(h);
    patched.extend(&bytes[8 + n..]);
    std::fs::write(&st, patched).unwrap();
    one_line_error(&["inspect", "--model", dir.to_str().unwrap()], &["logit_bias", "logit_scale", "overlap"]);
    // Shards named outside the model folder.
    let dir = tmp.path().join("escape");
    copy_dir(&fixtures().join("paligemma-a-hub-sharded"), &dir);
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    let first = text.split("model-0000").nth(1).unwrap().split('"').next().unwrap().to_string();
    std::fs::write(&index, text.replacen(&format!("model-0000{first}"), "../../etc/passwd", 1)).unwrap();
    one_line_error(
        &["inspect", "--model", dir.to_str().unwrap()],
        &["../../etc/passwd", "inside the model folder"],
    );
    // An invalid config: inspect exited 0.
    let dir = tmp.path().join("badcfg");
    copy_dir(&fixtures().join("siglip-a"), &dir);
    let cfg = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["vision_config"]["num_attention_heads"] = 5.into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    one_line_error(&["inspect", "--model", dir.to_str().unwrap()], &["num_attention_heads"]);
}

#[test]
fn absurd_sizes_are_refused_before_anything_is_allocated() {
    let tmp = tempfile::tempdir().unwrap();
    let img = fixtures().join("images/rgb_64x48.png");
    let edit = |name: &str, file: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let dir = tmp.path().join(format!("{name}-{file}"));
        copy_dir(&fixtures().join(name), &dir);
        let p = dir.join(file);
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, v.to_string()).unwrap();
        dir
    };
    let zs = |dir: &Path, needles: &[&str]| {
        one_line_error(
            &["zero-shot", "--model", dir.to_str().unwrap(), "--image", img.to_str().unwrap(), "--text", "a"],
            needles,
        )
    };
    // Grew to the machine's whole memory until the kernel killed it.
    let d =
        edit("siglip-a", "config.json", &|v| v["text_config"]["num_hidden_layers"] = 1_000_000_000u64.into());
    zs(&d, &["num_hidden_layers 1000000000", "memory"]);
    // Aborted with "memory allocation of ... failed".
    let d =
        edit("clip-a", "config.json", &|v| v["vision_config"]["hidden_size"] = 1_000_000_000_000u64.into());
    zs(&d, &["hidden_size", "memory"]);
    let d = edit("gemma-mqa", "config.json", &|v| v["num_hidden_layers"] = 1_000_000_000u64.into());
    one_line_error(
        &["generate", "--model", d.to_str().unwrap(), "--prompt", "hi"],
        &["num_hidden_layers", "memory"],
    );
    let d = edit("siglip-a", "preprocessor_config.json", &|v| {
        v["size"] = serde_json::json!({"height": 100000, "width": 100000})
    });
    zs(&d, &["100000x100000"]);
}

#[test]
fn nan_gemma_weights_huge_vocab_and_a_diverging_loss() {
    let tmp = tempfile::tempdir().unwrap();
    // NaN Gemma weights generated token 0 forever, exit 0.
    let dir = tmp.path().join("gemma");
    copy_dir(&fixtures().join("gemma-mqa"), &dir);
    let st = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let (name, info) = meta.tensors().into_iter().find(|(k, _)| k.contains("mlp.down_proj")).unwrap();
    let at = 8 + n + info.data_offsets.0;
    bytes[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    std::fs::write(&st, bytes).unwrap();
    one_line_error(
        &["generate", "--model", dir.to_str().unwrap(), "--prompt", "hi"],
        &[&name, "NaN or infinite"],
    );
    // --vocab-size 1e12 aborted with a failed allocation.
    let data = vlm_zoo::synthetic::write_dataset(&tmp.path().join("data"), 40, 32, 6).unwrap();
    let out = tmp.path().join("out");
    let train = |extra: &[&str]| {
        let mut args =
            vec!["train", "--arch", "clip", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        run(&args)
    };
    let (ok, _, stderr) = train(&["--vocab-size", "1000000000000"]);
    assert!(!ok && stderr.contains("--vocab-size") && stderr.trim().lines().count() == 1, "{stderr}");
    // A diverging run names a checkpoint that exists, or says there is none.
    let (ok, _, stderr) =
        train(&["--lr", "1e30", "--batch-size", "8", "--checkpoint-every", "1", "--epochs", "3"]);
    assert!(!ok && stderr.contains("loss became") && !stderr.contains("panicked"), "{stderr}");
    match stderr.split("the last good checkpoint is ").nth(1) {
        Some(rest) => assert!(Path::new(rest.trim()).join("state.json").is_file(), "{stderr}"),
        None => assert!(stderr.contains("no checkpoint was saved"), "{stderr}"),
    }
}

#[test]
fn json_inputs_are_read_only_from_regular_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&fixtures().join("siglip-a"), &dir);
    std::fs::remove_file(dir.join("config.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("config.json")).unwrap();
    one_line_error(&["inspect", "--model", dir.to_str().unwrap()], &["config.json", "not a regular file"]);
}
