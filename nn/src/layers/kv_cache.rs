//! An explicit key/value cache: one preallocated buffer per layer, written in place.
//!
//! The cache is a value the caller owns and passes to each forward (`&mut`). Appending writes the
//! new keys/values into the preallocated `[B, K, max_len, D]` buffers at the current length
//! (`slice_assign` on a uniquely owned buffer, which the backends do in place), so a decode step
//! never concatenates the whole history.

use burn::prelude::*;

/// The cache of one attention layer.
///
/// # Shapes
/// - buffers: `[B, K, max_len, D]`
#[derive(Debug)]
pub struct LayerKvCache {
    keys: Option<Tensor<4>>,
    values: Option<Tensor<4>>,
    len: usize,
    max_len: usize,
}

impl LayerKvCache {
    /// An empty cache for `batch` rows, `kv_heads` heads of `head_dim`, up to `max_len` positions.
    pub fn new(batch: usize, kv_heads: usize, head_dim: usize, max_len: usize, device: &Device) -> Self {
        let shape = [batch, kv_heads, max_len, head_dim];
        Self {
            keys: Some(Tensor::zeros(shape, device)),
            values: Some(Tensor::zeros(shape, device)),
            len: 0,
            max_len,
        }
    }

    /// Writes `k`, `v` after the cached positions and returns everything cached so far.
    ///
    /// # Shapes
    /// - `k`, `v`: `[B, K, L, D]`; output: two `[B, K, len + L, D]`
    ///
    /// # Panics
    /// When `len + L` exceeds `max_len` (callers check the context length up front).
    pub fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let [b, kh, l, d] = k.dims();
        let end = self.len + l;
        assert!(end <= self.max_len, "KV cache overflow: {end} > max_len {}", self.max_len);
        let range = [0..b, 0..kh, self.len..end, 0..d];
        // The buffers' dtype (read before they are taken out), then take them out so they are
        // uniquely owned while written.
        let dtype = self.dtype();
        let keys = self.keys.take().expect("cache buffer").slice_assign(range.clone(), k.cast(dtype));
        let values = self.values.take().expect("cache buffer").slice_assign(range, v.cast(dtype));
        self.len = end;
        let view = [0..b, 0..kh, 0..end, 0..d];
        let out = (keys.clone().slice(view.clone()), values.clone().slice(view));
        self.keys = Some(keys);
        self.values = Some(values);
        out
    }

    fn dtype(&self) -> burn::tensor::DType {
        self.keys.as_ref().map_or(burn::tensor::DType::F32, |k| k.dtype())
    }

    /// Cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets the cached positions (the buffers stay allocated).
    pub fn reset(&mut self) {
        self.len = 0;
    }
}

/// The caches of every layer of a decoder.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerKvCache>,
    max_len: usize,
}

impl KvCache {
    /// The device of its buffers (`None` for a cache of no layers).
    pub fn device(&self) -> Option<Device> {
        self.layers.iter().find_map(|l| l.keys.as_ref().map(|k| k.device()))
    }

    /// Preallocates `num_layers` caches of `[batch, kv_heads, max_len, head_dim]`.
    pub fn new(
        num_layers: usize,
        batch: usize,
        kv_heads: usize,
        head_dim: usize,
        max_len: usize,
        device: &Device,
    ) -> Self {
        Self {
            layers: (0..num_layers)
                .map(|_| LayerKvCache::new(batch, kv_heads, head_dim, max_len, device))
                .collect(),
            max_len,
        }
    }

    /// The cache of layer `i`.
    pub fn layer(&mut self, i: usize) -> &mut LayerKvCache {
        &mut self.layers[i]
    }

    /// All layer caches, in order.
    pub fn layers_mut(&mut self) -> &mut [LayerKvCache] {
        &mut self.layers
    }

    /// Positions cached (the same for every layer after a full forward).
    pub fn seq_len(&self) -> usize {
        self.layers.first().map_or(0, LayerKvCache::len)
    }

    /// The capacity in positions.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Forgets every cached position.
    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(LayerKvCache::reset);
    }

    /// Appends the rows of `other` after this cache's rows (continuous batching: a request joins
    /// a running batch). Both must hold the same number of positions and capacity.
    pub fn append_rows(&mut self, other: KvCache) -> crate::Result<()> {
        if other.seq_len() != self.seq_len()
            || other.max_len != self.max_len
            || other.layers.len() != self.layers.len()
        {
            return Err(crate::NnError::Config(format!(
                "joining KV caches of {} / {} positions (capacity {} / {})",
                self.seq_len(),
                other.seq_len(),
                self.max_len,
                other.max_len
            )));
        }
        for (a, b) in self.layers.iter_mut().zip(other.layers) {
            let cat = |x: Option<Tensor<4>>, y: Option<Tensor<4>>| match (x, y) {
                (Some(x), Some(y)) => Some(Tensor::cat(vec![x, y], 0)),
                (x, _) => x,
            };
            a.keys = cat(a.keys.take(), b.keys);
            a.values = cat(a.values.take(), b.values);
        }
        Ok(())
    }

    /// Keeps only the rows `rows` (in that order): finished requests leave a running batch.
    pub fn keep_rows(&mut self, rows: &[usize]) {
        for layer in &mut self.layers {
            for buf in [&mut layer.keys, &mut layer.values] {
                if let Some(t) = buf.take() {
                    let device = t.device();
                    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
                    let n = idx.len();
                    *buf = Some(t.select(0, Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &device)));
                }
            }
        }
    }
}
