//! The AdamW update on f32 slices: one pass over parameter, gradient and both moments, in place
//! (what `fused::adamw_step` runs on Flex, and what `zoo_nn`'s `AdamW` optimiser calls once per
//! tensor).

use crate::host_ops::{CHUNK, INLINE};
use rayon::prelude::*;

/// One AdamW step's constants: `lr`, the moments' `beta_1`/`beta_2`, `epsilon`, the decoupled
/// decay `lr * weight_decay`, and the bias corrections `1 - beta_1^t`, `1 - beta_2^t`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta_1: f32,
    /// Second-moment decay.
    pub beta_2: f32,
    /// Added to the root of the corrected second moment.
    pub epsilon: f32,
    /// `lr * weight_decay`.
    pub decay: f32,
    /// `1 - beta_1^t`.
    pub correction_1: f32,
    /// `1 - beta_2^t`.
    pub correction_2: f32,
}

/// Matching chunks of AdamW's parameter, gradient and moments.
type Chunks<'a> = ((&'a mut [f32], &'a [f32]), (&'a mut [f32], &'a mut [f32]));

/// AdamW in place, one pass: `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
/// `p = p (1 - lr wd) - lr (m / c1) / (sqrt(v / c2) + eps)` (PyTorch's and Burn's AdamW).
pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamWStep) {
    let body = |((p, g), (m, v)): Chunks<'_>| {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = h.beta_1 * *m + (1.0 - h.beta_1) * g;
            *v = h.beta_2 * *v + (1.0 - h.beta_2) * g * g;
            let update = (*m / h.correction_1) / ((*v / h.correction_2).sqrt() + h.epsilon);
            *p = *p * (1.0 - h.decay) - h.lr * update;
        }
    };
    if g.len() <= INLINE {
        body(((p, g), (m, v)));
    } else {
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(body);
    }
}
