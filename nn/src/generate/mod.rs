//! Text generation for any decoder (Gemma, PaliGemma, a composed VLM): prefill then one token
//! per step through a preallocated KV cache; greedy or sampled (temperature, top-k, top-p,
//! repetition penalty, seed); stops on end-of-sequence ids or `max_new_tokens`; several prompts
//! at once with left padding and per-row masks, giving the same tokens as one prompt at a time.
//!
//! A model family offers generation by implementing [`Decoder`] in its own crate's `decoder.rs`
//! (`zoo_gemma::GemmaDecoder`, `zoo_paligemma::PaliGemmaDecoder`); everything here is
//! model-agnostic.
//!
//! One file per part: `sampling` (how the next token is chosen), `running` (the batch that
//! requests join and leave between steps, which every generation runs on), `stream` (text
//! streamed as tokens arrive); this file holds the [`Decoder`] trait and the entry points.

mod running;
mod sampling;
mod stream;
#[cfg(test)]
mod tests;

pub use crate::rng::Rng;
use crate::{KvCache, NnError, Result};
use burn::prelude::*;
pub use running::Running;
pub use sampling::{Sampling, choose};
pub use stream::TextStream;

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-sequence token was produced (it is not part of the output).
    Eos,
    /// `max_new_tokens` were generated.
    MaxNewTokens,
    /// The model's context (`max_position_embeddings`) filled before `max_new_tokens`.
    Context,
    /// The caller stopped the row (a client that went away).
    Cancelled,
}

/// One row's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// Generated ids, end-of-sequence excluded.
    pub token_ids: Vec<u32>,
    /// Why generation stopped.
    pub stop_reason: StopReason,
}

/// What a model needs to offer generation: a prefill over the whole (left-padded) prompt and a
/// step over one new token per row, both returning the last position's logits `[B, V]` through
/// [`last_position_logits`] (the vocabulary projection of the last position only: projecting a
/// 267-token PaliGemma prompt onto 257k tokens to keep one row cost ~1.4e11 multiply-adds).
pub trait Decoder: Sync {
    /// Runs the prompt. `prompt` rows are left-padded to one length; `valid` marks real tokens.
    fn prefill(&self, prompt: &[Vec<u32>], valid: &[Vec<bool>], cache: &mut KvCache) -> Result<Tensor<2>>;
    /// Runs one token per row at `positions` (0-indexed counts of real tokens before it);
    /// `valid` covers every cached key plus the new one.
    fn step(
        &self,
        tokens: &[u32],
        positions: &[i64],
        valid: &[Vec<bool>],
        cache: &mut KvCache,
    ) -> Result<Tensor<2>>;
    /// A cache for `batch` rows of up to `max_len` positions.
    fn cache(&self, batch: usize, max_len: usize) -> KvCache;
    /// Context length.
    fn max_len(&self) -> usize;
    /// Ids a prompt may hold (`vocab_size`, or one more when an image token sits there).
    fn vocab_limit(&self) -> usize;
}

/// Generates for every prompt; `on_token(row, id)` sees each new token as it is chosen (end of
/// sequence excluded).
pub fn generate<D: Decoder>(
    model: &D,
    prompts: &[Vec<u32>],
    eos: &[u32],
    sampling: &Sampling,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<Generated>> {
    sampling.validate()?;
    // Row i draws from seed + i, so rows of one batch differ.
    let rows: Vec<Sampling> = (0..prompts.len())
        .map(|i| Sampling { seed: sampling.seed.wrapping_add(i as u64), ..sampling.clone() })
        .collect();
    generate_each(model, prompts, eos, &rows, |row, id| {
        on_token(row, id);
        true
    })
}

/// [`generate`] with each row's own sampling (temperature, top-k/p, penalty, seed as given,
/// `max_new_tokens`): what a server batching unrelated requests needs. `on_token(row, id)`
/// returns whether the row goes on; `false` stops it (`StopReason::Cancelled`) and the others
/// continue.
pub fn generate_each<D: Decoder>(
    model: &D,
    prompts: &[Vec<u32>],
    eos: &[u32],
    samplings: &[Sampling],
    mut on_token: impl FnMut(usize, u32) -> bool,
) -> Result<Vec<Generated>> {
    if samplings.len() != prompts.len() {
        return Err(NnError::Config(format!("{} samplings for {} prompts", samplings.len(), prompts.len())));
    }
    let tags: Vec<usize> = (0..prompts.len()).collect();
    let mut run = Running::start(model, prompts, samplings, &tags, 0)?;
    let mut out: Vec<Option<Generated>> = vec![None; prompts.len()];
    while !run.is_done() {
        for (tag, g) in run.step(model, eos, &mut on_token)? {
            out[tag] = Some(g);
        }
    }
    Ok(out.into_iter().map(|g| g.expect("every row finishes")).collect())
}

/// [`generate`] with the text streamed: `on_text(row, piece)` receives each row's decoded text
/// as it completes (a multi-byte character split over tokens is held back until whole; what
/// remains is flushed at the end). `decode` turns ids into text.
pub fn generate_stream<D: Decoder>(
    model: &D,
    prompts: &[Vec<u32>],
    eos: &[u32],
    sampling: &Sampling,
    decode: impl Fn(&[u32]) -> Option<String>,
    mut on_text: impl FnMut(usize, &str),
) -> Result<Vec<Generated>> {
    let mut streams: Vec<TextStream> = (0..prompts.len()).map(|_| TextStream::default()).collect();
    let out = generate(model, prompts, eos, sampling, |row, id| {
        let piece = streams[row].push(id, &decode);
        if !piece.is_empty() {
            on_text(row, &piece);
        }
    })?;
    for (row, stream) in streams.iter_mut().enumerate() {
        let rest = stream.finish(&decode);
        if !rest.is_empty() {
            on_text(row, &rest);
        }
    }
    Ok(out)
}

/// The next-token logits of each row: `head` (the decoder's vocabulary projection) applied to
/// the last position of `hidden` only, the one generation samples from. Every decoder's
/// prefill and step end here, so none projects positions it throws away.
///
/// # Shapes
/// - `hidden`: `[B, L, C]`; `head`: `[B, 1, C]` -> `[B, 1, V]`; output `[B, V]`
pub fn last_position_logits(hidden: Tensor<3>, head: impl FnOnce(Tensor<3>) -> Tensor<3>) -> Tensor<2> {
    let [b, l, c] = hidden.dims();
    let logits = head(hidden.slice([0..b, l - 1..l, 0..c]));
    let v = logits.dims()[2];
    logits.reshape([b, v])
}

/// Left-padding positions: each row counts from 0 at its first real token.
pub fn row_positions(valid: &[Vec<bool>]) -> Vec<Vec<i64>> {
    valid
        .iter()
        .map(|row| {
            let pad = row.iter().take_while(|v| !**v).count() as i64;
            (0..row.len() as i64).map(|i| (i - pad).max(0)).collect()
        })
        .collect()
}
