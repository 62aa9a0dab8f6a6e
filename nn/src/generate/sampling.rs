//! How the next token is chosen: greedy or sampled (temperature, top-k, top-p, repetition
//! penalty, seed).

use super::*;

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
