//! `vlm-zoo generate`: text from a Gemma (or, with images, PaliGemma) checkpoint folder.

use crate::args::{ComputeArgs, ModelArgs};
use std::path::{Path, PathBuf};
use zoo_gemma::GemmaDecoder;
use zoo_nn::{Compute, NnError, Result, Sampling, StopReason, TextTokenizer, generate_stream, model_type};

/// `vlm-zoo generate`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    /// The checkpoint.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt; repeat for several (generated as one batch).
    #[arg(long = "prompt", required = true)]
    pub prompts: Vec<String>,
    /// An image, for vision-language models; repeat to pair with each prompt.
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = Sampling::default().max_new_tokens)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 or absent: greedy.
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f64>,
    /// Keep the k most likely tokens when sampling.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling threshold in (0, 1].
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f64>,
    /// Repetition penalty (1 = none).
    #[arg(long, allow_negative_numbers = true)]
    pub repeat_penalty: Option<f64>,
    /// Sampling seed.
    #[arg(long, default_value_t = Sampling::default().seed)]
    pub seed: u64,
    /// Print one JSON object per prompt (an array for several) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// PaliGemma `detect` / `segment` prompts: write the image with its boxes (and masks) here
    /// (OUT-N.png for several pairs).
    #[arg(long)]
    pub draw: Option<PathBuf>,
    /// PaliGemma `segment` prompts: the mask decoder's weights, big_vision's `vae-oid.npz`
    /// [default: vae-oid.npz next to the model, else any snapshot in the HF cache holding one].
    #[arg(long)]
    pub seg_model: Option<PathBuf>,
    /// Device and dtype.
    #[command(flatten)]
    pub compute: ComputeArgs,
}

impl GenerateArgs {
    /// The sampling settings.
    pub fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repeat_penalty,
            seed: self.seed,
            max_new_tokens: self.max_new_tokens,
        }
    }

    /// Generates for every prompt; `on_text(row, piece)` receives the text as it is produced.
    pub fn run(&self, on_text: impl FnMut(usize, &str)) -> Result<Generation> {
        // --draw's folder is checked before any work, not after generation.
        if let Some(draw) = &self.draw {
            let parent = draw.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if !parent.is_dir() {
                return Err(NnError::io(
                    draw,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "--draw: the folder does not exist"),
                ));
            }
        }
        let compute = self.compute.compute()?;
        let dir = self.model.model.resolve()?;
        let seg_model = zoo_paligemma::segment::find_seg_model(
            self.seg_model.as_deref(),
            &dir,
            crate::hub::cache_dir().as_deref(),
        );
        let opts = Options { seg_model: seg_model.as_deref() };
        generate_text(&dir, &self.prompts, &self.images, &self.sampling(), &compute, &opts, on_text)
    }

    /// Where `--draw` writes the image of row `i` of `n`.
    pub fn draw_path(&self, i: usize, n: usize) -> Option<PathBuf> {
        let draw = self.draw.as_ref()?;
        if n == 1 {
            return Some(draw.clone());
        }
        let stem = draw.file_stem().map_or("draw".into(), |s| s.to_string_lossy().into_owned());
        Some(draw.with_file_name(format!("{stem}-{i}.png")))
    }
}

/// What else [`generate_text`] may use.
#[derive(Debug, Clone, Default)]
pub struct Options<'a> {
    /// `vae-oid.npz` for PaliGemma `segment` prompts; without it their masks are not decoded (a
    /// note says so) and only the text is returned.
    pub seg_model: Option<&'a Path>,
}

/// What [`generate_text`] returns: one output per prompt, and notes for the user (a fallback
/// taken), which the CLI prints to stderr.
#[derive(Debug, Clone)]
pub struct Generation {
    /// One per prompt.
    pub outputs: Vec<GenerationOutput>,
    /// Notes for the user.
    pub notes: Vec<String>,
}

/// One prompt's result, as `--json` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerationOutput {
    /// `gemma`, `gemma2` or `paligemma`.
    pub model_type: String,
    /// The ids the model was conditioned on.
    pub prompt_token_ids: Vec<u32>,
    /// Generated ids, end of sequence excluded.
    pub token_ids: Vec<u32>,
    /// The generated text.
    pub text: String,
    /// `eos` or `max_new_tokens`.
    pub stop_reason: StopReason,
    /// For `detect ...` prompts: boxes parsed from `<locYYYY>` tokens, in pixels of the input image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detections: Option<Vec<zoo_paligemma::Detection>>,
    /// For `segment ...` prompts with the mask decoder: one mask per well-formed group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masks: Option<Vec<zoo_paligemma::SegmentMask>>,
    /// For `segment ...` prompts: one line per group that could not be read (the others are in
    /// `masks`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub segment_errors: Vec<String>,
}

/// End-of-sequence ids: generation_config.json's, else config.json's.
pub fn eos_ids(dir: &Path, fallback: &[u32]) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    if path.is_file() {
        let v: serde_json::Value = zoo_nn::read_json(&path)?;
        match &v["eos_token_id"] {
            serde_json::Value::Number(n) => {
                return Ok(n.as_u64().map(|i| vec![i as u32]).unwrap_or_default());
            }
            serde_json::Value::Array(a) => {
                return Ok(a.iter().filter_map(|x| x.as_u64()).map(|i| i as u32).collect());
            }
            _ => {}
        }
    }
    Ok(fallback.to_vec())
}

/// Generates for every prompt with a text-only Gemma model; `on_text(row, piece)` receives the
/// text as it is produced.
pub fn generate_text(
    dir: &Path,
    prompts: &[String],
    images: &[PathBuf],
    sampling: &Sampling,
    compute: &Compute,
    opts: &Options,
    mut on_text: impl FnMut(usize, &str),
) -> Result<Generation> {
    let device = &compute.device;
    let kind = model_type(dir)?;
    match kind.as_str() {
        "gemma" | "gemma2" => {}
        "paligemma" => return generate_paligemma(dir, prompts, images, sampling, compute, opts, on_text),
        other => {
            return Err(NnError::Config(format!(
                "{}: model_type '{other}' cannot generate text (expected gemma, gemma2 or paligemma)",
                dir.display()
            )));
        }
    }
    if !images.is_empty() {
        return Err(NnError::Config(format!(
            "{}: --image given, but {kind} is a text-only model",
            dir.display()
        )));
    }
    if prompts.iter().any(|p| p.is_empty()) {
        return Err(NnError::Config("empty prompt: give some text with --prompt".into()));
    }
    sampling.validate()?;
    let tok = TextTokenizer::from_dir(dir)?;
    let (model, config) = zoo_gemma::load_gemma(dir, compute.load_spec(), device)?;
    tok.check_vocab(config.vocab_size)?;
    let eos = eos_ids(dir, &config.eos_token_id)?;
    let mut ids = Vec::with_capacity(prompts.len());
    for p in prompts {
        let enc = tok.inner().encode(p.as_str(), true).map_err(|e| NnError::Tokenizer {
            path: tok.path().to_path_buf(),
            reason: format!("encoding {p:?}: {e}"),
        })?;
        ids.push(enc.get_ids().to_vec());
    }
    let decoder =
        GemmaDecoder { model: &model, max_len: config.max_position_embeddings, device: device.clone() };
    let out = generate_stream(&decoder, &ids, &eos, sampling, |ids| tok.decode(ids).ok(), &mut on_text)?;
    let outputs = out
        .into_iter()
        .zip(ids)
        .map(|(g, prompt_token_ids)| {
            Ok(GenerationOutput {
                model_type: kind.clone(),
                text: tok.decode(&g.token_ids)?,
                prompt_token_ids,
                token_ids: g.token_ids,
                stop_reason: g.stop_reason,
                detections: None,
                masks: None,
                segment_errors: Vec::new(),
            })
        })
        .collect::<Result<_>>()?;
    Ok(Generation { outputs, notes: Vec::new() })
}

/// PaliGemma: one image per prompt (a single image serves every prompt), generated as one batch.
fn generate_paligemma(
    dir: &Path,
    prompts: &[String],
    images: &[PathBuf],
    sampling: &Sampling,
    compute: &Compute,
    opts: &Options,
    mut on_text: impl FnMut(usize, &str),
) -> Result<Generation> {
    let device = &compute.device;
    if images.is_empty() {
        return Err(NnError::Config(format!(
            "{}: PaliGemma needs an --image for each --prompt",
            dir.display()
        )));
    }
    if images.len() != 1 && images.len() != prompts.len() {
        return Err(NnError::Config(format!(
            "{} images for {} prompts: give one image per prompt (or one for all)",
            images.len(),
            prompts.len()
        )));
    }
    sampling.validate()?;
    let config = zoo_paligemma::load::read_config(dir)?;
    let proc = zoo_paligemma::PaliGemmaProcessor::from_dir(dir, &config)?;
    let paths: Vec<PathBuf> = (0..prompts.len()).map(|i| images[i.min(images.len() - 1)].clone()).collect();
    let decoded: Vec<image::DynamicImage> =
        paths.iter().map(|p| zoo_nn::open_image(p)).collect::<Result<_>>()?;
    let pixels = proc.images.batch(&decoded, device)?;
    let ids = prompts.iter().map(|p| proc.prompt_ids(p)).collect::<Result<Vec<_>>>()?;
    // The mask decoder is read before generating, so a bad file fails fast.
    let mut notes = proc.notes.clone();
    let seg = if prompts.iter().any(|p| zoo_paligemma::is_segment_prompt(p)) {
        match opts.seg_model {
            Some(path) => Some(zoo_paligemma::SegmentationDecoder::load(path, device)?),
            None => {
                notes.push(format!(
                    "segment masks need the decoder's weights, {} (big_vision / the PaliGemma space): give --seg-model PATH or put it next to the model; masks not decoded",
                    zoo_paligemma::segment::SEG_MODEL_FILE
                ));
                None
            }
        }
    } else {
        None
    };
    let (model, _) = zoo_paligemma::load_paligemma(dir, compute.load_spec(), device)?;
    let eos = eos_ids(dir, &config.text_config.eos_token_id)?;
    let decoder = zoo_paligemma::PaliGemmaDecoder {
        image_features: model.image_features(pixels),
        model: &model,
        max_len: config.text_config.max_position_embeddings,
        device: device.clone(),
    };
    let tok = &proc.tokenizer;
    let out = generate_stream(&decoder, &ids, &eos, sampling, |ids| tok.decode(ids).ok(), &mut on_text)?;
    let outputs = out
        .into_iter()
        .zip(ids)
        .enumerate()
        .map(|(i, (g, prompt_token_ids))| {
            let text = tok.decode(&g.token_ids)?;
            let (w, h) = (decoded[i].width(), decoded[i].height());
            let detections = zoo_paligemma::is_detect_prompt(&prompts[i])
                .then(|| zoo_paligemma::parse_detections(&text, w, h));
            let (mut masks, mut segment_errors) = (None, Vec::new());
            if zoo_paligemma::is_segment_prompt(&prompts[i]) {
                let parsed = zoo_paligemma::parse_segments(&text, w, h);
                masks = seg.as_ref().map(|d| zoo_paligemma::decode_masks(d, &parsed, w, h));
                segment_errors = parsed.errors;
            }
            Ok(GenerationOutput {
                model_type: "paligemma".into(),
                text,
                prompt_token_ids,
                token_ids: g.token_ids,
                stop_reason: g.stop_reason,
                detections,
                masks,
                segment_errors,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    for (i, o) in outputs.iter().enumerate() {
        notes.extend(o.segment_errors.iter().map(|e| format!("prompt {}: {e}", i + 1)));
    }
    Ok(Generation { outputs, notes })
}

const COLOURS: [[u8; 3]; 5] = [[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180]];

/// Draws detection boxes and labels on the image and writes it to `out`.
pub fn draw_detections(image: &Path, detections: &[zoo_paligemma::Detection], out: &Path) -> Result<()> {
    let mut img = zoo_nn::open_image(image)?.to_rgb8();
    draw_boxes(&mut img, detections);
    crate::draw::save_png(out, &img)
}

/// Paints each mask translucently (half its colour) with its box and label, and writes the image
/// to `out`.
pub fn draw_masks(image: &Path, masks: &[zoo_paligemma::SegmentMask], out: &Path) -> Result<()> {
    let mut img = zoo_nn::open_image(image)?.to_rgb8();
    let w = img.width();
    for (i, m) in masks.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        if m.mask_rle.size != [img.height(), w] {
            continue;
        }
        for (j, inside) in m.mask_rle.decode().into_iter().enumerate() {
            if inside {
                let p = img.get_pixel_mut(j as u32 % w, j as u32 / w);
                p.0 = std::array::from_fn(|k| ((p.0[k] as u16 + c[k] as u16) / 2) as u8);
            }
        }
    }
    let boxes: Vec<zoo_paligemma::Detection> = masks
        .iter()
        .map(|m| zoo_paligemma::Detection { label: m.label.clone(), bbox: m.bbox.map(|v| v as f32) })
        .collect();
    draw_boxes(&mut img, &boxes);
    crate::draw::save_png(out, &img)
}

fn draw_boxes(img: &mut image::RgbImage, detections: &[zoo_paligemma::Detection]) {
    let (w, h) = img.dimensions();
    for (i, d) in detections.iter().enumerate() {
        let c = image::Rgb(COLOURS[i % COLOURS.len()]);
        let [x1, y1, x2, y2] = d.bbox.map(|v| v.max(0.0) as u32);
        let (x2, y2) = (x2.min(w.saturating_sub(1)), y2.min(h.saturating_sub(1)));
        for t in 0..2u32 {
            for x in x1..=x2 {
                for y in [y1 + t, y2.saturating_sub(t)] {
                    if y < h {
                        img.put_pixel(x, y, c);
                    }
                }
            }
            for y in y1..=y2 {
                for x in [x1 + t, x2.saturating_sub(t)] {
                    if x < w {
                        img.put_pixel(x, y, c);
                    }
                }
            }
        }
        let size = (w as f64 / 25.0).clamp(12.0, 40.0);
        crate::draw::label(img, x1 as i32 + 4, y1 as i32 + 4, &d.label, size, c.0);
    }
}
