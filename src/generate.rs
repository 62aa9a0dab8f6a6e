//! `vlm-zoo generate`: text from a Gemma (or, with images, PaliGemma) checkpoint folder.

use crate::args::{ComputeArgs, ModelArgs};
use crate::models::Family;
use burn::prelude::Tensor;
use std::path::{Path, PathBuf};
use zoo_gemma::GemmaDecoder;
use zoo_nn::{Compute, NnError, Result, Sampling, StopReason, TextTokenizer};

/// `vlm-zoo generate`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    /// The checkpoint.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt; repeat for several (generated as one batch).
    #[arg(long = "prompt", required_unless_present = "chat")]
    pub prompts: Vec<String>,
    /// A conversation instead of --prompt: a JSON file (`-`: stdin) of messages,
    /// `[{"role": "user", "content": "..."}, {"role": "assistant", ...}, ...]` (roles system,
    /// user, assistant), or a chat-completions request body holding them in `messages`. Gemma
    /// gets Gemma's chat format, PaliGemma the last user message: the prompt `serve`'s
    /// /v1/chat/completions gives the same conversation, so the answers are equal.
    #[arg(long, value_name = "FILE", conflicts_with = "prompts")]
    pub chat: Option<PathBuf>,
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
        let prompts = match &self.chat {
            Some(file) => vec![crate::chat::chat_prompt(&dir, file)?],
            None => self.prompts.clone(),
        };
        generate_text(&dir, &prompts, &self.images, &self.sampling(), &compute, &opts, on_text)
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

/// Generates for every prompt with a text-only Gemma model;
/// `on_text(row, piece)` receives the text as it is produced. With PaliGemma, one image per
/// prompt (a single image serves every prompt), generated as one batch.
pub fn generate_text(
    dir: &Path,
    prompts: &[String],
    images: &[PathBuf],
    sampling: &Sampling,
    compute: &Compute,
    opts: &Options,
    mut on_text: impl FnMut(usize, &str),
) -> Result<Generation> {
    let family = Family::of_for(dir, "generate", Family::generates)?;
    if family.needs_image() {
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
    } else if !images.is_empty() {
        return Err(NnError::Config(format!(
            "{}: --image given, but {family} is a text-only model",
            dir.display()
        )));
    }
    if prompts.iter().any(|p| p.is_empty()) {
        return Err(NnError::Config("empty prompt: give some text with --prompt".into()));
    }
    sampling.validate()?;
    // The mask decoder is read only when a prompt asks for segmentation.
    let wants_seg = prompts.iter().any(|p| zoo_paligemma::is_segment_prompt(p));
    let seg = if wants_seg { opts.seg_model } else { None };
    let decoded: Vec<image::DynamicImage> =
        images.iter().map(|p| zoo_nn::open_image(p)).collect::<Result<_>>()?;
    let generator = Generator::load(dir, compute, seg)?;
    let requests: Vec<Request> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Request {
            prompt: p.clone(),
            image: (!decoded.is_empty()).then(|| decoded[i.min(decoded.len() - 1)].clone()),
            // Row i draws from seed + i, as zoo_nn::generate does for a batch.
            sampling: Sampling { seed: sampling.seed.wrapping_add(i as u64), ..sampling.clone() },
        })
        .collect();
    let mut notes = generator.notes.clone();
    let outputs = generator.run(&requests, |row, piece| {
        on_text(row, piece);
        true
    })?;
    if wants_seg && generator.seg.is_none() && family == Family::PaliGemma {
        notes.push(format!("{}; masks not decoded", no_seg_model()));
    }
    for (i, o) in outputs.iter().enumerate() {
        notes.extend(o.segment_errors.iter().map(|e| format!("prompt {}: {e}", i + 1)));
    }
    Ok(Generation { outputs, notes })
}

/// Why a PaliGemma model without the mask decoder returns no masks.
pub(crate) fn no_seg_model() -> String {
    format!(
        "segment masks need the decoder's weights, {} (big_vision / the PaliGemma space): give --seg-model PATH or put it next to the model",
        zoo_paligemma::segment::SEG_MODEL_FILE
    )
}

/// One generation request: a prompt, its image (PaliGemma), and how to sample.
#[derive(Debug, Clone)]
pub struct Request {
    /// The prompt.
    pub prompt: String,
    /// The image (PaliGemma; ignored by Gemma).
    pub image: Option<image::DynamicImage>,
    /// Sampling (the seed as given: this row draws from it).
    pub sampling: Sampling,
}

// One lives per process: the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum GenModel {
    Gemma {
        model: zoo_gemma::GemmaForCausalLM,
        max_len: usize,
        tok: TextTokenizer,
    },
    PaliGemma {
        model: zoo_paligemma::PaliGemmaForConditionalGeneration,
        max_len: usize,
        proc: zoo_paligemma::PaliGemmaProcessor,
    },
}

/// A Gemma or PaliGemma model loaded once, generating for many batches of requests (the CLI's
/// `generate` and the server's endpoints).
pub struct Generator {
    /// `gemma`, `gemma2` or `paligemma`.
    pub kind: String,
    family: Family,
    model: GenModel,
    eos: Vec<u32>,
    /// The segmentation decoder, when one was given (PaliGemma).
    pub seg: Option<zoo_paligemma::SegmentationDecoder>,
    device: burn::prelude::Device,
    /// Notes for the user (fallbacks taken while loading).
    pub notes: Vec<String>,
}

impl Generator {
    /// Loads the model in `dir`; `seg_model` is big_vision's vae-oid.npz for PaliGemma
    /// `segment` prompts (read now, so a bad file fails before any generation).
    pub fn load(dir: &Path, compute: &Compute, seg_model: Option<&Path>) -> Result<Self> {
        let device = compute.device.clone();
        let family = Family::of(dir)?;
        let kind = family.model_type().to_string();
        match family {
            Family::Gemma | Family::Gemma2 => {
                let tok = TextTokenizer::from_dir(dir)?;
                let (model, config) = zoo_gemma::load_gemma(dir, compute.load_spec(), &device)?;
                tok.check_vocab(config.vocab_size)?;
                let eos = eos_ids(dir, &config.eos_token_id)?;
                let max_len = config.max_position_embeddings;
                Ok(Self {
                    kind,
                    family,
                    model: GenModel::Gemma { model, max_len, tok },
                    eos,
                    seg: None,
                    device,
                    notes: Vec::new(),
                })
            }
            Family::PaliGemma => {
                let config = zoo_paligemma::load::read_config(dir)?;
                let proc = zoo_paligemma::PaliGemmaProcessor::from_dir(dir, &config)?;
                let seg =
                    seg_model.map(|p| zoo_paligemma::SegmentationDecoder::load(p, &device)).transpose()?;
                let (model, _) = zoo_paligemma::load_paligemma(dir, compute.load_spec(), &device)?;
                let eos = eos_ids(dir, &config.text_config.eos_token_id)?;
                let notes = proc.notes.clone();
                let max_len = config.text_config.max_position_embeddings;
                Ok(Self {
                    kind,
                    family,
                    model: GenModel::PaliGemma { model, max_len, proc },
                    eos,
                    seg,
                    device,
                    notes,
                })
            }
            Family::Siglip | Family::Siglip2NaFlex | Family::Clip => {
                Err(family.unsupported(dir, "generate", Family::generates))
            }
        }
    }

    /// The family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Context length.
    pub fn max_len(&self) -> usize {
        match &self.model {
            GenModel::Gemma { max_len, .. } | GenModel::PaliGemma { max_len, .. } => *max_len,
        }
    }

    /// Whether requests need an image.
    pub fn needs_image(&self) -> bool {
        matches!(self.model, GenModel::PaliGemma { .. })
    }

    /// The prompt ids of `prompt` (with the image tokens for PaliGemma).
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        match &self.model {
            GenModel::Gemma { tok, .. } => {
                let enc = tok.inner().encode(prompt, true).map_err(|e| NnError::Tokenizer {
                    path: tok.path().to_path_buf(),
                    reason: format!("encoding {prompt:?}: {e}"),
                })?;
                Ok(enc.get_ids().to_vec())
            }
            GenModel::PaliGemma { proc, .. } => proc.prompt_ids(prompt),
        }
    }

    fn tokenizer(&self) -> &TextTokenizer {
        match &self.model {
            GenModel::Gemma { tok, .. } => tok,
            GenModel::PaliGemma { proc, .. } => &proc.tokenizer,
        }
    }

    /// Whether the tokenizer has `token`.
    pub fn has_token(&self, token: &str) -> bool {
        self.tokenizer().token_to_id(token).is_some()
    }

    /// Generates for every request as one batch; `on_text(row, piece)` receives each row's text
    /// as it is produced and returns whether that row goes on (`false`: stopped, `cancelled`).
    pub fn run(
        &self,
        requests: &[Request],
        mut on_text: impl FnMut(usize, &str) -> bool,
    ) -> Result<Vec<GenerationOutput>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let tags: Vec<usize> = (0..requests.len()).collect();
        let mut session = self.start(requests, &tags, 0)?;
        let mut out: Vec<Option<GenerationOutput>> = vec![None; requests.len()];
        while !session.is_done() {
            for (tag, o) in self.step(&mut session, &mut on_text)? {
                out[tag] = Some(o);
            }
        }
        Ok(out.into_iter().map(|o| o.expect("every request finishes")).collect())
    }

    /// The features of each request's image (PaliGemma), `[B, N, C]`.
    fn image_features(&self, requests: &[&Request]) -> Result<Option<Tensor<3>>> {
        let GenModel::PaliGemma { model, proc, .. } = &self.model else { return Ok(None) };
        let images: Vec<image::DynamicImage> = requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.image
                    .clone()
                    .ok_or_else(|| NnError::Config(format!("request {}: PaliGemma needs an image", i + 1)))
            })
            .collect::<Result<_>>()?;
        Ok(Some(model.image_features(proc.images.batch(&images, &self.device)?)))
    }

    /// Runs `f` with this model's decoder (holding `features` for a PaliGemma prefill).
    fn with_decoder<T>(&self, features: Option<Tensor<3>>, f: impl FnOnce(&dyn DecoderRef) -> T) -> T {
        match &self.model {
            GenModel::Gemma { model, max_len, .. } => {
                f(&GemmaDecoder { model, max_len: *max_len, device: self.device.clone() })
            }
            GenModel::PaliGemma { model, max_len, .. } => {
                // A step embeds no image: an empty feature tensor stands in.
                let image_features = features.unwrap_or_else(|| Tensor::zeros([1, 1, 1], &self.device));
                f(&zoo_paligemma::PaliGemmaDecoder {
                    image_features,
                    model,
                    max_len: *max_len,
                    device: self.device.clone(),
                })
            }
        }
    }

    /// Starts a batch that requests can join between steps (continuous batching); `tags`
    /// name the requests in what [`Generator::step`] reports; `room` positions are kept free
    /// for requests that join later.
    pub fn start(&self, requests: &[Request], tags: &[usize], room: usize) -> Result<Session> {
        let ids = requests.iter().map(|r| self.prompt_ids(&r.prompt)).collect::<Result<Vec<_>>>()?;
        let samplings: Vec<Sampling> = requests.iter().map(|r| r.sampling.clone()).collect();
        let features = self.image_features(&requests.iter().collect::<Vec<_>>())?;
        let running = self.with_decoder(features, |d| d.start(&ids, &samplings, tags, room))?;
        let rows = requests
            .iter()
            .zip(ids)
            .zip(tags)
            .map(|((r, ids), &tag)| (tag, SessionRow { request: r.clone(), ids, stream: Default::default() }))
            .collect();
        Ok(Session { running, rows })
    }

    /// Adds `requests` (tagged `tags`) to `session` before its next step, prefilled together.
    pub fn join(&self, session: &mut Session, requests: &[Request], tags: &[usize]) -> Result<()> {
        let ids = requests.iter().map(|r| self.prompt_ids(&r.prompt)).collect::<Result<Vec<_>>>()?;
        let samplings: Vec<Sampling> = requests.iter().map(|r| r.sampling.clone()).collect();
        let features = self.image_features(&requests.iter().collect::<Vec<_>>())?;
        self.with_decoder(features, |d| d.join(&mut session.running, &ids, &samplings, tags))?;
        for ((r, ids), &tag) in requests.iter().zip(ids).zip(tags) {
            session.rows.insert(tag, SessionRow { request: r.clone(), ids, stream: Default::default() });
        }
        Ok(())
    }

    /// One decode step of `session`: `on_text(tag, piece)` receives new text and returns whether
    /// that request goes on; returns the requests that finished.
    pub fn step(
        &self,
        session: &mut Session,
        mut on_text: impl FnMut(usize, &str) -> bool,
    ) -> Result<Vec<(usize, GenerationOutput)>> {
        let tok = self.tokenizer();
        let decode = |ids: &[u32]| tok.decode(ids).ok();
        let rows = &mut session.rows;
        let finished = self.with_decoder(None, |d| {
            d.step(&mut session.running, &self.eos, &mut |tag: usize, id: u32| {
                let Some(row) = rows.get_mut(&tag) else { return false };
                let piece = row.stream.push(id, decode);
                piece.is_empty() || on_text(tag, &piece)
            })
        })?;
        finished
            .into_iter()
            .map(|(tag, g)| {
                let mut row =
                    session.rows.remove(&tag).ok_or_else(|| NnError::Config(format!("unknown row {tag}")))?;
                let rest = row.stream.finish(decode);
                if !rest.is_empty() {
                    on_text(tag, &rest);
                }
                Ok((tag, self.output(&row.request, row.ids, g)?))
            })
            .collect()
    }

    fn output(
        &self,
        r: &Request,
        prompt_token_ids: Vec<u32>,
        g: zoo_nn::Generated,
    ) -> Result<GenerationOutput> {
        let text = self.tokenizer().decode(&g.token_ids)?;
        let (mut detections, mut masks, mut segment_errors) = (None, None, Vec::new());
        if let (Some(img), true) = (&r.image, self.needs_image()) {
            let (w, h) = (img.width(), img.height());
            if zoo_paligemma::is_detect_prompt(&r.prompt) {
                detections = Some(zoo_paligemma::parse_detections(&text, w, h));
            }
            if zoo_paligemma::is_segment_prompt(&r.prompt) {
                let parsed = zoo_paligemma::parse_segments(&text, w, h);
                masks = self.seg.as_ref().map(|d| zoo_paligemma::decode_masks(d, &parsed, w, h));
                segment_errors = parsed.errors;
            }
        }
        Ok(GenerationOutput {
            model_type: self.kind.clone(),
            text,
            prompt_token_ids,
            token_ids: g.token_ids,
            stop_reason: g.stop_reason,
            detections,
            masks,
            segment_errors,
        })
    }
}

/// A batch of requests being generated ([`Generator::start`]), which more can join.
pub struct Session {
    running: zoo_nn::generate::Running,
    rows: std::collections::HashMap<usize, SessionRow>,
}

impl Session {
    /// Whether every request has finished.
    pub fn is_done(&self) -> bool {
        self.running.is_done()
    }

    /// Requests still generating.
    pub fn live(&self) -> usize {
        self.running.live()
    }

    /// Whether a request whose prompt is `len` tokens (image tokens included) and which wants
    /// `max_new` more can join now.
    pub fn can_join(&self, len: usize, max_new: usize) -> bool {
        self.running.can_join(len, max_new)
    }
}

struct SessionRow {
    request: Request,
    ids: Vec<u32>,
    stream: zoo_nn::generate::TextStream,
}

/// The three things a session does with a decoder, object-safe so Gemma and PaliGemma share the
/// session code.
trait DecoderRef {
    fn start(
        &self,
        ids: &[Vec<u32>],
        samplings: &[Sampling],
        tags: &[usize],
        room: usize,
    ) -> Result<zoo_nn::generate::Running>;
    fn join(
        &self,
        run: &mut zoo_nn::generate::Running,
        ids: &[Vec<u32>],
        samplings: &[Sampling],
        tags: &[usize],
    ) -> Result<()>;
    fn step(
        &self,
        run: &mut zoo_nn::generate::Running,
        eos: &[u32],
        on_token: &mut dyn FnMut(usize, u32) -> bool,
    ) -> Result<Vec<(usize, zoo_nn::Generated)>>;
}

impl<D: zoo_nn::Decoder> DecoderRef for D {
    fn start(
        &self,
        ids: &[Vec<u32>],
        samplings: &[Sampling],
        tags: &[usize],
        room: usize,
    ) -> Result<zoo_nn::generate::Running> {
        zoo_nn::generate::Running::start(self, ids, samplings, tags, room)
    }
    fn join(
        &self,
        run: &mut zoo_nn::generate::Running,
        ids: &[Vec<u32>],
        samplings: &[Sampling],
        tags: &[usize],
    ) -> Result<()> {
        run.join(self, ids, samplings, tags)
    }
    fn step(
        &self,
        run: &mut zoo_nn::generate::Running,
        eos: &[u32],
        on_token: &mut dyn FnMut(usize, u32) -> bool,
    ) -> Result<Vec<(usize, zoo_nn::Generated)>> {
        run.step(self, eos, on_token)
    }
}
