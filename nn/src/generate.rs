//! Text generation for any decoder (Gemma, PaliGemma, a composed VLM): prefill then one token
//! per step through a preallocated KV cache; greedy or sampled (temperature, top-k, top-p,
//! repetition penalty, seed); stops on end-of-sequence ids or `max_new_tokens`; several prompts
//! at once with left padding and per-row masks, giving the same tokens as one prompt at a time.
//!
//! A model family offers generation by implementing [`Decoder`] in its own crate's `decoder.rs`
//! (`zoo_gemma::GemmaDecoder`, `zoo_paligemma::PaliGemmaDecoder`); everything here is
//! model-agnostic.

pub use crate::rng::Rng;
use crate::{KvCache, NnError, Result};
use burn::prelude::*;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// `None` or 0: greedy. Otherwise logits are divided by it and a token is drawn.
    pub temperature: Option<f64>,
    /// Keep the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p`, in `(0, 1]`.
    pub top_p: Option<f64>,
    /// transformers' repetition penalty (> 0; 1 = none) over prompt and generated tokens.
    pub repetition_penalty: Option<f64>,
    /// Seed of the sampler: the same seed gives the same output.
    pub seed: u64,
    /// Most tokens to generate (> 0).
    pub max_new_tokens: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: None,
            top_k: None,
            top_p: None,
            repetition_penalty: None,
            seed: 0,
            max_new_tokens: 32,
        }
    }
}

impl Sampling {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(NnError::Config(m.to_string()));
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1");
        }
        if self.temperature.is_some_and(|t| t.is_nan() || t < 0.0 || !t.is_finite()) {
            return bad("temperature must be a finite number >= 0");
        }
        if self.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            return bad("top_p must be in (0, 1]");
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1");
        }
        if self.repetition_penalty.is_some_and(|r| r.is_nan() || r <= 0.0 || !r.is_finite()) {
            return bad("repetition_penalty must be a finite number > 0");
        }
        Ok(())
    }

    fn greedy(&self) -> bool {
        self.temperature.is_none_or(|t| t == 0.0)
    }
}

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

/// Chooses the next token from one row of logits.
pub fn choose(logits: &mut [f32], history: &[u32], sampling: &Sampling, rng: &mut Rng) -> u32 {
    if let Some(r) = sampling.repetition_penalty.filter(|&r| r != 1.0) {
        let mut seen = history.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for &t in &seen {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 { *l / r as f32 } else { *l * r as f32 };
            }
        }
    }
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) })
            .0
    };
    if sampling.greedy() {
        return argmax(logits) as u32;
    }
    let t = sampling.temperature.unwrap_or(1.0) as f32;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let keep = sampling.top_k.unwrap_or(order.len()).min(order.len());
    order.truncate(keep);
    let max = logits[order[0]] / t;
    let mut probs: Vec<f64> = order.iter().map(|&i| ((logits[i] / t - max) as f64).exp()).collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if let Some(p) = sampling.top_p {
        let mut cum = 0.0;
        let mut n = 0;
        for &q in &probs {
            cum += q;
            n += 1;
            if cum >= p {
                break;
            }
        }
        probs.truncate(n.max(1));
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= z);
    }
    let u = rng.next_f64();
    let mut cum = 0.0;
    for (k, &q) in probs.iter().enumerate() {
        cum += q;
        if u < cum {
            return order[k] as u32;
        }
    }
    order[probs.len() - 1] as u32
}

/// What a model needs to offer generation: a prefill over the whole (left-padded) prompt and a
/// step over one new token per row, both returning the last position's logits `[B, V]`.
pub trait Decoder {
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

/// One row of a [`Running`] batch.
#[derive(Debug)]
struct Row {
    tag: usize,
    sampling: Sampling,
    rng: Rng,
    history: Vec<u32>,
    generated: Vec<u32>,
    next_pos: i64,
    valid: Vec<bool>,
    done: bool,
}

impl Row {
    /// A row about to generate after `prompt`, whose cached columns are `valid`.
    fn new(tag: usize, prompt: &[u32], sampling: &Sampling, valid: Vec<bool>) -> Self {
        Self {
            tag,
            sampling: sampling.clone(),
            rng: Rng::new(sampling.seed),
            history: prompt.to_vec(),
            generated: Vec::new(),
            next_pos: prompt.len() as i64,
            valid,
            done: false,
        }
    }
}

/// A batch being generated, that requests can join between steps (continuous batching): a
/// joining prompt is left-padded to the columns already cached and prefilled into its own cache,
/// which is appended to the batch's; finished rows leave it.
pub struct Running {
    cache: KvCache,
    logits: Option<Tensor<2>>,
    rows: Vec<Row>,
    total: usize,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("rows", &self.rows.len()).field("columns", &self.columns()).finish()
    }
}

fn check_prompts<D: Decoder>(model: &D, prompts: &[Vec<u32>], samplings: &[Sampling]) -> Result<()> {
    for s in samplings {
        s.validate()?;
    }
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(NnError::Config("empty prompt: nothing to condition on".into()));
    }
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t as usize >= model.vocab_limit()) {
        return Err(NnError::Config(format!(
            "token id {bad} is outside the model's vocabulary of {} ids",
            model.vocab_limit()
        )));
    }
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if width >= model.max_len() {
        return Err(NnError::Config(format!(
            "prompt of {width} tokens does not fit the context of {} tokens",
            model.max_len()
        )));
    }
    Ok(())
}

/// Left-pads `prompts` to `width`: the padded ids and the valid masks.
fn left_pad(prompts: &[Vec<u32>], width: usize) -> (Vec<Vec<u32>>, Vec<Vec<bool>>) {
    let valid = prompts.iter().map(|p| (0..width).map(|i| i >= width - p.len()).collect()).collect();
    let padded = prompts
        .iter()
        .map(|p| std::iter::repeat_n(0, width - p.len()).chain(p.iter().copied()).collect())
        .collect();
    (padded, valid)
}

impl Running {
    /// Prefills `prompts` (tagged `tags`, reported back with each token and result) with room for
    /// their longest `max_new_tokens` plus `room` more positions for requests that join later.
    pub fn start<D: Decoder>(
        model: &D,
        prompts: &[Vec<u32>],
        samplings: &[Sampling],
        tags: &[usize],
        room: usize,
    ) -> Result<Self> {
        check_prompts(model, prompts, samplings)?;
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let max_new = samplings.iter().map(|s| s.max_new_tokens).max().unwrap_or(0);
        let total = (width + max_new + room).min(model.max_len());
        let (padded, valid) = left_pad(prompts, width);
        let mut cache = model.cache(prompts.len(), total);
        let logits = model.prefill(&padded, &valid, &mut cache)?;
        let rows = prompts
            .iter()
            .zip(samplings)
            .zip(tags)
            .zip(valid)
            .map(|(((p, s), &tag), valid)| Row::new(tag, p, s, valid))
            .collect();
        Ok(Self { cache, logits: Some(logits), rows, total })
    }

    /// Positions cached so far.
    pub fn columns(&self) -> usize {
        self.rows.first().map_or(0, |r| r.valid.len())
    }

    /// Rows still generating.
    pub fn live(&self) -> usize {
        self.rows.iter().filter(|r| !r.done).count()
    }

    /// Whether every row has finished.
    pub fn is_done(&self) -> bool {
        self.live() == 0
    }

    /// Whether a prompt of `len` tokens wanting `max_new` more can join now: it must fit in the
    /// columns cached so far and its tokens in the room left.
    pub fn can_join(&self, len: usize, max_new: usize) -> bool {
        !self.is_done() && len <= self.columns() && self.columns() + max_new <= self.total
    }

    /// Adds requests before the next step, prefilled together: `prefiller` prefills them (a
    /// decoder over the same weights; for an image-text model, one holding these requests' image
    /// features, in order).
    pub fn join<D: Decoder>(
        &mut self,
        prefiller: &D,
        prompts: &[Vec<u32>],
        samplings: &[Sampling],
        tags: &[usize],
    ) -> Result<()> {
        if prompts.is_empty() {
            return Ok(());
        }
        check_prompts(prefiller, prompts, samplings)?;
        let width = self.columns();
        for (p, s) in prompts.iter().zip(samplings) {
            if !self.can_join(p.len(), s.max_new_tokens) {
                return Err(NnError::Config(format!(
                    "a prompt of {} tokens (+{}) cannot join a batch at {width} of {} positions",
                    p.len(),
                    s.max_new_tokens,
                    self.total
                )));
            }
        }
        let (padded, valid) = left_pad(prompts, width);
        let mut cache = prefiller.cache(prompts.len(), self.total);
        let logits = prefiller.prefill(&padded, &valid, &mut cache)?;
        self.cache.append_rows(cache)?;
        self.logits = Some(match self.logits.take() {
            Some(l) => Tensor::cat(vec![l, logits], 0),
            None => logits,
        });
        for (((p, s), &tag), valid) in prompts.iter().zip(samplings).zip(tags).zip(valid) {
            self.rows.push(Row::new(tag, p, s, valid));
        }
        Ok(())
    }

    /// Chooses each live row's next token (`on_token(tag, id)` returns whether the row goes
    /// on), returns the rows that finished, drops them from the batch, and runs the model one
    /// step for the rest.
    pub fn step<D: Decoder>(
        &mut self,
        model: &D,
        eos: &[u32],
        mut on_token: impl FnMut(usize, u32) -> bool,
    ) -> Result<Vec<(usize, Generated)>> {
        let Some(logits) = self.logits.take() else {
            return Ok(Vec::new());
        };
        let rows = host_rows(logits);
        if let Some(i) = rows.iter().position(|r| r.iter().any(|v| v.is_nan())) {
            return Err(NnError::Config(format!(
                "the logits of row {i} are NaN at generated token {}: the weights or the config (e.g. rope_theta, rms_norm_eps) are broken",
                self.rows[i].generated.len()
            )));
        }
        // The chosen token sits at position `columns`: another fits only if it is not the last.
        let room = self.columns() + 1 < self.total;
        let mut finished = Vec::new();
        let mut tokens = vec![0u32; self.rows.len()];
        for (i, mut logits) in rows.into_iter().enumerate() {
            let row = &mut self.rows[i];
            if row.done {
                continue;
            }
            let t = choose(&mut logits, &row.history, &row.sampling, &mut row.rng);
            tokens[i] = t;
            let reason = if eos.contains(&t) {
                Some(StopReason::Eos)
            } else {
                row.generated.push(t);
                row.history.push(t);
                if !on_token(row.tag, t) {
                    Some(StopReason::Cancelled)
                } else if row.generated.len() >= row.sampling.max_new_tokens {
                    Some(StopReason::MaxNewTokens)
                } else if !room {
                    Some(StopReason::Context)
                } else {
                    None
                }
            };
            if let Some(stop_reason) = reason {
                row.done = true;
                finished.push((
                    row.tag,
                    Generated { token_ids: std::mem::take(&mut row.generated), stop_reason },
                ));
            }
        }
        if self.is_done() {
            return Ok(finished);
        }
        // Finished rows leave the batch (their cache rows with them) once they are half of it.
        if self.rows.len() >= 2 * self.live() {
            let keep: Vec<usize> = (0..self.rows.len()).filter(|&i| !self.rows[i].done).collect();
            self.cache.keep_rows(&keep);
            tokens = keep.iter().map(|&i| tokens[i]).collect();
            let mut i = 0;
            self.rows.retain(|_| {
                let k = keep.contains(&i);
                i += 1;
                k
            });
        }
        for r in &mut self.rows {
            let live = !r.done;
            r.valid.push(live);
        }
        let positions: Vec<i64> = self.rows.iter().map(|r| r.next_pos).collect();
        let valid: Vec<Vec<bool>> = self.rows.iter().map(|r| r.valid.clone()).collect();
        self.logits = Some(model.step(&tokens, &positions, &valid, &mut self.cache)?);
        for r in &mut self.rows {
            r.next_pos += 1;
        }
        Ok(finished)
    }
}

fn host_rows(logits: Tensor<2>) -> Vec<Vec<f32>> {
    crate::host::rows(logits)
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

/// Incremental detokenisation for streaming: emits only complete text, holding back a piece
/// that ends inside a multi-byte character until the next token completes it.
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    emitted: usize,
}

impl TextStream {
    /// Adds a token; returns the new text that is ready to print.
    pub fn push(&mut self, id: u32, decode: impl Fn(&[u32]) -> Option<String>) -> String {
        self.ids.push(id);
        let Some(text) = decode(&self.ids) else {
            return String::new();
        };
        if text.ends_with('\u{FFFD}') || text.len() < self.emitted || !text.is_char_boundary(self.emitted) {
            return String::new();
        }
        let new = text[self.emitted..].to_string();
        self.emitted = text.len();
        new
    }

    /// At the end of generation: whatever is still held back (undecodable bytes included).
    pub fn finish(&mut self, decode: impl Fn(&[u32]) -> Option<String>) -> String {
        let text = decode(&self.ids).unwrap_or_default();
        let rest = if text.len() > self.emitted && text.is_char_boundary(self.emitted) {
            text[self.emitted..].to_string()
        } else {
            String::new()
        };
        self.emitted = text.len();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_values_are_checked() {
        for (s, needle) in [
            (Sampling { max_new_tokens: 0, ..Default::default() }, "max_new_tokens"),
            (Sampling { temperature: Some(-1.0), ..Default::default() }, "temperature"),
            (Sampling { top_p: Some(1.5), ..Default::default() }, "top_p"),
            (Sampling { top_p: Some(0.0), ..Default::default() }, "top_p"),
            (Sampling { top_k: Some(0), ..Default::default() }, "top_k"),
            (Sampling { repetition_penalty: Some(0.0), ..Default::default() }, "repetition_penalty"),
        ] {
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn choose_greedy_penalty_topk_topp() {
        let s = Sampling::default();
        let mut rng = Rng::new(1);
        assert_eq!(choose(&mut [0.1, 2.0, 1.0], &[], &s, &mut rng), 1);
        // A penalty of 4 on token 1 (2.0 -> 0.5) makes token 2 the argmax.
        let s = Sampling { repetition_penalty: Some(4.0), ..Default::default() };
        assert_eq!(choose(&mut [0.1, 2.0, 1.0], &[1], &s, &mut rng), 2);
        // top_k = 1 at any temperature is greedy.
        let s = Sampling { temperature: Some(5.0), top_k: Some(1), ..Default::default() };
        for _ in 0..20 {
            assert_eq!(choose(&mut [0.1, 2.0, 1.0], &[], &s, &mut rng), 1);
        }
        // A tiny top_p keeps only the most likely token.
        let s = Sampling { temperature: Some(1.0), top_p: Some(0.01), ..Default::default() };
        for _ in 0..20 {
            assert_eq!(choose(&mut [0.1, 2.0, 1.0], &[], &s, &mut rng), 1);
        }
        // Sampling follows the distribution: token 1 is drawn most often.
        let s = Sampling { temperature: Some(1.0), ..Default::default() };
        let mut counts = [0; 3];
        for _ in 0..2000 {
            counts[choose(&mut [0.0, 2.0, 1.0], &[], &s, &mut rng) as usize] += 1;
        }
        assert!(counts[1] > counts[2] && counts[2] > counts[0], "{counts:?}");
    }

    #[test]
    fn same_seed_same_draws() {
        let s = Sampling { temperature: Some(1.0), ..Default::default() };
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..50).map(|_| choose(&mut [0.0, 0.5, 1.0, 0.2], &[], &s, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn stream_holds_back_split_characters() {
        // Byte-level pieces: "é" is two bytes, decodable only once both arrive.
        let pieces: Vec<&[u8]> = vec![b"h", &[0xC3], &[0xA9], b"!"];
        let decode = |ids: &[u32]| {
            let bytes: Vec<u8> = ids.iter().flat_map(|&i| pieces[i as usize].to_vec()).collect();
            Some(String::from_utf8_lossy(&bytes).into_owned())
        };
        let mut s = TextStream::default();
        let out: Vec<String> = (0..4).map(|i| s.push(i, decode)).collect();
        assert_eq!(out, ["h", "", "é", "!"]);
    }

    #[test]
    fn left_padding_positions_start_at_each_rows_first_token() {
        let valid = vec![vec![false, false, true, true], vec![true; 4]];
        assert_eq!(row_positions(&valid), vec![vec![0, 0, 0, 1], vec![0, 1, 2, 3]]);
    }
}
