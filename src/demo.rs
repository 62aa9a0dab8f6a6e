//! `vlm-zoo demo`: offline, a tiny composed VLM (SigLIP-style ViT + linear projector + Gemma)
//! learns to caption synthetic shapes, then captions held-out images it never saw.

use crate::args::DeviceArgs;
use crate::compose::{ProjectorKind, VisionConfig, Vlm, VlmConfig, VlmDecoder};
use crate::synthetic::write_dataset;
use crate::train::{checkpoint, data, learning_rate};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;
use zoo_nn::train::optim::AdamWConfig;
use zoo_nn::{
    ImageProcessor, NnError, NormKind, PreprocessorConfig, Result, Sampling, TextTokenizer, generate,
};

/// Demo settings: `vlm-zoo demo`'s options, with their one set of defaults ([`Default`]).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct DemoArgs {
    /// Output folder (data, the HF PaliGemma model folder, captions.png).
    #[arg(long, default_value_os_t = DemoArgs::default().out)]
    pub out: PathBuf,
    /// Training images.
    #[arg(long, default_value_t = DemoArgs::default().train_images)]
    pub train_images: usize,
    /// Held-out images.
    #[arg(long, default_value_t = DemoArgs::default().test_images)]
    pub test_images: usize,
    /// Passes over the training images.
    #[arg(long, default_value_t = DemoArgs::default().epochs)]
    pub epochs: usize,
    /// Norm of every block, vision tower and decoder alike: layer, rms, rms_gemma or batch
    /// (default: each part's own, LayerNorm in the ViT and Gemma's RMSNorm in the decoder).
    #[arg(long)]
    pub norm: Option<NormKind>,
    /// Seed of the data, the initialisation and the batch order.
    #[arg(long, default_value_t = DemoArgs::default().seed)]
    pub seed: u64,
    /// The device.
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl Default for DemoArgs {
    fn default() -> Self {
        Self {
            out: "vlm-zoo-demo".into(),
            train_images: 3000,
            test_images: 200,
            epochs: 20,
            norm: None,
            seed: 0,
            device: DeviceArgs::default(),
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// Held-out exact-caption accuracy.
    pub accuracy: f64,
    /// Held-out images.
    pub test_images: usize,
    /// Seconds spent training.
    pub train_seconds: f64,
    /// Final training loss.
    pub final_loss: f64,
    /// (generated, expected) for the first held-out images.
    pub samples: Vec<(String, String)>,
    /// The HF PaliGemma folder written.
    pub model_dir: PathBuf,
}

const IMAGE: u32 = 4;
const PROMPT: &str = "caption en";

fn prompt_ids(tok: &TextTokenizer, n_image: usize) -> Result<Vec<u32>> {
    let mut ids = vec![IMAGE; n_image];
    ids.push(2);
    ids.extend(encode(tok, &format!("{PROMPT}\n"))?);
    Ok(ids)
}

fn encode(tok: &TextTokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok
        .inner()
        .encode(text, false)
        .map_err(|e| NnError::Tokenizer { path: tok.path().to_path_buf(), reason: e.to_string() })?
        .get_ids()
        .to_vec())
}

/// The composition: a 32 px ViT of 16 patches, width 64, and a 2-layer Gemma of width 64.
/// `norm`, when given, is the norm of every block of both (else the ViT keeps LayerNorm and
/// Gemma its RMSNorm).
pub fn demo_config(vocab: usize, norm: Option<NormKind>) -> VlmConfig {
    let mut vision = serde_json::json!({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                                        "image_size": 32, "patch_size": 8, "vision_use_head": false});
    let mut text = serde_json::json!({"model_type": "gemma", "vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128,
                                      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
                                      "max_position_embeddings": 64, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2});
    if let Some(norm) = norm {
        vision["norm"] = serde_json::json!(norm);
        text["norm"] = serde_json::json!(norm);
    }
    VlmConfig {
        vision: VisionConfig::Siglip(serde_json::from_value(vision).expect("vision config")),
        projector: ProjectorKind::Linear,
        text,
        image_token_index: IMAGE,
    }
}

/// Saves a SigLIP + linear + Gemma composition as an HF PaliGemma folder.
pub fn save_paligemma(
    model: &Vlm,
    config: &VlmConfig,
    dir: &Path,
    tok_dir: &Path,
    pre: &PreprocessorConfig,
) -> Result<()> {
    let VisionConfig::Siglip(vision) = &config.vision else {
        return Err(NnError::Config("only a SigLIP tower saves as PaliGemma".into()));
    };
    if model.multi_modal_projector.linear_2.is_some() {
        return Err(NnError::Config("only a linear projector saves as PaliGemma".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| NnError::io(dir, e))?;
    let text = config.text_config()?;
    let mut vision_json = serde_json::to_value(vision).map_err(|e| NnError::Config(e.to_string()))?;
    vision_json["model_type"] = serde_json::json!("siglip_vision_model");
    vision_json["projection_dim"] = serde_json::json!(text.hidden_size);
    let cfg = serde_json::json!({
        "model_type": "paligemma", "architectures": ["PaliGemmaForConditionalGeneration"],
        "vision_config": vision_json, "text_config": config.text, "image_token_index": config.image_token_index,
        "projection_dim": text.hidden_size, "hidden_size": text.hidden_size, "vocab_size": text.vocab_size,
    });
    checkpoint::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap_or_default().as_bytes(),
    )?;
    zoo_nn::load::save_safetensors(
        model,
        &dir.join("model.safetensors"),
        &[(r"^(vision_tower\..*)\.self_attn\.o_proj\.", "$1.self_attn.out_proj.")],
        &[],
    )?;
    let pre = serde_json::to_vec_pretty(pre).map_err(|e| NnError::Config(e.to_string()))?;
    checkpoint::write_atomic(&dir.join("preprocessor_config.json"), &pre)?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        let bytes = std::fs::read(tok_dir.join(f)).map_err(|e| NnError::io(tok_dir.join(f), e))?;
        checkpoint::write_atomic(&dir.join(f), &bytes)?;
    }
    let generation = serde_json::json!({"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0});
    checkpoint::write_atomic(&dir.join("generation_config.json"), generation.to_string().as_bytes())
}

/// One finished training epoch, as [`run`] reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Epochs in the run.
    pub epochs: usize,
    /// Mean training loss of the epoch.
    pub loss: f64,
    /// Seconds since training started.
    pub seconds: f64,
}

/// Runs the demo; `on_epoch` sees each finished epoch (the CLI prints it).
pub fn run(args: &DemoArgs, mut on_epoch: impl FnMut(&EpochLog)) -> Result<DemoReport> {
    let out = &args.out;
    let train_jsonl =
        write_dataset(&out.join("data/train"), args.train_images, 32, args.seed.wrapping_add(11))?;
    let test_jsonl = write_dataset(&out.join("data/test"), args.test_images, 32, args.seed.wrapping_add(29))?;
    let (train_pairs, _) = data::load_pairs(&train_jsonl, true)?;
    let (test_pairs, _) = data::load_pairs(&test_jsonl, true)?;
    let tok_dir = out.join("tokenizer");
    std::fs::create_dir_all(&tok_dir).map_err(|e| NnError::io(&tok_dir, e))?;
    let mut texts: Vec<String> = crate::synthetic::Scene::all().iter().map(|s| s.caption()).collect();
    texts.push(PROMPT.into());
    crate::train::tokenizer::train_decoder_tokenizer(&texts, 320, &tok_dir)?;
    let tok = TextTokenizer::from_dir(&tok_dir)?;
    let vocab = tok.inner().get_vocab_size(true);
    let config = demo_config(vocab, args.norm);
    let (_, n_image) = config.vision_dims();

    let device = args.device.device()?.autodiff();
    device.seed(args.seed);
    let mut model = Vlm::new(&config, &device)?;
    let pre = PreprocessorConfig::square(32);
    let proc = ImageProcessor::new(pre.clone());
    let prompt = prompt_ids(&tok, n_image)?;
    let batch_size = 64;
    let steps_per_epoch = train_pairs.len() / batch_size;
    let total = steps_per_epoch * args.epochs;
    let mut optim = AdamWConfig::new()
        .with_weight_decay(1e-4)
        .with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(1.0)))
        .init();
    let start = Instant::now();
    let mut step = 0;
    let mut last_loss = f64::NAN;
    let (mut losses, mut lrs) = (Vec::new(), Vec::new());
    for epoch in 0..args.epochs {
        let batches = data::epoch_batches(
            &train_pairs,
            batch_size,
            args.seed.wrapping_add(epoch as u64 * 7 + 1),
            Default::default(),
            &proc,
            2,
            0,
        );
        let mut epoch_loss = 0.0;
        for batch in batches {
            let batch = batch?;
            let n = batch.captions.len();
            let pixels = Tensor::<4>::from_data(TensorData::new(batch.pixels, [n, 3, 32, 32]), &device);
            let (ids, prefix, suffix_len) = crate::compose::caption_batch(&tok, &prompt, &batch.captions, 1)?;
            let loss = model.suffix_loss(pixels, &ids, &prefix, &suffix_len)?;
            last_loss = zoo_nn::host::scalar(loss.clone().inner());
            epoch_loss += last_loss;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = learning_rate(step, total, 30, 3e-3);
            model = optim.step(lr, model, grads);
            losses.push(last_loss);
            lrs.push(lr);
            step += 1;
        }
        on_epoch(&EpochLog {
            epoch: epoch + 1,
            epochs: args.epochs,
            loss: epoch_loss / steps_per_epoch.max(1) as f64,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let train_seconds = start.elapsed().as_secs_f64();

    // Caption the held-out images.
    let model = model.valid();
    let cpu = device.clone().inner();
    let mut generated = Vec::new();
    for chunk in test_pairs.chunks(50) {
        let paths: Vec<PathBuf> = chunk.iter().map(|p| p.image.clone()).collect();
        let pixels = proc.batch_from_files(&paths, &cpu)?;
        let decoder = VlmDecoder {
            image_features: model.image_features(pixels),
            model: &model,
            max_len: 64,
            device: cpu.clone(),
        };
        let prompts = vec![prompt.clone(); chunk.len()];
        let out = generate(
            &decoder,
            &prompts,
            &[1],
            &Sampling { max_new_tokens: 24, ..Default::default() },
            |_, _| {},
        )?;
        for g in out {
            generated.push(tok.decode(&g.token_ids)?.trim().to_string());
        }
    }
    let correct = generated.iter().zip(&test_pairs).filter(|(g, p)| **g == p.caption).count();
    let accuracy = correct as f64 / test_pairs.len().max(1) as f64;

    let model_dir = out.join("model");
    save_paligemma(&model, &config, &model_dir, &tok_dir, &pre)?;
    grid(&out.join("captions.png"), &test_pairs, &generated)?;
    use crate::train::plot;
    let exact = [("held-out exact match", vec![(args.epochs as f64, accuracy)])];
    crate::draw::figure(
        &out.join("metrics.png"),
        &format!(
            "vlm-zoo demo: captioning {} shapes ({} held out), {} epochs, batch {batch_size}",
            train_pairs.len(),
            test_pairs.len(),
            args.epochs
        ),
        &[
            plot::loss_panel(&losses),
            plot::epoch_panel("Held-out captions", "exact match", &exact, "no held-out images"),
            plot::lr_panel(&lrs),
        ],
        plot::SIZE,
    )?;
    Ok(DemoReport {
        accuracy,
        test_images: test_pairs.len(),
        train_seconds,
        final_loss: last_loss,
        samples: generated
            .iter()
            .cloned()
            .zip(test_pairs.iter().map(|p| p.caption.clone()))
            .take(8)
            .collect(),
        model_dir,
    })
}

/// A PNG grid of held-out images with their generated captions (green: exact, red: not).
fn grid(path: &Path, pairs: &[data::Pair], generated: &[String]) -> Result<()> {
    let (cols, rows, cell_w, cell_h) = (4u32, 5u32, 300u32, 112u32);
    let mut img = image::RgbImage::from_pixel(cols * cell_w, rows * cell_h, image::Rgb([255, 255, 255]));
    for (i, (p, g)) in pairs.iter().zip(generated).take((cols * rows) as usize).enumerate() {
        let (cx, cy) = ((i as u32 % cols) * cell_w, (i as u32 / cols) * cell_h);
        let pic = zoo_nn::open_image(&p.image)?.to_rgb8();
        let pic = image::imageops::resize(&pic, 96, 96, image::imageops::FilterType::Nearest);
        image::imageops::overlay(&mut img, &pic, (cx + 4) as i64, (cy + 4) as i64);
        let colour = if *g == p.caption { [20, 140, 40] } else { [200, 30, 30] };
        let mut y = cy as i32 + 8;
        for line in wrap(g, 18) {
            crate::draw::label(&mut img, cx as i32 + 106, y, &line, 17.0, colour);
            y += 21;
        }
    }
    crate::draw::save_png(path, &img)
}

/// Words joined into lines of at most `width` characters (a longer word gets its own line).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for w in text.split_whitespace() {
        let last = lines.last_mut().expect("one line at least");
        if !last.is_empty() && last.chars().count() + 1 + w.chars().count() > width {
            lines.push(w.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(w);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_defaults_are_the_library_defaults() {
        assert_eq!(crate::args::parse_from::<DemoArgs>(&["demo"]), DemoArgs::default());
    }

    #[test]
    fn captions_wrap_at_word_boundaries() {
        assert_eq!(wrap("a small red circle at the top", 12), vec!["a small red", "circle at", "the top"]);
        assert_eq!(wrap("", 12), vec![""]);
    }

    #[test]
    fn norm_reaches_every_block() {
        let own = demo_config(64, None);
        let VisionConfig::Siglip(vision) = &own.vision else { panic!("a SigLIP tower") };
        assert_eq!(vision.norm, NormKind::Layer);
        assert_eq!(own.text_config().unwrap().norm, NormKind::RmsGemma);
        for kind in [NormKind::Layer, NormKind::Rms, NormKind::RmsGemma, NormKind::Batch] {
            let c = demo_config(64, Some(kind));
            let VisionConfig::Siglip(vision) = &c.vision else { panic!("a SigLIP tower") };
            assert_eq!((vision.norm, c.text_config().unwrap().norm), (kind, kind));
        }
    }
}
