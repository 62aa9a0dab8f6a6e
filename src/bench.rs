//! `vlm-zoo bench`: load time, peak memory, prefill time and decode speed of a Gemma or
//! PaliGemma folder, printed as JSON (compare with scripts/bench_torch.py on the same files).

use burn::prelude::*;
use burn::tensor::DType;
use std::path::Path;
use std::time::Instant;
use zoo_gemma::{Decoder, GemmaDecoder, Sampling, generate};
use zoo_nn::{NnError, Result};

/// Measurements of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Model type.
    pub model_type: String,
    /// Seconds to load the checkpoint.
    pub load_s: f64,
    /// Prompt tokens (image tokens included).
    pub prompt_tokens: usize,
    /// Seconds for the prefill (vision tower included for PaliGemma).
    pub prefill_s: f64,
    /// Tokens generated after the prefill.
    pub decode_tokens: usize,
    /// Generated tokens per second (after the prefill).
    pub decode_tok_s: f64,
    /// Peak resident memory of the process in MiB.
    pub peak_rss_mib: f64,
}

/// Peak resident set size (VmHWM) in MiB, where /proc exists.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

fn timed<D: Decoder>(decoder: &D, prompt: Vec<u32>, new_tokens: usize) -> Result<(f64, f64)> {
    // A warm-up prefill (first-call allocations), then one run timestamping every token as it is
    // chosen: the first stamp ends the prefill, the rest measure decoding.
    generate(
        decoder,
        std::slice::from_ref(&prompt),
        &[],
        &Sampling { max_new_tokens: 1, ..Default::default() },
        |_, _| {},
    )?;
    let t = Instant::now();
    let mut stamps = Vec::new();
    generate(
        decoder,
        &[prompt],
        &[],
        &Sampling { max_new_tokens: new_tokens + 1, ..Default::default() },
        |_, _| stamps.push(t.elapsed().as_secs_f64()),
    )?;
    let (first, last) = (stamps.first().copied().unwrap_or(0.0), stamps.last().copied().unwrap_or(0.0));
    Ok((first, new_tokens as f64 / (last - first).max(1e-9)))
}

/// Benchmarks `dir` with a prompt of `prompt_len` text tokens and `new_tokens` decode steps.
pub fn bench(dir: &Path, prompt_len: usize, new_tokens: usize, device: &Device) -> Result<BenchReport> {
    let kind = zoo_nn::model_type(dir)?;
    let text = |vocab: usize| -> Vec<u32> {
        (0..prompt_len as u32).map(|i| 10 + (i * 7919) % (vocab as u32 - 10)).collect()
    };
    let t = Instant::now();
    let (prompt_tokens, prefill_s, decode_tok_s, load_s) = match kind.as_str() {
        "gemma" | "gemma2" => {
            let (model, config) = zoo_gemma::load_gemma(dir, DType::F32, device)?;
            let load_s = t.elapsed().as_secs_f64();
            let decoder = GemmaDecoder {
                model: &model,
                max_len: config.max_position_embeddings,
                device: device.clone(),
            };
            let mut prompt = vec![2];
            prompt.extend(text(config.vocab_size));
            let n = prompt.len();
            let (p, d) = timed(&decoder, prompt, new_tokens)?;
            (n, p, d, load_s)
        }
        "paligemma" => {
            let (model, config) = zoo_paligemma::load_paligemma(dir, DType::F32, device)?;
            let load_s = t.elapsed().as_secs_f64();
            let s = config.vision_config.image_size;
            let mut prompt = vec![config.image_token_index; config.num_image_tokens()];
            prompt.push(2);
            prompt.extend(text(config.text_config.vocab_size.min(config.image_token_index as usize)));
            let n = prompt.len();
            let pixels = Tensor::<4>::zeros([1, 3, s, s], device);
            let t = Instant::now();
            let features = model.image_features(pixels);
            let _ = features.clone().into_data();
            let vision_s = t.elapsed().as_secs_f64();
            let decoder = zoo_paligemma::PaliGemmaDecoder {
                model: &model,
                image_features: features,
                max_len: config.text_config.max_position_embeddings,
                device: device.clone(),
            };
            let (p, d) = timed(&decoder, prompt, new_tokens)?;
            (n, p + vision_s, d, load_s)
        }
        other => {
            return Err(NnError::Config(format!(
                "bench: model_type '{other}' (expected gemma, gemma2 or paligemma)"
            )));
        }
    };
    Ok(BenchReport {
        model_type: kind,
        load_s,
        prompt_tokens,
        prefill_s,
        decode_tokens: new_tokens,
        decode_tok_s,
        peak_rss_mib: peak_rss_mib(),
    })
}
