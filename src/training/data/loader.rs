//! From a [`Source`] to batches: [`batches`], the one worker pool that decodes, augments and
//! preprocesses every format's samples (skipping and reporting what fails), and
//! [`Dataset::open`], which opens `--data` of any format with its held-out split.

use super::list::{ListSource, load_pairs_with, split};
use super::sample::{Augment, Batch, Job, Pair, Source};
use super::stream::{self, SourceOptions, Stream, StreamSource, is_stream};
use crate::training::engine::Loaded;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use zoo_nn::{ImageProcessor, NnError, Result};

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
    prepared(source, batch_size, order_seed, &Prepare::Pixels(proc.clone(), aug), workers, skip)
}

/// What the workers make of each sample's image.
#[derive(Debug, Clone)]
pub enum Prepare {
    /// Decoded, augmented and preprocessed to the processor's fixed size ([`Batch::pixels`]).
    Pixels(ImageProcessor, Augment),
    /// Decoded only ([`Batch::images`]), for a model that preprocesses each image at its own
    /// size (SigLIP 2 NaFlex).
    Decode,
}

/// [`batches`] with the workers preparing each image as `prepare` says.
pub fn prepared(
    source: &dyn Source,
    batch_size: usize,
    order_seed: u64,
    prepare: &Prepare,
    workers: usize,
    skip: usize,
) -> mpsc::Receiver<Result<Batch>> {
    let workers = workers.max(1);
    let jobs = Arc::new(Mutex::new(source.epoch(batch_size, order_seed, skip)));
    let (tx, rx) = mpsc::sync_channel(workers * 2);
    let (done_tx, done_rx) = mpsc::sync_channel::<(usize, Result<Batch>)>(workers * 2);
    for _ in 0..workers {
        let (jobs, done_tx, prepare) = (jobs.clone(), done_tx.clone(), prepare.clone());
        std::thread::spawn(move || {
            loop {
                let job = jobs.lock().map(|r| r.recv());
                let Ok(Ok(Job { index, samples, mut skipped })) = job else { return };
                let started = std::time::Instant::now();
                let (mut pixels, mut images, mut size) = (Vec::new(), Vec::new(), (0, 0));
                let (mut captions, mut indices, mut keys) = (Vec::new(), Vec::new(), Vec::new());
                for s in samples {
                    match &prepare {
                        Prepare::Pixels(proc, aug) => match s.pixels(proc, *aug) {
                            // Every image of a batch comes out the processor's size; one that
                            // does not (a processor without a fixed size) is left out, named.
                            Ok((h, w, _)) if !captions.is_empty() && (h, w) != size => {
                                skipped.push(format!(
                                    "{}: preprocesses to {h}x{w}, not {}x{}",
                                    s.key, size.0, size.1
                                ));
                                continue;
                            }
                            Ok((h, w, px)) => {
                                size = (h, w);
                                pixels.extend(px);
                            }
                            Err(e) => {
                                skipped.push(e);
                                continue;
                            }
                        },
                        Prepare::Decode => match s.decode() {
                            Ok(img) => images.push(img),
                            Err(e) => {
                                skipped.push(e);
                                continue;
                            }
                        },
                    }
                    captions.push(s.caption);
                    indices.push(s.index);
                    keys.push(s.key);
                }
                let load_seconds = started.elapsed().as_secs_f64();
                let batch =
                    Batch { index, pixels, images, size, captions, indices, keys, skipped, load_seconds };
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
        b.map(|mut b| Loaded {
            index: b.index,
            samples: b.captions.len(),
            load_seconds: b.load_seconds / workers,
            skipped: std::mem::take(&mut b.skipped),
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
                let source = StreamSource {
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
                let source = ListSource { pairs: Arc::new(train) };
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

/// The batches of one epoch of a stream ([`StreamSource`] through [`batches`]).
#[allow(clippy::too_many_arguments)]
pub fn stream_batches(
    stream: &Stream,
    split: (f64, u64),
    batch_size: usize,
    per_epoch: usize,
    order_seed: u64,
    aug: Augment,
    proc: &ImageProcessor,
    workers: usize,
    skip: usize,
) -> mpsc::Receiver<Result<Batch>> {
    let source = StreamSource { stream: stream.clone(), split, per_epoch };
    batches(&source, batch_size, order_seed, aug, proc, workers, skip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Every format's batches come through the one pool: in order from `skip`, each image's
    /// `index` naming its row (what finetune looks its token ids up by), a broken file left out
    /// and named.
    #[test]
    fn the_pool_keeps_order_rows_and_names_what_fails() {
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/rgb_64x48.png");
        let mut pairs: Vec<Pair> =
            (0..12).map(|i| Pair { image: fixture.clone(), caption: format!("row {i}") }).collect();
        pairs[5].image = PathBuf::from("/nonexistent/broken.png");
        let source = ListSource { pairs: Arc::new(pairs) };
        let proc = ImageProcessor::new(zoo_nn::PreprocessorConfig::square(16));
        let rx = batches(&source, 4, 7, Augment::default(), &proc, 3, 1);
        let got: Vec<Batch> = rx.into_iter().map(|b| b.unwrap()).collect();
        assert_eq!(got.iter().map(|b| b.index).collect::<Vec<_>>(), vec![1, 2]);
        let mut seen = 0;
        for b in &got {
            assert_eq!(b.size, (16, 16));
            assert_eq!(b.pixels.len(), b.indices.len() * 3 * 16 * 16);
            for (i, c) in b.indices.iter().zip(&b.captions) {
                assert_eq!(*c, format!("row {i}"));
            }
            seen += b.indices.len() + b.skipped.len();
            assert!(b.skipped.iter().all(|s| s.contains("broken.png")), "{:?}", b.skipped);
        }
        assert_eq!(seen, 8);
    }
}
