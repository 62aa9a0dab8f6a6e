//! A batch being generated that requests join and leave between steps (continuous batching);
//! [`generate`](super::generate) and the server both run on it.

use super::*;

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
        // Prefill stays on the calling thread: its products are few and large (on the pool it
        // measured ~5% slower on PaliGemma-3B, where decode steps gain 13-30%).
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
        let (device, cache) = (self.cache.device(), &mut self.cache);
        let logits =
            crate::device::on_cpu_pool(device.as_ref(), || model.step(&tokens, &positions, &valid, cache))?;
        self.logits = Some(logits);
        for r in &mut self.rows {
            r.next_pos += 1;
        }
        Ok(finished)
    }
}

fn host_rows(logits: Tensor<2>) -> Vec<Vec<f32>> {
    crate::host::rows(logits)
}
