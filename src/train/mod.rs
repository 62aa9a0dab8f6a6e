//! `vlm-zoo train`: CLIP or SigLIP on your own image-text pairs, from scratch or from an HF
//! checkpoint, ending in an HF-format folder that vlm-zoo and transformers both load.

pub mod eval;

use crate::args::{DeviceArgs, ModelSource};
use crate::draw::plot;
use crate::models::{Arch, Family, ModelConfig, Preset, Towers};
use crate::training::data::{self, Augment, Batch, Dataset, DatasetOptions, Pair, Source};
use crate::training::{Loaded, Precision, Run, Task, TrainLoop, tokenizer};
use burn::prelude::*;
use burn::tensor::DType;
use std::path::{Path, PathBuf};
use zoo_nn::{
    ContrastiveModel, ImageProcessor, NnError, NormKind, PreprocessorConfig, Result, TextTokenizer,
};

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
    pub source: data::SourceOptions,
    /// Output folder: the HF-format model, checkpoints, losses.csv, metrics.csv, metrics.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Model size when training from scratch.
    #[arg(long, value_enum, default_value_t = TrainArgs::default().preset)]
    pub preset: Preset,
    /// Norm of every block when training from scratch: layer, rms, rms_gemma or batch.
    #[arg(long, default_value_t = TrainArgs::default().norm)]
    pub norm: NormKind,
    /// Fine-tune from this HF SigLIP/CLIP checkpoint: a folder or a hub id (org/name[@revision]),
    /// downloaded into the HF cache when it is not there. Its tokenizer is used.
    #[arg(long)]
    pub init: Option<ModelSource>,
    /// Use this tokenizer.json (from scratch; --init brings its own); without it one is trained
    /// on the captions.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// No effect, accepted for scripts that pass it: a BPE tokenizer is trained on the captions
    /// whenever neither --tokenizer nor --init gives one.
    #[arg(long)]
    pub train_tokenizer: bool,
    /// Vocabulary of the tokenizer trained on the captions.
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
    /// Threads decoding and augmenting images ahead of the step.
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
    /// Data-parallel training on several devices, comma-separated (`cuda:0,cuda:1`, or
    /// `cpu,cpu` for CPU replicas on threads): one replica per device, the global batch
    /// (--batch-size) split evenly, every replica scoring its embeddings against all the
    /// others' (open_clip's --gather-with-grad), gradients summed onto the first device, one
    /// optimiser step; checkpoints, logs and the export from the first. The losses and
    /// parameters equal one device's on the whole batch.
    #[arg(long, value_delimiter = ',', conflicts_with = "device")]
    pub devices: Vec<String>,
}

impl TrainArgs {
    /// The devices to train on (autodiff), with a note on how the replicas combine when
    /// there are several. Errors name a malformed or repeated device, a mix of kinds, and a
    /// batch size the devices do not divide.
    pub fn train_devices(&self) -> Result<(Vec<Device>, Option<String>)> {
        crate::training::parallel::devices(&self.devices, &self.device, self.batch_size)
    }

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
            source: data::SourceOptions::default(),
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
            devices: Vec::new(),
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
    naflex: Option<&zoo_siglip::naflex::NaflexProcessor>,
    tok: &TextTokenizer,
    device: &Device,
) -> Result<(Tensor<2>, Tensor<2>)> {
    let (mut imgs, mut txts) = (Vec::new(), Vec::new());
    for chunk in pairs.chunks(64) {
        let paths: Vec<PathBuf> = chunk.iter().map(|p| p.image.clone()).collect();
        let captions: Vec<String> = chunk.iter().map(|p| p.caption.clone()).collect();
        let text = tok.encode_batch(&captions, model.text_padding(), device)?;
        let embedded = match naflex {
            Some(nf) => {
                let images = paths.iter().map(|p| zoo_nn::open_image(p)).collect::<Result<Vec<_>>>()?;
                model.embed_naflex(&nf.batch(&images, device)?, &text)
            }
            None => None,
        };
        let (i, t) = match embedded {
            Some(e) => e,
            None => model.embed(proc.batch_from_files(&paths, device)?, &text),
        };
        imgs.push(i);
        txts.push(t);
    }
    Ok((Tensor::cat(imgs, 0), Tensor::cat(txts, 0)))
}

/// Runs training; see [`TrainArgs`].
pub fn train(args: &TrainArgs) -> Result<TrainReport> {
    args.validate()?;
    let (devices, how) = args.train_devices()?;
    // A stream (shards, parquet) is read from disk every epoch; a list is held as paths.
    let dataset = Dataset::open(
        &args.data,
        &DatasetOptions {
            source: &args.source,
            strict: args.strict,
            val_fraction: args.val_fraction,
            seed: args.seed,
            held_out_dir: &args.out.join("held-out"),
            batch_size: args.batch_size,
        },
    )?;
    let train_len = dataset.len;
    if train_len < args.batch_size {
        return Err(NnError::Config(format!(
            "--batch-size {} is larger than the {train_len} training pairs",
            args.batch_size,
        )));
    }
    let run = Run::open(&args.out, args.resume)?;
    if let Some(how) = how {
        eprintln!("{how}");
    }
    let device = devices[0].clone();
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
                tokenizer::train_tokenizer(&dataset.captions, args.vocab_size, args.arch, &args.out)?;
            }
            args.out.clone()
        }
    };
    let tok = TextTokenizer::from_dir(&tok_dir)?;
    let (model, config) = match &init {
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
    // SigLIP 2 NaFlex: each image as NaFlex patches at its own aspect ratio, as it was trained.
    let naflex = match (&model, &init) {
        (Towers::Siglip2(_), Some(dir)) => {
            if args.augment != Augment::default() {
                return Err(NnError::Config(
                    "--random-crop / --flip: a SigLIP 2 NaFlex model takes each image whole at its own aspect ratio; augmentations are not applied to NaFlex images".into(),
                ));
            }
            if devices.len() > 1 {
                return Err(NnError::Config("--devices: SigLIP 2 NaFlex trains on one device".into()));
            }
            Some(zoo_siglip::naflex::NaflexProcessor::from_dir(dir)?)
        }
        _ => None,
    };
    let pre = preprocessor(&config, init.as_deref())?;
    let arch = format!("{:?}", args.arch).to_lowercase();
    let model_name = match &args.init {
        Some(init) => format!("{arch} from {init}"),
        None => format!("{arch} {}", format!("{:?}", args.preset).to_lowercase()),
    };
    let title = format!(
        "{model_name}: {} pairs ({} train, {} held out), {} epochs, batch {}",
        train_len + dataset.held_out.len(),
        train_len,
        dataset.held_out.len(),
        args.epochs,
        args.batch_size
    );
    let train_loop = TrainLoop {
        epochs: args.epochs,
        batches_per_epoch: dataset.source.batches_per_epoch(args.batch_size),
        grad_accum,
        max_steps: args.max_steps,
        lr: args.lr,
        warmup_steps: args.warmup_steps,
        weight_decay: args.weight_decay,
        grad_clip: args.grad_clip,
        precision: args.precision,
        checkpoint_every: Some(args.checkpoint_every),
        checkpoint_each_epoch: false,
        progress: args.progress,
    };
    let Dataset { source, held_out, skipped: scan_skipped, empty_captions, .. } = dataset;
    let mut task = Contrastive {
        args,
        source,
        proc: ImageProcessor::new(pre.clone()),
        tok,
        image_size: config.image_size(),
        held_out,
        device: device.clone(),
        devices,
        naflex,
        recalls: Vec::new(),
        zero_shot: None,
    };
    let done = run.train(model, &mut task, &train_loop, &title)?;
    let valid = done.model.valid();
    crate::export::contrastive(&args.out, &valid, &config, &pre, &tok_dir)?;
    let mut skipped_samples = scan_skipped;
    skipped_samples.extend(done.skipped);
    Ok(TrainReport {
        steps: done.state.step,
        losses: done.state.losses,
        recall: task.recalls.into_iter().map(|(_, r)| r).collect(),
        zero_shot_accuracy: task.zero_shot,
        skipped_images: skipped_samples.len(),
        skipped_samples: skipped_samples.into_iter().collect(),
        skipped_captions: empty_captions,
        export: args.out.clone(),
        throughput: done.throughput,
    })
}

/// One data-parallel step over `task.devices`: replica `r` (a copy of `model` on device `r`, on
/// its own thread) embeds shard `r` of the batch, the replicas exchange their embeddings
/// (detached: the all-gather), and each scores the whole batch with only its own shard's
/// embeddings differentiable. Replica `r`'s gradients are then exactly shard `r`'s part of the
/// whole batch's; summed on the first device they are the whole batch's. The loss's own
/// parameters (temperature, bias) take their gradient from the first replica only, since
/// each replica's is already the whole batch's.
fn data_parallel(
    task: &Contrastive<'_>,
    model: &Towers,
    dtype: Option<DType>,
    batch: Batch,
    scale: f64,
) -> Result<(f64, burn::optim::GradientsParams)> {
    use std::sync::{Barrier, Mutex};
    let n = batch.captions.len();
    let d = task.devices.len().min(n);
    let s = task.image_size;
    let per_image = 3 * s * s;
    let shard = crate::training::parallel::shard;
    let loss_ids = model.loss_param_ids();
    let tower_ids: Vec<_> =
        burn::module::list_param_ids(model).into_iter().filter(|id| !loss_ids.contains(id)).collect();
    let barrier = Barrier::new(d);
    // Each replica's embeddings on the host, for the others: (image, text) rows.
    let gathered: Mutex<Vec<Option<(TensorData, TensorData)>>> = Mutex::new(vec![None; d]);
    let devices = &task.devices[..d];
    let (values, grads) = crate::training::parallel::replicas(model, devices, |r, replica, device| {
        let range = shard(n, d, r);
        let embedded = (|| -> Result<(Tensor<2>, Tensor<2>)> {
            let pixels = batch.pixels[range.start * per_image..range.end * per_image].to_vec();
            let pixels = Tensor::<4>::from_data(TensorData::new(pixels, [range.len(), 3, s, s]), device);
            let text =
                task.tok.encode_batch(&batch.captions[range.clone()], replica.text_padding(), device)?;
            Ok(match dtype {
                None => replica.embed(pixels, &text),
                Some(dt) => {
                    let half = zoo_nn::train::mixed::autocast(replica, dt);
                    let (i, t) = half.embed(pixels.cast(dt), &text);
                    (i.cast(DType::F32), t.cast(DType::F32))
                }
            })
        })();
        if let Ok((img, txt)) = &embedded {
            gathered.lock().map_err(|_| NnError::Config("a replica panicked".into()))?[r] =
                Some((img.clone().into_data(), txt.clone().into_data()));
        }
        // Every replica reaches the exchange, failed or not, so none waits forever.
        barrier.wait();
        let (img, txt) = embedded?;
        let all = gathered.lock().map_err(|_| NnError::Config("a replica panicked".into()))?.clone();
        let mut imgs = Vec::with_capacity(d);
        let mut txts = Vec::with_capacity(d);
        for (q, part) in all.into_iter().enumerate() {
            let Some((i, t)) = part else {
                return Err(NnError::Config(format!("replica {q} failed before the exchange")));
            };
            if q == r {
                imgs.push(img.clone());
                txts.push(txt.clone());
            } else {
                imgs.push(Tensor::from_data(i, device));
                txts.push(Tensor::from_data(t, device));
            }
        }
        let loss = replica.loss(Tensor::cat(imgs, 0), Tensor::cat(txts, 0), task.args.chunk_size) * scale;
        let value = zoo_nn::host::scalar(loss.clone().inner()) / scale;
        let mut grads = loss.backward();
        let params = if r == 0 {
            burn::optim::GradientsParams::from_module(&mut grads, replica)
        } else {
            burn::optim::GradientsParams::from_params(&mut grads, replica, &tower_ids)
        };
        Ok((value, params))
    })?;
    // Every replica scored the whole batch: the first's value is the loss.
    Ok((values[0], grads))
}

/// `vlm-zoo train` as a training task: contrastive loss on batches of image-caption pairs,
/// held-out recall after each epoch, zero-shot accuracy after the last.
struct Contrastive<'a> {
    args: &'a TrainArgs,
    source: Box<dyn Source>,
    proc: ImageProcessor,
    tok: TextTokenizer,
    image_size: usize,
    held_out: Vec<Pair>,
    device: Device,
    /// The data-parallel replicas' devices (`--devices`; one: no replicas).
    devices: Vec<Device>,
    /// SigLIP 2 NaFlex's processor: batches are decoded images, made into patches per image.
    naflex: Option<zoo_siglip::naflex::NaflexProcessor>,
    /// `(epoch, recall)` after each epoch of this process.
    recalls: Vec<(usize, eval::Recall)>,
    zero_shot: Option<f64>,
}

impl Task for Contrastive<'_> {
    type Model = Towers;
    type Batch = Batch;

    fn metrics_header(&self) -> String {
        "epoch,step,loss,i2t_r1,i2t_r5,i2t_r10,t2i_r1,t2i_r5,t2i_r10".into()
    }

    fn batches(&mut self, epoch: usize, skip: usize) -> Box<dyn Iterator<Item = Result<Loaded<Batch>>>> {
        let a = self.args;
        let order_seed = a.seed.wrapping_add(1000 * epoch as u64 + 1);
        let rx = match &self.naflex {
            Some(_) => data::prepared(
                &*self.source,
                a.batch_size,
                order_seed,
                &data::Prepare::Decode,
                a.workers,
                skip,
            ),
            None => {
                data::batches(&*self.source, a.batch_size, order_seed, a.augment, &self.proc, a.workers, skip)
            }
        };
        data::loaded(rx, a.workers)
    }

    fn loss(
        &self,
        model: &Towers,
        cast: Option<(&Towers, DType)>,
        batch: Batch,
    ) -> Result<Option<Tensor<1>>> {
        let n = batch.captions.len();
        if n < 2 {
            // Too few samples decoded for a contrastive loss.
            return Ok(None);
        }
        let text = self.tok.encode_batch(&batch.captions, model.text_padding(), &self.device)?;
        if let Some(naflex) = &self.naflex {
            let patches = naflex.batch(&batch.images, &self.device)?;
            let embedded = match cast {
                None => model.embed_naflex(&patches, &text),
                Some((half, dtype)) => {
                    let patches = zoo_siglip::naflex::NaflexBatch {
                        patches: patches.patches.clone().cast(dtype),
                        ..patches.clone()
                    };
                    half.embed_naflex(&patches, &text).map(|(i, t)| (i.cast(DType::F32), t.cast(DType::F32)))
                }
            };
            let (img, txt) =
                embedded.ok_or_else(|| NnError::Config("NaFlex batches need a SigLIP 2 model".into()))?;
            return Ok(Some(model.loss(img, txt, self.args.chunk_size)));
        }
        let s = self.image_size;
        let pixels = Tensor::<4>::from_data(TensorData::new(batch.pixels, [n, 3, s, s]), &self.device);
        let (img, txt) = model.embed_in(cast, pixels, &text);
        Ok(Some(model.loss(img, txt, self.args.chunk_size)))
    }

    fn gradients(
        &self,
        model: &Towers,
        cast: Option<(&Towers, DType)>,
        batch: Batch,
        scale: f64,
    ) -> Result<Option<(f64, burn::optim::GradientsParams)>> {
        if self.devices.len() < 2 {
            let Some(loss) = self.loss(model, cast, batch)? else { return Ok(None) };
            return Ok(Some(crate::training::backward(model, loss, scale)));
        }
        if batch.captions.len() < 2 {
            return Ok(None);
        }
        data_parallel(self, model, cast.map(|c| c.1), batch, scale).map(Some)
    }

    fn after_step(&self, model: Towers) -> Towers {
        model.clamp_temperature()
    }

    fn end_epoch(&mut self, model: &Towers, end: &crate::training::EpochEnd) -> Result<Vec<String>> {
        if self.held_out.is_empty() {
            return Ok(Vec::new());
        }
        let valid = model.valid();
        let cpu = self.device.clone().inner();
        let (img, txt) =
            embed_all(&valid, &self.held_out, &self.proc, self.naflex.as_ref(), &self.tok, &cpu)?;
        let r = eval::recall(img, txt);
        self.recalls.push((end.epoch, r));
        if end.last
            && let Some(labels) = &self.args.labels
        {
            self.zero_shot = Some(zero_shot(&valid, &self.held_out, labels, &self.proc, &self.tok, &cpu)?);
        }
        Ok(vec![format!(
            "{},{},{:.6},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4}",
            end.epoch, end.step, end.loss, r.i2t[0], r.i2t[1], r.i2t[2], r.t2i[0], r.t2i[1], r.t2i[2]
        )])
    }

    fn panel(&self) -> crate::draw::Panel {
        let round = plot::round4;
        let epochs: Vec<plot::EpochMetrics> = self
            .recalls
            .iter()
            .map(|(epoch, r)| plot::EpochMetrics {
                epoch: *epoch as f64,
                i2t: r.i2t.map(round),
                t2i: r.t2i.map(round),
            })
            .collect();
        plot::recall_panel(&epochs, self.zero_shot)
    }
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
