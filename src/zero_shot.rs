//! `vlm-zoo zero-shot`: image-text scores from a SigLIP or CLIP checkpoint folder.

use crate::args::{ComputeArgs, ModelArgs, TextMaskArgs};
use crate::models::{Family, ModelConfig, Towers};
use burn::prelude::*;
use std::path::{Path, PathBuf};
use zoo_nn::host::rows;
use zoo_nn::{
    Compute, ContrastiveModel, ImageProcessor, NnError, PreprocessorConfig, Result, TextMask, TextTokenizer,
};

/// `vlm-zoo zero-shot`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct ZeroShotArgs {
    /// The checkpoint.
    #[command(flatten)]
    pub model: ModelArgs,
    /// An image file; repeat for several.
    #[arg(long = "image", required = true)]
    pub images: Vec<PathBuf>,
    /// A candidate text; repeat for several.
    #[arg(long = "text", required = true)]
    pub texts: Vec<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The SigLIP text mask.
    #[command(flatten)]
    pub text_mask: TextMaskArgs,
    /// Device and dtype.
    #[command(flatten)]
    pub compute: ComputeArgs,
}

impl ZeroShotArgs {
    /// Scores the images against the texts.
    pub fn run(&self) -> Result<ZeroShot> {
        let compute = self.compute.compute()?;
        zero_shot_with(
            &self.model.model.resolve()?,
            &self.images,
            &self.texts,
            &compute,
            self.text_mask.mask(),
        )
    }
}

/// Scores of every image against every text, as the CLI prints them with `--json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ZeroShot {
    /// `siglip` or `clip`.
    pub model_type: String,
    /// `[n_images][dim]`, L2-normalised.
    pub image_embeds: Vec<Vec<f32>>,
    /// `[n_texts][dim]`, L2-normalised.
    pub text_embeds: Vec<Vec<f32>>,
    /// `[n_images][n_texts]`.
    pub logits_per_image: Vec<Vec<f32>>,
    /// `[n_images][n_texts]`: sigmoid (SigLIP) or softmax over the texts (CLIP).
    pub probs: Vec<Vec<f32>>,
    /// Notes for the user (e.g. a fallback taken), printed to stderr by the CLI.
    #[serde(skip)]
    pub notes: Vec<String>,
}

/// The image processor of a checkpoint: its preprocessor_config.json, or (when absent) the
/// family's defaults at the config's image size, with a note saying so.
fn processor(dir: &Path, config: &ModelConfig, notes: &mut Vec<String>) -> Result<ImageProcessor> {
    let path = dir.join("preprocessor_config.json");
    if path.is_file() {
        return Ok(ImageProcessor::new(PreprocessorConfig::from_file(&path)?));
    }
    if zoo_clip::open_clip::is_open_clip(dir) {
        return Ok(ImageProcessor::new(zoo_clip::open_clip::preprocessor(dir)?));
    }
    notes.push(format!(
        "{}: no preprocessor_config.json; using {}'s preprocessing at image_size {} from config.json",
        dir.display(),
        config.family().name(),
        config.image_size()
    ));
    Ok(ImageProcessor::new(config.default_preprocessor()))
}

/// Scores `images` against `texts` with the SigLIP or CLIP model in `dir`.
pub fn zero_shot(dir: &Path, images: &[PathBuf], texts: &[String], compute: &Compute) -> Result<ZeroShot> {
    zero_shot_with(dir, images, texts, compute, TextMask::Auto)
}

/// [`zero_shot`] with the SigLIP text mask chosen by `text_mask` (`--text-mask`).
pub fn zero_shot_with(
    dir: &Path,
    images: &[PathBuf],
    texts: &[String],
    compute: &Compute,
    text_mask: TextMask,
) -> Result<ZeroShot> {
    if images.is_empty() {
        return Err(NnError::Config("zero-shot needs at least one --image".into()));
    }
    if texts.is_empty() {
        return Err(NnError::Config("zero-shot needs at least one --text".into()));
    }
    let scorer = Scorer::load(dir, compute)?.with_text_mask(text_mask);
    let decoded = images.iter().map(|p| zoo_nn::open_image(p)).collect::<Result<Vec<_>>>()?;
    scorer.score(&decoded, texts)
}

/// How images become a model's inputs.
enum Inputs {
    /// Fixed-size pixels.
    Pixels(ImageProcessor),
    /// NaFlex patches at each image's own aspect ratio (SigLIP 2).
    Naflex(zoo_siglip::naflex::NaflexProcessor),
}

/// A SigLIP / SigLIP 2 / CLIP model loaded once, scoring and embedding many times (the CLI's
/// `zero-shot` and the server's `/v1/zero-shot` and `/v1/embeddings`).
pub struct Scorer {
    /// `siglip`, `siglip2` or `clip`.
    pub kind: String,
    family: Family,
    dir: PathBuf,
    model: Towers,
    inputs: Inputs,
    tok: TextTokenizer,
    device: Device,
    /// Notes for the user (fallbacks taken while loading).
    pub notes: Vec<String>,
}

impl Scorer {
    /// Loads the model in `dir`.
    pub fn load(dir: &Path, compute: &Compute) -> Result<Self> {
        let device = compute.device.clone();
        let family = Family::of_for(dir, "zero-shot", Family::is_contrastive)?;
        let mut notes = Vec::new();
        let tok = TextTokenizer::from_dir(dir)?;
        let (model, config) = Towers::load(dir, compute.load_spec(), &device)?;
        tok.check_vocab(config.vocab_size())?;
        // How its images become features: NaFlex patches at each image's own aspect ratio
        // (SigLIP 2), or fixed-size pixels.
        let inputs = match config {
            ModelConfig::Siglip2(_) => Inputs::Naflex(zoo_siglip::naflex::NaflexProcessor::from_dir(dir)?),
            ModelConfig::Siglip(_) | ModelConfig::Clip(_) => {
                Inputs::Pixels(processor(dir, &config, &mut notes)?)
            }
        };
        let kind = family.model_type().to_string();
        Ok(Self { kind, family, dir: dir.to_path_buf(), model, inputs, tok, device, notes })
    }

    /// This scorer with the SigLIP text mask chosen by `mask` (see [`TextMask`]).
    pub fn with_text_mask(mut self, mask: TextMask) -> Self {
        self.tok = self.tok.with_text_mask(mask);
        self
    }

    /// Whether SigLIP's text tower sees the padding mask.
    pub fn text_mask(&self) -> bool {
        self.tok.text_mask()
    }

    fn model(&self) -> &dyn ContrastiveModel {
        &self.model
    }

    /// The family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// L2-normalised image embeddings, `[n][dim]`.
    pub fn embed_images(&self, images: &[image::DynamicImage]) -> Result<Tensor<2>> {
        let features = match (&self.inputs, &self.model) {
            (Inputs::Naflex(proc), Towers::Siglip2(m)) => {
                m.image_features(&proc.batch(images, &self.device)?)
            }
            (Inputs::Pixels(proc), _) => return Ok(self.embed_pixel_batch(proc.batch(images, &self.device)?)),
            (Inputs::Naflex(_), _) => {
                return Err(NnError::Config("NaFlex inputs need a SigLIP 2 model".into()));
            }
        };
        Ok(zoo_nn::l2_normalize(features))
    }

    /// The fixed-size image preprocessing of this model, applied to each image before
    /// [`Scorer::embed_pixels`]; `None` for SigLIP 2 NaFlex, which preprocesses each image at its
    /// own size inside [`Scorer::embed_images`]. A data loader's workers preprocess with it, so
    /// `vlm-zoo embed` sees the pixels zero-shot sees.
    pub fn processor(&self) -> Option<&ImageProcessor> {
        match &self.inputs {
            Inputs::Pixels(proc) => Some(proc),
            Inputs::Naflex(_) => None,
        }
    }

    /// L2-normalised image embeddings, `[n][dim]`, of `n` images preprocessed by
    /// [`Scorer::processor`] to `size = (H, W)`: `pixels` is their `[n, 3, H, W]` values, flattened
    /// (what [`ImageProcessor::batch`] stacks for [`Scorer::embed_images`]).
    pub fn embed_pixels(&self, pixels: Vec<f32>, n: usize, size: (usize, usize)) -> Result<Tensor<2>> {
        if self.processor().is_none() {
            return Err(NnError::Config(
                "a SigLIP 2 NaFlex model embeds decoded images (embed_images), not pixels".into(),
            ));
        }
        if pixels.len() != n * 3 * size.0 * size.1 {
            return Err(NnError::Config(format!(
                "{} pixel values for {n} images of 3x{}x{}",
                pixels.len(),
                size.0,
                size.1
            )));
        }
        let data = TensorData::new(pixels, [n, 3, size.0, size.1]);
        Ok(self.embed_pixel_batch(Tensor::from_data(data, &self.device)))
    }

    fn embed_pixel_batch(&self, pixels: Tensor<4>) -> Tensor<2> {
        zoo_nn::l2_normalize(self.model().encode_image(pixels))
    }

    /// L2-normalised text embeddings, `[n][dim]`.
    pub fn embed_texts(&self, texts: &[String]) -> Result<Tensor<2>> {
        let text = self.tok.encode_batch(texts, self.model().text_padding(), &self.device)?;
        Ok(zoo_nn::l2_normalize(self.model().encode_text(&text)))
    }

    /// Scores of every image against every text.
    pub fn score(&self, images: &[image::DynamicImage], texts: &[String]) -> Result<ZeroShot> {
        if images.is_empty() || texts.is_empty() {
            return Err(NnError::Config("zero-shot needs at least one image and one text".into()));
        }
        let image_embeds = self.embed_images(images)?;
        let text_embeds = self.embed_texts(texts)?;
        let logits = self.model().logits(image_embeds.clone(), text_embeds.clone());
        let probs = self.model().probs(logits.clone());
        let out = ZeroShot {
            model_type: self.kind.clone(),
            image_embeds: rows(image_embeds),
            text_embeds: rows(text_embeds),
            logits_per_image: rows(logits),
            probs: rows(probs),
            notes: self.notes.clone(),
        };
        for (stage, values) in [
            ("image embeddings", &out.image_embeds),
            ("text embeddings", &out.text_embeds),
            ("logits", &out.logits_per_image),
            ("probabilities", &out.probs),
        ] {
            if values.iter().flatten().any(|v| !v.is_finite()) {
                return Err(NnError::Config(format!(
                    "{}: the {stage} are not finite (NaN or infinity): the weights or the config (e.g. layer_norm_eps, image_std) are broken",
                    self.dir.display()
                )));
            }
        }
        Ok(out)
    }
}
