//! The one training loop. A trainer ([`Task`]) supplies batches, a loss and an evaluation; the
//! engine does everything else the same way for all of them:
//!
//! - [`Run::open`]: creates the output folder, locks it against a second run, and refuses to
//!   start over the checkpoints of an earlier run unless `--resume` continues it;
//! - [`Run::train`]: AdamW (one fused pass per tensor) with gradient-norm clipping, warm-up +
//!   cosine learning rate, bf16 autocast (forward and backward in bf16 on a cast of the f32
//!   master weights; gradients, optimiser state and the loss in f32), gradient accumulation,
//!   progress and data throughput, atomic checkpoints (model, optimiser, position in the data),
//!   the NaN stop naming the last good checkpoint, then `losses.csv`, `metrics.csv` and
//!   `metrics.png` (loss, the task's metric per epoch, learning rate).
//!
//! Device placement and multi-device training go here, once, for every task.

use super::checkpoint::{self, TrainState};
use crate::draw::{self, Panel, plot};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::DType;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use zoo_nn::train::optim::AdamWConfig;
use zoo_nn::{NnError, Result};

/// Training precision.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 compute with f32 master weights, optimiser state and loss.
    Bf16,
}

/// Warm-up then cosine decay to 10% of the peak.
pub fn learning_rate(step: usize, total: usize, warmup: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    peak * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()))
}

/// The options every trainer shares.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainLoop {
    /// Passes over the training data.
    pub epochs: usize,
    /// Batches in one epoch.
    pub batches_per_epoch: usize,
    /// Batches whose gradients are summed before each optimiser step.
    pub grad_accum: usize,
    /// Stop after this many optimiser steps.
    pub max_steps: Option<usize>,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps before the cosine decay.
    pub warmup_steps: usize,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Gradient-norm clipping (0: none).
    pub grad_clip: f32,
    /// f32, or bf16 autocast.
    pub precision: Precision,
    /// Save a checkpoint every this many steps (and at the end of the run).
    pub checkpoint_every: Option<usize>,
    /// Save a checkpoint after every epoch's evaluation.
    pub checkpoint_each_epoch: bool,
    /// Show a progress bar.
    pub progress: bool,
}

impl TrainLoop {
    /// Optimiser steps of the whole run.
    pub fn total_steps(&self) -> usize {
        let total = (self.batches_per_epoch * self.epochs).div_ceil(self.grad_accum.max(1)).max(1);
        self.max_steps.map_or(total, |m| m.min(total))
    }

    /// The learning rate of every step taken so far.
    pub fn learning_rates(&self, steps: usize) -> Vec<f64> {
        (0..steps).map(|i| learning_rate(i, self.total_steps(), self.warmup_steps, self.lr)).collect()
    }
}

/// One batch as a task's loader delivers it.
#[derive(Debug)]
pub struct Loaded<B> {
    /// Its position in the epoch (what a resumed run skips to).
    pub index: usize,
    /// The batch.
    pub batch: B,
    /// Samples in it.
    pub samples: usize,
    /// Seconds one loader thread spent preparing it.
    pub load_seconds: f64,
    /// Samples left out of it (`path or key: reason`).
    pub skipped: Vec<String>,
}

/// Where the run stands when an epoch ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochEnd {
    /// Epochs finished (1-based).
    pub epoch: usize,
    /// Epochs in the run.
    pub epochs: usize,
    /// Optimiser steps taken.
    pub step: usize,
    /// The last step's loss.
    pub loss: f64,
    /// Whether this is the run's last epoch (the epochs or the step budget are used up).
    pub last: bool,
    /// The mean loss of this epoch's steps.
    pub mean_loss: f64,
    /// Seconds since training started.
    pub seconds: f64,
}

/// What a trainer supplies to the engine.
pub trait Task {
    /// The model being trained (on an autodiff device).
    type Model: Module;
    /// One batch, ready for [`Task::loss`].
    type Batch;

    /// The header line of `metrics.csv` (the rows come from [`Task::begin`] and
    /// [`Task::end_epoch`]).
    fn metrics_header(&self) -> String;

    /// The batches of epoch `epoch` (0-based) in order, from batch `skip` on.
    fn batches(&mut self, epoch: usize, skip: usize)
    -> Box<dyn Iterator<Item = Result<Loaded<Self::Batch>>>>;

    /// The loss of one batch, or `None` to pass over it (too few samples decoded). Under
    /// autocast, `cast` is the model cast to that dtype: the task runs its forward pass there
    /// (its float inputs cast to the dtype) and computes the loss in f32.
    fn loss(
        &self,
        model: &Self::Model,
        cast: Option<(&Self::Model, DType)>,
        batch: Self::Batch,
    ) -> Result<Option<Tensor<1>>>;

    /// The loss value and the gradients of one batch, the loss scaled by `scale` (gradient
    /// accumulation), or `None` to pass over it. By default the backward pass of
    /// [`Task::loss`]; a task training on several devices computes them over its replicas and
    /// reduces them (`vlm-zoo train --devices`).
    fn gradients(
        &self,
        model: &Self::Model,
        cast: Option<(&Self::Model, DType)>,
        batch: Self::Batch,
        scale: f64,
    ) -> Result<Option<(f64, GradientsParams)>> {
        let Some(loss) = self.loss(model, cast, batch)? else { return Ok(None) };
        Ok(Some(backward(model, loss, scale)))
    }

    /// Applied to the model after each optimiser step (a temperature clamp, say).
    fn after_step(&self, model: Self::Model) -> Self::Model {
        model
    }

    /// Before the first step: `metrics.csv` rows (an evaluation of the starting model).
    fn begin(&mut self, _model: &Self::Model, _state: &TrainState) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// After each epoch: the evaluation, as `metrics.csv` rows.
    fn end_epoch(&mut self, model: &Self::Model, end: &EpochEnd) -> Result<Vec<String>>;

    /// The figure's middle panel (the task's metric per epoch).
    fn panel(&self) -> Panel;
}

/// Reads every parameter once, in the module's own order. Burn initialises parameters lazily,
/// drawing from one random stream on first read: without this the values a fresh model gets
/// would depend on which code reads its parameters first (a forward pass, a bf16 cast, a
/// data-parallel fork), and the same seed would give different models.
pub fn materialise<M: Module>(model: &M) {
    struct Read;
    impl burn::module::ModuleVisitor for Read {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    model.visit(&mut Read);
}

/// `loss * scale`'s gradients for `model`'s parameters, and the unscaled loss value.
pub fn backward<M: Module>(model: &M, loss: Tensor<1>, scale: f64) -> (f64, GradientsParams) {
    let loss = loss * scale;
    let value = zoo_nn::host::scalar(loss.clone().inner()) / scale;
    (value, GradientsParams::from_grads(loss.backward(), model))
}

/// A locked output folder, ready to train into.
#[derive(Debug)]
pub struct Run {
    out: PathBuf,
    previous: Option<PathBuf>,
    _lock: checkpoint::OutLock,
}

/// What [`Run::train`] leaves.
#[derive(Debug)]
pub struct Outcome<M> {
    /// The trained model (still on the autodiff device).
    pub model: M,
    /// Steps, epochs and every step's loss.
    pub state: TrainState,
    /// The learning rate of every step.
    pub lrs: Vec<f64>,
    /// Samples the loaders left out.
    pub skipped: BTreeSet<String>,
    /// `data N img/s  train M img/s  waiting for data P%`.
    pub throughput: String,
    /// Seconds spent in the loop.
    pub seconds: f64,
}

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

impl Run {
    /// Creates and locks `out`; checkpoints of an earlier run there are an error unless
    /// `resume`, which continues from the newest.
    pub fn open(out: &Path, resume: bool) -> Result<Self> {
        std::fs::create_dir_all(out).map_err(|e| NnError::io(out, e))?;
        let lock = checkpoint::lock(out)?;
        let previous = checkpoint::latest(out)?;
        if previous.is_some() && !resume {
            return Err(NnError::Config(format!(
                "{} holds the checkpoints of an earlier run: --resume continues it; choose another --out to start over",
                out.display()
            )));
        }
        Ok(Self { out: out.to_path_buf(), previous, _lock: lock })
    }

    /// The output folder.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Whether this run continues an earlier one.
    pub fn resumes(&self) -> bool {
        self.previous.is_some()
    }

    /// Trains `model` with `task` as `opts` says (from the newest checkpoint when resuming),
    /// then writes `losses.csv`, `metrics.csv` and `metrics.png` titled `title`. The task's
    /// evaluations run with the progress bar hidden, so what they print stays readable.
    pub fn train<T: Task>(
        &self,
        mut model: T::Model,
        task: &mut T,
        opts: &TrainLoop,
        title: &str,
    ) -> Result<Outcome<T::Model>> {
        let out = &self.out;
        materialise(&model);
        let mut optim = AdamWConfig::new()
            .with_weight_decay(opts.weight_decay as f32)
            .with_grad_clipping(
                (opts.grad_clip > 0.0)
                    .then_some(burn::grad_clipping::GradientClippingConfig::Norm(opts.grad_clip)),
            )
            .init();
        let mut state = TrainState::default();
        if let Some(dir) = &self.previous {
            let mut store = BurnpackStore::from_file(dir.join("model.bpk"));
            model
                .load_from(&mut store)
                .map_err(|e| NnError::Load { path: dir.join("model.bpk"), reason: e.to_string() })?;
            optim = optim
                .load(dir.join("optim.bpk"))
                .map_err(|e| NnError::Load { path: dir.join("optim.bpk"), reason: e.to_string() })?;
            state = zoo_nn::read_json(&dir.join("state.json"))?;
        }
        let save = |model: &T::Model, optim: &ModuleOptimizer, state: &TrainState| {
            checkpoint::save(out, state, |dir| {
                let mut store = BurnpackStore::from_file(dir.join("model.bpk")).overwrite(true);
                model
                    .save_into(&mut store)
                    .map_err(|e| NnError::Save { path: dir.join("model.bpk"), reason: e.to_string() })?;
                optim
                    .save(dir.join("optim.bpk"))
                    .map_err(|e| NnError::Save { path: dir.join("optim.bpk"), reason: e.to_string() })
            })
        };

        let total_steps = opts.total_steps();
        let grad_accum = opts.grad_accum.max(1);
        let bar = opts.progress.then(|| {
            let bar = indicatif::ProgressBar::new(total_steps as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  eta {eta}  {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_position(state.step as u64);
            bar
        });
        let mut metrics = format!("{}\n", task.metrics_header());
        let with_bar = |f: &mut dyn FnMut() -> Result<Vec<String>>| match &bar {
            Some(b) => b.suspend(f),
            None => f(),
        };
        for row in with_bar(&mut || task.begin(&model, &state))? {
            metrics.push_str(&row);
            metrics.push('\n');
        }
        let mut speed = Throughput::default();
        let mut skipped = BTreeSet::new();
        let started = std::time::Instant::now();
        let mut accum = GradientsAccumulator::new();
        let mut in_accum = 0;
        while state.epoch < opts.epochs && state.step < total_steps {
            let steps_before = state.losses.len();
            let mut batches = task.batches(state.epoch, state.batch_in_epoch);
            loop {
                let waited = std::time::Instant::now();
                let Some(loaded) = batches.next() else { break };
                let loaded = loaded?;
                // Throughput: what the loader could deliver alone (samples per second of one
                // thread's time) next to what the step consumes; the wait says who limits.
                speed.wait_seconds += waited.elapsed().as_secs_f64();
                speed.loaded += loaded.samples as f64;
                speed.load_seconds += loaded.load_seconds;
                skipped.extend(loaded.skipped);
                let index = loaded.index;
                let scale = 1.0 / grad_accum as f64;
                let step = match opts.precision {
                    Precision::F32 => task.gradients(&model, None, loaded.batch, scale)?,
                    Precision::Bf16 => {
                        let half = zoo_nn::train::mixed::autocast(&model, DType::BF16);
                        task.gradients(&model, Some((&half, DType::BF16)), loaded.batch, scale)?
                    }
                };
                let Some((value, grads)) = step else {
                    // Nothing to learn from in this batch: passed over.
                    state.batch_in_epoch = index + 1;
                    continue;
                };
                if !value.is_finite() {
                    let last = match checkpoint::latest(out) {
                        Ok(Some(dir)) => format!("the last good checkpoint is {}", dir.display()),
                        _ => "no checkpoint was saved before it".to_string(),
                    };
                    return Err(NnError::Config(format!(
                        "loss became {value} at step {} (epoch {}); stopping: {last}",
                        state.step, state.epoch
                    )));
                }
                accum.accumulate(&model, grads);
                in_accum += 1;
                state.batch_in_epoch = index + 1;
                if in_accum < grad_accum {
                    continue;
                }
                in_accum = 0;
                let lr = learning_rate(state.step, total_steps, opts.warmup_steps, opts.lr);
                model = task.after_step(optim.step(lr, model, accum.grads()));
                state.step += 1;
                state.losses.push(value);
                if let Some(bar) = &bar {
                    bar.set_position(state.step as u64);
                    bar.set_message(format!(
                        "loss {value:.4}  lr {lr:.2e}  {}",
                        speed.line(started.elapsed().as_secs_f64())
                    ));
                }
                if opts.checkpoint_every.is_some_and(|n| state.step % n.max(1) == 0) {
                    save(&model, &optim, &state)?;
                }
                if state.step >= total_steps {
                    break;
                }
            }
            drop(batches);
            // An epoch cut short by the step budget stays open, so a longer run resumes inside it.
            if state.step < total_steps || state.batch_in_epoch >= opts.batches_per_epoch {
                state.epoch += 1;
                state.batch_in_epoch = 0;
            }
            let this_epoch = &state.losses[steps_before.min(state.losses.len())..];
            let end = EpochEnd {
                epoch: state.epoch,
                epochs: opts.epochs,
                step: state.step,
                loss: state.losses.last().copied().unwrap_or(f64::NAN),
                last: state.epoch >= opts.epochs || state.step >= total_steps,
                mean_loss: this_epoch.iter().sum::<f64>() / opts.batches_per_epoch.max(1) as f64,
                seconds: started.elapsed().as_secs_f64(),
            };
            for row in with_bar(&mut || task.end_epoch(&model, &end))? {
                metrics.push_str(&row);
                metrics.push('\n');
            }
            if opts.checkpoint_each_epoch {
                save(&model, &optim, &state)?;
            }
        }
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        if opts.checkpoint_every.is_some() {
            save(&model, &optim, &state)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let lrs = opts.learning_rates(state.losses.len());
        let losses_csv: String = state
            .losses
            .iter()
            .zip(&lrs)
            .enumerate()
            .map(|(i, (l, lr))| format!("{},{l:.9},{lr:.6e}\n", i + 1))
            .collect();
        crate::fs::write_atomic(&out.join("losses.csv"), format!("step,loss,lr\n{losses_csv}").as_bytes())?;
        crate::fs::write_atomic(&out.join("metrics.csv"), metrics.as_bytes())?;
        draw::figure(
            &out.join("metrics.png"),
            title,
            &[plot::loss_panel(&state.losses), task.panel(), plot::lr_panel(&lrs)],
            plot::SIZE,
        )?;
        Ok(Outcome { model, state, lrs, skipped, throughput: speed.line(seconds), seconds })
    }
}
