//! The library's front door: [`Model`], a checkpoint (a folder or a hub id) loaded once and
//! asked for captions, answers, boxes, masks, text, embeddings or zero-shot scores. It is a thin
//! layer over [`Generator`] and [`Scorer`], the types the CLI and the server call, so its answers
//! are theirs.

use crate::args::ModelSource;
use crate::generate::{GenerationOutput, Generator, Request};
use crate::models::Family;
use crate::zero_shot::{Scorer, ZeroShot};
use image::DynamicImage;
use std::path::Path;
use zoo_nn::host::rows;
use zoo_nn::{Compute, NnError, Result, Sampling};
use zoo_paligemma::{Detection, SegmentMask};

/// A loaded model: a [`Generator`] (Gemma, Gemma 2, PaliGemma) or a [`Scorer`] (SigLIP,
/// SigLIP 2, CLIP), picked by the folder's [`Family`]. Match on it for everything the two
/// offer (batches, streaming, continuous batching); the methods below are the common calls.
// One lives per process: the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Model {
    /// A model that generates text.
    Generator(Generator),
    /// A contrastive model that embeds and scores images and texts.
    Scorer(Scorer),
}

impl Model {
    /// Loads `source`, a folder or a hub id (`org/name[@revision]`, found in the HF cache or
    /// downloaded into it, as `--model` is), on `compute`'s device and dtype. A PaliGemma
    /// model also loads the mask decoder for [`Model::segment`] when one is found as
    /// `generate` finds it (`vae-oid.npz` next to the model or in the HF cache).
    pub fn load(source: impl Into<ModelSource>, compute: &Compute) -> Result<Self> {
        let dir = source.into().resolve()?;
        let seg = match Family::of(&dir)? {
            Family::PaliGemma => {
                zoo_paligemma::segment::find_seg_model(None, &dir, crate::hub::cache_dir().as_deref())
            }
            _ => None,
        };
        Self::load_dir(&dir, compute, seg.as_deref())
    }

    /// Loads the folder `dir` with `seg_model` (big_vision's `vae-oid.npz`) as PaliGemma's mask
    /// decoder: a [`Generator`] for a family that [`Family::generates`], else a [`Scorer`].
    pub fn load_dir(dir: &Path, compute: &Compute, seg_model: Option<&Path>) -> Result<Self> {
        if Family::of(dir)?.generates() {
            Generator::load(dir, compute, seg_model).map(Self::Generator)
        } else {
            Scorer::load(dir, compute).map(Self::Scorer)
        }
    }

    /// This model with the SigLIP text mask chosen by `mask` (`--text-mask`; a model that
    /// generates is unchanged).
    pub fn with_text_mask(self, mask: zoo_nn::TextMask) -> Self {
        match self {
            Self::Scorer(s) => Self::Scorer(s.with_text_mask(mask)),
            generator => generator,
        }
    }

    /// The family.
    pub fn family(&self) -> Family {
        match self {
            Self::Generator(g) => g.family(),
            Self::Scorer(s) => s.family(),
        }
    }

    /// `model_type`.
    pub fn kind(&self) -> &str {
        match self {
            Self::Generator(g) => &g.kind,
            Self::Scorer(s) => &s.kind,
        }
    }

    /// The generator, or an error naming `what` was asked of a model that does not generate.
    pub fn generator(&self, what: &str) -> Result<&Generator> {
        match self {
            Self::Generator(g) => Ok(g),
            Self::Scorer(s) => Err(NnError::Config(format!(
                "{what}: a {} model does not generate text (it scores and embeds)",
                s.kind
            ))),
        }
    }

    /// The scorer, or an error naming `what` was asked of a model that does not score.
    pub fn scorer(&self, what: &str) -> Result<&Scorer> {
        match self {
            Self::Scorer(s) => Ok(s),
            Self::Generator(g) => Err(NnError::Config(format!(
                "{what}: a {} model generates text; embeddings and scores need {}",
                g.kind,
                Family::list(Family::is_contrastive)
            ))),
        }
    }

    /// Generates from `prompt` (Gemma; PaliGemma needs [`Model::generate_with_image`]).
    ///
    /// ```
    /// # fn main() -> vlm_zoo::nn::Result<()> {
    /// let compute = vlm_zoo::nn::Compute::parse("cpu", "f32")?;
    /// let gemma = vlm_zoo::Model::load("tests/fixtures/gemma-gqa", &compute)?; // e.g. google/gemma-2-2b
    /// let sampling = vlm_zoo::nn::Sampling { max_new_tokens: 8, ..Default::default() };
    /// let out = gemma.generate("The capital of France is", &sampling)?;
    /// println!("{} ({:?})", out.text, out.stop_reason);
    /// # Ok(()) }
    /// ```
    pub fn generate(&self, prompt: &str, sampling: &Sampling) -> Result<GenerationOutput> {
        self.run("generate", None, prompt, sampling)
    }

    /// Generates from `image` and `prompt` (PaliGemma): any prompt, its answer parsed as
    /// [`crate::generate::generate_text`] parses it (boxes for `detect`, masks for `segment`).
    pub fn generate_with_image(
        &self,
        image: &DynamicImage,
        prompt: &str,
        sampling: &Sampling,
    ) -> Result<GenerationOutput> {
        self.run("generate_with_image", Some(image), prompt, sampling)
    }

    /// A caption of `image` in English (PaliGemma's `caption en`, greedy).
    pub fn caption(&self, image: &DynamicImage) -> Result<String> {
        Ok(self.run("caption", Some(image), "caption en", &Sampling::default())?.text)
    }

    /// The answer to `question` about `image` (PaliGemma's `answer en QUESTION`, greedy).
    pub fn answer(&self, image: &DynamicImage, question: &str) -> Result<String> {
        Ok(self.run("answer", Some(image), &format!("answer en {question}"), &Sampling::default())?.text)
    }

    /// Boxes of `objects` in `image`, in its pixels (PaliGemma's `detect A ; B`, greedy).
    pub fn detect(&self, image: &DynamicImage, objects: &[&str]) -> Result<Vec<Detection>> {
        let prompt = format!("detect {}", objects.join(" ; "));
        let out = self.run("detect", Some(image), &prompt, &Sampling::default())?;
        Ok(out.detections.unwrap_or_default())
    }

    /// Masks of `objects` in `image` (PaliGemma's `segment A ; B`, greedy); needs the mask
    /// decoder ([`Model::load`]). Groups the model wrote malformed are left out.
    pub fn segment(&self, image: &DynamicImage, objects: &[&str]) -> Result<Vec<SegmentMask>> {
        let prompt = format!("segment {}", objects.join(" ; "));
        if self.generator("segment")?.seg.is_none() {
            return Err(NnError::Config(crate::generate::no_seg_model()));
        }
        let out = self.run("segment", Some(image), &prompt, &Sampling::default())?;
        Ok(out.masks.unwrap_or_default())
    }

    /// One request through [`Generator::run`]; an image is required exactly when the family
    /// needs one.
    fn run(
        &self,
        what: &str,
        image: Option<&DynamicImage>,
        prompt: &str,
        sampling: &Sampling,
    ) -> Result<GenerationOutput> {
        let g = self.generator(what)?;
        if g.needs_image() != image.is_some() {
            return Err(NnError::Config(format!(
                "{what}: {} {}",
                g.kind,
                if g.needs_image() { "needs an image" } else { "is a text-only model" }
            )));
        }
        if prompt.is_empty() {
            return Err(NnError::Config(format!("{what}: empty prompt")));
        }
        sampling.validate()?;
        let request = Request { prompt: prompt.into(), image: image.cloned(), sampling: sampling.clone() };
        let mut out = g.run(&[request], |_, _| true)?;
        out.pop().ok_or_else(|| NnError::Config(format!("{what}: no output")))
    }

    /// L2-normalised image embeddings, one row per image (SigLIP, SigLIP 2, CLIP).
    pub fn embed_images(&self, images: &[DynamicImage]) -> Result<Vec<Vec<f32>>> {
        Ok(rows(self.scorer("embed_images")?.embed_images(images)?))
    }

    /// L2-normalised text embeddings, one row per text (SigLIP, SigLIP 2, CLIP).
    pub fn embed_texts(&self, texts: &[impl AsRef<str>]) -> Result<Vec<Vec<f32>>> {
        Ok(rows(self.scorer("embed_texts")?.embed_texts(&owned(texts))?))
    }

    /// Scores of every image against every text, as `vlm-zoo zero-shot --json` prints them
    /// (SigLIP, SigLIP 2, CLIP).
    pub fn zero_shot(&self, images: &[DynamicImage], texts: &[impl AsRef<str>]) -> Result<ZeroShot> {
        self.scorer("zero_shot")?.score(images, &owned(texts))
    }
}

fn owned(texts: &[impl AsRef<str>]) -> Vec<String> {
    texts.iter().map(|t| t.as_ref().to_string()).collect()
}
