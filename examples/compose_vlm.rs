//! Compose a VLM from the parts — CLIP's vision tower with BatchNorm, a 2-layer MLP projector, a
//! Gemma 2 decoder with RMSNorm — train it briefly on synthetic shapes, and caption an image.
//! `cargo run --release --example compose_vlm [-- --quick]`
use burn::module::Module;
use burn::optim::GradientsParams;
use serde_json::json;
use vlm_zoo::compose::{ProjectorKind, VisionConfig, Vlm, VlmConfig, VlmDecoder};
use zoo_nn::train::optim::AdamWConfig;
use zoo_nn::{Sampling, generate};

fn main() -> anyhow::Result<()> {
    let steps = [200, 3][std::env::args().any(|a| a == "--quick") as usize];
    let dir = tempfile::tempdir()?;
    let data = vlm_zoo::synthetic::write_dataset(dir.path(), 64, 32, 1)?;
    let (pairs, _) = vlm_zoo::training::data::load_pairs(&data, true)?;
    let texts: Vec<String> = pairs.iter().map(|p| p.caption.clone()).collect();
    vlm_zoo::training::tokenizer::train_decoder_tokenizer(&texts, 300, dir.path())?;
    let tok = zoo_nn::TextTokenizer::from_dir(dir.path())?;
    let vision = json!({"image_size": 32, "patch_size": 8, "hidden_size": 64, "intermediate_size": 128,
                        "num_hidden_layers": 2, "num_attention_heads": 4, "norm": "batch"});
    let config = VlmConfig {
        vision: VisionConfig::Clip(serde_json::from_value(vision)?),
        projector: ProjectorKind::Mlp,
        text: json!({"model_type": "gemma2", "vocab_size": tok.inner().get_vocab_size(true), "hidden_size": 64,
                     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 32, "norm": "rms",
                     "max_position_embeddings": 64}),
        image_token_index: 4,
    };
    let device = zoo_nn::device::default_cpu().expect("a CPU backend").autodiff();
    let mut model = Vlm::new(&config, &device)?;
    let (_, n_image) = config.vision_dims();
    let proc = zoo_nn::ImageProcessor::new(zoo_nn::PreprocessorConfig::square(32));
    let mut prompt = vec![4u32; n_image];
    prompt.push(2);
    let mut optim = AdamWConfig::new().init();
    for step in 0..steps {
        let batch = &pairs[(step * 16) % 48..(step * 16) % 48 + 16];
        let paths: Vec<_> = batch.iter().map(|p| p.image.clone()).collect();
        let pixels = proc.batch_from_files(&paths, &device)?;
        let captions: Vec<String> = batch.iter().map(|p| p.caption.clone()).collect();
        let (ids, prefix, suffix_len) = vlm_zoo::compose::caption_batch(&tok, &prompt, &captions, 1)?;
        let loss = model.suffix_loss(pixels, &ids, &prefix, &suffix_len)?;
        println!("step {step:>3}  loss {:.4}", loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(2e-3, model, grads);
    }
    let model = model.valid();
    let cpu = device.inner();
    let pixels = proc.batch_from_files(&[pairs[0].image.clone()], &cpu)?;
    let (image_features, sampling) =
        (model.image_features(pixels), Sampling { max_new_tokens: 12, ..Default::default() });
    let decoder = VlmDecoder { image_features, model: &model, max_len: 64, device: cpu };
    let out = generate(&decoder, &[prompt], &[1], &sampling, |_, _| {})?;
    println!("caption: {:?}  (truth: {:?})", tok.decode(&out[0].token_ids)?, pairs[0].caption);
    Ok(())
}
