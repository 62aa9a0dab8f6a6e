//! `vlm-zoo zero-shot`: image-text scores from a SigLIP or CLIP checkpoint folder.

use burn::prelude::*;
use std::path::{Path, PathBuf};
use zoo_nn::image::{ChannelValues, SizeSpec};
use zoo_nn::testing::to_vec;
use zoo_nn::{ImageProcessor, NnError, Padding, PreprocessorConfig, Result, TextTokenizer, model_type};

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

fn rows(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, n] = t.dims();
    to_vec(t).chunks(n.max(1)).map(<[f32]>::to_vec).collect()
}

/// The image processor of a checkpoint: its preprocessor_config.json, or (when absent) the
/// family's defaults at the config's image size, with a note saying so.
fn processor(dir: &Path, image_size: usize, clip: bool, notes: &mut Vec<String>) -> Result<ImageProcessor> {
    let path = dir.join("preprocessor_config.json");
    if path.is_file() {
        return Ok(ImageProcessor::new(PreprocessorConfig::from_file(&path)?));
    }
    notes.push(format!(
        "{}: no preprocessor_config.json; using {} preprocessing at image_size {image_size} from config.json",
        dir.display(),
        if clip { "CLIP's" } else { "SigLIP's" }
    ));
    let mut config = PreprocessorConfig::square(image_size as u32);
    if clip {
        let s = image_size as u32;
        config.size = Some(SizeSpec::ShortestEdge { shortest_edge: s });
        config.do_center_crop = true;
        config.crop_size = Some(SizeSpec::Exact { height: s, width: s });
        config.image_mean = Some(ChannelValues::Each(vec![0.481_454_66, 0.457_827_5, 0.408_210_73]));
        config.image_std = Some(ChannelValues::Each(vec![0.268_629_54, 0.261_302_6, 0.275_777_1]));
    }
    Ok(ImageProcessor::new(config))
}

/// Scores `images` against `texts` with the SigLIP or CLIP model in `dir`.
pub fn zero_shot(dir: &Path, images: &[PathBuf], texts: &[String], device: &Device) -> Result<ZeroShot> {
    if images.is_empty() {
        return Err(NnError::Config("zero-shot needs at least one --image".into()));
    }
    if texts.is_empty() {
        return Err(NnError::Config("zero-shot needs at least one --text".into()));
    }
    let kind = model_type(dir)?;
    if kind != "siglip" && kind != "clip" {
        return Err(NnError::Config(format!(
            "{}: model_type '{kind}' is not supported by zero-shot (expected siglip or clip)",
            dir.display()
        )));
    }
    let mut notes = Vec::new();
    let tok = TextTokenizer::from_dir(dir)?;
    let (image_embeds, text_embeds, logits, probs) = match kind.as_str() {
        "siglip" => {
            let (model, config) = zoo_siglip::load_siglip(dir, zoo_nn::device::float_dtype(device), device)?;
            tok.check_vocab(config.text_config.vocab_size)?;
            let proc = processor(dir, config.vision_config.image_size, false, &mut notes)?;
            let pixels = proc.batch_from_files(images, device)?;
            let enc = tok.encode(texts, Padding::MaxLength(config.text_config.max_position_embeddings))?;
            let input_ids = ids_tensor(&enc.ids, device);
            let out = model.forward(pixels, input_ids);
            (out.image_embeds.clone(), out.text_embeds.clone(), out.logits_per_image.clone(), out.probs())
        }
        "clip" => {
            let (model, config) = zoo_clip::load_clip(dir, zoo_nn::device::float_dtype(device), device)?;
            tok.check_vocab(config.text_config.vocab_size)?;
            let proc = processor(dir, config.vision_config.image_size, true, &mut notes)?;
            let pixels = proc.batch_from_files(images, device)?;
            let enc = tok.encode(texts, Padding::Longest(config.text_config.max_position_embeddings))?;
            let out =
                model.scores(model.image_features(pixels), model.text_features(&enc.ids, &enc.mask, device));
            (out.image_embeds.clone(), out.text_embeds.clone(), out.logits_per_image.clone(), out.probs())
        }
        _ => unreachable!("checked above"),
    };
    Ok(ZeroShot {
        model_type: kind,
        image_embeds: rows(image_embeds),
        text_embeds: rows(text_embeds),
        logits_per_image: rows(logits),
        probs: rows(probs),
        notes,
    })
}

fn ids_tensor(ids: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let (b, l) = (ids.len(), ids.first().map_or(0, Vec::len));
    let flat: Vec<i64> = ids.iter().flatten().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(flat, [b, l]), device)
}
