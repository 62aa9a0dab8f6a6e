//! SigLIP parity with transformers on the fixtures of scripts/make_fixtures.py.
#![allow(clippy::unwrap_used)]

use burn::tensor::DType;
use std::path::PathBuf;
use zoo_nn::testing::{PARITY_TOL, Reference, assert_close, assert_slices_close, device, fixture};
use zoo_nn::{ImageProcessor, Padding, PreprocessorConfig, TextTokenizer};
use zoo_siglip::{load_siglip, load_siglip_vision};

fn images(dir: &std::path::Path) -> Vec<PathBuf> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    meta["images"].as_array().unwrap().iter().map(|n| fixture("images").join(n.as_str().unwrap())).collect()
}

fn texts(dir: &std::path::Path) -> Vec<String> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    meta["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

fn check_siglip(name: &str) {
    let dev = device();
    let dir = fixture(name);
    let r = Reference::read(&dir.join("reference.safetensors"));

    // Pixels from the PNGs equal Pillow's.
    let proc =
        ImageProcessor::new(PreprocessorConfig::from_file(&dir.join("preprocessor_config.json")).unwrap());
    let pixels = proc.batch_from_files(&images(&dir), &dev).unwrap();
    assert_close(pixels.clone(), &r.f32("pixel_values"), 1e-6, &format!("{name} pixel_values"));

    // Token ids equal transformers'.
    let (model, config) = load_siglip(&dir, DType::F32, &dev).unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    tok.check_vocab(config.text_config.vocab_size).unwrap();
    let enc =
        tok.encode(&texts(&dir), Padding::MaxLength(config.text_config.max_position_embeddings)).unwrap();
    let ids: Vec<Vec<i64>> = enc.ids.iter().map(|r| r.iter().map(|&i| i as i64).collect()).collect();
    assert_eq!(ids, r.rows("input_ids"), "{name}: token ids");

    let input_ids = r.int_tensor::<2>("input_ids", &dev);
    let vision = model.vision_model.forward(pixels);
    assert_close(
        vision.last_hidden_state,
        &r.f32("vision_last_hidden_state"),
        PARITY_TOL,
        &format!("{name} vision hidden"),
    );
    let pooled = vision.pooler_output.unwrap();
    assert_close(
        pooled.clone(),
        &r.f32("vision_pooler_output"),
        PARITY_TOL,
        &format!("{name} vision pooled"),
    );
    let text = model.text_model.forward(input_ids);
    assert_close(
        text.last_hidden_state,
        &r.f32("text_last_hidden_state"),
        PARITY_TOL,
        &format!("{name} text hidden"),
    );
    assert_close(
        text.pooler_output.clone(),
        &r.f32("text_pooler_output"),
        PARITY_TOL,
        &format!("{name} text pooled"),
    );
    let out = model.scores(pooled, text.pooler_output);
    assert_close(
        out.image_embeds.clone(),
        &r.f32("image_embeds"),
        PARITY_TOL,
        &format!("{name} image_embeds"),
    );
    assert_close(out.text_embeds.clone(), &r.f32("text_embeds"), PARITY_TOL, &format!("{name} text_embeds"));
    assert_close(
        out.logits_per_image.clone(),
        &r.f32("logits_per_image"),
        PARITY_TOL,
        &format!("{name} logits"),
    );
    assert_close(out.probs(), &r.f32("probs"), PARITY_TOL, &format!("{name} probs"));
}

#[test]
fn siglip_a_matches_transformers() {
    check_siglip("siglip-a");
}

#[test]
fn siglip_b_matches_transformers() {
    check_siglip("siglip-b");
}

#[test]
fn siglip_vision_without_head_matches_transformers() {
    let dev = device();
    let dir = fixture("siglip-vision-nohead");
    let r = Reference::read(&dir.join("reference.safetensors"));
    let proc =
        ImageProcessor::new(PreprocessorConfig::from_file(&dir.join("preprocessor_config.json")).unwrap());
    let pixels = proc.batch_from_files(&images(&dir), &dev).unwrap();
    assert_close(pixels.clone(), &r.f32("pixel_values"), 1e-6, "nohead pixel_values");
    let (tower, config) = load_siglip_vision(&dir, DType::F32, &dev).unwrap();
    assert!(!config.vision_use_head && tower.head.is_none());
    let out = tower.forward(pixels);
    assert_close(out.last_hidden_state, &r.f32("vision_last_hidden_state"), PARITY_TOL, "nohead hidden");
}

#[test]
fn vision_tower_loads_from_a_full_siglip_checkpoint() {
    let dev = device();
    let dir = fixture("siglip-a");
    let r = Reference::read(&dir.join("reference.safetensors"));
    let (tower, _) = load_siglip_vision(&dir, DType::F32, &dev).unwrap();
    let out = tower.forward(r.tensor::<4>("pixel_values", &dev));
    let pooled = zoo_nn::testing::to_vec(out.pooler_output.unwrap());
    assert_slices_close(&pooled, &r.f32("vision_pooler_output"), PARITY_TOL, "tower from SiglipModel");
}
