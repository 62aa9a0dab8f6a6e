//! Gradient parity with PyTorch: for a tiny SigLIP and a tiny CLIP, the loss and the gradient of
//! every parameter after one backward pass (scripts/make_fixtures.py, `grads.safetensors`).
#![allow(clippy::unwrap_used)]

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::DType;
use std::path::Path;
use zoo_nn::testing::{PARITY_TOL, Reference, assert_slices_close, device, to_vec};

/// Replaces every float parameter by its gradient (zeros where none).
struct ToGrads<'a>(&'a GradientsParams);

impl ModuleMapper for ToGrads<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let id = param.id;
        let value = param.val();
        let grad = self.0.get::<D>(id).unwrap_or_else(|| value.zeros_like());
        Param::initialized(id, grad)
    }
}

fn compare(dir: &Path, grads_file: &Path, loss: Tensor<1>) {
    let r = Reference::read(&dir.join("grads.safetensors"));
    let ours = Reference::read(grads_file);
    assert_slices_close(&to_vec(loss), &r.f32("loss"), PARITY_TOL, "loss");
    let mut n = 0;
    let mut worst = 0f32;
    for key in r.names() {
        let Some(name) = key.strip_prefix("grad.") else {
            continue;
        };
        let (want, got) = (r.f32(&key), ours.f32(name));
        let (_, max_diff) = zoo_nn::testing::max_excess(&got, &want, 0.0, 0.0);
        worst = worst.max(max_diff);
        assert_slices_close(&got, &want, PARITY_TOL, &format!("grad {name}"));
        n += 1;
    }
    println!("{}: {n} parameter gradients within tolerance, max |diff| {worst:.3e}", dir.display());
    assert!(n > 20);
}

#[test]
fn siglip_gradients_match_pytorch() {
    let dev = device().autodiff();
    let dir = zoo_nn::testing::fixture("siglip-a");
    let (model, _) = vlm_zoo::siglip::load_siglip(&dir, DType::F32, &dev).unwrap();
    let r = Reference::read(&dir.join("reference.safetensors"));
    let pixels = r.tensor::<4>("pixel_values", &dev).narrow(0, 0, 4);
    let ids = r.int_tensor::<2>("input_ids", &dev).narrow(0, 0, 4);
    let img = zoo_nn::l2_normalize(model.image_features(pixels));
    let txt = zoo_nn::l2_normalize(model.text_features(ids));
    let loss = zoo_nn::train::loss::siglip_loss(img, txt, model.logit_scale.val(), model.logit_bias.val());
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let grad_model = model.valid().map(&mut ToGrads(&grads));
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("grads.safetensors");
    zoo_nn::load::save_safetensors(
        &grad_model,
        &file,
        &[(r"\.self_attn\.o_proj\.", ".self_attn.out_proj.")],
        &[],
    )
    .unwrap();
    compare(&dir, &file, loss.inner());
}

#[test]
fn clip_gradients_match_pytorch() {
    let dev = device().autodiff();
    let dir = zoo_nn::testing::fixture("clip-a");
    let (model, _) = vlm_zoo::clip::load_clip(&dir, DType::F32, &dev).unwrap();
    let r = Reference::read(&dir.join("reference.safetensors"));
    let pixels = r.tensor::<4>("pixel_values", &dev).narrow(0, 0, 4);
    let ids: Vec<Vec<u32>> =
        r.rows("input_ids")[..4].iter().map(|row| row.iter().map(|&v| v as u32).collect()).collect();
    let mask: Vec<Vec<bool>> =
        r.rows("attention_mask")[..4].iter().map(|row| row.iter().map(|&v| v != 0).collect()).collect();
    let img = zoo_nn::l2_normalize(model.image_features(pixels));
    let txt = zoo_nn::l2_normalize(model.text_features(&ids, &mask, &dev));
    let loss = zoo_nn::train::loss::clip_loss(img, txt, model.logit_scale.val());
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let grad_model = model.valid().map(&mut ToGrads(&grads));
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("grads.safetensors");
    zoo_nn::load::save_safetensors(
        &grad_model,
        &file,
        &[(r"\.self_attn\.o_proj\.", ".self_attn.out_proj.")],
        &["^logit_scale$"],
    )
    .unwrap();
    compare(&dir, &file, loss.inner());
}

/// `--precision bf16`: forward and backward on a bf16 view of the f32 master weights
/// (`zoo_nn::train::mixed::autocast`). The loss and every master gradient stay within bf16's own noise
/// of the f32 ones (measured when written: loss 0.10%, every gradient within 3.7% of its
/// tensor's largest value, with 1% of the largest gradient anywhere as the floor).
#[test]
fn bf16_mixed_precision_gradients_follow_f32() {
    let dev = device().autodiff();
    let dir = zoo_nn::testing::fixture("siglip-a");
    let (model, _) = vlm_zoo::siglip::load_siglip(&dir, DType::F32, &dev).unwrap();
    let r = Reference::read(&dir.join("reference.safetensors"));
    let pixels = r.tensor::<4>("pixel_values", &dev).narrow(0, 0, 4);
    let ids = r.int_tensor::<2>("input_ids", &dev).narrow(0, 0, 4);
    let loss = |m: &vlm_zoo::siglip::SiglipModel, dt: DType| {
        let img = zoo_nn::l2_normalize(m.image_features(pixels.clone().cast(dt)).cast(DType::F32));
        let txt = zoo_nn::l2_normalize(m.text_features(ids.clone()).cast(DType::F32));
        zoo_nn::train::loss::siglip_loss(img, txt, model.logit_scale.val(), model.logit_bias.val())
    };
    let l32 = loss(&model, DType::F32);
    let l16 = loss(&zoo_nn::train::mixed::autocast(&model, DType::BF16), DType::BF16);
    let (a, b) = (to_vec(l32.clone())[0], to_vec(l16.clone())[0]);
    assert!((a - b).abs() <= 0.01 * a.abs(), "loss f32 {a} bf16 {b}");
    let g32 = model.valid().map(&mut ToGrads(&GradientsParams::from_grads(l32.backward(), &model)));
    let g16 = model.valid().map(&mut ToGrads(&GradientsParams::from_grads(l16.backward(), &model)));
    let tmp = tempfile::tempdir().unwrap();
    let (f32_file, bf16_file) = (tmp.path().join("a.safetensors"), tmp.path().join("b.safetensors"));
    zoo_nn::load::save_safetensors(&g32, &f32_file, &[], &[]).unwrap();
    zoo_nn::load::save_safetensors(&g16, &bf16_file, &[], &[]).unwrap();
    let (ra, rb) = (Reference::read(&f32_file), Reference::read(&bf16_file));
    let mut worst = 0f32;
    let largest = |v: &[f32]| v.iter().map(|x| x.abs()).fold(0f32, f32::max);
    let global = ra.names().iter().map(|k| largest(&ra.f32(k))).fold(0f32, f32::max);
    for k in ra.names() {
        let (x, y) = (ra.f32(&k), rb.f32(&k));
        // Gradients that are zero in exact arithmetic (a key bias under softmax) are rounding
        // noise in both: compared against a floor of 1% of the largest gradient anywhere.
        let scale = largest(&x).max(1e-2 * global);
        let d = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max) / scale;
        worst = worst.max(d);
        assert!(d < 0.05, "{k}: bf16 gradient {d:.3} of its largest value away from f32");
    }
    println!("bf16 mixed precision: loss {a} vs {b}, gradients within {worst:.4} of each tensor's largest");
}

/// SigLIP 2 NaFlex (`train --init` a NaFlex folder): the loss over NaFlex patches of images of
/// three aspect ratios (padding masked) and the gradient of every parameter equal transformers'
/// Siglip2Model (scripts/make_hub_fixtures.py naflex-grads).
#[test]
fn siglip2_naflex_gradients_match_pytorch() {
    let dev = device().autodiff();
    let dir = zoo_nn::testing::fixture("hub-siglip2-naflex");
    let (model, _) = vlm_zoo::models::Towers::load(&dir, DType::F32, &dev).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let images: Vec<_> = meta["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| zoo_nn::open_image(&zoo_nn::testing::fixture("images").join(n.as_str().unwrap())).unwrap())
        .collect();
    let texts: Vec<String> =
        meta["texts"].as_array().unwrap()[..3].iter().map(|t| t.as_str().unwrap().to_string()).collect();
    let patches =
        vlm_zoo::siglip::naflex::NaflexProcessor::from_dir(&dir).unwrap().batch(&images, &dev).unwrap();
    let tok = zoo_nn::TextTokenizer::from_dir(&dir).unwrap();
    use zoo_nn::ContrastiveModel;
    let text = tok.encode_batch(&texts, model.text_padding(), &dev).unwrap();
    let (img, txt) = model.embed_naflex(&patches, &text).unwrap();
    let loss = model.loss(img, txt, None);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let grad_model = model.valid().map(&mut ToGrads(&grads));
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("grads.safetensors");
    grad_model.save_hf(&file).unwrap();
    compare(&dir, &file, loss.inner());
}
