//! `vlm-zoo embed`: the image (and caption) embeddings of a whole dataset, written to parquet
//! files, by one process or by N that each take a share (`--shard I/N`) under any scheduler.
//!
//! The data is read by the training loader (`training::data`: every format `train` reads, the
//! one worker pool, bad samples skipped and reported) in a fixed order ([`Ordered`]), and
//! embedded by zero-shot's [`Scorer`] (the same preprocessing and the same calls, so a row equals
//! `zero-shot --json`'s embedding of that image and caption).
//!
//! Layout of `--out` (one run, or `--shard 0/1`): `part-00000.parquet`, `part-00001.parquet`,
//! ... (one per `--rows-per-file` samples of the input, skipped ones leaving a gap) and
//! `embed.json` (what was embedded, with what, how far). A run with `--shard I/N`, N > 1, writes
//! the same into `--out/shard-IIII-of-NNNN/`, so the N shares can share one `--out`.
//!
//! Each part is written atomically and `embed.json` after it, so a killed run, started again with
//! the same command, goes on from its last finished part (the order is fixed, so it writes the
//! same files); an `--out` holding another run's embeddings (another model, data, share or
//! layout) or files that are not an embed run's is refused.

use crate::args::{ComputeArgs, ModelArgs};
use crate::models::Family;
use crate::training::checkpoint;
use crate::training::data::{FormatOptions, Ordered, Prepare, Shard, SourceOptions, prepared};
use crate::zero_shot::Scorer;
use burn::tensor::f16;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, FixedLenByteArray, FixedLenByteArrayType, FloatType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zoo_nn::host::rows;
use zoo_nn::{NnError, Result};

/// The float type of the embeddings written.
#[derive(
    clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum OutDtype {
    /// 32-bit floats (parquet FLOAT).
    #[default]
    F32,
    /// 16-bit floats (parquet FLOAT16: 2-byte fixed-length values).
    F16,
}

/// `vlm-zoo embed`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct EmbedArgs {
    /// The checkpoint: SigLIP, SigLIP 2 or CLIP.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The dataset, in any format `train` reads: CSV/TSV, JSONL, a folder (images + .txt, or an
    /// HF imagefolder), WebDataset tar shards (`shards/{00000..00099}.tar`) or parquet files.
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder: part-NNNNN.parquet files and embed.json (with --shard I/N, in
    /// OUT/shard-IIII-of-NNNN/).
    #[arg(long)]
    pub out: PathBuf,
    /// Embed only share I (from 0) of N disjoint shares of the data: by file when the data is at
    /// least N tar/parquet files, else by sample position. N runs with I = 0..N-1 cover the data
    /// exactly once [default: 0/1, all of it].
    #[arg(long)]
    pub shard: Option<String>,
    /// Images (and captions) per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Input samples per parquet file (the unit a killed run resumes from).
    #[arg(long, default_value_t = 10_000)]
    pub rows_per_file: usize,
    /// Float type of the embeddings written.
    #[arg(long, value_enum, default_value_t = OutDtype::F32)]
    pub out_dtype: OutDtype,
    /// Threads that read, decode and preprocess images ahead of the model.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Where captions and images are in each format.
    #[command(flatten)]
    pub format: FormatOptions,
    /// Device and dtype.
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Stop after writing this many part files, as if killed (tests of resuming).
    #[arg(long, hide = true)]
    pub stop_after_files: Option<usize>,
}

/// What identifies a run: a run into a folder holding embeddings is allowed only when all of it
/// is the same (then it resumes); the shard folders of one `--out` differ only in `shard`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunIdentity {
    /// The checkpoint: the folder as given, or the hub id.
    pub model: String,
    /// The hub snapshot (commit) a hub id resolved to; `None` for a folder.
    pub revision: Option<String>,
    /// config.json's `model_type`.
    pub model_type: String,
    /// `--dtype` of the computation.
    pub compute_dtype: String,
    /// Float type written (`f32` or `f16`).
    pub dtype: OutDtype,
    /// `--data` as given.
    pub data: String,
    /// `--caption-key`, `--csv-separator`, `--csv-img-key`, `--csv-caption-key`.
    pub data_options: [Option<String>; 4],
    /// `I/N`.
    pub shard: String,
    /// `--rows-per-file`.
    pub rows_per_file: usize,
}

/// One finished part file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Part {
    /// File name in the run's folder.
    pub file: String,
    /// Rows written (samples with an image embedding).
    pub rows: usize,
    /// Rows with a text embedding (a caption).
    pub with_text: usize,
    /// Samples of this part's input left out (undecodable images, unreadable members).
    pub skipped: usize,
}

/// `embed.json`: what the folder holds and how far the run got.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metadata {
    /// What identifies the run.
    #[serde(flatten)]
    pub run: RunIdentity,
    /// vlm-zoo's version.
    pub vlm_zoo_version: String,
    /// Embedding width (`None` until the first part).
    pub dims: Option<usize>,
    /// How the share is taken.
    pub sharding: String,
    /// Whether every part of the share is written.
    pub complete: bool,
    /// Rows written in all parts.
    pub count: usize,
    /// Rows with a text embedding.
    pub with_text: usize,
    /// Samples skipped in all parts.
    pub skipped: usize,
    /// The first skipped samples (`path or key: reason`), at most [`SKIPPED_LISTED`].
    pub skipped_first: Vec<String>,
    /// The finished parts, in order.
    pub files: Vec<Part>,
}

/// Skipped samples named in `embed.json` (all are counted).
pub const SKIPPED_LISTED: usize = 20;

/// What a run did.
#[derive(Debug, Clone)]
pub struct EmbedReport {
    /// The run's folder (`--out`, or its shard folder).
    pub dir: PathBuf,
    /// `embed.json` as written last.
    pub metadata: Metadata,
    /// Parts that were already finished when the run started.
    pub resumed_parts: usize,
    /// Rows embedded by this process.
    pub embedded: usize,
    /// Seconds this process spent from the first batch to the last part.
    pub seconds: f64,
    /// Notes for the user (fallbacks taken while loading).
    pub notes: Vec<String>,
}

impl EmbedArgs {
    /// The share to embed.
    pub fn shard(&self) -> Result<Shard> {
        self.shard.as_deref().map_or(Ok(Shard::WHOLE), Shard::parse)
    }

    fn source_options(&self) -> SourceOptions {
        SourceOptions { format: self.format.clone(), every_row: true, ..Default::default() }
    }

    /// Embeds the share, calling `progress` with a line after each part file.
    pub fn run(&self, mut progress: impl FnMut(&str)) -> Result<EmbedReport> {
        let shard = self.shard()?;
        if self.batch == 0 || self.rows_per_file == 0 {
            return Err(NnError::Config("--batch and --rows-per-file must be at least 1".into()));
        }
        let compute = self.compute.compute()?;
        let data = Ordered::open(&self.data, &self.source_options(), shard, self.rows_per_file)?;
        let dir = self.model.model.resolve()?;
        let family = Family::of_for(&dir, "embed", Family::is_contrastive)?;
        let identity = RunIdentity {
            model: self.model.model.to_string(),
            revision: snapshot_commit(&self.model.model.0, &dir),
            model_type: family.model_type().to_string(),
            compute_dtype: self.compute.dtype.clone(),
            dtype: self.out_dtype,
            data: self.data.display().to_string(),
            data_options: [
                self.format.caption_key.clone(),
                self.format.csv_separator.map(String::from),
                self.format.csv_img_key.clone(),
                self.format.csv_caption_key.clone(),
            ],
            shard: shard.to_string(),
            rows_per_file: self.rows_per_file,
        };
        let run_dir = check_out(&self.out, shard, &identity)?;
        // Loaded before anything is written, so a checkpoint that does not load leaves no folder.
        let scorer = Scorer::load(&dir, &compute)?;
        std::fs::create_dir_all(&run_dir).map_err(|e| NnError::io(&run_dir, e))?;
        let _lock = checkpoint::lock_for(&run_dir, "embed run")?;
        let mut meta = open_run(&run_dir, &identity, data.sharding())?;
        // A part listed but gone (deleted by hand) is embedded again, with everything after it.
        let kept = meta.files.iter().take_while(|p| run_dir.join(&p.file).is_file()).count();
        if kept < meta.files.len() {
            meta.files.truncate(kept);
            meta.complete = false;
        }
        let resumed_parts = meta.files.len();
        write_metadata(&run_dir, &mut meta)?;

        let prepare = match scorer.processor() {
            Some(proc) => Prepare::Pixels(proc.clone(), Default::default()),
            None => Prepare::Decode,
        };
        let per_part = self.rows_per_file.div_ceil(self.batch);
        let started = std::time::Instant::now();
        let mut embedded = 0usize;
        let mut written_now = 0usize;
        if !meta.complete {
            let skip = resumed_parts * per_part;
            let rx = prepared(&data, self.batch, 0, &prepare, self.workers, skip);
            let mut open: Option<(usize, Vec<Row>, Vec<String>)> = None;
            for batch in rx {
                let batch = batch?;
                let part = batch.index / per_part;
                if open.as_ref().is_some_and(|(p, _, _)| *p != part) {
                    let (p, rows, skipped) = open.take().expect("open part");
                    self.finish_part(
                        &run_dir,
                        &mut meta,
                        p,
                        rows,
                        skipped,
                        &mut progress,
                        embedded,
                        started,
                    )?;
                    written_now += 1;
                    if self.stop_after_files.is_some_and(|k| written_now >= k) {
                        return Ok(report(
                            run_dir,
                            meta,
                            resumed_parts,
                            embedded,
                            started,
                            scorer.notes.clone(),
                        ));
                    }
                }
                let (_, part_rows, skipped) = open.get_or_insert_with(|| (part, Vec::new(), Vec::new()));
                skipped.extend(batch.skipped.iter().cloned());
                let n = batch.keys.len();
                if n == 0 {
                    continue;
                }
                let images = match &prepare {
                    Prepare::Pixels(..) => scorer.embed_pixels(batch.pixels, n, batch.size)?,
                    Prepare::Decode => scorer.embed_images(&batch.images)?,
                };
                let images = rows(images);
                let captioned: Vec<usize> =
                    (0..n).filter(|&i| !batch.captions[i].trim().is_empty()).collect();
                let texts = if captioned.is_empty() {
                    Vec::new()
                } else {
                    let c: Vec<String> = captioned.iter().map(|&i| batch.captions[i].clone()).collect();
                    rows(scorer.embed_texts(&c)?)
                };
                let mut texts = captioned.into_iter().zip(texts).peekable();
                for (i, (key, image)) in batch.keys.into_iter().zip(images).enumerate() {
                    let text = texts.next_if(|(j, _)| *j == i).map(|(_, t)| t);
                    if image.iter().chain(text.iter().flatten()).any(|v| !v.is_finite()) {
                        return Err(NnError::Config(format!(
                            "{key}: the embedding is not finite (NaN or infinity): the weights or the config of {} are broken",
                            dir.display()
                        )));
                    }
                    part_rows.push(Row { key, image, text });
                }
                embedded += n;
            }
            if let Some((p, rows, skipped)) = open.take() {
                self.finish_part(&run_dir, &mut meta, p, rows, skipped, &mut progress, embedded, started)?;
            }
            meta.complete = true;
            write_metadata(&run_dir, &mut meta)?;
        }
        Ok(report(run_dir, meta, resumed_parts, embedded, started, scorer.notes.clone()))
    }

    /// Writes part `p` and records it in `embed.json`.
    #[allow(clippy::too_many_arguments)]
    fn finish_part(
        &self,
        dir: &Path,
        meta: &mut Metadata,
        p: usize,
        rows: Vec<Row>,
        skipped: Vec<String>,
        progress: &mut impl FnMut(&str),
        embedded: usize,
        started: std::time::Instant,
    ) -> Result<()> {
        if meta.files.len() != p {
            return Err(NnError::Config(format!(
                "{}: part {p} follows {} finished parts (the input changed while reading?)",
                dir.display(),
                meta.files.len()
            )));
        }
        let dims = rows.first().map(|r| r.image.len());
        if let (Some(d), Some(known)) = (dims, meta.dims)
            && d != known
        {
            return Err(NnError::Config(format!(
                "{}: embeddings of {d} dims, but the parts written before have {known}",
                dir.display()
            )));
        }
        meta.dims = meta.dims.or(dims);
        let file = part_name(p);
        let bytes = parquet_bytes(&rows, meta.dims.unwrap_or(0), self.out_dtype, &meta.run)?;
        crate::fs::write_atomic(&dir.join(&file), &bytes)?;
        let with_text = rows.iter().filter(|r| r.text.is_some()).count();
        meta.files.push(Part { file: file.clone(), rows: rows.len(), with_text, skipped: skipped.len() });
        let room = SKIPPED_LISTED.saturating_sub(meta.skipped_first.len());
        meta.skipped_first.extend(skipped.into_iter().take(room));
        write_metadata(dir, meta)?;
        let seconds = started.elapsed().as_secs_f64();
        progress(&format!(
            "{file}: {} rows ({with_text} with text), {} skipped; {} rows in all, {:.1} images/s",
            rows.len(),
            meta.files[p].skipped,
            meta.count,
            embedded as f64 / seconds.max(1e-9)
        ));
        Ok(())
    }
}

fn report(
    dir: PathBuf,
    metadata: Metadata,
    resumed_parts: usize,
    embedded: usize,
    started: std::time::Instant,
    notes: Vec<String>,
) -> EmbedReport {
    EmbedReport { dir, metadata, resumed_parts, embedded, seconds: started.elapsed().as_secs_f64(), notes }
}

/// One embedded sample.
struct Row {
    key: String,
    image: Vec<f32>,
    text: Option<Vec<f32>>,
}

/// `part-00012.parquet`.
pub fn part_name(p: usize) -> String {
    format!("part-{p:05}.parquet")
}

/// The folder a share writes into: `out` itself for the whole input, else
/// `out/shard-IIII-of-NNNN`.
pub fn shard_dir(out: &Path, shard: Shard) -> PathBuf {
    if shard.count == 1 { out.to_path_buf() } else { out.join(shard_folder(shard)) }
}

fn shard_folder(shard: Shard) -> String {
    format!("shard-{:04}-of-{:04}", shard.index, shard.count)
}

/// The commit of a hub id's snapshot (`.../snapshots/<commit>`); `None` for a local folder.
fn snapshot_commit(given: &Path, resolved: &Path) -> Option<String> {
    if given.exists() {
        return None;
    }
    let parent = resolved.parent()?;
    (parent.file_name()? == "snapshots")
        .then(|| resolved.file_name().map(|c| c.to_string_lossy().into_owned()))?
}

fn refuse(out: &Path, why: String) -> NnError {
    NnError::Config(format!("--out {}: {why}; choose another --out", out.display()))
}

/// Checks `out` before anything is written: for the whole input, [`check_run_dir`]; for a share,
/// that `out` holds only shard folders of the same N whose runs differ from this one only in
/// the share. Returns the folder the run writes into.
fn check_out(out: &Path, shard: Shard, identity: &RunIdentity) -> Result<PathBuf> {
    if out.exists() && !out.is_dir() {
        return Err(refuse(out, "is a file, not a folder".into()));
    }
    if shard.count == 1 {
        if out.is_dir() {
            check_run_dir(out, identity)?;
        }
        return Ok(out.to_path_buf());
    }
    if out.join(METADATA).exists() {
        return Err(refuse(
            out,
            format!("holds an embed run of the whole input (embed.json), not shards of {}", shard.count),
        ));
    }
    for entry in entries(out)? {
        let name = entry.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(n) = name.strip_prefix("shard-").and_then(|r| r.split_once("-of-")).map(|(_, n)| n) else {
            return Err(refuse(out, format!("holds {name}, which is not a shard folder of an embed run")));
        };
        if n.parse::<usize>().ok() != Some(shard.count) || !entry.is_dir() {
            return Err(refuse(out, format!("holds {name}: shards of another split than {}", shard.count)));
        }
        if let Some(other) = read_metadata(&entry)? {
            let mine = RunIdentity { shard: other.run.shard.clone(), ..identity.clone() };
            if let Some(diff) = difference(&other.run, &mine) {
                return Err(refuse(out, format!("{name} holds embeddings of another run ({diff})")));
            }
        }
    }
    let dir = out.join(shard_folder(shard));
    if dir.is_dir() {
        check_run_dir(&dir, identity)?;
    }
    Ok(dir)
}

/// The files of a run's folder: its parts, `embed.json`, the lock and scratch files of atomic
/// writes. Anything else there, or parts without `embed.json`, are not this command's.
fn check_run_dir(dir: &Path, identity: &RunIdentity) -> Result<()> {
    let mut has_parts = false;
    for entry in entries(dir)? {
        let name = entry.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with("shard-") && entry.is_dir() {
            return Err(refuse(
                dir,
                format!("holds {name} of a --shard run; a run of the whole input cannot share it"),
            ));
        }
        let ours = name == METADATA || name == ".vlm-zoo.lock" || is_scratch(&name) || is_part(&name);
        if !ours {
            return Err(refuse(
                dir,
                format!("holds {name}, which an embed run did not write (never overwritten)"),
            ));
        }
        has_parts |= is_part(&name);
    }
    match read_metadata(dir)? {
        Some(meta) => match difference(&meta.run, identity) {
            Some(diff) => Err(refuse(dir, format!("holds embeddings of another run ({diff})"))),
            None => Ok(()),
        },
        None if has_parts => Err(refuse(dir, "holds part files but no embed.json".into())),
        None => Ok(()),
    }
}

fn is_part(name: &str) -> bool {
    name.strip_prefix("part-")
        .and_then(|r| r.strip_suffix(".parquet"))
        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
}

/// A scratch file of [`crate::fs::write_atomic`] left by a killed run (`part-00003.tmp-1234`).
fn is_scratch(name: &str) -> bool {
    name.rsplit_once(".tmp-").is_some_and(|(base, pid)| {
        (base.starts_with("part-") || base == "embed") && pid.bytes().all(|b| b.is_ascii_digit())
    })
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| NnError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// The first field in which two runs differ, as `field: theirs, not ours`.
fn difference(theirs: &RunIdentity, ours: &RunIdentity) -> Option<String> {
    let (a, b) = (serde_json::to_value(theirs).ok()?, serde_json::to_value(ours).ok()?);
    let (a, b) = (a.as_object()?, b.as_object()?);
    let null = serde_json::Value::Null;
    a.iter()
        .map(|(k, v)| (k, v, b.get(k.as_str()).unwrap_or(&null)))
        .find(|(_, v, w)| v != w)
        .map(|(k, v, w)| format!("{k} {v}, not {w}"))
}

/// The metadata file of a run's folder.
pub const METADATA: &str = "embed.json";

fn read_metadata(dir: &Path) -> Result<Option<Metadata>> {
    let path = dir.join(METADATA);
    if !path.is_file() {
        return Ok(None);
    }
    let text = zoo_nn::load::read_text(&path, 64 << 20)?;
    serde_json::from_str(&text).map(Some).map_err(|e| {
        NnError::Config(format!(
            "{}: not an embed run's metadata ({e}); choose another --out",
            path.display()
        ))
    })
}

/// The run's metadata: resumed from `embed.json` (checked to be this run's by [`check_out`]),
/// or new; scratch files of a killed run are removed (the folder is locked).
fn open_run(dir: &Path, identity: &RunIdentity, sharding: String) -> Result<Metadata> {
    for entry in entries(dir)? {
        if entry.file_name().is_some_and(|n| is_scratch(&n.to_string_lossy())) {
            std::fs::remove_file(&entry).map_err(|e| NnError::io(&entry, e))?;
        }
    }
    if let Some(meta) = read_metadata(dir)? {
        if let Some(diff) = difference(&meta.run, identity) {
            return Err(refuse(dir, format!("holds embeddings of another run ({diff})")));
        }
        return Ok(meta);
    }
    Ok(Metadata {
        run: identity.clone(),
        vlm_zoo_version: env!("CARGO_PKG_VERSION").to_string(),
        dims: None,
        sharding,
        complete: false,
        count: 0,
        with_text: 0,
        skipped: 0,
        skipped_first: Vec::new(),
        files: Vec::new(),
    })
}

/// Recomputes the totals from the parts and writes `embed.json` atomically.
fn write_metadata(dir: &Path, meta: &mut Metadata) -> Result<()> {
    meta.count = meta.files.iter().map(|p| p.rows).sum();
    meta.with_text = meta.files.iter().map(|p| p.with_text).sum();
    meta.skipped = meta.files.iter().map(|p| p.skipped).sum();
    meta.vlm_zoo_version = env!("CARGO_PKG_VERSION").to_string();
    let mut text = serde_json::to_string_pretty(meta).map_err(|e| NnError::Config(e.to_string()))?;
    text.push('\n');
    crate::fs::write_atomic(&dir.join(METADATA), text.as_bytes())
}

/// The parquet schema of a part: `key` (string), `image_embedding` (list of float or float16),
/// `text_embedding` (the same, null without a caption).
pub fn parquet_schema(dtype: OutDtype) -> String {
    let element = match dtype {
        OutDtype::F32 => "required float element;",
        OutDtype::F16 => "required fixed_len_byte_array (2) element (FLOAT16);",
    };
    format!(
        "message embeddings {{ required binary key (STRING); \
         required group image_embedding (LIST) {{ repeated group list {{ {element} }} }} \
         optional group text_embedding (LIST) {{ repeated group list {{ {element} }} }} }}"
    )
}

/// A part file's bytes: one row group, snappy-compressed, the run's identity and `dims` in the
/// footer's key-value metadata (`vlm_zoo.embed`).
fn parquet_bytes(rows: &[Row], dims: usize, dtype: OutDtype, run: &RunIdentity) -> Result<Vec<u8>> {
    let err = |e: parquet::errors::ParquetError| NnError::Config(format!("writing parquet: {e}"));
    let schema = Arc::new(parquet::schema::parser::parse_message_type(&parquet_schema(dtype)).map_err(err)?);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(format!("vlm-zoo {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut w = SerializedFileWriter::new(Vec::new(), schema, Arc::new(props)).map_err(err)?;
    let info = serde_json::json!({"run": run, "dims": dims}).to_string();
    w.append_key_value_metadata(parquet::file::metadata::KeyValue::new("vlm_zoo.embed".into(), info));
    let mut rg = w.next_row_group().map_err(err)?;
    // key
    let mut col = rg.next_column().map_err(err)?.expect("key column");
    let keys: Vec<ByteArray> = rows.iter().map(|r| ByteArray::from(r.key.as_bytes().to_vec())).collect();
    col.typed::<ByteArrayType>().write_batch(&keys, None, None).map_err(err)?;
    col.close().map_err(err)?;
    // image_embedding (required list: definition 1 per value) and text_embedding (optional list:
    // 0 for a null row, 2 per value); repetition 0 starts a row, 1 continues its list.
    for text in [false, true] {
        let lists: Vec<Option<&[f32]>> =
            rows.iter().map(|r| if text { r.text.as_deref() } else { Some(r.image.as_slice()) }).collect();
        let (mut values, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
        for l in &lists {
            match l {
                None => {
                    def.push(0);
                    rep.push(0);
                }
                Some(v) => {
                    values.extend_from_slice(v);
                    def.extend(std::iter::repeat_n(if text { 2 } else { 1 }, v.len()));
                    rep.extend((0..v.len()).map(|i| i16::from(i > 0)));
                }
            }
        }
        debug_assert!(lists.iter().flatten().all(|v| v.len() == dims));
        let mut col = rg.next_column().map_err(err)?.expect("embedding column");
        match dtype {
            OutDtype::F32 => {
                col.typed::<FloatType>().write_batch(&values, Some(&def), Some(&rep)).map_err(err)?;
            }
            OutDtype::F16 => {
                let halves: Vec<FixedLenByteArray> = values
                    .iter()
                    .map(|&v| {
                        FixedLenByteArray::from(ByteArray::from(f16::from_f32(v).to_le_bytes().to_vec()))
                    })
                    .collect();
                col.typed::<FixedLenByteArrayType>()
                    .write_batch(&halves, Some(&def), Some(&rep))
                    .map_err(err)?;
            }
        }
        col.close().map_err(err)?;
    }
    rg.close().map_err(err)?;
    w.into_inner().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_and_part_names() {
        assert!(is_part("part-00012.parquet") && !is_part("part-x.parquet") && !is_part("notes.txt"));
        assert!(is_scratch("part-00003.tmp-1234") && is_scratch("embed.tmp-9") && !is_scratch("data.tmp-1"));
    }
}
