//! A fuzz harness on stable Rust (proptest): every parser of user input, fed random bytes and
//! mutations of real files, must return `Ok` or a clean `Err` — never panic, hang or allocate
//! without bound. CI runs a time-boxed pass (`VLM_ZOO_FUZZ_CASES`, default 256 cases per
//! target); a longer run: `VLM_ZOO_FUZZ_CASES=100000 cargo test --release --test fuzz`.
//! Every crash found becomes a regression case in `regressions()` below.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn cases() -> u32 {
    std::env::var("VLM_ZOO_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

fn runner() -> TestRunner {
    TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() })
}

/// A real file with some bytes replaced, some cut, or some inserted.
fn mutated(original: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = original.len().max(1);
    (
        prop::collection::vec((0..n, any::<u8>()), 1..8),
        0..=n,
        prop::collection::vec(any::<u8>(), 0..16),
        0..3u8,
    )
        .prop_map(move |(edits, cut, insert, mode)| {
            let mut v = original.clone();
            for (i, b) in edits {
                if i < v.len() {
                    v[i] = b;
                }
            }
            match mode {
                0 => v.truncate(cut),
                1 => {
                    let at = cut.min(v.len());
                    v.splice(at..at, insert);
                }
                _ => {}
            }
            v
        })
}

fn bytes_or_mutation(file: &Path) -> BoxedStrategy<Vec<u8>> {
    let original = std::fs::read(file).unwrap();
    prop_oneof![prop::collection::vec(any::<u8>(), 0..512), mutated(original)].boxed()
}

#[test]
fn safetensors_headers() {
    let file = fixtures().join("siglip-a/model.safetensors");
    runner()
        .run(&bytes_or_mutation(&file), |bytes| {
            let len = bytes.len() as u64;
            let _ = zoo_nn::load::header::parse_safetensors_header(
                Path::new("x"),
                std::io::Cursor::new(bytes),
                len,
            );
            Ok(())
        })
        .unwrap();
}

#[test]
fn sentencepiece_models_and_siglip_tokenisation() {
    let file = fixtures().join("hub-siglip-base/spiece.model");
    runner()
        .run(&bytes_or_mutation(&file), |bytes| {
            let _ =
                zoo_nn::data::spm::SpmModel::parse(&bytes).map(|m| m.sentencepiece_tokenizer().map(|_| ()));
            Ok(())
        })
        .unwrap();
    let tok = zoo_nn::TextTokenizer::from_dir(&fixtures().join("hub-siglip-base")).unwrap();
    runner()
        .run(&".{0,80}", |text| {
            let enc = tok.encode(&[text], zoo_nn::Padding::MaxLength(64)).unwrap();
            prop_assert_eq!(enc.ids[0].len(), 64);
            Ok(())
        })
        .unwrap();
}

#[test]
fn configs_and_preprocessor_configs() {
    let tmp = tempfile::tempdir().unwrap();
    for (fixture, file) in [
        ("siglip-a", "config.json"),
        ("clip-b", "config.json"),
        ("gemma2-a", "config.json"),
        ("paligemma2-a", "config.json"),
        ("hub-clip-legacy", "preprocessor_config.json"),
        ("hub-open-clip", "open_clip_config.json"),
    ] {
        let src = fixtures().join(fixture);
        runner()
            .run(&bytes_or_mutation(&src.join(file)), |bytes| {
                let dir = tmp.path().join("m");
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(file), &bytes).unwrap();
                match file {
                    "preprocessor_config.json" => {
                        let _ = zoo_nn::PreprocessorConfig::from_file(&dir.join(file));
                    }
                    "open_clip_config.json" => {
                        let _ = zoo_clip::open_clip::preprocessor(&dir);
                    }
                    _ => {
                        let _ = vlm_zoo::inspect::inspect(&dir);
                        if let Ok(v) = zoo_nn::read_json::<serde_json::Value>(&dir.join(file)) {
                            let _ = zoo_gemma::GemmaConfig::from_value(v.clone());
                            if let Ok(c) = serde_json::from_value::<zoo_siglip::SiglipConfig>(v.clone()) {
                                let _ = c.validate();
                            }
                            if let Ok(c) = serde_json::from_value::<zoo_clip::ClipConfig>(v) {
                                let _ = c.validate();
                            }
                        }
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn image_decoding_and_preprocessing() {
    let proc = zoo_nn::ImageProcessor::new(zoo_nn::PreprocessorConfig::square(16));
    for name in ["rgb_64x48.png", "rgba_50x30.png", "grey_40x40.png"] {
        runner()
            .run(&bytes_or_mutation(&fixtures().join("images").join(name)), |bytes| {
                if let Ok(img) = zoo_nn::data::image::decode_image(&bytes) {
                    let _ = proc.preprocess(&img);
                }
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn detection_parsing() {
    let pieces = prop_oneof![
        Just("<loc".to_string()),
        (0..1100u32).prop_map(|n| format!("<loc{n:04}>")),
        Just(" ; ".to_string()),
        Just(">".to_string()),
        "[a-z ]{0,6}",
        ".{0,3}",
    ];
    runner()
        .run(&(prop::collection::vec(pieces, 0..24), 0..5000u32, 0..5000u32), |(parts, w, h)| {
            let _ = zoo_paligemma::parse_detections(&parts.concat(), w, h);
            Ok(())
        })
        .unwrap();
}

#[test]
fn training_data_files() {
    let tmp = tempfile::tempdir().unwrap();
    runner()
        .run(&(".{0,200}", prop::bool::ANY), |(text, jsonl)| {
            let _ = vlm_zoo::training::data::csv_fields(&text);
            let path = tmp.path().join(if jsonl { "d.jsonl" } else { "d.csv" });
            std::fs::write(&path, format!("image,caption\n{text}")).unwrap();
            let _ = vlm_zoo::training::data::load_pairs(&path, false);
            Ok(())
        })
        .unwrap();
}

/// Crashes the harness found, kept as plain tests.
#[test]
fn regressions() {
    // (none found so far; add each finding here as a fixed input)
}
