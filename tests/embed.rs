//! `vlm-zoo embed` end to end on the committed fixtures: shares that cover a dataset exactly once
//! and equal one unsharded run and `zero-shot --json`; a killed run resumed into the same bytes;
//! the parquet schema read back; bad input refused in one line.
#![allow(clippy::unwrap_used)]

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn vlm_zoo(args: &[&str]) -> (bool, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_vlm-zoo")).args(args).env("HF_HUB_OFFLINE", "1").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn embed(model: &str, data: &Path, out: &Path, extra: &[&str]) {
    let m = fixtures().join(model);
    let mut args = vec!["embed", "--model", m.to_str().unwrap(), "--data", data.to_str().unwrap()];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(extra);
    let (ok, stdout, stderr) = vlm_zoo(&args);
    assert!(ok, "{args:?}: {stderr}");
    assert!(stdout.contains("rows"), "{stdout}");
}

/// One row as read back: image and text embeddings.
type Rows = BTreeMap<String, (Vec<f32>, Option<Vec<f32>>)>;

fn floats(f: &Field) -> Option<Vec<f32>> {
    match f {
        Field::Null => None,
        Field::ListInternal(l) => Some(
            l.elements()
                .iter()
                .map(|v| match v {
                    Field::Float(x) => *x,
                    Field::Float16(x) => x.to_f32(),
                    other => panic!("{other:?}"),
                })
                .collect(),
        ),
        other => panic!("{other:?}"),
    }
}

/// The part files of a run's folder, in order.
fn parts(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    v.sort();
    v
}

/// Every row of the parts in `dir` (and its shard folders); a key seen twice fails.
fn read_rows(dir: &Path) -> Rows {
    let mut folders = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            folders.push(p);
        }
    }
    let mut out = Rows::new();
    for part in folders.iter().flat_map(|d| parts(d)) {
        let r = SerializedFileReader::new(std::fs::File::open(&part).unwrap()).unwrap();
        for row in r.get_row_iter(None).unwrap() {
            let row = row.unwrap();
            let fields: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
            let Field::Str(key) = fields[0] else { panic!("{:?}", fields[0]) };
            let old = out.insert(key.clone(), (floats(fields[1]).unwrap(), floats(fields[2])));
            assert!(old.is_none(), "{key} written twice");
        }
    }
    out
}

fn metadata(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("embed.json")).unwrap()).unwrap()
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

/// A JSONL dataset: `n` synthetic scenes, the fixture images (other sizes and channels), one row
/// without a caption and one image that does not decode. Returns the file and its rows
/// (image path as the loader keys it, caption).
fn dataset(dir: &Path, n: usize) -> (PathBuf, Vec<(String, String)>) {
    let src = vlm_zoo::synthetic::write_dataset(&dir.join("src"), n, 32, 5).unwrap();
    let mut rows: Vec<(String, String)> = std::fs::read_to_string(&src)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (format!("src/{}", v["image"].as_str().unwrap()), v["caption"].as_str().unwrap().to_string())
        })
        .collect();
    for img in ["rgb_64x48.png", "grey_40x40.png", "rgba_50x30.png", "rgb_23x37.png"] {
        std::fs::copy(fixtures().join("images").join(img), dir.join(img)).unwrap();
        rows.push((img.to_string(), format!("a picture called {img}")));
    }
    rows.push(("rgb_300x200.png".into(), String::new())); // no caption
    std::fs::copy(fixtures().join("images/rgb_300x200.png"), dir.join("rgb_300x200.png")).unwrap();
    std::fs::write(dir.join("broken.png"), b"not a png at all").unwrap();
    rows.push(("broken.png".into(), "never embedded".into()));
    let mut text = String::new();
    for (image, caption) in &rows {
        let v = if caption.is_empty() {
            serde_json::json!({"image": image})
        } else {
            serde_json::json!({"image": image, "caption": caption})
        };
        text.push_str(&format!("{v}\n"));
    }
    let data = dir.join("data.jsonl");
    std::fs::write(&data, text).unwrap();
    let rows = rows.into_iter().map(|(i, c)| (dir.join(i).display().to_string(), c)).collect();
    (data, rows)
}

/// `zero-shot --json`'s image and text embeddings of `rows` (image path, caption).
fn zero_shot(model: &str, rows: &[(String, String)]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let m = fixtures().join(model);
    let mut args = vec!["zero-shot".to_string(), "--json".into(), "--model".into(), m.display().to_string()];
    for (image, caption) in rows {
        args.extend(["--image".into(), image.clone(), "--text".into(), caption.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = vlm_zoo(&args);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let get = |k: &str| -> Vec<Vec<f32>> { serde_json::from_value(v[k].clone()).unwrap() };
    (get("image_embeds"), get("text_embeds"))
}

/// Every row equals zero-shot's embeddings of that image and caption (within 1e-5); rows
/// without a caption have no text embedding.
fn assert_equals_zero_shot(model: &str, got: &Rows, rows: &[(String, String)]) {
    let good: Vec<(String, String)> =
        rows.iter().filter(|(i, _)| !i.ends_with("broken.png")).cloned().collect();
    let with_captions: Vec<(String, String)> = good
        .iter()
        .map(|(i, c)| (i.clone(), if c.is_empty() { "unused".to_string() } else { c.clone() }))
        .collect();
    let (images, texts) = zero_shot(model, &with_captions);
    let mut worst = 0f32;
    for (j, (key, caption)) in good.iter().enumerate() {
        let (img, txt) = got.get(key).unwrap_or_else(|| panic!("{key} missing"));
        assert!(close(img, &images[j], 1e-5), "{model} {key}: image embedding differs from zero-shot's");
        match txt {
            Some(t) => assert!(close(t, &texts[j], 1e-5), "{model} {key}: text embedding differs"),
            None => assert!(caption.is_empty(), "{key}: a caption but no text embedding"),
        }
        if caption.is_empty() {
            assert!(txt.is_none(), "{key}: no caption but a text embedding");
        }
        for (a, b) in img.iter().zip(&images[j]) {
            worst = worst.max((a - b).abs());
        }
    }
    eprintln!("{model}: largest difference from zero-shot's image embeddings {worst:e}");
}

#[test]
fn three_shards_equal_one_run_and_zero_shot() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, rows) = dataset(tmp.path(), 13);
    let whole = tmp.path().join("whole");
    embed("siglip-a", &data, &whole, &["--batch", "4", "--rows-per-file", "5"]);
    let sharded = tmp.path().join("sharded");
    for i in 0..3 {
        embed(
            "siglip-a",
            &data,
            &sharded,
            &["--batch", "3", "--rows-per-file", "4", "--shard", &format!("{i}/3")],
        );
        assert!(sharded.join(format!("shard-{i:04}-of-0003/embed.json")).is_file());
    }
    let (a, b) = (read_rows(&whole), read_rows(&sharded));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "the shares cover other keys");
    assert_eq!(a.len(), rows.len() - 1, "every row but the broken image");
    for (k, (img, txt)) in &a {
        let (img2, txt2) = &b[k];
        assert!(close(img, img2, 1e-5) && txt.is_some() == txt2.is_some(), "{k}");
        if let (Some(t), Some(t2)) = (txt, txt2) {
            assert!(close(t, t2, 1e-5), "{k}");
        }
        let norm: f32 = img.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{k}: not L2-normalised ({norm})");
    }
    assert_equals_zero_shot("siglip-a", &a, &rows);

    let m = metadata(&whole);
    assert_eq!(m["count"], rows.len() - 1);
    assert_eq!(m["with_text"], rows.len() - 2);
    assert_eq!(m["skipped"], 1);
    assert!(m["skipped_first"][0].as_str().unwrap().contains("broken.png"), "{m}");
    assert_eq!(m["complete"], true);
    assert_eq!(m["model_type"], "siglip");
    assert_eq!(m["shard"], "0/1");
    assert_eq!(m["files"].as_array().unwrap().len(), rows.len().div_ceil(5));
    let total: u64 = (0..3)
        .map(|i| metadata(&sharded.join(format!("shard-{i:04}-of-0003")))["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total as usize, rows.len() - 1);

    // CLIP and SigLIP 2 NaFlex (whose workers only decode: each image keeps its aspect ratio).
    for model in ["clip-a", "hub-siglip2-naflex"] {
        let out = tmp.path().join(model);
        embed(model, &data, &out, &["--batch", "4"]);
        assert_equals_zero_shot(model, &read_rows(&out), &rows);
    }
}

/// A WebDataset of `files` tar shards of `per` samples each (the last sample of the first shard
/// without a caption).
fn tar_dataset(dir: &Path, files: usize, per: usize) -> String {
    let src = vlm_zoo::synthetic::write_dataset(&dir.join("src"), files * per, 32, 9).unwrap();
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(src).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for f in 0..files {
        let mut b = tar::Builder::new(std::fs::File::create(dir.join(format!("s-{f:03}.tar"))).unwrap());
        for i in 0..per {
            let v = &lines[f * per + i];
            let png = std::fs::read(dir.join("src").join(v["image"].as_str().unwrap())).unwrap();
            let mut add = |name: String, data: &[u8]| {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, name, data).unwrap();
            };
            add(format!("{:06}.png", f * per + i), &png);
            if !(f == 0 && i == per - 1) {
                add(format!("{:06}.txt", f * per + i), v["caption"].as_str().unwrap().as_bytes());
            }
        }
        b.finish().unwrap();
    }
    format!("{}/s-{{000..{:03}}}.tar", dir.display(), files - 1)
}

fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.ends_with(".vlm-zoo.lock"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

#[test]
fn a_killed_run_resumes_into_the_same_files() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tar_dataset(tmp.path(), 4, 6);
    let data = Path::new(&spec);
    let args = ["--batch", "4", "--rows-per-file", "5"];
    let full = tmp.path().join("full");
    embed("siglip-a", data, &full, &args);
    let want = files_of(&full);
    assert_eq!(want.keys().filter(|k| k.ends_with(".parquet")).count(), 5, "{:?}", want.keys());
    assert_eq!(metadata(&full)["with_text"], 23);

    // Killed after two parts, with a scratch file of the third half written.
    let killed = tmp.path().join("killed");
    embed("siglip-a", data, &killed, &[&args[..], &["--stop-after-files", "2"]].concat());
    assert_eq!(parts(&killed).len(), 2);
    assert_eq!(metadata(&killed)["complete"], false);
    std::fs::write(killed.join("part-00002.tmp-99999"), b"half a file").unwrap();
    embed("siglip-a", data, &killed, &args);
    assert_eq!(files_of(&killed), want, "the resumed run wrote other bytes");

    // The last part deleted (killed between the rename and embed.json): written again, the same.
    std::fs::remove_file(killed.join("part-00004.parquet")).unwrap();
    embed("siglip-a", data, &killed, &args);
    assert_eq!(files_of(&killed), want);

    // A finished run started again writes nothing and changes nothing.
    let (ok, stdout, _) = vlm_zoo(&[
        "embed",
        "--model",
        fixtures().join("siglip-a").to_str().unwrap(),
        "--data",
        &spec,
        "--out",
        killed.to_str().unwrap(),
        "--batch",
        "4",
        "--rows-per-file",
        "5",
    ]);
    assert!(ok && stdout.contains("5 parts resumed") && stdout.contains("embedded 0 images"), "{stdout}");
    assert_eq!(files_of(&killed), want);

    // Shares of 4 shards split by file cover the same keys.
    let sharded = tmp.path().join("sharded");
    for i in 0..3 {
        embed("siglip-a", data, &sharded, &["--shard", &format!("{i}/3")]);
    }
    let m = metadata(&sharded.join("shard-0000-of-0003"));
    assert!(m["sharding"].as_str().unwrap().starts_with("by file"), "{m}");
    let (a, b) = (read_rows(&full), read_rows(&sharded));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    assert!(a.iter().all(|(k, (i, _))| close(i, &b[k].0, 1e-5)));
}

#[test]
fn parts_read_back_with_their_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, rows) = dataset(tmp.path(), 6);
    let (f32_out, f16_out) = (tmp.path().join("f32"), tmp.path().join("f16"));
    embed("clip-a", &data, &f32_out, &["--rows-per-file", "100"]);
    embed("clip-a", &data, &f16_out, &["--rows-per-file", "100", "--out-dtype", "f16"]);
    for (dir, physical) in [(&f32_out, "FLOAT"), (&f16_out, "FIXED_LEN_BYTE_ARRAY")] {
        let part = dir.join("part-00000.parquet");
        let r = SerializedFileReader::new(std::fs::File::open(&part).unwrap()).unwrap();
        let meta = r.metadata();
        assert_eq!(meta.file_metadata().num_rows() as usize, rows.len() - 1);
        let schema = meta.file_metadata().schema_descr();
        let cols: Vec<(String, String, i16)> = (0..schema.num_columns())
            .map(|i| {
                let c = schema.column(i);
                (c.path().string(), format!("{:?}", c.physical_type()), c.max_def_level())
            })
            .collect();
        assert_eq!(
            cols,
            vec![
                ("key".to_string(), "BYTE_ARRAY".to_string(), 0),
                ("image_embedding.list.element".to_string(), physical.to_string(), 1),
                ("text_embedding.list.element".to_string(), physical.to_string(), 2),
            ]
        );
        let kv = meta.file_metadata().key_value_metadata().unwrap();
        assert!(kv.iter().any(|k| k.key == "vlm_zoo.embed"));
        let m = metadata(dir);
        assert_eq!(m["dtype"], if physical == "FLOAT" { "f32" } else { "f16" });
        assert_eq!(m["files"][0]["rows"], rows.len() - 1);
    }
    let (a, b) = (read_rows(&f32_out), read_rows(&f16_out));
    let dims = metadata(&f32_out)["dims"].as_u64().unwrap() as usize;
    assert!(a.values().all(|(i, _)| i.len() == dims));
    assert!(a.iter().all(|(k, (i, t))| close(i, &b[k].0, 1e-3) && t.is_some() == b[k].1.is_some()));
}

#[test]
fn bad_input_is_one_line_and_no_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, _) = dataset(tmp.path(), 3);
    let siglip = fixtures().join("siglip-a");
    let out = tmp.path().join("out");
    embed("siglip-a", &data, &out, &[]);
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let sharded = tmp.path().join("sharded");
    embed("siglip-a", &data, &sharded, &["--shard", "1/2"]);
    let d = data.to_str().unwrap();
    let o = out.to_str().unwrap();
    let s = sharded.to_str().unwrap();
    let m = siglip.to_str().unwrap();
    let clip = fixtures().join("clip-a");
    let gemma = fixtures().join("gemma-gqa");
    let fresh = tmp.path().join("fresh");
    let fr = fresh.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--model", m, "--data", d, "--out", fr, "--shard", "3"], "expected I/N"),
        (vec!["--model", m, "--data", d, "--out", fr, "--shard", "a/b"], "not a whole number"),
        (vec!["--model", m, "--data", d, "--out", fr, "--shard", "1/0"], "at least 1"),
        (vec!["--model", m, "--data", d, "--out", fr, "--shard", "0/0"], "at least 1"),
        (vec!["--model", m, "--data", d, "--out", fr, "--shard", "3/3"], "below N"),
        (vec!["--model", clip.to_str().unwrap(), "--data", d, "--out", o], "another run (model"),
        (vec!["--model", m, "--data", d, "--out", o, "--rows-per-file", "7"], "rows_per_file"),
        (vec!["--model", m, "--data", d, "--out", o, "--shard", "0/2"], "whole input"),
        (
            vec!["--model", clip.to_str().unwrap(), "--data", d, "--out", s, "--shard", "0/2"],
            "another run (model",
        ),
        (vec!["--model", m, "--data", d, "--out", s, "--shard", "0/3"], "another split"),
        (vec!["--model", m, "--data", d, "--out", foreign.to_str().unwrap()], "notes.txt"),
        (vec!["--model", m, "--data", "/no/such/data.jsonl", "--out", fr], "/no/such/data.jsonl"),
        (vec!["--model", gemma.to_str().unwrap(), "--data", d, "--out", fr], "not supported by embed"),
        (vec!["--model", m, "--data", d, "--out", fr, "--batch", "0"], "at least 1"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["embed"];
        all.extend(&args);
        let (ok, _, stderr) = vlm_zoo(&all);
        assert!(!ok, "{all:?} should fail");
        assert!(stderr.contains(needle) && stderr.trim().lines().count() == 1, "{all:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!fresh.exists(), "a refused run left {}", fresh.display());
    assert_eq!(std::fs::read_to_string(foreign.join("notes.txt")).unwrap(), "mine");
    // The refused runs changed nothing in the folders they were refused.
    assert_eq!(metadata(&out)["model_type"], "siglip");
    assert_eq!(metadata(&out)["complete"], true);
}
