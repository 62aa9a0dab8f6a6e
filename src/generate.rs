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
    /// PaliGemma `detect` prompts: write the image with its boxes here (OUT-N.png for several pairs).
    #[arg(long)]
    pub draw: Option<PathBuf>,
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
        generate_text(&dir, &self.prompts, &self.images, &self.sampling(), &compute, on_text)
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
    mut on_text: impl FnMut(usize, &str),
) -> Result<Generation> {
    let device = &compute.device;
    let kind = model_type(dir)?;
    match kind.as_str() {
        "gemma" | "gemma2" => {}
        "paligemma" => return generate_paligemma(dir, prompts, images, sampling, compute, on_text),
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
            let detections = zoo_paligemma::is_detect_prompt(&prompts[i])
                .then(|| zoo_paligemma::parse_detections(&text, decoded[i].width(), decoded[i].height()));
            Ok(GenerationOutput {
                model_type: "paligemma".into(),
                text,
                prompt_token_ids,
                token_ids: g.token_ids,
                stop_reason: g.stop_reason,
                detections,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Generation { outputs, notes: proc.notes.clone() })
}

/// Draws detection boxes and labels on the image and writes it to `out`.
pub fn draw_detections(image: &Path, detections: &[zoo_paligemma::Detection], out: &Path) -> Result<()> {
    let mut img = zoo_nn::open_image(image)?.to_rgb8();
    let (w, h) = img.dimensions();
    let colours = [[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180]];
    for (i, d) in detections.iter().enumerate() {
        let c = image::Rgb(colours[i % colours.len()]);
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
        let scale = (w / 200).clamp(1, 4);
        crate::font::draw_text(&mut img, x1 + 3, y1 + 3, &d.label, scale, c.0);
    }
    img.save(out).map_err(|e| NnError::Save { path: out.to_path_buf(), reason: e.to_string() })
}
