//! `vlm-zoo finetune`: PaliGemma (or a composed VLM saved as one) fine-tuned on your own
//! (image, prefix, suffix) rows, as Google ships it to be used.
//!
//! The loss is transformers' with the processor's `labels`: cross-entropy on the suffix and its
//! `<eos>` only, full attention over image + prefix, causal over the suffix
//! ([`zoo_nn::train::loss::suffix_cross_entropy`]; parity: paligemma/tests/finetune.rs). What trains:
//! `--train attention` (the decoder's attention, Google's recipe; vision tower and projector
//! frozen), `decoder` (the whole Gemma), `all`; or LoRA adapters (`--lora-rank`) on the decoder's
//! named projections, Burn's own `Lora` reparameterisation, merged into the weights at export.
//! Each epoch ends with held-out exact match and a few sampled answers; the run ends with an HF
//! PaliGemma folder (the source's config and tokenizer files + the trained weights) that
//! `vlm-zoo generate` and transformers load.

use crate::args::{DeviceArgs, ModelSource};
use crate::draw::{Panel, plot};
use crate::training::checkpoint::TrainState;
use crate::training::data::{self, Augment, ListSource, Pair, csv_fields, shuffle};
use crate::training::{EpochEnd, Loaded, Precision, Run, Task, TrainLoop};
use burn::module::{Lora, Module, ParamGroup};
use burn::prelude::*;
use burn::tensor::DType;
use std::path::{Path, PathBuf};
use zoo_nn::{NnError, Result, Rng, Sampling};
use zoo_paligemma::{PaliGemmaDecoder, PaliGemmaForConditionalGeneration, PaliGemmaProcessor};

/// Which parameters `--train` updates (without LoRA).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trainable {
    /// The decoder's attention projections (q, k, v, o of every layer): Google's recipe.
    #[default]
    Attention,
    /// The whole Gemma decoder, embeddings included.
    Decoder,
    /// Everything: vision tower, projector and decoder.
    All,
}

/// The projections LoRA may wrap, per decoder layer.
pub const LORA_TARGETS: [&str; 7] =
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// `vlm-zoo finetune`'s options.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct FinetuneArgs {
    /// The PaliGemma folder or hub id to start from.
    #[arg(long)]
    pub model: ModelSource,
    /// JSONL (`{"image", "prefix", "suffix"}` per line) or CSV with those columns; images relative
    /// to the file.
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder: the fine-tuned HF folder, checkpoints, losses.csv, metrics.csv, metrics.png,
    /// samples.tsv.
    #[arg(long)]
    pub out: PathBuf,
    /// What trains (ignored with --lora-rank, where only the adapters train).
    #[arg(long, value_enum, default_value_t = Trainable::Attention)]
    pub train: Trainable,
    /// Passes over the training rows.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Rows per step.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW) [default: 3e-5; 3e-4 with --lora-rank].
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Linear warm-up steps, then cosine decay to 10% of the peak.
    #[arg(long, default_value_t = 10)]
    pub warmup_steps: usize,
    /// Batches whose gradients are summed before each step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Gradient-norm clipping (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f32,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Fraction of the rows held out for exact match.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Stop after this many steps.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// LoRA rank: train rank-R adapters on --lora-targets instead of the weights.
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA scale numerator (adapters add alpha / rank · A·B) [default: the rank].
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// The decoder projections LoRA wraps, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "q_proj,k_proj,v_proj,o_proj")]
    pub lora_targets: Vec<String>,
    /// Held-out answers printed (and written to samples.tsv) after each epoch.
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
    /// Seed of the split, the batch order and the adapters' initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Compute precision: f32, or bf16 (forward and backward in bf16 on a cast of the f32
    /// weights; gradients, AdamW state and the loss in f32; the export in f32).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Gradient checkpointing: recompute memory-bound activations (norms, activations,
    /// softmax) in the backward pass instead of keeping them, for larger batches in the same
    /// memory (Burn's balanced strategy; the results are the same).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// The device.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Data-parallel fine-tuning on several devices, as `vlm-zoo train --devices`: one replica
    /// per device with its share of each batch's rows, weighted by its share of the batch's
    /// answer tokens, gradients summed on the first device.
    #[arg(long, value_delimiter = ',', conflicts_with = "device")]
    pub devices: Vec<String>,
    /// Show a progress bar.
    #[arg(skip = true)]
    pub progress: bool,
}

impl Default for FinetuneArgs {
    fn default() -> Self {
        Self {
            model: ModelSource(PathBuf::new()),
            data: PathBuf::new(),
            out: PathBuf::new(),
            train: Trainable::Attention,
            epochs: 3,
            batch_size: 8,
            lr: None,
            warmup_steps: 10,
            grad_accum: 1,
            grad_clip: 1.0,
            weight_decay: 0.0,
            val_fraction: 0.1,
            max_steps: None,
            lora_rank: None,
            lora_alpha: None,
            lora_targets: ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec(),
            samples: 3,
            seed: 0,
            resume: false,
            precision: Precision::F32,
            gradient_checkpointing: false,
            device: DeviceArgs::default(),
            devices: Vec::new(),
            progress: true,
        }
    }
}

/// One training row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The image.
    pub image: PathBuf,
    /// The task prompt (`detect cat`, `caption en`, ...).
    pub prefix: String,
    /// The answer to learn.
    pub suffix: String,
}

/// Reads rows from a JSONL or CSV file (`image` relative to the file). A row without `image`,
/// `prefix` or `suffix` is an error naming its line.
pub fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let text = zoo_nn::load::read_text(path, 4 << 30)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let missing = |line: usize, what: &str| {
        NnError::Config(format!(
            "{}:{line}: no \"{what}\" (each row needs image, prefix and suffix)",
            path.display()
        ))
    };
    let mut rows = Vec::new();
    if path.extension().is_some_and(|e| e == "jsonl" || e == "json") {
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| NnError::Config(format!("{}:{}: invalid JSON: {e}", path.display(), i + 1)))?;
            let field = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| missing(i + 1, k));
            rows.push(Row {
                image: base.join(field("image")?),
                prefix: field("prefix")?,
                suffix: field("suffix")?,
            });
        }
    } else {
        let mut lines = text.lines().enumerate();
        let header = csv_fields(lines.next().map_or("", |(_, l)| l));
        let col = |name: &str| header.iter().position(|h| h.trim() == name);
        let (Some(ic), Some(pc), Some(sc)) = (col("image"), col("prefix"), col("suffix")) else {
            return Err(NnError::Config(format!(
                "{}: the CSV header must have columns \"image\", \"prefix\" and \"suffix\" (found {header:?})",
                path.display()
            )));
        };
        for (i, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
            let f = csv_fields(line);
            let get = |c: usize, k: &str| f.get(c).cloned().ok_or_else(|| missing(i + 1, k));
            rows.push(Row {
                image: base.join(get(ic, "image")?.trim()),
                prefix: get(pc, "prefix")?,
                suffix: get(sc, "suffix")?,
            });
        }
    }
    if rows.is_empty() {
        return Err(NnError::Config(format!("{}: no rows", path.display())));
    }
    Ok(rows)
}

/// A row made ready: ids = prompt + suffix + `<eos>`.
#[derive(Debug, Clone)]
struct Example {
    row: Row,
    prompt: Vec<u32>,
    suffix: Vec<u32>,
}

/// What [`finetune`] returns.
#[derive(Debug, Clone)]
pub struct FinetuneReport {
    /// Optimiser steps taken.
    pub steps: usize,
    /// Loss of every step.
    pub losses: Vec<f64>,
    /// Held-out exact match before the first step (a fresh run with held-out rows).
    pub exact_match_before: Option<f64>,
    /// Held-out exact match after each epoch (of this process).
    pub exact_match: Vec<f64>,
    /// Rows whose image did not decode (path: reason), left out.
    pub skipped: Vec<String>,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// The HF folder written.
    pub export: PathBuf,
    /// Sampled held-out answers of the last epoch.
    pub samples: Vec<Sample>,
}

/// One held-out answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The image.
    pub image: PathBuf,
    /// The prompt.
    pub prefix: String,
    /// What the model answered (greedy).
    pub generated: String,
    /// The row's suffix.
    pub expected: String,
}

/// The parameter groups `--train` and `--lora-targets` name.
fn trainable_group(model: &PaliGemmaForConditionalGeneration, args: &FinetuneArgs) -> Result<ParamGroup> {
    let layers = &model.language_model.model.layers;
    if args.lora_rank.is_some() {
        let bad: Vec<&String> =
            args.lora_targets.iter().filter(|t| !LORA_TARGETS.contains(&t.as_str())).collect();
        if !bad.is_empty() || args.lora_targets.is_empty() {
            return Err(NnError::Config(format!(
                "--lora-targets {:?} names no decoder layer; valid names: {}",
                bad,
                LORA_TARGETS.join(", ")
            )));
        }
        let mut ids = Vec::new();
        for l in layers {
            let a = &l.self_attn;
            let m = &l.mlp;
            for t in &args.lora_targets {
                let lin = match t.as_str() {
                    "q_proj" => &a.q_proj,
                    "k_proj" => &a.k_proj,
                    "v_proj" => &a.v_proj,
                    "o_proj" => &a.o_proj,
                    "gate_proj" => &m.gate_proj,
                    "up_proj" => &m.up_proj,
                    _ => &m.down_proj,
                };
                ids.push(lin.weight.id);
            }
        }
        return Ok(ParamGroup::from_ids(ids));
    }
    Ok(match args.train {
        Trainable::All => ParamGroup::all(),
        Trainable::Decoder => ParamGroup::ids_from_module(model.language_model.clone()),
        Trainable::Attention => layers
            .iter()
            .map(|l| ParamGroup::ids_from_module(l.self_attn.clone()))
            .reduce(|a, b| a.fuse(&b))
            .unwrap_or_else(|| ParamGroup::from_ids(Vec::new())),
    })
}

/// Counts the parameters that require gradients.
fn count_trainable<M: Module>(m: &M) -> usize {
    struct Count(usize);
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            if p.is_require_grad() {
                self.0 += p.shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    m.visit(&mut c);
    c.0
}

fn validate(args: &FinetuneArgs) -> Result<()> {
    let bad = |what: String| Err(NnError::Config(what));
    if args.epochs == 0 || args.batch_size == 0 || args.grad_accum == 0 {
        return bad("--epochs, --batch-size and --grad-accum must be at least 1".into());
    }
    if let Some(lr) = args.lr
        && !(lr.is_finite() && lr > 0.0)
    {
        return bad(format!("--lr {lr}: expected a positive number"));
    }
    if !(0.0..1.0).contains(&args.val_fraction) {
        return bad(format!("--val-fraction {}: expected 0 <= f < 1", args.val_fraction));
    }
    if args.lora_rank == Some(0) {
        return bad("--lora-rank 0: expected at least 1".into());
    }
    if args.lora_alpha.is_some_and(|a| !a.is_finite() || a <= 0.0) {
        return bad("--lora-alpha: expected a positive number".into());
    }
    if !args.grad_clip.is_finite()
        || args.grad_clip < 0.0
        || !args.weight_decay.is_finite()
        || args.weight_decay < 0.0
    {
        return bad("--grad-clip and --weight-decay must be non-negative numbers".into());
    }
    Ok(())
}

/// Runs fine-tuning; see [`FinetuneArgs`]. `on_line` receives what a user watching wants to read
/// (epoch summaries, sampled answers).
pub fn finetune(args: &FinetuneArgs, mut on_line: impl FnMut(&str)) -> Result<FinetuneReport> {
    validate(args)?;
    let src = args.model.resolve()?;
    let config = zoo_paligemma::load::read_config(&src)?;
    let proc = PaliGemmaProcessor::from_dir(&src, &config)?;
    let rows = read_rows(&args.data)?;
    let max_len = config.text_config.max_position_embeddings;

    // Rows: tokenised and length-checked now; images decoded once so a broken one is left out
    // (and counted) before any step.
    let mut examples = Vec::with_capacity(rows.len());
    let mut skipped = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        if let Err(e) = zoo_nn::open_image(&row.image) {
            skipped.push(e.to_string());
            continue;
        }
        let prompt = proc.prompt_ids(&row.prefix)?;
        let suffix = proc.suffix_ids(&row.suffix)?;
        if prompt.len() + suffix.len() > max_len {
            return Err(NnError::Config(format!(
                "{} row {}: image + prefix ({} tokens) + suffix and <eos> ({}) = {} exceeds the model's {max_len} positions",
                args.data.display(),
                i + 1,
                prompt.len(),
                suffix.len(),
                prompt.len() + suffix.len()
            )));
        }
        examples.push(Example { row, prompt, suffix });
    }
    let mut rng = Rng::new(args.seed);
    shuffle(&mut examples, &mut rng);
    let n_val = if args.val_fraction > 0.0 && examples.len() > 1 {
        ((examples.len() as f64 * args.val_fraction).round() as usize).clamp(1, examples.len() - 1)
    } else {
        0
    };
    let held_out: Vec<Example> = examples.drain(..n_val).collect();
    let train_rows = examples;
    if train_rows.len() < args.batch_size {
        return Err(NnError::Config(format!(
            "--batch-size {} is larger than the {} training rows",
            args.batch_size,
            train_rows.len()
        )));
    }

    let run = Run::open(&args.out, args.resume)?;
    let export_dir = args.out.join("model");
    if export_dir.exists() && !args.resume {
        return Err(NnError::Config(format!(
            "{}: already exists (choose another --out)",
            export_dir.display()
        )));
    }

    let (devices, how) = crate::training::parallel::devices(&args.devices, &args.device, args.batch_size)?;
    if let Some(how) = how {
        on_line(&how);
    }
    let device = devices[0].clone();
    // Recompute the memory-bound activations in the backward pass instead of keeping them.
    let device = if args.gradient_checkpointing { device.gradient_checkpointing() } else { device };
    device.seed(args.seed);
    let (model, _) = zoo_paligemma::load_paligemma(&src, burn::tensor::DType::F32, &device)?;
    let group = trainable_group(&model, args)?;
    let model = match args.lora_rank {
        Some(rank) => {
            model.apply_lora(Lora::new(rank, args.lora_alpha.unwrap_or(rank as f64)).set_param_group(group))
        }
        None => model.freeze().unfreeze_group(group),
    };
    let trainable_params = count_trainable(&model);
    let lr_peak = args.lr.unwrap_or(if args.lora_rank.is_some() { 3e-4 } else { 3e-5 });
    let train_loop = TrainLoop {
        epochs: args.epochs,
        batches_per_epoch: train_rows.len() / args.batch_size,
        grad_accum: args.grad_accum,
        max_steps: args.max_steps,
        lr: lr_peak,
        warmup_steps: args.warmup_steps,
        weight_decay: args.weight_decay,
        grad_clip: args.grad_clip,
        precision: args.precision,
        checkpoint_every: None,
        checkpoint_each_epoch: true,
        progress: args.progress,
    };
    let what = match args.lora_rank {
        Some(r) => format!("LoRA rank {r}"),
        None => format!("--train {}", format!("{:?}", args.train).to_lowercase()),
    };
    let title = format!(
        "finetune {} ({what}): {} rows ({} held out), {} epochs, batch {}",
        src.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned()),
        train_rows.len() + held_out.len(),
        held_out.len(),
        args.epochs,
        args.batch_size
    );
    let intro = format!(
        "fine-tuning {} on {} rows ({} held out, {} skipped): {} trainable parameters ({})",
        src.display(),
        train_rows.len() + held_out.len(),
        held_out.len(),
        skipped.len(),
        trainable_params,
        match args.lora_rank {
            Some(r) => format!("LoRA rank {r} on {}", args.lora_targets.join(",")),
            None => format!("--train {}", format!("{:?}", args.train).to_lowercase()),
        }
    );
    let mut task = Finetune {
        args,
        proc,
        max_len,
        source: ListSource {
            pairs: std::sync::Arc::new(
                train_rows
                    .iter()
                    .map(|e| Pair { image: e.row.image.clone(), caption: e.row.suffix.clone() })
                    .collect(),
            ),
        },
        train_rows: std::sync::Arc::new(train_rows),
        held_out,
        device,
        devices,
        on_line: &mut on_line,
        intro: Some(intro),
        exact_match_before: None,
        exact_match: Vec::new(),
        samples: Vec::new(),
        samples_txt: String::new(),
        points: Vec::new(),
    };
    let done = run.train(model, &mut task, &train_loop, &title)?;
    crate::fs::write_atomic(
        &args.out.join("samples.tsv"),
        format!("epoch\timage\tprefix\tgenerated\texpected\n{}", task.samples_txt).as_bytes(),
    )?;
    crate::export::paligemma_like(&src, &export_dir, &done.model.valid().materialize())?;
    skipped.extend(done.skipped);
    Ok(FinetuneReport {
        steps: done.state.step,
        losses: done.state.losses,
        exact_match_before: task.exact_match_before,
        exact_match: task.exact_match,
        skipped,
        trainable_params,
        export: export_dir,
        samples: task.samples,
    })
}

/// `vlm-zoo finetune` as a training task: the suffix loss on batches of rows, held-out exact
/// match and a few sampled answers after each epoch (and before the first step).
struct Finetune<'a, F: FnMut(&str)> {
    args: &'a FinetuneArgs,
    proc: PaliGemmaProcessor,
    max_len: usize,
    /// The training rows' images, read through the one data pipeline.
    source: ListSource,
    train_rows: std::sync::Arc<Vec<Example>>,
    held_out: Vec<Example>,
    device: Device,
    /// The data-parallel replicas' devices (`--devices`; one: no replicas).
    devices: Vec<Device>,
    on_line: &'a mut F,
    /// The first line, printed when training starts.
    intro: Option<String>,
    exact_match_before: Option<f64>,
    exact_match: Vec<f64>,
    samples: Vec<Sample>,
    samples_txt: String,
    /// `(epoch, exact match)` as metrics.csv holds them, for the figure.
    points: Vec<(f64, f64)>,
}

/// Rows ready for the forward pass: ids padded to the longest, where each suffix starts, the
/// suffix lengths, and the images.
struct RowBatch {
    ids: Vec<Vec<u32>>,
    prefix: Vec<usize>,
    suffix_len: Vec<usize>,
    /// `[B, 3, H, W]` flattened, with `(H, W)`.
    pixels: Vec<f32>,
    size: (usize, usize),
}

/// Threads that decode a batch's images ahead of the step.
const LOADERS: usize = 2;

impl<F: FnMut(&str)> Finetune<'_, F> {
    /// Greedy answers to the held-out prefixes: (exact match, right, the first few answers).
    fn evaluate(&self, model: &PaliGemmaForConditionalGeneration) -> Result<(f64, usize, Vec<Sample>)> {
        let valid = model.valid();
        let cpu = self.device.clone().inner();
        let (mut right, mut shown) = (0usize, Vec::new());
        let longest = self.held_out.iter().map(|e| e.suffix.len()).max().unwrap_or(1);
        for chunk in self.held_out.chunks(self.args.batch_size.max(1)) {
            let paths: Vec<PathBuf> = chunk.iter().map(|e| e.row.image.clone()).collect();
            let decoder = PaliGemmaDecoder {
                image_features: valid.image_features(self.proc.images.batch_from_files(&paths, &cpu)?),
                model: &valid,
                max_len: self.max_len,
                device: cpu.clone(),
            };
            let prompts: Vec<Vec<u32>> = chunk.iter().map(|e| e.prompt.clone()).collect();
            let sampling = Sampling {
                max_new_tokens: (longest + 2).min(self.max_len.saturating_sub(1)).max(1),
                ..Default::default()
            };
            let out = zoo_nn::generate(&decoder, &prompts, &self.proc.eos, &sampling, |_, _| {})?;
            for (e, g) in chunk.iter().zip(out) {
                let text = self.proc.tokenizer.decode(&g.token_ids)?;
                right += (text.trim() == e.row.suffix.trim()) as usize;
                if shown.len() < self.args.samples {
                    shown.push(Sample {
                        image: e.row.image.clone(),
                        prefix: e.row.prefix.clone(),
                        generated: text.trim().to_string(),
                        expected: e.row.suffix.clone(),
                    });
                }
            }
        }
        Ok((right as f64 / self.held_out.len().max(1) as f64, right, shown))
    }
}

impl<F: FnMut(&str)> Task for Finetune<'_, F> {
    type Model = PaliGemmaForConditionalGeneration;
    type Batch = RowBatch;

    fn metrics_header(&self) -> String {
        "epoch,step,loss,exact_match".into()
    }

    fn batches(&mut self, epoch: usize, skip: usize) -> Box<dyn Iterator<Item = Result<Loaded<RowBatch>>>> {
        let order_seed = self.args.seed.wrapping_add(1000 * epoch as u64 + 1);
        let rx = data::batches(
            &self.source,
            self.args.batch_size,
            order_seed,
            Augment::default(),
            &self.proc.images,
            LOADERS,
            skip,
        );
        let rows = self.train_rows.clone();
        Box::new(data::loaded(rx, LOADERS).map(move |loaded| {
            let Loaded { index, batch, samples, load_seconds, skipped } = loaded?;
            let examples: Vec<&Example> = batch.indices.iter().map(|&i| &rows[i]).collect();
            let width = examples.iter().map(|e| e.prompt.len() + e.suffix.len()).max().unwrap_or(0);
            let ids: Vec<Vec<u32>> = examples
                .iter()
                .map(|e| {
                    let mut r = [e.prompt.as_slice(), e.suffix.as_slice()].concat();
                    r.resize(width, 0);
                    r
                })
                .collect();
            let rows = RowBatch {
                ids,
                prefix: examples.iter().map(|e| e.prompt.len()).collect(),
                suffix_len: examples.iter().map(|e| e.suffix.len()).collect(),
                pixels: batch.pixels,
                size: batch.size,
            };
            Ok(Loaded { index, batch: rows, samples, load_seconds, skipped })
        }))
    }

    fn loss(
        &self,
        model: &Self::Model,
        cast: Option<(&Self::Model, DType)>,
        b: RowBatch,
    ) -> Result<Option<Tensor<1>>> {
        if b.ids.is_empty() {
            return Ok(None); // no image of the batch decoded
        }
        let (h, w) = b.size;
        let pixels = Tensor::<4>::from_data(TensorData::new(b.pixels, [b.ids.len(), 3, h, w]), &self.device);
        let width = b.ids.first().map_or(0, Vec::len);
        let types: Vec<Vec<u32>> =
            b.prefix.iter().map(|&p| (0..width).map(|t| (t >= p) as u32).collect()).collect();
        let logits = match cast {
            None => model.forward(pixels, &b.ids, &types)?,
            Some((half, dtype)) => half.forward(pixels.cast(dtype), &b.ids, &types)?.cast(DType::F32),
        };
        Ok(Some(zoo_nn::train::loss::suffix_cross_entropy(logits, &b.ids, &b.prefix, &b.suffix_len)))
    }

    fn gradients(
        &self,
        model: &Self::Model,
        cast: Option<(&Self::Model, DType)>,
        b: RowBatch,
        scale: f64,
    ) -> Result<Option<(f64, burn::optim::GradientsParams)>> {
        if self.devices.len() < 2 {
            let Some(loss) = self.loss(model, cast, b)? else { return Ok(None) };
            return Ok(Some(crate::training::backward(model, loss, scale)));
        }
        if b.ids.is_empty() {
            return Ok(None);
        }
        // Replica r's rows, weighted by their share of the batch's answer tokens: the weighted
        // means add up to the whole batch's mean, and so do their gradients.
        let (n, width) = (b.ids.len(), b.ids[0].len());
        let d = self.devices.len().min(n);
        let positions = |rows: std::ops::Range<usize>| -> usize {
            rows.map(|i| zoo_nn::train::loss::suffix_positions(width, b.prefix[i], b.suffix_len[i])).sum()
        };
        let total = positions(0..n).max(1);
        let (h, w) = b.size;
        let per_image = 3 * h * w;
        let dtype = cast.map(|c| c.1);
        let shard = crate::training::parallel::shard;
        let (values, grads) =
            crate::training::parallel::replicas(model, &self.devices[..d], |r, replica, device| {
                let rows = shard(n, d, r);
                let share = positions(rows.clone()) as f64 / total as f64;
                let ids = &b.ids[rows.clone()];
                let (prefix, suffix) = (&b.prefix[rows.clone()], &b.suffix_len[rows.clone()]);
                let pixels = b.pixels[rows.start * per_image..rows.end * per_image].to_vec();
                let pixels = Tensor::<4>::from_data(TensorData::new(pixels, [rows.len(), 3, h, w]), device);
                let types: Vec<Vec<u32>> =
                    prefix.iter().map(|&p| (0..width).map(|t| (t >= p) as u32).collect()).collect();
                let logits = match dtype {
                    None => replica.forward(pixels, ids, &types)?,
                    Some(dt) => {
                        let half = zoo_nn::train::mixed::autocast(replica, dt);
                        half.forward(pixels.cast(dt), ids, &types)?.cast(DType::F32)
                    }
                };
                let loss = zoo_nn::train::loss::suffix_cross_entropy(logits, ids, prefix, suffix) * share;
                Ok(crate::training::backward(replica, loss, scale))
            })?;
        Ok(Some((values.iter().sum(), grads)))
    }

    fn begin(&mut self, model: &Self::Model, state: &TrainState) -> Result<Vec<String>> {
        if let Some(intro) = self.intro.take() {
            (self.on_line)(&intro);
        }
        if state.step != 0 || self.held_out.is_empty() {
            return Ok(Vec::new());
        }
        let (em, right, _) = self.evaluate(model)?;
        (self.on_line)(&format!(
            "before fine-tuning: held-out exact match {:.1}% ({right}/{})",
            100.0 * em,
            self.held_out.len()
        ));
        self.exact_match_before = Some(em);
        self.points.push((0.0, plot::round4(em)));
        Ok(vec![format!("0,0,,{em:.4}")])
    }

    fn end_epoch(&mut self, model: &Self::Model, end: &EpochEnd) -> Result<Vec<String>> {
        // Held-out exact match and a few answers.
        let (em, right, shown) = self.evaluate(model)?;
        if self.held_out.is_empty() {
            return Ok(Vec::new());
        }
        self.exact_match.push(em);
        (self.on_line)(&format!(
            "epoch {}/{}: loss {:.4}, held-out exact match {:.1}% ({right}/{})",
            end.epoch,
            end.epochs,
            end.loss,
            100.0 * em,
            self.held_out.len()
        ));
        for x in &shown {
            let mark = if x.generated == x.expected.trim() { "=" } else { "≠" };
            (self.on_line)(&format!("  {:?} -> {:?} {mark} {:?}", x.prefix, x.generated, x.expected));
            self.samples_txt.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\n",
                end.epoch,
                x.image.display(),
                x.prefix,
                x.generated,
                x.expected
            ));
        }
        self.samples = shown;
        self.points.push((end.epoch as f64, plot::round4(em)));
        Ok(vec![format!("{},{},{:.6},{em:.4}", end.epoch, end.step, end.loss)])
    }

    fn panel(&self) -> Panel {
        plot::epoch_panel(
            "Held-out answers",
            "exact match",
            &[("exact match", self.points.clone())],
            "no held-out rows",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_need_image_prefix_and_suffix() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("d.jsonl");
        std::fs::write(&p, "{\"image\": \"a.png\", \"prefix\": \"caption en\", \"suffix\": \"a cat\"}\n\n{\"image\": \"b.png\", \"prefix\": \"x\"}\n").unwrap();
        let e = read_rows(&p).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:3") && e.contains("\"suffix\""), "{e}");
        let c = tmp.path().join("d.csv");
        std::fs::write(
            &c,
            "image,prefix,suffix\na.png,detect cat,\"<loc0001><loc0002><loc0003><loc0004> cat\"\n",
        )
        .unwrap();
        let rows = read_rows(&c).unwrap();
        assert_eq!(rows[0].image, tmp.path().join("a.png"));
        assert_eq!(rows[0].suffix, "<loc0001><loc0002><loc0003><loc0004> cat");
        std::fs::write(&c, "image,caption\na.png,x\n").unwrap();
        assert!(read_rows(&c).unwrap_err().to_string().contains("\"prefix\""));
    }

    #[test]
    fn command_line_defaults_are_the_library_defaults() {
        let a = crate::args::parse_from::<FinetuneArgs>(&[
            "finetune", "--model", "m", "--data", "d", "--out", "o",
        ]);
        let want = FinetuneArgs {
            model: ModelSource(PathBuf::from("m")),
            data: "d".into(),
            out: "o".into(),
            ..Default::default()
        };
        assert_eq!(a, FinetuneArgs { progress: true, ..want });
    }
}
