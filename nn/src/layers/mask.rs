//! Attention masks: which keys each query may see (none, causal, key padding, prefix-LM, sliding
//! window), built as one boolean tensor for [`crate::scaled_dot_product_attention`].

use burn::prelude::*;

/// Which keys each query may see. Query `i` of `L` sits at absolute position `S - L + i` (the
/// queries are the last `L` of the `S` keys, as in cached decoding).
///
/// ```text
/// causal, S = L = 4       prefix-LM, prefix 2      sliding window 2 (causal)
///   k 0 1 2 3               k 0 1 2 3                k 0 1 2 3
/// q0  x . . .             q0  x x . .              q0  x . . .
/// q1  x x . .             q1  x x . .              q1  x x . .
/// q2  x x x .             q2  x x x .              q2  . x x .
/// q3  x x x x             q3  x x x x              q3  . . x x
/// ```
/// (`x` = visible.) Key padding hides keys per batch row; the rules combine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaskSpec {
    /// Hide keys after the query's position.
    pub causal: bool,
    /// Per batch row: the first `prefix_len[b]` positions form a bidirectional block (prefix-LM):
    /// prefix queries see every prefix key. Only meaningful with `causal`.
    pub prefix_len: Option<Vec<usize>>,
    /// Hide keys `window` or more positions before the query (`q - k >= window`).
    pub sliding_window: Option<usize>,
    /// Per batch row, per key: `true` where the key is a real token, `false` for padding.
    pub key_valid: Option<Vec<Vec<bool>>>,
}

impl MaskSpec {
    /// No masking (bidirectional, no padding).
    pub fn none() -> Self {
        Self::default()
    }
    /// Causal masking.
    pub fn causal() -> Self {
        Self { causal: true, ..Self::default() }
    }
    /// Prefix-LM: bidirectional over the first `prefix_len[b]` keys, causal after.
    pub fn prefix_lm(prefix_len: Vec<usize>) -> Self {
        Self { causal: true, prefix_len: Some(prefix_len), ..Self::default() }
    }
    /// Adds a sliding window.
    pub fn with_sliding_window(mut self, window: usize) -> Self {
        self.sliding_window = Some(window);
        self
    }
    /// Adds key padding (`[B][S]`, `true` = real token).
    pub fn with_key_valid(mut self, valid: Vec<Vec<bool>>) -> Self {
        self.key_valid = Some(valid);
        self
    }

    /// Whether key `j` is hidden from the query at absolute position `qp` in row `b`.
    ///
    /// As transformers composes its masks: padding hides a key outright; a query and key that
    /// are both in the row's prefix always see each other (the prefix block is bidirectional,
    /// whatever the window); otherwise the causal and sliding-window rules apply.
    pub fn is_masked(&self, b: usize, qp: usize, j: usize) -> bool {
        if let Some(valid) = &self.key_valid
            && !valid[b][j]
        {
            return true;
        }
        if self.prefix_len.as_ref().is_some_and(|p| qp < p[b] && j < p[b]) {
            return false;
        }
        if self.causal && j > qp {
            return true;
        }
        if let Some(w) = self.sliding_window
            && qp >= j + w
        {
            return true;
        }
        false
    }

    /// The boolean mask for `batch` rows, `q_len` queries and `k_len` keys, or `None` when
    /// nothing is hidden by construction.
    ///
    /// # Shapes
    /// - output: `bool[B, 1, L, S]`, true = masked
    pub fn build(
        &self,
        batch: usize,
        q_len: usize,
        k_len: usize,
        device: &Device,
    ) -> Option<Tensor<4, Bool>> {
        if *self == Self::none() {
            return None;
        }
        assert!(q_len <= k_len, "more queries ({q_len}) than keys ({k_len})");
        let offset = k_len - q_len;
        let mut data = Vec::with_capacity(batch * q_len * k_len);
        for b in 0..batch {
            for i in 0..q_len {
                for j in 0..k_len {
                    data.push(self.is_masked(b, offset + i, j));
                }
            }
        }
        Some(Tensor::from_data(TensorData::new(data, [batch, 1, q_len, k_len]), device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_kinds_draw_as_documented() {
        let draw = |spec: &MaskSpec| -> Vec<String> {
            (0..4)
                .map(|q| (0..4).map(|k| if spec.is_masked(0, q, k) { '.' } else { 'x' }).collect())
                .collect()
        };
        assert_eq!(draw(&MaskSpec::causal()), ["x...", "xx..", "xxx.", "xxxx"]);
        assert_eq!(draw(&MaskSpec::prefix_lm(vec![2])), ["xx..", "xx..", "xxx.", "xxxx"]);
        assert_eq!(draw(&MaskSpec::causal().with_sliding_window(2)), ["x...", "xx..", ".xx.", "..xx"]);
    }
}
