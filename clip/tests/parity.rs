//! CLIP parity with transformers on the fixtures of scripts/make_fixtures.py.
#![allow(clippy::unwrap_used)]

use burn::tensor::DType;
use zoo_clip::load_clip;
use zoo_nn::testing::{PARITY_TOL, Reference, assert_close, device, fixture};
use zoo_nn::{ImageProcessor, Padding, PreprocessorConfig, TextTokenizer};

fn check_clip(name: &str) {
    let dev = device();
    let dir = fixture(name);
    let r = Reference::read(&dir.join("reference.safetensors"));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let images: Vec<_> = meta["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| fixture("images").join(n.as_str().unwrap()))
        .collect();
    let texts: Vec<String> =
        meta["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().into()).collect();

    // Shortest-edge resize + centre crop from the PNGs equal Pillow's.
    let proc =
        ImageProcessor::new(PreprocessorConfig::from_file(&dir.join("preprocessor_config.json")).unwrap());
    let pixels = proc.batch_from_files(&images, &dev).unwrap();
    assert_close(pixels.clone(), &r.f32("pixel_values"), 1e-6, &format!("{name} pixel_values"));

    let (model, config) = load_clip(&dir, DType::F32, &dev).unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    tok.check_vocab(config.text_config.vocab_size).unwrap();
    let enc = tok.encode(&texts, Padding::Longest(config.text_config.max_position_embeddings)).unwrap();
    let ids: Vec<Vec<i64>> = enc.ids.iter().map(|r| r.iter().map(|&i| i as i64).collect()).collect();
    assert_eq!(ids, r.rows("input_ids"), "{name}: token ids");
    let mask: Vec<Vec<i64>> = enc.mask.iter().map(|r| r.iter().map(|&m| m as i64).collect()).collect();
    assert_eq!(mask, r.rows("attention_mask"), "{name}: attention mask");

    let vision = model.vision_model.forward(pixels);
    assert_close(
        vision.last_hidden_state,
        &r.f32("vision_last_hidden_state"),
        PARITY_TOL,
        &format!("{name} vision hidden"),
    );
    let text = model.text_model.forward(&enc.ids, &enc.mask, &dev);
    assert_close(
        text.last_hidden_state,
        &r.f32("text_last_hidden_state"),
        PARITY_TOL,
        &format!("{name} text hidden"),
    );
    let img = model.visual_projection.forward(vision.pooler_output);
    let txt = model.text_projection.forward(text.pooler_output);
    let out = model.scores(img, txt);
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
fn clip_a_matches_transformers() {
    check_clip("clip-a");
}

#[test]
fn clip_b_legacy_eos_matches_transformers() {
    check_clip("clip-b");
}

#[test]
fn wrong_model_type_is_a_clear_error() {
    let e = load_clip(&fixture("siglip-a"), DType::F32, &device()).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("siglip") && e.contains("expected clip"), "{e}");
}
