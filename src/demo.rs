//! `vlm-zoo demo`: offline, a tiny composed VLM (SigLIP-style ViT + linear projector + Gemma)
//! learns to caption synthetic shapes, then captions held-out images it never saw.

use crate::args::DeviceArgs;
use crate::compose::{ProjectorKind, VisionConfig, Vlm, VlmConfig, VlmDecoder};
use crate::draw::plot;
use crate::synthetic::write_dataset;
use crate::training::{EpochEnd, Loaded, Precision, Run, Task, TrainLoop, data, tokenizer};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use std::path::PathBuf;
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

const BATCH_SIZE: usize = 64;

/// The demo as a training task: the caption loss on batches of synthetic scenes; each epoch is
/// reported to `on_epoch`.
struct Captioning<'a, F: FnMut(&EpochLog)> {
    source: data::list::ListSource,
    /// The held-out images, captioned after the last epoch.
    test_pairs: &'a [data::Pair],
    /// Their captions and the exact-match accuracy, once captioned.
    generated: Vec<String>,
    accuracy: Option<f64>,
    proc: ImageProcessor,
    tok: TextTokenizer,
    prompt: Vec<u32>,
    seed: u64,
    epochs: usize,
    device: Device,
    on_epoch: &'a mut F,
}

impl<F: FnMut(&EpochLog)> Task for Captioning<'_, F> {
    type Model = Vlm;
    type Batch = data::Batch;

    fn metrics_header(&self) -> String {
        "epoch,step,loss,exact_match".into()
    }

    fn batches(
        &mut self,
        epoch: usize,
        skip: usize,
    ) -> Box<dyn Iterator<Item = Result<Loaded<data::Batch>>>> {
        let order_seed = self.seed.wrapping_add(epoch as u64 * 7 + 1);
        let rx = data::batches(&self.source, BATCH_SIZE, order_seed, Default::default(), &self.proc, 2, skip);
        data::loaded(rx, 2)
    }

    fn loss(
        &self,
        model: &Vlm,
        _cast: Option<(&Vlm, DType)>,
        batch: data::Batch,
    ) -> Result<Option<Tensor<1>>> {
        let n = batch.captions.len();
        let pixels = Tensor::<4>::from_data(TensorData::new(batch.pixels, [n, 3, 32, 32]), &self.device);
        let (ids, prefix, suffix_len) =
            crate::compose::caption_batch(&self.tok, &self.prompt, &batch.captions, 1)?;
        Ok(Some(model.suffix_loss(pixels, &ids, &prefix, &suffix_len)?))
    }

    fn end_epoch(&mut self, model: &Vlm, end: &EpochEnd) -> Result<Vec<String>> {
        (self.on_epoch)(&EpochLog {
            epoch: end.epoch,
            epochs: end.epochs,
            loss: end.mean_loss,
            seconds: end.seconds,
        });
        if !end.last {
            return Ok(vec![format!("{},{},{:.6},", end.epoch, end.step, end.mean_loss)]);
        }
        // Caption the held-out images once, with the trained model.
        let model = model.valid();
        let cpu = self.device.clone().inner();
        self.generated.clear();
        for chunk in self.test_pairs.chunks(50) {
            let paths: Vec<PathBuf> = chunk.iter().map(|p| p.image.clone()).collect();
            let decoder = VlmDecoder {
                image_features: model.image_features(self.proc.batch_from_files(&paths, &cpu)?),
                model: &model,
                max_len: 64,
                device: cpu.clone(),
            };
            let prompts = vec![self.prompt.clone(); chunk.len()];
            let sampling = Sampling { max_new_tokens: 24, ..Default::default() };
            for g in generate(&decoder, &prompts, &[1], &sampling, |_, _| {})? {
                self.generated.push(self.tok.decode(&g.token_ids)?.trim().to_string());
            }
        }
        let correct = self.generated.iter().zip(self.test_pairs).filter(|(g, p)| **g == p.caption).count();
        let accuracy = correct as f64 / self.test_pairs.len().max(1) as f64;
        self.accuracy = Some(accuracy);
        Ok(vec![format!("{},{},{:.6},{accuracy:.4}", end.epoch, end.step, end.mean_loss)])
    }

    fn panel(&self) -> crate::draw::Panel {
        let exact: Vec<(f64, f64)> = self.accuracy.map(|a| (self.epochs as f64, a)).into_iter().collect();
        plot::epoch_panel(
            "Held-out captions",
            "exact match",
            &[("held-out exact match", exact)],
            "no held-out images",
        )
    }
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
    tokenizer::train_decoder_tokenizer(&texts, 320, &tok_dir)?;
    let tok = TextTokenizer::from_dir(&tok_dir)?;
    let vocab = tok.inner().get_vocab_size(true);
    let config = demo_config(vocab, args.norm);
    let (_, n_image) = config.vision_dims();

    let device = args.device.device()?.autodiff();
    device.seed(args.seed);
    let model = Vlm::new(&config, &device)?;
    let pre = PreprocessorConfig::square(32);
    let proc = ImageProcessor::new(pre.clone());
    let prompt = prompt_ids(&tok, n_image)?;
    let train_loop = TrainLoop {
        epochs: args.epochs,
        batches_per_epoch: train_pairs.len() / BATCH_SIZE,
        grad_accum: 1,
        max_steps: None,
        lr: 3e-3,
        warmup_steps: 30,
        weight_decay: 1e-4,
        grad_clip: 1.0,
        precision: Precision::F32,
        checkpoint_every: None,
        checkpoint_each_epoch: false,
        progress: false,
    };
    let title = format!(
        "vlm-zoo demo: captioning {} shapes ({} held out), {} epochs, batch {BATCH_SIZE}",
        train_pairs.len(),
        test_pairs.len(),
        args.epochs
    );
    let run = Run::open(out, false)?;
    let mut task = Captioning {
        source: data::list::ListSource { pairs: std::sync::Arc::new(train_pairs.clone()) },
        test_pairs: &test_pairs,
        generated: Vec::new(),
        accuracy: None,
        proc,
        tok,
        prompt,
        seed: args.seed,
        epochs: args.epochs,
        device,
        on_epoch: &mut on_epoch,
    };
    let done = run.train(model, &mut task, &train_loop, &title)?;
    let (generated, accuracy) = (task.generated, task.accuracy.unwrap_or(0.0));
    let last_loss = done.state.losses.last().copied().unwrap_or(f64::NAN);
    let model_dir =
        crate::export::composed_paligemma(&done.model.valid(), &config, &out.join("model"), &tok_dir, &pre)?;
    let shown: Vec<(PathBuf, String)> =
        test_pairs.iter().map(|p| (p.image.clone(), p.caption.clone())).collect();
    crate::draw::overlay::caption_grid(&out.join("captions.png"), &shown, &generated)?;
    Ok(DemoReport {
        accuracy,
        test_images: test_pairs.len(),
        train_seconds: done.seconds,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_defaults_are_the_library_defaults() {
        assert_eq!(crate::args::parse_from::<DemoArgs>(&["demo"]), DemoArgs::default());
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
