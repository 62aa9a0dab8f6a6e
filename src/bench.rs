//! `vlm-zoo bench`: the same work as `scripts/bench_torch.py`, on the same folder, printed as
//! one JSON line with the same keys.
//!
//! - Gemma / PaliGemma: load time, peak memory, prefill time (vision tower included), decode
//!   speed and the end-to-end time to the last of `new_tokens` generated tokens.
//! - SigLIP / SigLIP 2 / CLIP: image encoding (images/s at each batch size; SigLIP 2 NaFlex
//!   encodes square images whose patch grid fills its position table), or with `train` (SigLIP
//!   and CLIP) the training steps/s (forward, contrastive loss, backward, AdamW) at one batch size.

use crate::args::{ComputeArgs, ModelArgs};
use crate::models::{Family, Towers};
use crate::training::Precision;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::DType;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Instant;
use zoo_gemma::GemmaDecoder;
use zoo_nn::train::optim::AdamWConfig;
use zoo_nn::{Compute, ContrastiveModel, Encoded, NnError, Result, TextBatch};
use zoo_nn::{Decoder, Sampling, generate};

/// `vlm-zoo bench`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The checkpoint.
    #[command(flatten)]
    pub model: ModelArgs,
    /// What to measure.
    #[command(flatten)]
    pub options: BenchOptions,
    /// Device and dtype.
    #[command(flatten)]
    pub compute: ComputeArgs,
}

impl BenchArgs {
    /// Runs the benchmark and returns the JSON report.
    pub fn run(&self) -> Result<Value> {
        let compute = self.compute.compute()?;
        let mut report = bench(&self.model.model.resolve()?, &self.options, &compute)?;
        if compute.weights.is_some() {
            // Which kernel ran each class of product, and how it was chosen.
            report["kernels"] = json!(zoo_nn::kernels::gemm::Choice::get().to_string());
        }
        Ok(report)
    }
}

/// What to measure: `vlm-zoo bench`'s options, with their one set of defaults ([`Default`]).
#[derive(clap::Args, Debug, Clone)]
pub struct BenchOptions {
    /// Text tokens in the prompt (Gemma, PaliGemma).
    #[arg(long, default_value_t = BenchOptions::default().prompt_len)]
    pub prompt_len: usize,
    /// Tokens to generate, the first included (Gemma, PaliGemma).
    #[arg(long, default_value_t = BenchOptions::default().new_tokens)]
    pub new_tokens: usize,
    /// Batch sizes, comma-separated (SigLIP, SigLIP 2, CLIP; the first one with --train).
    #[arg(long = "batch", default_value = "1,8", value_delimiter = ',')]
    pub batches: Vec<usize>,
    /// Timed repetitions per batch size (SigLIP, SigLIP 2, CLIP).
    #[arg(long, default_value_t = BenchOptions::default().iters)]
    pub iters: usize,
    /// Measure training steps (forward, loss, backward, AdamW) instead of encoding (SigLIP, CLIP).
    #[arg(long)]
    pub train: bool,
    /// Timed training steps.
    #[arg(long, default_value_t = BenchOptions::default().steps)]
    pub steps: usize,
    /// Training precision with --train: f32, or bf16 (forward and backward on a bf16 cast of the
    /// f32 weights, as `vlm-zoo train --precision bf16`).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            prompt_len: 64,
            new_tokens: 32,
            batches: vec![1, 8],
            iters: 3,
            train: false,
            steps: 3,
            precision: Precision::F32,
        }
    }
}

/// Peak resident set size (VmHWM) in MiB, where /proc exists.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Token ids of the benchmark prompts: a fixed pattern over `[10, vocab)`, shared with the
/// PyTorch script.
fn pattern(n: usize, vocab: usize, offset: usize) -> Vec<u32> {
    (0..n).map(|i| 10 + ((i + offset) * 7919 % (vocab - 10)) as u32).collect()
}

/// A deterministic image batch in `[-1, 1)`, shared with the PyTorch script.
fn pixels(b: usize, s: usize, device: &Device) -> Tensor<4> {
    let data: Vec<f32> = (0..b * 3 * s * s).map(|i| (i * 37 % 256) as f32 / 128.0 - 1.0).collect();
    Tensor::from_data(TensorData::new(data, [b, 3, s, s]), device)
}

/// Waits for the device to finish (reads one value back).
fn sync<const D: usize>(t: Tensor<D>) {
    let _ = t.sum().into_data();
}

/// A warm-up generation, then one that timestamps every token as it is chosen: returns
/// (first token, last token) times in seconds from the start.
fn timed<D: Decoder>(decoder: &D, prompt: Vec<u32>, new_tokens: usize) -> Result<(f64, f64)> {
    let one = Sampling { max_new_tokens: 1, ..Default::default() };
    generate(decoder, std::slice::from_ref(&prompt), &[], &one, |_, _| {})?;
    let t = Instant::now();
    let mut stamps = Vec::new();
    let all = Sampling { max_new_tokens: new_tokens, ..Default::default() };
    generate(decoder, &[prompt], &[], &all, |_, _| stamps.push(t.elapsed().as_secs_f64()))?;
    Ok((stamps.first().copied().unwrap_or(0.0), stamps.last().copied().unwrap_or(0.0)))
}

fn decoder_report(kind: &str, load_s: f64, prompt_tokens: usize, first: f64, last: f64, new: usize) -> Value {
    let decode = new.saturating_sub(1);
    json!({"model_type": kind, "load_s": load_s, "prompt_tokens": prompt_tokens, "prefill_s": first,
           "decode_tokens": decode, "decode_tok_s": decode as f64 / (last - first).max(1e-9),
           "total_s": last, "peak_rss_mib": peak_rss_mib()})
}

/// Bytes of weights one decode step reads: every parameter of the decoder once, at the bytes
/// per value of how it is stored (f32 4, bf16 2, q8 1 plus a scale per output: ~1).
fn decode_bytes(params: usize, compute: &Compute) -> f64 {
    let per = match compute.weights {
        Some(zoo_nn::kernels::gemm::WeightFormat::Q8) => 1.0,
        Some(zoo_nn::kernels::gemm::WeightFormat::Bf16) => 2.0,
        None => compute.dtype().size() as f64,
    };
    params as f64 * per
}

/// Runs the benchmark of `dir` (its [`Family`] picks which) and returns the JSON report.
pub fn bench(dir: &Path, opts: &BenchOptions, compute: &Compute) -> Result<Value> {
    let device = &compute.device;
    let (dtype, load_spec) = (compute.dtype(), compute.load_spec());
    let family = Family::of(dir)?;
    let kind = family.model_type();
    if opts.new_tokens == 0
        || opts.batches.contains(&0)
        || opts.batches.is_empty()
        || opts.iters == 0
        || opts.steps == 0
    {
        return Err(NnError::Config(
            "bench: --new-tokens, --iters, --steps and every --batch must be at least 1".into(),
        ));
    }
    let t = Instant::now();
    match family {
        Family::Gemma | Family::Gemma2 => {
            let (model, config) = zoo_gemma::load_gemma(dir, load_spec, device)?;
            let load_s = t.elapsed().as_secs_f64();
            let decoder = GemmaDecoder {
                model: &model,
                max_len: config.max_position_embeddings,
                device: device.clone(),
            };
            let mut prompt = vec![2];
            prompt.extend(pattern(opts.prompt_len, config.vocab_size, 0));
            let n = prompt.len();
            let (first, last) = timed(&decoder, prompt, opts.new_tokens)?;
            let mut r = decoder_report(kind, load_s, n, first, last, opts.new_tokens);
            r["decode_weight_bytes"] = json!(decode_bytes(model.num_params(), compute));
            Ok(r)
        }
        Family::PaliGemma => {
            let (model, config) = zoo_paligemma::load_paligemma(dir, load_spec, device)?;
            let load_s = t.elapsed().as_secs_f64();
            let s = config.vision_config.image_size;
            let mut prompt = vec![config.image_token_index; config.num_image_tokens()];
            prompt.push(2);
            let vocab = config.text_config.vocab_size.min(config.image_token_index as usize);
            prompt.extend(pattern(opts.prompt_len, vocab, 0));
            let n = prompt.len();
            let features = |model: &zoo_paligemma::PaliGemmaForConditionalGeneration| {
                let f = model.image_features(pixels(1, s, device).cast(dtype));
                sync(f.clone());
                f
            };
            let _ = features(&model); // warm-up of the vision tower
            let t = Instant::now();
            let image_features = features(&model);
            let vision_s = t.elapsed().as_secs_f64();
            let decoder = zoo_paligemma::PaliGemmaDecoder {
                model: &model,
                image_features,
                max_len: config.text_config.max_position_embeddings,
                device: device.clone(),
            };
            let (first, last) = timed(&decoder, prompt, opts.new_tokens)?;
            let mut r = decoder_report(kind, load_s, n, first + vision_s, last + vision_s, opts.new_tokens);
            r["decode_weight_bytes"] = json!(decode_bytes(model.language_model.num_params(), compute));
            Ok(r)
        }
        Family::Siglip | Family::Siglip2NaFlex | Family::Clip if opts.train => {
            if !family.trains_fixed_size() {
                return Err(family.unsupported(dir, "bench --train", Family::trains_fixed_size));
            }
            bench_train(dir, kind, opts, device)
        }
        Family::Siglip | Family::Siglip2NaFlex | Family::Clip => {
            let (towers, config) = Towers::load(dir, load_spec, device)?;
            let load_s = t.elapsed().as_secs_f64();
            let s = config.image_size();
            let mut encode = Vec::new();
            for &b in &opts.batches {
                let x = pixels(b, s, device).cast(dtype);
                sync(towers.encode_image(x.clone())); // warm-up
                let t = Instant::now();
                for _ in 0..opts.iters {
                    sync(towers.encode_image(x.clone()));
                }
                let per_s = (b * opts.iters) as f64 / t.elapsed().as_secs_f64();
                encode.push(json!({"batch": b, "images_per_s": per_s}));
            }
            Ok(json!({"model_type": kind, "load_s": load_s, "task": "encode_images", "encode": encode,
                      "peak_rss_mib": peak_rss_mib()}))
        }
    }
}

/// Training steps/s of a SigLIP or CLIP folder (a family that [`Family::trains_fixed_size`]): forward both towers, contrastive loss,
/// backward, AdamW (lr 1e-4, no weight decay), on a fixed batch.
fn bench_train(dir: &Path, kind: &str, opts: &BenchOptions, device: &Device) -> Result<Value> {
    let device = device.clone().autodiff();
    let t = Instant::now();
    let (mut model, config) = Towers::load(dir, DType::F32, &device)?;
    let load_s = t.elapsed().as_secs_f64();
    let b = opts.batches[0];
    let (len, vocab) = (config.text_len(), config.vocab_size());
    let text = TextBatch::new(
        Encoded {
            ids: (0..b).map(|r| pattern(len, vocab, r * len)).collect(),
            mask: vec![vec![true; len]; b],
        },
        &device,
    );
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let precision = opts.precision;
    let mut step = |model: Towers| {
        let half =
            (precision == Precision::Bf16).then(|| zoo_nn::train::mixed::autocast(&model, DType::BF16));
        let cast = half.as_ref().map(|h| (h, DType::BF16));
        let (img, txt) = model.embed_in(cast, pixels(b, config.image_size(), &device), &text);
        let loss = model.loss(img, txt, None);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        optim.step(1e-4, model, grads).clamp_temperature()
    };
    // Reading a parameter back waits for the device to apply the update.
    let sync_model = |model: &Towers| sync(model.logit_scale());
    model = step(model); // warm-up
    sync_model(&model);
    let t = Instant::now();
    for _ in 0..opts.steps {
        model = step(model);
    }
    sync_model(&model);
    let steps_per_s = opts.steps as f64 / t.elapsed().as_secs_f64();
    let precision = format!("{:?}", opts.precision).to_lowercase();
    Ok(json!({"model_type": kind, "load_s": load_s, "task": "train", "batch": b, "steps": opts.steps,
              "precision": precision, "steps_per_s": steps_per_s, "peak_rss_mib": peak_rss_mib()}))
}
