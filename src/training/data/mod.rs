//! Training data: every format behind one [`Source`], decoded in one place.
//!
//! - [`list`]: formats whose rows (image path + caption, ~100 bytes each) are held in memory and
//!   whose images are read on demand, as open_clip's CSV reader does: CSV/TSV, JSONL, folders
//!   (img2dataset's output, HF imagefolder `metadata.jsonl`);
//! - [`stream`]: formats read from disk every epoch, in bounded memory: WebDataset tar shards and
//!   parquet files.
//!
//! A source only says which samples make up each batch of an epoch ([`Source::epoch`]); [`batches`]
//! decodes, augments and preprocesses them in worker threads ahead of the training step, leaving
//! out (and reporting) every sample that fails. [`Dataset::open`] reads `--data` of any format,
//! with the held-out split and the samples skipped while scanning.
//!
//! A new format: a reader in `list.rs` (rows in memory) or `stream.rs` (samples from disk), which
//! [`Dataset::open`] picks by the shape of `--data`.

pub mod list;
pub mod stream;

pub use list::{Skipped, csv_fields, load_pairs, load_pairs_with, split, split_fields};
pub use stream::{ShuffleBuffer, SourceOptions, Stream, is_stream, stream_batches};

use super::Loaded;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use zoo_nn::{ImageProcessor, NnError, Result, Rng};

/// One example.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// Image file.
    pub image: PathBuf,
    /// Caption.
    pub caption: String,
}

/// Fisher-Yates with the project's seeded generator.
pub fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_f64() * (i + 1) as f64) as usize;
        v.swap(i, j.min(i));
    }
}

/// Augmentations applied before preprocessing.
#[derive(clap::Args, Debug, Clone, Copy, PartialEq, Default)]
pub struct Augment {
    /// Random-resized-crop: keep a random box of at least this area fraction (aspect 3/4..4/3).
    #[arg(long = "random-crop", allow_negative_numbers = true)]
    pub crop_min_scale: Option<f64>,
    /// Random horizontal flips, probability 0.5 (off by default: captions may say left/right).
    #[arg(long)]
    pub flip: bool,
}

/// Decodes, augments (deterministically per `seed`) and preprocesses one image file.
pub fn load_image(path: &Path, proc: &ImageProcessor, aug: Augment, seed: u64) -> Result<Vec<f32>> {
    augment(zoo_nn::open_image(path)?, proc, aug, seed)
}

/// Augments (deterministically per `seed`) and preprocesses a decoded image.
pub fn augment(
    mut img: image::DynamicImage,
    proc: &ImageProcessor,
    aug: Augment,
    seed: u64,
) -> Result<Vec<f32>> {
    let mut rng = Rng::new(seed);
    if let Some(min_scale) = aug.crop_min_scale {
        let (w, h) = (img.width() as f64, img.height() as f64);
        let area = w * h * (min_scale + (1.0 - min_scale) * rng.next_f64());
        let (lo, hi) = (0.75f64.ln(), (4.0f64 / 3.0).ln());
        let ratio = (lo + (hi - lo) * rng.next_f64()).exp();
        let cw = (area * ratio).sqrt().clamp(1.0, w);
        let ch = (area / ratio).sqrt().clamp(1.0, h);
        let x = ((w - cw) * rng.next_f64()) as u32;
        let y = ((h - ch) * rng.next_f64()) as u32;
        img = img.crop_imm(x, y, cw as u32, ch as u32);
    }
    if aug.flip && rng.next_f64() < 0.5 {
        img = img.fliph();
    }
    Ok(proc.preprocess(&img)?.2)
}

/// Where a sample's image is.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageData {
    /// A file, read when the batch is prepared.
    File(PathBuf),
    /// Encoded bytes already read (a tar member, a parquet cell).
    Bytes(Vec<u8>),
}

/// One sample as a source names it: the key that reports name, the image, the caption, and the
/// seed of its augmentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The key a skipped sample is reported by (bytes only: a file reports its path).
    pub key: String,
    /// The image.
    pub image: ImageData,
    /// The caption.
    pub caption: String,
    /// Seed of this sample's augmentation in this epoch.
    pub seed: u64,
}

impl Sample {
    /// Decodes, augments and preprocesses the image, or says why not (`path or key: reason`).
    pub fn pixels(&self, proc: &ImageProcessor, aug: Augment) -> std::result::Result<Vec<f32>, String> {
        match &self.image {
            ImageData::File(path) => load_image(path, proc, aug, self.seed).map_err(|e| e.to_string()),
            ImageData::Bytes(bytes) => zoo_nn::data::image::decode_image(bytes)
                .map_err(|e| format!("{}: {e}", self.key))
                .and_then(|img| augment(img, proc, aug, self.seed).map_err(|e| format!("{}: {e}", self.key))),
        }
    }
}

/// The samples of one batch, before decoding.
#[derive(Debug)]
pub struct Job {
    /// Position of the batch in the epoch.
    pub index: usize,
    /// Its samples.
    pub samples: Vec<Sample>,
    /// Samples the reader already left out of it (`key: reason`).
    pub skipped: Vec<String>,
}

/// A prepared batch: pixel values `[B * 3 * H * W]` and the captions.
#[derive(Debug)]
pub struct Batch {
    /// Position of this batch in the epoch.
    pub index: usize,
    /// Flattened `[B, 3, H, W]`.
    pub pixels: Vec<f32>,
    /// Captions, in order.
    pub captions: Vec<String>,
    /// Samples of this batch that failed to decode or preprocess (`path: reason`), left out.
    pub skipped: Vec<String>,
    /// Seconds one worker spent reading, decoding and augmenting this batch.
    pub load_seconds: f64,
}

/// A training set: what each batch of an epoch holds.
pub trait Source: Send + Sync {
    /// Full batches of `batch_size` in one epoch.
    fn batches_per_epoch(&self, batch_size: usize) -> usize;
    /// The jobs of one epoch, in order, from batch `skip` on (earlier ones are not sent); the
    /// order and the augmentation seeds follow from `order_seed`.
    fn epoch(&self, batch_size: usize, order_seed: u64, skip: usize) -> mpsc::Receiver<Job>;
}

/// Yields the batches of one epoch of `source`, prepared by `workers` threads while training
/// runs, in order from batch `skip`. A sample that fails anywhere (truncated data, a vanished
/// file) is left out of its batch and listed in [`Batch::skipped`]; the run goes on.
pub fn batches(
    source: &dyn Source,
    batch_size: usize,
    order_seed: u64,
    aug: Augment,
    proc: &ImageProcessor,
    workers: usize,
    skip: usize,
) -> mpsc::Receiver<Result<Batch>> {
    let workers = workers.max(1);
    let jobs = Arc::new(Mutex::new(source.epoch(batch_size, order_seed, skip)));
    let (tx, rx) = mpsc::sync_channel(workers * 2);
    let (done_tx, done_rx) = mpsc::sync_channel::<(usize, Result<Batch>)>(workers * 2);
    for _ in 0..workers {
        let (jobs, done_tx, proc) = (jobs.clone(), done_tx.clone(), proc.clone());
        std::thread::spawn(move || {
            loop {
                let job = jobs.lock().map(|r| r.recv());
                let Ok(Ok(Job { index, samples, mut skipped })) = job else { return };
                let started = std::time::Instant::now();
                let (mut pixels, mut captions) = (Vec::new(), Vec::new());
                for s in samples {
                    match s.pixels(&proc, aug) {
                        Ok(px) => {
                            pixels.extend(px);
                            captions.push(s.caption);
                        }
                        Err(e) => skipped.push(e),
                    }
                }
                let load_seconds = started.elapsed().as_secs_f64();
                let batch = Batch { index, pixels, captions, skipped, load_seconds };
                if done_tx.send((index, Ok(batch))).is_err() {
                    return;
                }
            }
        });
    }
    drop(done_tx);
    std::thread::spawn(move || in_order(done_rx, &tx, skip));
    rx
}

/// The batches of [`batches`] as the training engine takes them (the load time per sample of
/// one of the `workers` threads).
pub fn loaded(
    rx: mpsc::Receiver<Result<Batch>>,
    workers: usize,
) -> Box<dyn Iterator<Item = Result<Loaded<Batch>>>> {
    let workers = workers.max(1) as f64;
    Box::new(rx.into_iter().map(move |b| {
        b.map(|b| Loaded {
            index: b.index,
            samples: b.captions.len(),
            load_seconds: b.load_seconds / workers,
            skipped: b.skipped.clone(),
            batch: b,
        })
    }))
}

/// Forwards `(index, item)` pairs that arrive in any order as items in index order from
/// `start` (a small reorder buffer behind parallel workers); stops when the receiver goes away.
fn in_order<T>(from: mpsc::Receiver<(usize, T)>, to: &mpsc::SyncSender<T>, start: usize) {
    let mut pending = std::collections::BTreeMap::new();
    let mut next = start;
    for (b, item) in from {
        pending.insert(b, item);
        while let Some(item) = pending.remove(&next) {
            if to.send(item).is_err() {
                return;
            }
            next += 1;
        }
    }
}

/// `--data` opened for training, whatever its format.
pub struct Dataset {
    /// The training samples.
    pub source: Box<dyn Source>,
    /// Training samples per epoch.
    pub len: usize,
    /// Held-out pairs (each decoded once when opened, so an evaluation never meets a broken one).
    pub held_out: Vec<Pair>,
    /// Samples left out while scanning (`path or key: reason`).
    pub skipped: BTreeSet<String>,
    /// Rows with empty captions left out.
    pub empty_captions: usize,
    /// Captions a tokenizer may be trained on (a stream's first 50,000).
    pub captions: Vec<String>,
}

/// How [`Dataset::open`] splits and reads.
#[derive(Debug, Clone)]
pub struct DatasetOptions<'a> {
    /// Caption keys, CSV layout, stream options.
    pub source: &'a SourceOptions,
    /// Unreadable rows are errors instead of skipped.
    pub strict: bool,
    /// Held-out fraction.
    pub val_fraction: f64,
    /// Seed of the split.
    pub seed: u64,
    /// Where a stream's held-out images are written.
    pub held_out_dir: &'a Path,
    /// Batch size (a stream's epoch is `len / batch_size` batches).
    pub batch_size: usize,
}

impl Dataset {
    /// Opens `data`: a stream (tar shards, parquet) or a list (CSV/TSV, JSONL, folders).
    pub fn open(data: &Path, o: &DatasetOptions) -> Result<Self> {
        let (source, len, held_out, skipped, empty_captions, captions): (Box<dyn Source>, _, _, _, _, _) =
            if is_stream(data) {
                let s = Stream::open(data, o.source)?;
                if let Some(parent) = o.held_out_dir.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| NnError::io(parent, e))?;
                }
                let (held, bad) =
                    stream::held_out(&s, o.val_fraction, o.seed, o.source.val_max, o.held_out_dir)?;
                let len = match o.source.train_num_samples {
                    Some(n) => n,
                    None => ((s.count()? as f64) * (1.0 - o.val_fraction)).floor() as usize,
                };
                // A tokenizer (when one is trained) learns from the first captions of the stream.
                let captions: Vec<String> = Stream::read(s.files.clone(), s.opts.clone())
                    .filter_map(|i| i.ok())
                    .take(50_000)
                    .map(|r| r.caption)
                    .collect();
                let source = stream::StreamSource {
                    stream: s,
                    split: (o.val_fraction, o.seed),
                    per_epoch: len / o.batch_size.max(1),
                };
                (Box::new(source), len, held, bad.into_iter().collect::<BTreeSet<_>>(), 0, captions)
            } else {
                let (pairs, skipped) = load_pairs_with(data, o.strict, o.source)?;
                let (train, held) = split(pairs, o.val_fraction, o.seed);
                let captions = train.iter().map(|p| p.caption.clone()).collect();
                let bad = skipped.bad_images.iter().map(|p| format!("{p}: missing or not a readable image"));
                let len = train.len();
                let source = list::ListSource { pairs: Arc::new(train) };
                (Box::new(source), len, held, bad.collect(), skipped.empty_captions, captions)
            };
        let mut skipped = skipped;
        let held_out = held_out
            .into_iter()
            .filter(|p: &Pair| match zoo_nn::open_image(&p.image) {
                Ok(_) => true,
                Err(e) => {
                    skipped.insert(e.to_string());
                    false
                }
            })
            .collect();
        Ok(Self { source, len, held_out, skipped, empty_captions, captions })
    }
}
