//! SigLIP 2 NaFlex (`model_type` siglip2, `models/siglip2/modeling_siglip2.py`): each image keeps
//! its aspect ratio and is cut into at most `max_num_patches` patches; the patches are embedded by
//! a Linear layer, the `sqrt(num_patches)`-square position table is resized to each image's patch
//! grid, and padding patches are masked out of the encoder and the MAP head. Everything after the
//! embeddings, and the whole text tower, is SigLIP's.
//!
//! Axis letters: `B` images, `N` patch slots (`max_num_patches`), `C` width, `G` position grid
//! side, `P = 3 * patch * patch`.

use crate::config::{SiglipConfig, SiglipVisionConfig};
use crate::model::{SiglipMultiheadAttentionPoolingHead, SiglipTextTransformer, SigmoidHead, VisionOutput};
use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use std::path::Path;
use zoo_nn::{
    Checkpoint, ContrastiveModel, Encoder, EncoderConfig, ImageProcessor, MaskSpec, NnError, NormConfig,
    Padding, PreprocessorConfig, Result, TextBatch,
};

/// Linear patch embedding + the resized position table.
#[derive(Module, Debug)]
pub struct Siglip2VisionEmbeddings {
    /// `P -> C`.
    pub patch_embedding: Linear,
    /// `[G*G, C]`.
    pub position_embedding: Embedding,
}

/// One batch of NaFlex images: patches, which slots are real, each image's patch grid.
#[derive(Debug, Clone)]
pub struct NaflexBatch {
    /// `[B, N, P]`, each patch `(row, col, channel)`-ordered.
    pub patches: Tensor<3>,
    /// `[B][N]`: real patches first, padding after.
    pub valid: Vec<Vec<bool>>,
    /// `(rows, cols)` of each image's patch grid.
    pub spatial_shapes: Vec<(usize, usize)>,
}

/// The weights of `F.interpolate(mode="bilinear", align_corners=False, antialias=True)` from a
/// grid of `g` to `n` along one axis, at output `o` (transformers' `resize_positional_embeddings`).
fn axis_weights(g: usize, n: usize, o: usize) -> Vec<f32> {
    let scale = g as f32 / n as f32;
    let support = scale.max(1.0);
    let center = (o as f32 + 0.5) * scale - 0.5;
    let w: Vec<f32> = (0..g).map(|s| (1.0 - (s as f32 - center).abs() / support).max(0.0)).collect();
    let sum: f32 = w.iter().sum();
    w.into_iter().map(|x| x / sum).collect()
}

impl Siglip2VisionEmbeddings {
    /// # Shapes
    /// - output `[B, N, C]`
    pub fn forward(&self, batch: &NaflexBatch) -> Tensor<3> {
        let [b, n, _] = batch.patches.dims();
        let table = self.position_embedding.weight.val(); // (G*G, C)
        let gg = table.dims()[0];
        let g = (gg as f64).sqrt().round() as usize;
        // (B, N, G*G) resize weights; padding slots take the first position's, as transformers does.
        let mut w = Vec::with_capacity(b * n * gg);
        for &(rows, cols) in &batch.spatial_shapes {
            for slot in 0..n {
                let (r, c) = if slot < rows * cols { (slot / cols, slot % cols) } else { (0, 0) };
                let (wr, wc) = (axis_weights(g, rows, r), axis_weights(g, cols, c));
                w.extend(wr.iter().flat_map(|a| wc.iter().map(move |b| a * b)));
            }
        }
        let device = batch.patches.device();
        let w = Tensor::<3>::from_data(TensorData::new(w, [b, n, gg]), &device).cast(table.dtype());
        let positions = w.matmul(table.unsqueeze::<3>());
        zoo_nn::packed::linear(&self.patch_embedding, batch.patches.clone()) + positions
    }
}

/// `Siglip2VisionTransformer`: SigLIP's ViT on NaFlex embeddings, padding masked.
#[derive(Module, Debug)]
pub struct Siglip2VisionTransformer {
    /// Patches + positions.
    pub embeddings: Siglip2VisionEmbeddings,
    /// Transformer layers.
    pub encoder: Encoder,
    /// Final norm.
    pub post_layernorm: zoo_nn::Norm,
    /// MAP head.
    pub head: Option<SiglipMultiheadAttentionPoolingHead>,
}

impl Siglip2VisionTransformer {
    /// # Shapes
    /// - output: last hidden state `[B, N, C]` (padding slots included), pooled `[B, C]`
    pub fn forward(&self, batch: &NaflexBatch) -> VisionOutput {
        let x = self.embeddings.forward(batch);
        let [b, n, _] = x.dims();
        let mask = MaskSpec::none().with_key_valid(batch.valid.clone()).build(b, n, n, &x.device());
        let x = self.post_layernorm.forward(self.encoder.forward(x, mask.as_ref()));
        VisionOutput {
            pooler_output: self.head.as_ref().map(|h| h.forward_masked(x.clone(), Some(&batch.valid))),
            last_hidden_state: x,
        }
    }
}

/// `Siglip2Model` (NaFlex): both towers, temperature and bias.
#[derive(Module, Debug)]
pub struct Siglip2Model {
    /// Text tower (SigLIP's).
    pub text_model: SiglipTextTransformer,
    /// NaFlex vision tower.
    pub vision_model: Siglip2VisionTransformer,
    /// `[1]`, log temperature.
    pub logit_scale: Param<Tensor<1>>,
    /// `[1]`, bias.
    pub logit_bias: Param<Tensor<1>>,
}

/// A `siglip2` config: SigLIP's keys plus `vision_config.num_patches` (the position table).
#[derive(Debug, Clone, PartialEq)]
pub struct Siglip2Config {
    /// The SigLIP part (the vision `image_size` is unused).
    pub siglip: SiglipConfig,
    /// Rows of the position table (a square: 256 = 16 x 16).
    pub num_patches: usize,
}

impl Siglip2Model {
    /// A randomly initialised model.
    pub fn new(config: &Siglip2Config, device: &Device) -> Self {
        let base = crate::SiglipModel::new(&config.siglip, device);
        let v: &SiglipVisionConfig = &config.siglip.vision_config;
        let c = v.hidden_size;
        let n = NormConfig::new(v.norm, c, v.layer_norm_eps);
        Self {
            text_model: base.text_model,
            vision_model: Siglip2VisionTransformer {
                embeddings: Siglip2VisionEmbeddings {
                    patch_embedding: LinearConfig::new(v.num_channels * v.patch_size * v.patch_size, c)
                        .init(device),
                    position_embedding: EmbeddingConfig::new(config.num_patches, c).init(device),
                },
                encoder: EncoderConfig {
                    hidden: c,
                    heads: v.num_attention_heads,
                    intermediate: v.intermediate_size,
                    layers: v.num_hidden_layers,
                    act: v.hidden_act,
                    norm: n,
                }
                .init(device),
                post_layernorm: n.init(device),
                head: base.vision_model.head,
            },
            logit_scale: base.logit_scale,
            logit_bias: base.logit_bias,
        }
    }

    /// Pooled image features (before normalisation), `[B, C]`.
    pub fn image_features(&self, batch: &NaflexBatch) -> Tensor<2> {
        self.vision_model
            .forward(batch)
            .pooler_output
            .expect("Siglip2Model's vision tower has a head (checked at load)")
    }
}

impl ContrastiveModel for Siglip2Model {
    fn text_padding(&self) -> Padding {
        Padding::MaxLength(self.text_model.embeddings.position_embedding.weight.dims()[0])
    }

    /// A fixed-size batch as NaFlex patches: the full grid of every image.
    fn encode_image(&self, pixels: Tensor<4>) -> Tensor<2> {
        let [b, ch, h, w] = pixels.dims();
        let p = self.vision_model.embeddings.patch_embedding.weight.dims()[0] / ch;
        let p = (p as f64).sqrt().round() as usize;
        let (rows, cols) = (h / p, w / p);
        // (B, ch, rows, p, cols, p) -> (B, rows, cols, p, p, ch)
        let patches = pixels
            .slice([0..b, 0..ch, 0..rows * p, 0..cols * p])
            .reshape([b, ch, rows, p, cols, p])
            .permute([0, 2, 4, 3, 5, 1])
            .reshape([b, rows * cols, p * p * ch]);
        self.image_features(&NaflexBatch {
            patches,
            valid: vec![vec![true; rows * cols]; b],
            spatial_shapes: vec![(rows, cols); b],
        })
    }

    fn encode_text(&self, text: &TextBatch) -> Tensor<2> {
        self.text_model.encode(text)
    }

    fn logits(&self, image_embeds: Tensor<2>, text_embeds: Tensor<2>) -> Tensor<2> {
        SigmoidHead { scale: &self.logit_scale, bias: &self.logit_bias }.logits(image_embeds, text_embeds)
    }

    fn probs(&self, logits_per_image: Tensor<2>) -> Tensor<2> {
        burn::tensor::activation::sigmoid(logits_per_image)
    }

    fn loss(&self, img: Tensor<2>, txt: Tensor<2>, chunk: Option<usize>) -> Tensor<1> {
        SigmoidHead { scale: &self.logit_scale, bias: &self.logit_bias }.loss(img, txt, chunk)
    }
}

/// Reads a `siglip2` folder's config (transformers' `Siglip2Config` defaults: 256 patches).
pub fn read_config(dir: &Path) -> Result<Siglip2Config> {
    let path = dir.join("config.json");
    let raw: serde_json::Value = zoo_nn::read_json(&path)?;
    let siglip: SiglipConfig = zoo_nn::load::from_json_value(&path, raw.clone())?;
    let num_patches = raw["vision_config"]["num_patches"].as_u64().unwrap_or(256) as usize;
    let g = (num_patches as f64).sqrt().round() as usize;
    if g * g != num_patches || num_patches == 0 {
        return Err(NnError::Config(format!(
            "{}: vision_config.num_patches {num_patches} is not a square (the position table is a square grid)",
            path.display()
        )));
    }
    siglip.text_config.validate()?;
    siglip.vision_config.validate()?;
    if !siglip.vision_config.vision_use_head {
        return Err(NnError::Config(format!(
            "{}: a siglip2 model without its head cannot score",
            path.display()
        )));
    }
    Ok(Siglip2Config { siglip, num_patches })
}

/// Loads a `siglip2` (NaFlex) folder as `dtype` (a dtype, or packed weights for CPU inference: [`zoo_nn::LoadSpec`]).
pub fn load_siglip2(
    dir: &Path,
    dtype: impl Into<zoo_nn::LoadSpec>,
    device: &Device,
) -> Result<(Siglip2Model, Siglip2Config)> {
    let config = read_config(dir)?;
    let ckpt = Checkpoint::open(dir)?;
    let mut model = Siglip2Model::new(&config, device);
    ckpt.load_into(&mut model, &crate::load::key_map(""), dtype)?;
    Ok((model, config))
}

/// `Siglip2ImageProcessor`: each image resized (keeping its aspect ratio) to the largest size
/// whose patch grid fits `max_num_patches`, rescaled, normalised and cut into patches.
#[derive(Debug, Clone)]
pub struct NaflexProcessor {
    /// Resampling, rescale and normalisation (its size is set per image).
    pub base: PreprocessorConfig,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Patch slots per image.
    pub max_num_patches: usize,
}

/// transformers' `get_image_size_for_max_num_patches`: a binary search over the scale.
pub fn size_for_max_patches(h: usize, w: usize, patch: usize, max_patches: usize) -> (usize, usize) {
    let scaled = |scale: f64, size: usize| -> usize {
        let s = ((size as f64 * scale) / patch as f64).ceil() * patch as f64;
        (s.max(patch as f64)) as usize
    };
    let (mut lo, mut hi) = (1e-5 / 10.0, 100.0f64);
    while hi - lo >= 1e-5 {
        let scale = (lo + hi) / 2.0;
        let (th, tw) = (scaled(scale, h), scaled(scale, w));
        if (th / patch) * (tw / patch) <= max_patches {
            lo = scale;
        } else {
            hi = scale;
        }
    }
    (scaled(lo, h), scaled(lo, w))
}

impl NaflexProcessor {
    /// From a folder's preprocessor_config.json (`patch_size`, `max_num_patches`, resampling,
    /// mean/std; transformers' defaults: 16, 256, bilinear, 0.5).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        let raw: serde_json::Value =
            if path.is_file() { zoo_nn::read_json(&path)? } else { serde_json::json!({}) };
        let mut base = PreprocessorConfig::square(1);
        base.resample = raw["resample"].as_u64().unwrap_or(2) as u32;
        let mut merged = serde_json::to_value(&base).map_err(|e| NnError::Config(e.to_string()))?;
        for k in ["do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std"] {
            if let Some(v) = raw.get(k).filter(|v| !v.is_null()) {
                merged[k] = v.clone();
            }
        }
        let base: PreprocessorConfig = zoo_nn::load::from_json_value(&path, merged)?;
        let patch_size = raw["patch_size"].as_u64().unwrap_or(16) as usize;
        let max_num_patches = raw["max_num_patches"].as_u64().unwrap_or(256) as usize;
        if patch_size == 0 || max_num_patches == 0 {
            return Err(NnError::Config(format!(
                "{}: patch_size and max_num_patches must be > 0",
                path.display()
            )));
        }
        Ok(Self { base, patch_size, max_num_patches })
    }

    /// Patches of decoded images.
    pub fn batch(&self, images: &[image::DynamicImage], device: &Device) -> Result<NaflexBatch> {
        let (p, n) = (self.patch_size, self.max_num_patches);
        let dim = 3 * p * p;
        let mut data = vec![0f32; images.len() * n * dim];
        let (mut valid, mut shapes) = (Vec::new(), Vec::new());
        for (i, img) in images.iter().enumerate() {
            let (th, tw) = size_for_max_patches(img.height() as usize, img.width() as usize, p, n);
            let mut cfg = self.base.clone();
            cfg.size = Some(zoo_nn::data::image::SizeSpec::Exact { height: th as u32, width: tw as u32 });
            let (h, w, px) = ImageProcessor::new(cfg).preprocess(img)?; // (3, h, w)
            let (rows, cols) = (h / p, w / p);
            for r in 0..rows {
                for c in 0..cols {
                    let slot = &mut data[(i * n + r * cols + c) * dim..][..dim];
                    for y in 0..p {
                        for x in 0..p {
                            for ch in 0..3 {
                                slot[(y * p + x) * 3 + ch] = px[ch * h * w + (r * p + y) * w + c * p + x];
                            }
                        }
                    }
                }
            }
            valid.push((0..n).map(|s| s < rows * cols).collect());
            shapes.push((rows, cols));
        }
        Ok(NaflexBatch {
            patches: Tensor::from_data(TensorData::new(data, [images.len(), n, dim]), device),
            valid,
            spatial_shapes: shapes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_fit_the_patch_budget_and_keep_the_aspect() {
        assert_eq!(size_for_max_patches(224, 224, 16, 256), (256, 256));
        let (h, w) = size_for_max_patches(48, 64, 8, 16);
        assert!((h / 8) * (w / 8) <= 16 && h % 8 == 0 && w % 8 == 0 && w > h, "{h}x{w}");
        // Resizing a grid to itself keeps each position; weights always sum to one.
        for o in 0..4 {
            let w = axis_weights(4, 4, o);
            assert_eq!(w.iter().position(|&x| x == 1.0), Some(o));
        }
        assert!((axis_weights(16, 5, 2).iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
