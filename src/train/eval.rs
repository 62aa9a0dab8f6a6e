//! Retrieval metrics on held-out pairs and zero-shot accuracy.

use burn::prelude::*;
use zoo_nn::host::to_vec;

/// Image-to-text and text-to-image recall at 1, 5 and 10.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Recall {
    /// Image -> text R@1, R@5, R@10.
    pub i2t: [f64; 3],
    /// Text -> image R@1, R@5, R@10.
    pub t2i: [f64; 3],
}

/// Recall of matching pairs (row `i` of `img` pairs with row `i` of `txt`).
///
/// # Shapes
/// - `img`, `txt`: `[N, P]`, L2-normalised
pub fn recall(img: Tensor<2>, txt: Tensor<2>) -> Recall {
    let n = img.dims()[0];
    let sims = to_vec(img.matmul(txt.transpose()));
    let rank = |i: usize, row: bool| {
        let at = |j: usize| if row { sims[i * n + j] } else { sims[j * n + i] };
        let own = at(i);
        (0..n).filter(|&j| j != i && at(j) > own).count()
    };
    let mut r = Recall::default();
    for (k, &cut) in [1usize, 5, 10].iter().enumerate() {
        r.i2t[k] = (0..n).filter(|&i| rank(i, true) < cut).count() as f64 / n.max(1) as f64;
        r.t2i[k] = (0..n).filter(|&i| rank(i, false) < cut).count() as f64 / n.max(1) as f64;
    }
    r
}

/// Fraction of images whose most similar class text is their own class.
///
/// # Shapes
/// - `img`: `[N, P]`; `classes`: `[K, P]`; `labels`: `[N]` class indices
pub fn zero_shot_accuracy(img: Tensor<2>, classes: Tensor<2>, labels: &[usize]) -> f64 {
    let k = classes.dims()[0];
    let sims = to_vec(img.matmul(classes.transpose()));
    let hits = labels
        .iter()
        .enumerate()
        .filter(|(i, label)| {
            let row = &sims[i * k..(i + 1) * k];
            let best = row
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (j, &v)| if v > bv { (j, v) } else { (bi, bv) })
                .0;
            best == **label
        })
        .count();
    hits as f64 / labels.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use zoo_nn::testing::{device, tensor_from};

    #[test]
    fn recall_counts_ranks() {
        let dev = device();
        // Image 0 matches text 0 best; image 1 prefers text 0 over its own text 1.
        let img = tensor_from(&[1.0, 0.0, 0.8, 0.6], [2, 2], &dev);
        let txt = tensor_from(&[1.0, 0.0, 0.0, 1.0], [2, 2], &dev);
        let r = recall(img, txt);
        assert_eq!(r.i2t, [0.5, 1.0, 1.0]);
        assert_eq!(r.t2i, [1.0, 1.0, 1.0]);
    }
}
