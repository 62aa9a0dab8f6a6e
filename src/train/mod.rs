//! `vlm-zoo train`: CLIP or SigLIP on your own image-text pairs, from scratch or from an HF
//! checkpoint, ending in an HF-format folder that vlm-zoo and transformers both load.

pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod plot;
pub mod sources;
pub mod tokenizer;

use crate::args::{DeviceArgs, ModelSource};
use crate::models::{Arch, Family, ModelConfig, Preset, Towers};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::store::{BurnpackStore, ModuleSnapshot};
use checkpoint::TrainState;
use data::{Augment, Pair};
use std::path::{Path, PathBuf};
use zoo_nn::optim::AdamWConfig;
use zoo_nn::{
    ContrastiveModel, ImageProcessor, NnError, NormKind, PreprocessorConfig, Result, TextTokenizer,
};

/// The loader's and the step's speeds, shown with the progress.
#[derive(Debug, Default)]
struct Throughput {
    loaded: f64,
    load_seconds: f64,
    wait_seconds: f64,
}

impl Throughput {
    /// `data N img/s (alone)  train M img/s  waiting P%` after `elapsed` seconds.
    fn line(&self, elapsed: f64) -> String {
        format!(
            "data {:.0} img/s  train {:.0} img/s  waiting for data {:.0}%",
            self.loaded / self.load_seconds.max(1e-9),
            self.loaded / elapsed.max(1e-9),
            100.0 * self.wait_seconds / elapsed.max(1e-9)
        )
    }
}

/// Training precision.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 compute with f32 master weights, optimiser state and loss.
    Bf16,
}

/// Everything `vlm-zoo train` takes: the command's options, with their one set of defaults
/// ([`Default`]).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct TrainArgs {
    /// siglip or clip.
    #[arg(long, value_enum)]
    pub arch: Arch,
    /// The pairs: CSV/TSV (open_clip's `filepath`/`title` or `image`/`caption` columns), JSONL
    /// (`image`, `caption`), a folder (images + same-named .txt, recursive: img2dataset's
    /// output; or an HF imagefolder with metadata.jsonl), WebDataset tar shards
    /// (`shards/{00000..00127}.tar`, several joined with `::`) or parquet files.
    #[arg(long)]
    pub data: PathBuf,
    /// Caption fields, CSV layout, and the stream options (shuffle buffer, samples per epoch).
    #[command(flatten)]
    pub source: sources::SourceOptions,
    /// Output folder: the HF-format model, checkpoints, losses.csv, metrics.csv, metrics.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Model size when training from scratch.
    #[arg(long, value_enum, default_value_t = TrainArgs::default().preset)]
    pub preset: Preset,
    /// Norm of every block when training from scratch: layer, rms, rms_gemma or batch.
    #[arg(long, default_value_t = TrainArgs::default().norm)]
    pub norm: NormKind,
    /// Fine-tune from this HF SigLIP/CLIP checkpoint (a folder or a hub id in the HF cache).
    #[arg(long)]
    pub init: Option<ModelSource>,
    /// Use this tokenizer.json (from scratch); without it one is trained on the captions.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Train a BPE tokenizer on the captions (the default when no tokenizer is given).
    #[arg(long)]
    pub train_tokenizer: bool,
    /// Vocabulary of a trained tokenizer.
    #[arg(long, default_value_t = TrainArgs::default().vocab_size)]
    pub vocab_size: usize,
    /// Passes over the training pairs.
    #[arg(long, default_value_t = TrainArgs::default().epochs)]
    pub epochs: usize,
    /// Pairs per step.
    #[arg(long, default_value_t = TrainArgs::default().batch_size)]
    pub batch_size: usize,
    /// Peak learning rate (linear warm-up, then cosine decay to 10%).
    #[arg(long, default_value_t = TrainArgs::default().lr, allow_negative_numbers = true)]
    pub lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = TrainArgs::default().weight_decay, allow_negative_numbers = true)]
    pub weight_decay: f64,
    /// Linear warm-up steps before the cosine decay.
    #[arg(long, default_value_t = TrainArgs::default().warmup_steps)]
    pub warmup_steps: usize,
    /// Clip the gradient norm to this (0: off).
    #[arg(long, default_value_t = TrainArgs::default().grad_clip, allow_negative_numbers = true)]
    pub grad_clip: f32,
    /// Batches per optimiser step.
    #[arg(long, default_value_t = TrainArgs::default().grad_accum)]
    pub grad_accum: usize,
    /// SigLIP: score texts in blocks of this many (memory O(chunk x N)).
    #[arg(long)]
    pub chunk_size: Option<usize>,
    /// Held-out fraction for recall@k.
    #[arg(long, default_value_t = TrainArgs::default().val_fraction, allow_negative_numbers = true)]
    pub val_fraction: f64,
    /// Seed of initialisation, split, order and augmentation.
    #[arg(long, default_value_t = TrainArgs::default().seed)]
    pub seed: u64,
    /// Save a checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = TrainArgs::default().checkpoint_every)]
    pub checkpoint_every: usize,
    /// Continue from the latest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Missing/corrupt images and empty captions are errors instead of skipped.
    #[arg(long)]
    pub strict: bool,
    /// Random-resized-crop / flip.
    #[command(flatten)]
    pub augment: Augment,
    /// Compute precision: f32, or bf16 (forward and backward in bf16 on a cast of the f32 master
    /// weights; gradients, optimiser state and the loss in f32).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Data loading threads.
    #[arg(long, default_value_t = TrainArgs::default().workers)]
    pub workers: usize,
    /// Class names (one per line) for zero-shot accuracy on the held-out split.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Stop after this many steps.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Show a progress bar (on for the command line).
    #[arg(skip = true)]
    pub progress: bool,
    /// Gradient checkpointing: recompute memory-bound activations (norms, activations,
    /// softmax) in the backward pass instead of keeping them, for larger batches in the same
    /// memory (Burn's balanced strategy; the results are the same).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// The device.
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl TrainArgs {
    /// Checks every numeric option, naming it and its range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(NnError::Config(m));
        let finite = |name: &str, v: f64, lo: f64, lo_incl: bool, hi: f64, hi_incl: bool| -> Result<()> {
            let ok = v.is_finite()
                && (if lo_incl { v >= lo } else { v > lo })
                && (if hi_incl { v <= hi } else { v < hi });
            if ok {
                return Ok(());
            }
            let (l, h) = (if lo_incl { "[" } else { "(" }, if hi_incl { "]" } else { ")" });
            bad(format!("--{name} {v}: expected a number in {l}{lo}, {hi}{h}"))
        };
        if self.batch_size < 2 {
            return bad("--batch-size must be at least 2 for a contrastive loss".into());
        }
        finite("lr", self.lr, 0.0, false, f64::MAX, true)?;
        finite("weight-decay", self.weight_decay, 0.0, true, f64::MAX, true)?;
        finite("grad-clip", f64::from(self.grad_clip), 0.0, true, f64::MAX, true)?;
        finite("val-fraction", self.val_fraction, 0.0, true, 1.0, false)?;
        if let Some(c) = self.augment.crop_min_scale {
            finite("random-crop", c, 0.0, false, 1.0, true)?;
        }
        for (name, v) in [
            ("epochs", self.epochs),
            ("grad-accum", self.grad_accum),
            ("workers", self.workers),
            ("checkpoint-every", self.checkpoint_every),
        ] {
            if v == 0 {
                return bad(format!("--{name} must be at least 1"));
            }
        }
        if self.chunk_size == Some(0) || self.max_steps == Some(0) {
            return bad("--chunk-size and --max-steps must be at least 1".into());
        }
        if self.vocab_size < 16 || self.vocab_size > 1 << 20 {
            return bad(format!("--vocab-size {}: expected 16 to {}", self.vocab_size, 1 << 20));
        }
        Ok(())
    }
}

impl Default for TrainArgs {
    fn default() -> Self {
        Self {
            arch: Arch::Siglip,
            data: PathBuf::new(),
            source: sources::SourceOptions::default(),
            precision: Precision::F32,
            gradient_checkpointing: false,
            out: PathBuf::new(),
            preset: Preset::Tiny,
            norm: NormKind::Layer,
            init: None,
            tokenizer: None,
            train_tokenizer: false,
            vocab_size: 512,
            epochs: 10,
            batch_size: 32,
            lr: 1e-3,
            weight_decay: 1e-4,
            warmup_steps: 20,
            grad_clip: 1.0,
            grad_accum: 1,
            chunk_size: None,
            val_fraction: 0.1,
            seed: 0,
            checkpoint_every: 100,
            resume: false,
            strict: false,
            augment: Augment::default(),
            workers: 2,
            labels: None,
            max_steps: None,
            progress: true,
            device: DeviceArgs::default(),
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainReport {
    /// Optimiser steps taken in total.
    pub steps: usize,
    /// Loss of every step.
    pub losses: Vec<f64>,
    /// Held-out recall after each epoch.
    pub recall: Vec<eval::Recall>,
    /// Zero-shot accuracy after the last epoch (with a labels file).
    pub zero_shot_accuracy: Option<f64>,
    /// Rows skipped while loading.
    pub skipped_images: usize,
    /// Rows with empty captions skipped.
    pub skipped_captions: usize,
    /// Every sample left out (`path: reason`): unreadable when scanned, or failing to decode
    /// in the loader; each counted once however many epochs met it.
    pub skipped_samples: Vec<String>,
    /// The HF folder written.
    pub export: PathBuf,
    /// The loader's speed alone, the training speed and the share of time spent waiting for
    /// data (`data N img/s  train M img/s  waiting for data P%`).
    pub throughput: String,
}

/// Warm-up then cosine decay to 10% of the peak.
pub fn learning_rate(step: usize, total: usize, warmup: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    peak * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()))
}

fn preprocessor(config: &ModelConfig, init: Option<&Path>) -> Result<PreprocessorConfig> {
    match init.map(|d| d.join("preprocessor_config.json")).filter(|p| p.is_file()) {
        Some(p) => PreprocessorConfig::from_file(&p),
        None => Ok(config.default_preprocessor()),
    }
}

/// Embeds pairs in batches without gradients (evaluation).
fn embed_all(
    model: &Towers,
    pairs: &[Pair],
    proc: &ImageProcessor,
    tok: &TextTokenizer,
    device: &Device,
) -> Result<(Tensor<2>, Tensor<2>)> {
    let (mut imgs, mut txts) = (Vec::new(), Vec::new());
    for chunk in pairs.chunks(64) {
        let paths: Vec<PathBuf> = chunk.iter().map(|p| p.image.clone()).collect();
        let pixels = proc.batch_from_files(&paths, device)?;
        let captions: Vec<String> = chunk.iter().map(|p| p.caption.clone()).collect();
        let (i, t) = model.embed(pixels, &tok.encode_batch(&captions, model.text_padding(), device)?);
        imgs.push(i);
        txts.push(t);
    }
    Ok((Tensor::cat(imgs, 0), Tensor::cat(txts, 0)))
}

/// Writes the HF folder: config.json, model.safetensors, tokenizer files, preprocessor_config.json.
fn export(
    out: &Path,
    model: &Towers,
    config: &ModelConfig,
    proc: &PreprocessorConfig,
    tok_dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| NnError::io(out, e))?;
    model.save_hf(&out.join("model.safetensors"))?;
    let json = serde_json::to_vec_pretty(&config.to_hf_json()).map_err(|e| NnError::Config(e.to_string()))?;
    crate::fs::write_atomic(&out.join("config.json"), &json)?;
    let src = tok_dir.join("tokenizer.json");
    if src.is_file() && tok_dir != out {
        let bytes = std::fs::read(&src).map_err(|e| NnError::io(&src, e))?;
        crate::fs::write_atomic(&out.join("tokenizer.json"), &bytes)?;
    }
    // What transformers' AutoProcessor needs to give `zero-shot`'s numbers with the documented
    // calls: `model_max_length` (SigLIP pools the last of `padding="max_length"` positions),
    // right padding, the special tokens, and the processor class.
    let tc = tok_dir.join("tokenizer_config.json");
    let mut tok_config: serde_json::Value =
        if tc.is_file() { zoo_nn::read_json(&tc)? } else { serde_json::json!({}) };
    if !tok_config.is_object() {
        tok_config = serde_json::json!({});
    }
    tok_config["model_max_length"] = serde_json::json!(config.text_len());
    tok_config["padding_side"] = serde_json::json!("right");
    if tok_config.get("tokenizer_class").is_none() {
        tok_config["tokenizer_class"] = serde_json::json!("PreTrainedTokenizerFast");
    }
    let (processor, image_processor) = match config {
        ModelConfig::Siglip(_) => ("SiglipProcessor", "SiglipImageProcessor"),
        ModelConfig::Siglip2(_) => ("Siglip2Processor", "Siglip2ImageProcessor"),
        ModelConfig::Clip(_) => ("CLIPProcessor", "CLIPImageProcessor"),
    };
    tok_config["processor_class"] = serde_json::json!(processor);
    if let ModelConfig::Siglip(_) | ModelConfig::Siglip2(_) = config {
        // SigLIP's text tower attends to its padding (it was trained so, and pools the last
        // position): its tokenizer gives no attention mask, as the hub's SiglipTokenizer.
        tok_config["model_input_names"] = serde_json::json!(["input_ids"]);
    }
    let json = serde_json::to_vec_pretty(&tok_config).map_err(|e| NnError::Config(e.to_string()))?;
    crate::fs::write_atomic(&out.join("tokenizer_config.json"), &json)?;
    let mut pre_json = serde_json::to_value(proc).map_err(|e| NnError::Config(e.to_string()))?;
    pre_json["image_processor_type"] = serde_json::json!(image_processor);
    pre_json["processor_class"] = serde_json::json!(processor);
    let pre_bytes = serde_json::to_vec_pretty(&pre_json).map_err(|e| NnError::Config(e.to_string()))?;
    crate::fs::write_atomic(&out.join("preprocessor_config.json"), &pre_bytes)?;
    let processor_json = serde_json::json!({"processor_class": processor});
    crate::fs::write_atomic(&out.join("processor_config.json"), processor_json.to_string().as_bytes())
}

/// Runs training; see [`TrainArgs`].
pub fn train(args: &TrainArgs) -> Result<TrainReport> {
    args.validate()?;
    // A stream (shards, parquet) is read from disk every epoch; a list is held as paths.
    let stream = if sources::is_stream(&args.data) {
        Some(sources::Stream::open(&args.data, &args.source)?)
    } else {
        None
    };
    let (train_pairs, held_out, skipped, stream_len) = match &stream {
        None => {
            let (pairs, skipped) = data::load_pairs_with(&args.data, args.strict, &args.source)?;
            let (train, held) = data::split(pairs, args.val_fraction, args.seed);
            (train, held, skipped, None)
        }
        Some(s) => {
            std::fs::create_dir_all(&args.out).map_err(|e| NnError::io(&args.out, e))?;
            let (held, bad) = sources::held_out(
                s,
                args.val_fraction,
                args.seed,
                args.source.val_max,
                &args.out.join("held-out"),
            )?;
            let total = match args.source.train_num_samples {
                Some(n) => n,
                None => ((s.count()? as f64) * (1.0 - args.val_fraction)).floor() as usize,
            };
            // The tokenizer (when one is trained) learns from the first captions of the stream.
            let captions: Vec<Pair> = sources::Stream::read(s.files.clone(), s.opts.clone())
                .filter_map(|i| i.ok())
                .take(50_000)
                .map(|r| Pair { image: PathBuf::new(), caption: r.caption })
                .collect();
            let skipped = data::Skipped { bad_images: bad, empty_captions: 0 };
            (captions, held, skipped, Some(total))
        }
    };
    let train_len = stream_len.unwrap_or(train_pairs.len());
    let mut skipped_samples: std::collections::BTreeSet<String> = skipped
        .bad_images
        .iter()
        .map(|p| if stream.is_some() { p.clone() } else { format!("{p}: missing or not a readable image") })
        .collect();
    // The held-out images are decoded once now, so an evaluation never meets a broken one.
    let held_out: Vec<Pair> = held_out
        .into_iter()
        .filter(|p| match zoo_nn::open_image(&p.image) {
            Ok(_) => true,
            Err(e) => {
                skipped_samples.insert(e.to_string());
                false
            }
        })
        .collect();
    if train_len < args.batch_size {
        return Err(NnError::Config(format!(
            "--batch-size {} is larger than the {train_len} training pairs",
            args.batch_size,
        )));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| NnError::io(&args.out, e))?;
    let _lock = checkpoint::lock(&args.out)?;
    let previous = checkpoint::latest(&args.out)?;
    if previous.is_some() && !args.resume {
        return Err(NnError::Config(format!(
            "{} holds the checkpoints of an earlier run: --resume continues it; choose another --out to start over",
            args.out.display()
        )));
    }
    let device = args.device.device()?.autodiff();
    // Recompute the memory-bound activations in the backward pass instead of keeping them.
    let device = if args.gradient_checkpointing { device.gradient_checkpointing() } else { device };
    let init = args.init.as_ref().map(ModelSource::resolve).transpose()?;
    let grad_accum = args.grad_accum;
    if (train_len / args.batch_size) * args.epochs < grad_accum {
        return Err(NnError::Config(format!(
            "--grad-accum {grad_accum} needs at least {grad_accum} batches, but {} epochs of {} training pairs at --batch-size {} give {}",
            args.epochs,
            train_len,
            args.batch_size,
            (train_len / args.batch_size) * args.epochs
        )));
    }
    if let Some(path) = &args.labels
        && !path.is_file()
    {
        return Err(NnError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "--labels file not found"),
        ));
    }
    // Seeding and initialisation under one lock: the device's generator is process-wide, so two
    // runs in one process must not interleave their draws.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let init_guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(args.seed);

    // Tokenizer and model.
    let tok_dir = match (&init, &args.tokenizer) {
        (Some(dir), _) => dir.clone(),
        (None, Some(file)) => {
            // Checked where the user put it, so an error names their file, not our copy.
            tokenizers::Tokenizer::from_file(file)
                .map_err(|e| NnError::Tokenizer { path: file.clone(), reason: e.to_string() })?;
            let dst = args.out.join("tokenizer.json");
            if file != &dst {
                std::fs::copy(file, &dst).map_err(|e| NnError::io(file, e))?;
            }
            args.out.clone()
        }
        (None, None) => {
            if !args.out.join("tokenizer.json").is_file() || !args.resume {
                let captions: Vec<String> = train_pairs.iter().map(|p| p.caption.clone()).collect();
                tokenizer::train_tokenizer(&captions, args.vocab_size, args.arch, &args.out)?;
            }
            args.out.clone()
        }
    };
    let tok = TextTokenizer::from_dir(&tok_dir)?;
    let (mut model, config) = match &init {
        Some(dir) => {
            let family = Family::of(dir)?;
            let found = family.arch().ok_or_else(|| {
                NnError::Config(format!(
                    "{}: --init needs a {} checkpoint, found model_type '{family}'",
                    dir.display(),
                    Family::list(Family::trains)
                ))
            })?;
            if found != args.arch {
                return Err(NnError::Config(format!(
                    "--arch {} but --init {} is a {} checkpoint (give --arch {})",
                    format!("{:?}", args.arch).to_lowercase(),
                    dir.display(),
                    format!("{found:?}").to_lowercase(),
                    format!("{found:?}").to_lowercase()
                )));
            }
            Towers::load(dir, burn::tensor::DType::F32, &device)?
        }
        None => {
            let vocab = tok.inner().get_vocab_size(true);
            let specials = tokenizer::specials(args.arch);
            let id = |t: &str| tok.token_to_id(t).unwrap_or(0);
            let ids = match args.arch {
                Arch::Siglip => (id(specials[0]), id(specials[1]), None),
                Arch::Clip => (id(specials[0]), id(specials[0]), Some(id(specials[1]))),
            };
            let config = ModelConfig::preset(args.arch, args.preset, vocab, ids, args.norm);
            (Towers::new(&config, &device), config)
        }
    };
    drop(init_guard);
    tok.check_vocab(config.vocab_size())?;
    let pre = preprocessor(&config, init.as_deref())?;
    let proc = ImageProcessor::new(pre.clone());

    let mut optim = AdamWConfig::new()
        .with_weight_decay(args.weight_decay as f32)
        .with_grad_clipping(
            (args.grad_clip > 0.0)
                .then_some(burn::grad_clipping::GradientClippingConfig::Norm(args.grad_clip)),
        )
        .init();
    let mut state = TrainState::default();
    if args.resume
        && let Some(dir) = previous
    {
        let mut store = BurnpackStore::from_file(dir.join("model.bpk"));
        model
            .load_from(&mut store)
            .map_err(|e| NnError::Load { path: dir.join("model.bpk"), reason: e.to_string() })?;
        optim = optim
            .load(dir.join("optim.bpk"))
            .map_err(|e| NnError::Load { path: dir.join("optim.bpk"), reason: e.to_string() })?;
        state = zoo_nn::read_json(&dir.join("state.json"))?;
    }

    let per_epoch = train_len / args.batch_size;
    let total_steps = (per_epoch * args.epochs).div_ceil(grad_accum).max(1);
    let total_steps = args.max_steps.map_or(total_steps, |m| m.min(total_steps));
    let bar = args.progress.then(|| {
        let bar = indicatif::ProgressBar::new(total_steps as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  eta {eta}  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_position(state.step as u64);
        bar
    });
    let mut metrics = String::from("epoch,step,loss,i2t_r1,i2t_r5,i2t_r10,t2i_r1,t2i_r5,t2i_r10\n");
    let mut recalls = Vec::new();
    let mut speed = Throughput::default();
    let run_started = std::time::Instant::now();
    let mut accum = GradientsAccumulator::new();
    let mut in_accum = 0;
    let save_ckpt = |model: &Towers, optim: &burn::optim::ModuleOptimizer, state: &TrainState| {
        checkpoint::save(&args.out, state, |dir| {
            let mut store = BurnpackStore::from_file(dir.join("model.bpk")).overwrite(true);
            model
                .save_into(&mut store)
                .map_err(|e| NnError::Save { path: dir.join("model.bpk"), reason: e.to_string() })?;
            optim
                .save(dir.join("optim.bpk"))
                .map_err(|e| NnError::Save { path: dir.join("optim.bpk"), reason: e.to_string() })
        })
    };

    while state.epoch < args.epochs && state.step < total_steps {
        let order_seed = args.seed.wrapping_add(1000 * state.epoch as u64 + 1);
        let batches = match &stream {
            None => data::epoch_batches(
                &train_pairs,
                args.batch_size,
                order_seed,
                args.augment,
                &proc,
                args.workers,
                state.batch_in_epoch,
            ),
            Some(st) => sources::stream_batches(
                st,
                (args.val_fraction, args.seed),
                args.batch_size,
                per_epoch,
                order_seed,
                args.augment,
                &proc,
                args.workers,
                state.batch_in_epoch,
            ),
        };
        loop {
            let waited = std::time::Instant::now();
            let Ok(batch) = batches.recv() else { break };
            let batch = batch?;
            // Throughput: what the loader could deliver alone (images per second of one worker's
            // time, times the workers) next to what the step consumes; the wait says who limits.
            speed.wait_seconds += waited.elapsed().as_secs_f64();
            speed.loaded += batch.captions.len() as f64;
            speed.load_seconds += batch.load_seconds / args.workers.max(1) as f64;
            skipped_samples.extend(batch.skipped.iter().cloned());
            let n = batch.captions.len();
            if n < 2 {
                // Too few samples decoded for a contrastive loss: the batch is passed over.
                state.batch_in_epoch = batch.index + 1;
                continue;
            }
            let s = config.image_size();
            let pixels = Tensor::<4>::from_data(TensorData::new(batch.pixels, [n, 3, s, s]), &device);
            let text = tok.encode_batch(&batch.captions, model.text_padding(), &device)?;
            let (img, txt) = match args.precision {
                Precision::F32 => model.embed(pixels, &text),
                Precision::Bf16 => {
                    let half = zoo_nn::mixed::autocast(&model, burn::tensor::DType::BF16);
                    let (i, t) = half.embed(pixels.cast(burn::tensor::DType::BF16), &text);
                    (i.cast(burn::tensor::DType::F32), t.cast(burn::tensor::DType::F32))
                }
            };
            let loss = model.loss(img, txt, args.chunk_size) / grad_accum as f64;
            let value = zoo_nn::host::scalar(loss.clone().inner()) * grad_accum as f64;
            if !value.is_finite() {
                let last = match checkpoint::latest(&args.out) {
                    Ok(Some(dir)) => format!("the last good checkpoint is {}", dir.display()),
                    _ => "no checkpoint was saved before it".to_string(),
                };
                return Err(NnError::Config(format!(
                    "loss became {value} at step {} (epoch {}); stopping: {last}",
                    state.step, state.epoch
                )));
            }
            accum.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
            in_accum += 1;
            state.batch_in_epoch = batch.index + 1;
            if in_accum < grad_accum {
                continue;
            }
            in_accum = 0;
            let lr = learning_rate(state.step, total_steps, args.warmup_steps, args.lr);
            model = optim.step(lr, model, accum.grads()).clamp_temperature();
            state.step += 1;
            state.losses.push(value);
            if let Some(bar) = &bar {
                bar.set_position(state.step as u64);
                bar.set_message(format!(
                    "loss {value:.4}  lr {lr:.2e}  {}",
                    speed.line(run_started.elapsed().as_secs_f64())
                ));
            }
            if state.step % args.checkpoint_every.max(1) == 0 {
                save_ckpt(&model, &optim, &state)?;
            }
            if state.step >= total_steps {
                break;
            }
        }
        if state.step < total_steps || state.batch_in_epoch >= per_epoch {
            state.epoch += 1;
            state.batch_in_epoch = 0;
        }
        if !held_out.is_empty() {
            let valid = model.valid();
            let (img, txt) = embed_all(&valid, &held_out, &proc, &tok, &device.clone().inner())?;
            let r = eval::recall(img, txt);
            recalls.push(r);
            metrics.push_str(&format!(
                "{},{},{:.6},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4}\n",
                state.epoch,
                state.step,
                state.losses.last().copied().unwrap_or(f64::NAN),
                r.i2t[0],
                r.i2t[1],
                r.i2t[2],
                r.t2i[0],
                r.t2i[1],
                r.t2i[2]
            ));
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    save_ckpt(&model, &optim, &state)?;
    let lrs: Vec<f64> =
        (0..state.losses.len()).map(|i| learning_rate(i, total_steps, args.warmup_steps, args.lr)).collect();
    let losses_csv: String = state
        .losses
        .iter()
        .zip(lrs)
        .enumerate()
        .map(|(i, (l, lr))| format!("{},{l:.9},{lr:.6e}\n", i + 1))
        .collect();
    crate::fs::write_atomic(&args.out.join("losses.csv"), format!("step,loss,lr\n{losses_csv}").as_bytes())?;
    crate::fs::write_atomic(&args.out.join("metrics.csv"), metrics.as_bytes())?;

    let valid = model.valid();
    export(&args.out, &valid, &config, &pre, &tok_dir)?;
    let zero_shot_accuracy = match &args.labels {
        Some(path) if !held_out.is_empty() => {
            Some(zero_shot(&valid, &held_out, path, &proc, &tok, &device.clone().inner())?)
        }
        _ => None,
    };
    let arch = format!("{:?}", args.arch).to_lowercase();
    let model_name = match &args.init {
        Some(init) => format!("{arch} from {init}"),
        None => format!("{arch} {}", format!("{:?}", args.preset).to_lowercase()),
    };
    let title = format!(
        "{model_name}: {} pairs ({} train, {} held out), {} epochs, batch {}",
        train_len + held_out.len(),
        train_len,
        held_out.len(),
        args.epochs,
        args.batch_size
    );
    // From the files just written, so the figure shows exactly what the CSVs hold.
    let mut run = plot::Run::read(&args.out, &title)?;
    run.zero_shot = zero_shot_accuracy;
    run.plot(&args.out.join("metrics.png"))?;
    Ok(TrainReport {
        steps: state.step,
        losses: state.losses,
        recall: recalls,
        zero_shot_accuracy,
        skipped_images: skipped_samples.len(),
        skipped_samples: skipped_samples.into_iter().collect(),
        skipped_captions: skipped.empty_captions,
        export: args.out.clone(),
        throughput: speed.line(run_started.elapsed().as_secs_f64()),
    })
}

fn zero_shot(
    model: &Towers,
    pairs: &[Pair],
    labels: &Path,
    proc: &ImageProcessor,
    tok: &TextTokenizer,
    device: &Device,
) -> Result<f64> {
    let text = std::fs::read_to_string(labels).map_err(|e| NnError::io(labels, e))?;
    let classes: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    if classes.is_empty() {
        return Err(NnError::Config(format!("{}: no class names", labels.display())));
    }
    let labelled: Vec<(Pair, usize)> = pairs
        .iter()
        .filter_map(|p| {
            classes
                .iter()
                .position(|c| p.caption.to_lowercase().contains(&c.to_lowercase()))
                .map(|k| (p.clone(), k))
        })
        .collect();
    let paths: Vec<PathBuf> = labelled.iter().map(|(p, _)| p.image.clone()).collect();
    if paths.is_empty() {
        return Ok(0.0);
    }
    let pixels = proc.batch_from_files(&paths, device)?;
    let (img, cls) = model.embed(pixels, &tok.encode_batch(&classes, model.text_padding(), device)?);
    // embed() pairs rows; the class texts form their own batch here.
    let labels: Vec<usize> = labelled.iter().map(|(_, k)| *k).collect();
    Ok(eval::zero_shot_accuracy(img, cls, &labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_defaults_are_the_library_defaults() {
        let argv = ["train", "--arch", "siglip", "--data", "d", "--out", "o"];
        let parsed = crate::args::parse_from::<TrainArgs>(&argv);
        assert_eq!(parsed, TrainArgs { data: "d".into(), out: "o".into(), ..Default::default() });
    }
}
