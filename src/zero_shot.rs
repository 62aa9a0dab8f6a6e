//! `vlm-zoo zero-shot`: image-text scores from a SigLIP or CLIP checkpoint folder.

use crate::args::{ComputeArgs, ModelArgs};
use crate::train::models::{ModelConfig, Towers};
use burn::prelude::*;
use std::path::{Path, PathBuf};
use zoo_nn::host::rows;
use zoo_nn::{
    Compute, ContrastiveModel, ImageProcessor, NnError, PreprocessorConfig, Result, TextTokenizer, model_type,
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
    /// Device and dtype.
    #[command(flatten)]
    pub compute: ComputeArgs,
}

impl ZeroShotArgs {
    /// Scores the images against the texts.
    pub fn run(&self) -> Result<ZeroShot> {
        let compute = self.compute.compute()?;
        zero_shot(&self.model.model.resolve()?, &self.images, &self.texts, &compute)
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
    let family = match config {
        ModelConfig::Siglip(_) => "SigLIP's",
        ModelConfig::Clip(_) => "CLIP's",
    };
    notes.push(format!(
        "{}: no preprocessor_config.json; using {family} preprocessing at image_size {} from config.json",
        dir.display(),
        config.image_size()
    ));
    Ok(ImageProcessor::new(config.default_preprocessor()))
}

/// Scores `images` against `texts` with the SigLIP or CLIP model in `dir`.
pub fn zero_shot(dir: &Path, images: &[PathBuf], texts: &[String], compute: &Compute) -> Result<ZeroShot> {
    let device = &compute.device;
    if images.is_empty() {
        return Err(NnError::Config("zero-shot needs at least one --image".into()));
    }
    if texts.is_empty() {
        return Err(NnError::Config("zero-shot needs at least one --text".into()));
    }
    let kind = model_type(dir)?;
    if kind != "siglip" && kind != "clip" && kind != "siglip2" {
        return Err(NnError::Config(format!(
            "{}: model_type '{kind}' is not supported by zero-shot (expected siglip, siglip2 or clip)",
            dir.display()
        )));
    }
    let mut notes = Vec::new();
    let tok = TextTokenizer::from_dir(dir)?;
    let spec = compute.load_spec();
    // Construction is the only per-family step: the model and how its images become features
    // (fixed-size pixels, or NaFlex patches at each image's own aspect ratio).
    let (model, image_embeds): (Box<dyn ContrastiveModel>, Tensor<2>) = if kind == "siglip2" {
        let (model, config) = zoo_siglip::naflex::load_siglip2(dir, spec, device)?;
        tok.check_vocab(config.siglip.text_config.vocab_size)?;
        let proc = zoo_siglip::naflex::NaflexProcessor::from_dir(dir)?;
        let decoded = images.iter().map(|p| zoo_nn::open_image(p)).collect::<Result<Vec<_>>>()?;
        let features = model.image_features(&proc.batch(&decoded, device)?);
        (Box::new(model), features)
    } else {
        let (model, config) = Towers::load(dir, spec, device)?;
        tok.check_vocab(config.vocab_size())?;
        let proc = processor(dir, &config, &mut notes)?;
        let features = model.encode_image(proc.batch_from_files(images, device)?);
        (Box::new(model), features)
    };
    let text = tok.encode_batch(texts, model.text_padding(), device)?;
    let image_embeds = zoo_nn::l2_normalize(image_embeds);
    let text_embeds = zoo_nn::l2_normalize(model.encode_text(&text));
    let logits = model.logits(image_embeds.clone(), text_embeds.clone());
    let probs = model.probs(logits.clone());
    let out = ZeroShot {
        model_type: kind,
        image_embeds: rows(image_embeds),
        text_embeds: rows(text_embeds),
        logits_per_image: rows(logits),
        probs: rows(probs),
        notes,
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
                dir.display()
            )));
        }
    }
    Ok(out)
}
