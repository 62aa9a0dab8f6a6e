//! What a training sample is, before and after decoding: [`Pair`], [`Sample`] (a key, an image
//! file or bytes, a caption, its augmentation seed), a batch's [`Job`] and the prepared
//! [`Batch`]; [`Augment`]ations; and the [`Source`] trait every data format implements.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use zoo_nn::{ImageProcessor, Result, Rng};

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

/// Decodes, augments (deterministically per `seed`) and preprocesses one image file: its
/// height, width and pixel values `[3, H, W]`.
pub fn load_image(
    path: &Path,
    proc: &ImageProcessor,
    aug: Augment,
    seed: u64,
) -> Result<(usize, usize, Vec<f32>)> {
    augment(zoo_nn::open_image(path)?, proc, aug, seed)
}

/// Augments (deterministically per `seed`) and preprocesses a decoded image: its height, width
/// and pixel values `[3, H, W]`.
pub fn augment(
    mut img: image::DynamicImage,
    proc: &ImageProcessor,
    aug: Augment,
    seed: u64,
) -> Result<(usize, usize, Vec<f32>)> {
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
    proc.preprocess(&img)
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
    /// Its position in the source (a list's row; a stream's sample in the epoch), so a task can
    /// find what else it holds for it.
    pub index: usize,
    /// Seed of this sample's augmentation in this epoch.
    pub seed: u64,
}

impl Sample {
    /// Decodes, augments and preprocesses the image (height, width, values), or says why not
    /// (`path or key: reason`).
    pub fn pixels(
        &self,
        proc: &ImageProcessor,
        aug: Augment,
    ) -> std::result::Result<(usize, usize, Vec<f32>), String> {
        match &self.image {
            ImageData::File(path) => load_image(path, proc, aug, self.seed).map_err(|e| e.to_string()),
            ImageData::Bytes(_) => self
                .decode()
                .and_then(|img| augment(img, proc, aug, self.seed).map_err(|e| format!("{}: {e}", self.key))),
        }
    }

    /// Decodes the image as zero-shot does (`zoo_nn::open_image` for a file), or says why not
    /// (`path or key: reason`).
    pub fn decode(&self) -> std::result::Result<image::DynamicImage, String> {
        match &self.image {
            ImageData::File(path) => zoo_nn::open_image(path).map_err(|e| e.to_string()),
            ImageData::Bytes(bytes) => {
                zoo_nn::data::image::decode_image(bytes).map_err(|e| format!("{}: {e}", self.key))
            }
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

/// A prepared batch: pixel values `[B * 3 * H * W]` (or the decoded images) and the captions.
#[derive(Debug)]
pub struct Batch {
    /// Position of this batch in the epoch.
    pub index: usize,
    /// Flattened `[B, 3, H, W]` (empty when the workers only decode: [`Batch::images`]).
    pub pixels: Vec<f32>,
    /// The decoded images, when the workers only decode (`loader::Prepare::Decode`: a model
    /// that preprocesses each image at its own size); empty otherwise.
    pub images: Vec<image::DynamicImage>,
    /// `(H, W)` of each image (`(0, 0)` when none decoded).
    pub size: (usize, usize),
    /// Captions, in order.
    pub captions: Vec<String>,
    /// [`Sample::index`] of each image, in order.
    pub indices: Vec<usize>,
    /// [`Sample::key`] of each image, in order.
    pub keys: Vec<String>,
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
