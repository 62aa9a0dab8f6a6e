//! `vlm-zoo train` on the data formats people have, each made here from the synthetic shapes:
//! WebDataset tar shards (brace ranges, `::`-joined sources, a truncated shard, a sample without
//! a caption), img2dataset's folder tree, open_clip's TSV, HF imagefolder's metadata.jsonl,
//! parquet with image bytes and with paths; bad samples skipped and counted, bad specs refused.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use vlm_zoo::models::Arch;
use vlm_zoo::train::TrainArgs;

/// `n` synthetic (png bytes, caption) samples.
fn samples(dir: &Path, n: usize) -> Vec<(Vec<u8>, String)> {
    let jsonl = vlm_zoo::synthetic::write_dataset(&dir.join("src"), n, 32, 11).unwrap();
    std::fs::read_to_string(jsonl)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let bytes = std::fs::read(dir.join("src").join(v["image"].as_str().unwrap())).unwrap();
            (bytes, v["caption"].as_str().unwrap().to_string())
        })
        .collect()
}

fn add(b: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, data).unwrap();
}

/// A WebDataset shard of `samples` (key.png + key.txt, or key.json with `caption` when `json`).
fn shard(path: &Path, samples: &[(Vec<u8>, String)], start: usize, json: bool) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (i, (png, caption)) in samples.iter().enumerate() {
        let key = format!("{:09}", start + i);
        add(&mut b, &format!("{key}.png"), png);
        if json {
            add(
                &mut b,
                &format!("{key}.json"),
                serde_json::json!({"caption": caption, "url": "x"}).to_string().as_bytes(),
            );
        } else {
            add(&mut b, &format!("{key}.txt"), caption.as_bytes());
        }
    }
    b.finish().unwrap();
}

fn args(data: &Path, out: &Path) -> TrainArgs {
    TrainArgs {
        arch: Arch::Siglip,
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        epochs: 1,
        batch_size: 8,
        vocab_size: 300,
        progress: false,
        ..Default::default()
    }
}

#[test]
fn webdataset_shards_with_ranges_joins_and_bad_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let s = samples(tmp.path(), 60);
    let dir = tmp.path().join("shards");
    std::fs::create_dir_all(&dir).unwrap();
    shard(&dir.join("a-000.tar"), &s[..20], 0, false);
    shard(&dir.join("a-001.tar"), &s[20..40], 20, false);
    // A second source: captions in .json, one sample without any caption.
    let mut b = tar::Builder::new(std::fs::File::create(dir.join("b.tar")).unwrap());
    for (i, (png, caption)) in s[40..].iter().enumerate() {
        let key = format!("b{i:05}");
        add(&mut b, &format!("{key}.png"), png);
        if i != 3 {
            add(&mut b, &format!("{key}.txt"), caption.as_bytes());
        }
    }
    b.finish().unwrap();
    let spec = format!("{}/a-{{000..001}}.tar::{}/b.tar", dir.display(), dir.display());
    let out = tmp.path().join("out");
    let mut a = args(Path::new(&spec), &out);
    a.val_fraction = 0.1;
    let r = vlm_zoo::train::train(&a).unwrap();
    assert!(r.steps >= 5 && r.losses.iter().all(|l| l.is_finite()), "{} steps", r.steps);
    assert!(
        r.skipped_samples.iter().any(|s| s.contains("b00003") && s.contains("no caption")),
        "{:?}",
        r.skipped_samples
    );
    assert!(out.join("held-out").is_dir() && !r.recall.is_empty());

    // A truncated shard: the samples before the cut are used, the cut is reported, the run goes on.
    let bytes = std::fs::read(dir.join("a-001.tar")).unwrap();
    std::fs::write(dir.join("a-001.tar"), &bytes[..bytes.len() / 2 + 100]).unwrap();
    let out2 = tmp.path().join("out2");
    let r = vlm_zoo::train::train(&args(Path::new(&spec), &out2)).unwrap();
    assert!(
        r.skipped_samples.iter().any(|s| s.contains("a-001.tar") && s.contains("truncated")),
        "{:?}",
        r.skipped_samples
    );

    // A range that matches no file, and a partly missing range, are refused before training.
    let none = format!("{}/a-{{005..009}}.tar", dir.display());
    let e = vlm_zoo::train::train(&args(Path::new(&none), &tmp.path().join("o3"))).unwrap_err().to_string();
    assert!(e.contains("matches no file") && e.contains("a-005.tar"), "{e}");
    let part = format!("{}/a-{{000..002}}.tar", dir.display());
    let e = vlm_zoo::train::train(&args(Path::new(&part), &tmp.path().join("o4"))).unwrap_err().to_string();
    assert!(e.contains("1 of 3 files missing") && e.contains("a-002.tar"), "{e}");
}

#[test]
fn img2dataset_tree_with_json_captions() {
    let tmp = tempfile::tempdir().unwrap();
    let s = samples(tmp.path(), 40);
    let root = tmp.path().join("img2dataset");
    for (i, (png, caption)) in s.iter().enumerate() {
        let d = root.join(format!("{:05}", i / 16));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("{i:09}.png")), png).unwrap();
        std::fs::write(
            d.join(format!("{i:09}.json")),
            serde_json::json!({"alt": caption, "caption": "unused"}).to_string(),
        )
        .unwrap();
        std::fs::write(d.join(format!("{i:09}.txt")), "from the txt").unwrap();
    }
    let mut a = args(&root, &tmp.path().join("out"));
    a.source.format.caption_key = Some("alt".into());
    let r = vlm_zoo::train::train(&a).unwrap();
    assert!(r.steps >= 4, "{}", r.steps);
    // Without --caption-key the .txt captions are used.
    let (pairs, _) = vlm_zoo::training::data::load_pairs(&root, false).unwrap();
    assert_eq!(pairs.len(), 40);
    assert!(pairs.iter().all(|p| p.caption == "from the txt"));
    let (pairs, _) = vlm_zoo::training::data::load_pairs_with(&root, false, &a.source).unwrap();
    assert_eq!(pairs[5].caption, s[5].1);
}

#[test]
fn open_clip_tsv_and_imagefolder_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let s = samples(tmp.path(), 32);
    let d = tmp.path().join("files");
    std::fs::create_dir_all(&d).unwrap();
    let mut tsv = String::from("filepath\ttitle\n");
    let mut meta = String::new();
    for (i, (png, caption)) in s.iter().enumerate() {
        std::fs::write(d.join(format!("{i}.png")), png).unwrap();
        tsv.push_str(&format!("{i}.png\t{caption}\n"));
        meta.push_str(&format!(
            "{}\n",
            serde_json::json!({"file_name": format!("{i}.png"), "text": caption})
        ));
    }
    std::fs::write(d.join("train.tsv"), &tsv).unwrap();
    std::fs::write(d.join("metadata.jsonl"), &meta).unwrap();
    let r = vlm_zoo::train::train(&args(&d.join("train.tsv"), &tmp.path().join("o1"))).unwrap();
    assert!(r.steps >= 3);
    let (pairs, _) = vlm_zoo::training::data::load_pairs(&d, false).unwrap();
    assert_eq!((pairs.len(), pairs[3].caption.as_str()), (32, s[3].1.as_str()));
    // Custom separator and keys; a wrong key names what the header has.
    std::fs::write(d.join("c.csv"), tsv.replace('\t', ";").replace("filepath;title", "path;text")).unwrap();
    let mut a = args(&d.join("c.csv"), &tmp.path().join("o2"));
    a.source.format.csv_separator = Some(';');
    a.source.format.csv_img_key = Some("path".into());
    a.source.format.csv_caption_key = Some("text".into());
    assert!(vlm_zoo::train::train(&a).unwrap().steps >= 3);
    a.source.format.csv_caption_key = Some("caption".into());
    a.out = tmp.path().join("o3");
    let e = vlm_zoo::train::train(&a).unwrap_err().to_string();
    assert!(e.contains("\"caption\"") && e.contains("\"path\", \"text\""), "{e}");
}

fn write_parquet(path: &Path, columns: &[(&str, Vec<Vec<u8>>)]) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    let fields: String = columns
        .iter()
        .map(|(n, _)| {
            if *n == "image" {
                format!("required binary {n};")
            } else {
                format!("required binary {n} (UTF8);")
            }
        })
        .collect();
    let schema =
        Arc::new(parquet::schema::parser::parse_message_type(&format!("message s {{ {fields} }}")).unwrap());
    let mut w = parquet::file::writer::SerializedFileWriter::new(
        std::fs::File::create(path).unwrap(),
        schema,
        Default::default(),
    )
    .unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut i = 0;
    while let Some(mut col) = rg.next_column().unwrap() {
        let values: Vec<ByteArray> = columns[i].1.iter().map(|v| ByteArray::from(v.clone())).collect();
        col.typed::<ByteArrayType>().write_batch(&values, None, None).unwrap();
        col.close().unwrap();
        i += 1;
    }
    rg.close().unwrap();
    w.close().unwrap();
}

#[test]
fn parquet_with_image_bytes_or_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let s = samples(tmp.path(), 40);
    let images: Vec<Vec<u8>> = s.iter().map(|(b, _)| b.clone()).collect();
    let mut captions: Vec<Vec<u8>> = s.iter().map(|(_, c)| c.as_bytes().to_vec()).collect();
    captions[7] = Vec::new(); // an empty caption: skipped
    let p = tmp.path().join("train.parquet");
    write_parquet(&p, &[("image", images), ("caption", captions)]);
    let r = vlm_zoo::train::train(&args(&p, &tmp.path().join("o1"))).unwrap();
    assert!(r.steps >= 3 && r.losses.iter().all(|l| l.is_finite()));
    // Paths relative to the file, captions under `text`.
    let files: Vec<Vec<u8>> = (0..40).map(|i| format!("src/img{i:05}.png").into_bytes()).collect();
    let texts: Vec<Vec<u8>> = s.iter().map(|(_, c)| c.as_bytes().to_vec()).collect();
    let q = tmp.path().join("paths.parquet");
    write_parquet(&q, &[("file_name", files.clone()), ("text", texts.clone())]);
    let r = vlm_zoo::train::train(&args(&q, &tmp.path().join("o2"))).unwrap();
    assert!(r.steps >= 3);
    // No caption column: refused, naming the columns there are.
    let z = tmp.path().join("nocap.parquet");
    write_parquet(&z, &[("file_name", files), ("alt", texts)]);
    let e = vlm_zoo::train::train(&args(&z, &tmp.path().join("o3"))).unwrap_err().to_string();
    assert!(
        e.contains("nocap.parquet") && e.contains("no caption column") && e.contains("file_name, alt"),
        "{e}"
    );
}

#[test]
fn a_stream_is_read_through_a_bounded_buffer() {
    // The memory bound of a stream: whatever the number of samples, the shuffle buffer holds at
    // most --shuffle-buffer of them and the pipeline a fixed number of batches.
    let tmp = tempfile::tempdir().unwrap();
    let s = samples(tmp.path(), 48);
    shard(&tmp.path().join("x.tar"), &s, 0, true);
    let stream = vlm_zoo::training::data::Stream::open(
        &tmp.path().join("x.tar"),
        &vlm_zoo::training::data::SourceOptions { shuffle_buffer: 5, ..Default::default() },
    )
    .unwrap();
    assert_eq!(stream.count().unwrap(), 48);
    let items = vlm_zoo::training::data::Stream::read(stream.files.clone(), stream.opts.clone());
    let mut buf = vlm_zoo::training::data::ShuffleBuffer::new(items, 5, 1);
    let got: Vec<_> = buf.by_ref().map(|i| i.unwrap()).collect();
    assert_eq!(got.len(), 48);
    assert!(buf.peak <= 5);
    assert!(got.iter().all(|x| s.iter().any(|(_, c)| *c == x.caption)));
    let proc = zoo_nn::ImageProcessor::new(zoo_nn::PreprocessorConfig::square(32));
    let rx =
        vlm_zoo::training::data::stream_batches(&stream, (0.0, 0), 8, 6, 3, Default::default(), &proc, 2, 0);
    let batches: Vec<_> = rx.into_iter().map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 6);
    assert!(batches.iter().all(|b| b.captions.len() == 8 && b.pixels.len() == 8 * 3 * 32 * 32));
    let _unused: PathBuf = PathBuf::new();
}
