//! Image preprocessing as transformers' PIL image processors do it, from
//! `preprocessor_config.json`: convert to RGB (transparency composited onto white), resize with
//! Pillow's exact resampling, centre-crop, rescale and normalise, channels first.

use crate::error::{NnError, Result};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `size` / `crop_size` of a preprocessor config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SizeSpec {
    /// Resize to exactly `height` x `width`.
    Exact {
        /// Output height.
        height: u32,
        /// Output width.
        width: u32,
    },
    /// Resize so the shorter side is `shortest_edge`, keeping the aspect ratio.
    ShortestEdge {
        /// The shorter side after resizing.
        shortest_edge: u32,
    },
    /// A plain integer, as feature-extractor era files write it (`"size": 224`): resolved when
    /// the file is read, as transformers' `get_size_dict` does (see
    /// [`PreprocessorConfig::from_file`]).
    Side(u32),
}

/// Per-channel mean/std, given as one number or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChannelValues {
    /// One value for every channel.
    One(f32),
    /// One per channel.
    Each(Vec<f32>),
}

impl ChannelValues {
    fn channel(&self, c: usize) -> f32 {
        match self {
            Self::One(v) => *v,
            Self::Each(v) => v.get(c).or(v.last()).copied().unwrap_or(0.0),
        }
    }
}

fn yes() -> bool {
    true
}
fn bicubic() -> u32 {
    3
}
fn inv255() -> f64 {
    1.0 / 255.0
}

/// The subset of `preprocessor_config.json` that decides pixel values (transformers' defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessorConfig {
    /// Resize at all.
    #[serde(default = "yes")]
    pub do_resize: bool,
    /// Target size.
    pub size: Option<SizeSpec>,
    /// PIL resampling filter: 2 bilinear, 3 bicubic (the default).
    #[serde(default = "bicubic")]
    pub resample: u32,
    /// Centre-crop after resizing.
    #[serde(default)]
    pub do_center_crop: bool,
    /// Crop size.
    pub crop_size: Option<SizeSpec>,
    /// Multiply by `rescale_factor`.
    #[serde(default = "yes")]
    pub do_rescale: bool,
    /// Usually 1/255.
    #[serde(default = "inv255")]
    pub rescale_factor: f64,
    /// Subtract `image_mean`, divide by `image_std`.
    #[serde(default = "yes")]
    pub do_normalize: bool,
    /// Per-channel mean.
    pub image_mean: Option<ChannelValues>,
    /// Per-channel std.
    pub image_std: Option<ChannelValues>,
    /// Centre-crop offsets rounded as torchvision's `CenterCrop` does (`round((h - ch) / 2)`,
    /// half to even) instead of transformers' floor: OpenCLIP's preprocessing.
    #[serde(skip)]
    pub crop_round_half_even: bool,
}

impl PreprocessorConfig {
    /// Square resize to `size` x `size` with mean = std = 0.5 (SigLIP / PaliGemma defaults), used
    /// when a checkpoint has no preprocessor_config.json.
    pub fn square(size: u32) -> Self {
        Self {
            do_resize: true,
            size: Some(SizeSpec::Exact { height: size, width: size }),
            resample: 3,
            do_center_crop: false,
            crop_size: None,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: Some(ChannelValues::One(0.5)),
            image_std: Some(ChannelValues::One(0.5)),
            crop_round_half_even: false,
        }
    }

    /// Reads `preprocessor_config.json`, legacy files included: an integer `size` is the
    /// shortest edge for the CLIP and SigLIP processors (`default_to_square = False` in
    /// transformers) and a square for the others; an integer `crop_size` is a square. The
    /// processor's name comes from `image_processor_type` or, in older files,
    /// `feature_extractor_type`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: serde_json::Value = crate::load::read_json(path)?;
        let mut config: Self = crate::load::from_json_value(path, raw.clone())?;
        let kind = ["image_processor_type", "feature_extractor_type"]
            .iter()
            .find_map(|k| raw.get(*k).and_then(|v| v.as_str()))
            .unwrap_or("")
            .to_lowercase();
        let shortest = kind.contains("clip") || kind.contains("siglip");
        if let Some(SizeSpec::Side(s)) = config.size {
            config.size = Some(if shortest {
                SizeSpec::ShortestEdge { shortest_edge: s }
            } else {
                SizeSpec::Exact { height: s, width: s }
            });
        }
        if let Some(SizeSpec::Side(s)) = config.crop_size {
            config.crop_size = Some(SizeSpec::Exact { height: s, width: s });
        }
        let std = match &config.image_std {
            Some(ChannelValues::One(v)) => vec![*v],
            Some(ChannelValues::Each(v)) => v.clone(),
            None => vec![],
        };
        if config.do_normalize && std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err(NnError::Config(format!(
                "{}: image_std {std:?}: every value must be finite and non-zero",
                path.display()
            )));
        }
        if !config.rescale_factor.is_finite() {
            return Err(NnError::Config(format!("{}: rescale_factor must be finite", path.display())));
        }
        Ok(config)
    }

    /// The `(height, width)` of the processed image, when the config fixes it.
    pub fn output_size(&self) -> Option<(u32, u32)> {
        let exact = |s: &Option<SizeSpec>| match s {
            Some(SizeSpec::Exact { height, width }) => Some((*height, *width)),
            Some(SizeSpec::ShortestEdge { shortest_edge }) => Some((*shortest_edge, *shortest_edge)),
            Some(SizeSpec::Side(s)) => Some((*s, *s)),
            None => None,
        };
        if self.do_center_crop { exact(&self.crop_size) } else { exact(&self.size) }
    }
}

/// Largest image file read (bytes).
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;
/// Largest decoded image (pixels): 100 megapixels, checked from the header before decoding.
pub const MAX_IMAGE_PIXELS: u64 = 100_000_000;
/// Largest resize output (pixels), checked before allocating it.
pub const MAX_RESIZE_PIXELS: u64 = 64_000_000;

/// Opens and decodes an image file (any format the `image` crate reads), naming the file in
/// errors. Only regular files up to [`MAX_IMAGE_FILE_BYTES`] are read (not a FIFO, not
/// `/dev/zero`), and images over [`MAX_IMAGE_PIXELS`] are refused from their header, before
/// any pixel is decoded.
pub fn open_image(path: &Path) -> Result<image::DynamicImage> {
    let bad = |reason: String| NnError::Image { path: path.to_path_buf(), reason };
    let meta = std::fs::metadata(path).map_err(|e| NnError::io(path, e))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() > MAX_IMAGE_FILE_BYTES {
        return Err(bad(format!("{} bytes: larger than the {MAX_IMAGE_FILE_BYTES}-byte limit", meta.len())));
    }
    let bytes = std::fs::read(path).map_err(|e| NnError::io(path, e))?;
    decode_image(&bytes).map_err(bad)
}

/// Decodes image bytes with [`MAX_IMAGE_PIXELS`] checked from the header first.
pub fn decode_image(bytes: &[u8]) -> std::result::Result<image::DynamicImage, String> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let (w, h) = reader.into_dimensions().map_err(|e| e.to_string())?;
    if u64::from(w) * u64::from(h) > MAX_IMAGE_PIXELS {
        return Err(format!("{w}x{h} pixels: more than the {MAX_IMAGE_PIXELS}-pixel limit"));
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(MAX_IMAGE_PIXELS * 8 + (64 << 20));
    reader.limits(limits);
    reader.decode().map_err(|e| e.to_string())
}

/// Turns images into `pixel_values`.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    config: PreprocessorConfig,
}

impl ImageProcessor {
    /// A processor for `config`.
    pub fn new(config: PreprocessorConfig) -> Self {
        Self { config }
    }

    /// The config.
    pub fn config(&self) -> &PreprocessorConfig {
        &self.config
    }

    /// Resizes and crops an 8-bit RGB image as Pillow would: the `uint8` pixels the model sees,
    /// before rescaling. Returns `(width, height, rgb bytes)`.
    pub fn resize_rgb8(&self, img: &image::RgbImage) -> Result<(u32, u32, Vec<u8>)> {
        let c = &self.config;
        let (w, h) = img.dimensions();
        let mut out = (w, h, img.as_raw().clone());
        if c.do_resize {
            let (nh, nw) = match c.size {
                Some(SizeSpec::Exact { height, width }) | Some(SizeSpec::Side(height @ width)) => {
                    (height, width)
                }
                Some(SizeSpec::ShortestEdge { shortest_edge: s }) => {
                    // transformers: short side = s, long side = int(s * long / short).
                    let (short, long) = if w <= h { (w, h) } else { (h, w) };
                    let new_long = (s as f64 * long as f64 / short as f64) as u32;
                    if w <= h { (new_long, s) } else { (s, new_long) }
                }
                None => {
                    return Err(NnError::Config("preprocessor config: do_resize without size".into()));
                }
            };
            if u64::from(nw) * u64::from(nh) > MAX_RESIZE_PIXELS {
                return Err(NnError::Config(format!(
                    "an image of {w}x{h} resizes to {nw}x{nh}, more than {MAX_RESIZE_PIXELS} pixels (check the preprocessor size, or the image's aspect ratio under shortest-edge resizing)"
                )));
            }
            out = (nw, nh, resize(&out.2, w, h, nw, nh, c.resample)?);
        }
        if c.do_center_crop {
            let Some(SizeSpec::Exact { height: ch, width: cw }) = c.crop_size else {
                return Err(NnError::Config(
                    "preprocessor config: do_center_crop needs crop_size {height, width}".into(),
                ));
            };
            out = center_crop(&out.2, out.0, out.1, cw, ch, c.crop_round_half_even);
        }
        Ok(out)
    }

    /// Preprocesses one image to `float[3, H, W]` (flattened, channels first).
    pub fn preprocess(&self, img: &image::DynamicImage) -> Result<(usize, usize, Vec<f32>)> {
        let rgb = to_rgb(img);
        let (w, h, bytes) = self.resize_rgb8(&rgb)?;
        let c = &self.config;
        let (w, h) = (w as usize, h as usize);
        let mut out = vec![0f32; 3 * h * w];
        let (mean, std) = (c.image_mean.clone(), c.image_std.clone());
        for ch in 0..3 {
            let (m, s) =
                (mean.as_ref().map_or(0.0, |v| v.channel(ch)), std.as_ref().map_or(1.0, |v| v.channel(ch)));
            for i in 0..h * w {
                let raw = bytes[i * 3 + ch] as f64;
                // As numpy: rescale in f64, cast to f32, normalise in f32.
                let mut v = if c.do_rescale { (raw * c.rescale_factor) as f32 } else { raw as f32 };
                if c.do_normalize {
                    v = (v - m) / s;
                }
                out[ch * h * w + i] = v;
            }
        }
        Ok((h, w, out))
    }

    /// Opens, decodes and preprocesses image files into one batch.
    ///
    /// # Shapes
    /// - output: `[N, 3, H, W]`
    pub fn batch_from_files(&self, paths: &[PathBuf], device: &Device) -> Result<Tensor<4>> {
        let images = paths.iter().map(|p| open_image(p)).collect::<Result<Vec<_>>>()?;
        self.batch(&images, device)
    }

    /// Preprocesses decoded images into one batch; they must come out the same size.
    pub fn batch(&self, images: &[image::DynamicImage], device: &Device) -> Result<Tensor<4>> {
        let mut data = Vec::new();
        let mut dims = None;
        for img in images {
            let (h, w, px) = self.preprocess(img)?;
            if dims.is_some_and(|d| d != (h, w)) {
                return Err(NnError::Config(format!(
                    "images preprocess to different sizes ({h}x{w} vs {:?}): the config resizes to no fixed size",
                    dims
                )));
            }
            dims = Some((h, w));
            data.extend(px);
        }
        let (h, w) = dims.ok_or_else(|| NnError::Config("no images given".into()))?;
        Ok(Tensor::from_data(TensorData::new(data, [images.len(), 3, h, w]), device))
    }
}

fn resize(rgb: &[u8], w: u32, h: u32, nw: u32, nh: u32, resample: u32) -> Result<Vec<u8>> {
    let filter = match resample {
        1 => Filter::Lanczos,
        2 => Filter::Bilinear,
        3 => Filter::Bicubic,
        4 => Filter::Box,
        5 => Filter::Hamming,
        other => {
            return Err(NnError::Config(format!(
                "preprocessor config: resample {other} is not supported (1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming)"
            )));
        }
    };
    if nw == 0 || nh == 0 || w == 0 || h == 0 {
        return Err(NnError::Config(format!("cannot resize {w}x{h} to {nw}x{nh}")));
    }
    Ok(pillow::resample(rgb, w as usize, h as usize, nw as usize, nh as usize, filter))
}

/// The convolution filters of Pillow's `Image.resize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Box (support 0.5).
    Box,
    /// Triangle (support 1).
    Bilinear,
    /// Hamming window (support 1).
    Hamming,
    /// Cubic with a = -0.5 (support 2): Pillow's BICUBIC.
    Bicubic,
    /// Lanczos-3 (support 3).
    Lanczos,
}

/// Pillow's resampling (`Resample.c`), reproduced exactly for 8-bit images and for 32-bit float
/// images (mode `"F"`). Both share `precompute_coeffs`: per-output-pixel filter weights in `f64`,
/// normalised to sum 1. The 8-bit path (`ImagingResample{Horizontal,Vertical}_8bpc`) turns them
/// into 22-bit fixed point and rounds and clips each pass to 8 bits; the float path
/// (`ImagingResample{Horizontal,Vertical}_32bpc`) accumulates `f64` sums of `f32` pixels times the
/// `f64` weights and stores each pass as `f32`. As in Pillow <= 12, the horizontal pass runs first,
/// over the input rows the vertical pass reads. (fast_image_resize follows Pillow-SIMD, whose
/// 16-bit coefficients differ from Pillow's by one or two levels on ~18% of pixels of our
/// fixtures; transformers' PIL processors run upstream Pillow.)
pub mod pillow {
    use super::Filter;

    const PRECISION_BITS: u32 = 32 - 8 - 2;

    impl Filter {
        fn support(self) -> f64 {
            match self {
                Filter::Box => 0.5,
                Filter::Bilinear | Filter::Hamming => 1.0,
                Filter::Bicubic => 2.0,
                Filter::Lanczos => 3.0,
            }
        }

        fn weight(self, x: f64) -> f64 {
            let sinc = |x: f64| {
                if x == 0.0 {
                    1.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x
                }
            };
            match self {
                Filter::Box => {
                    if x > -0.5 && x <= 0.5 {
                        1.0
                    } else {
                        0.0
                    }
                }
                Filter::Bilinear => {
                    let x = x.abs();
                    if x < 1.0 { 1.0 - x } else { 0.0 }
                }
                Filter::Hamming => {
                    let x = x.abs();
                    if x == 0.0 {
                        1.0
                    } else if x >= 1.0 {
                        0.0
                    } else {
                        let x = x * std::f64::consts::PI;
                        // Pillow writes the window's constants as C floats (`0.54f`, `0.46f`).
                        x.sin() / x * (0.54f32 as f64 + 0.46f32 as f64 * x.cos())
                    }
                }
                Filter::Bicubic => {
                    let a = -0.5;
                    let x = x.abs();
                    if x < 1.0 {
                        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                    } else if x < 2.0 {
                        (((x - 5.0) * x + 8.0) * x - 4.0) * a
                    } else {
                        0.0
                    }
                }
                Filter::Lanczos => {
                    if (-3.0..3.0).contains(&x) {
                        sinc(x) * sinc(x / 3.0)
                    } else {
                        0.0
                    }
                }
            }
        }
    }

    /// For each output index: first input index and number of taps (`bounds`), and its `ksize`
    /// weights (zero past the taps).
    struct Coeffs<W> {
        bounds: Vec<(usize, usize)>,
        ksize: usize,
        weights: Vec<W>,
    }

    /// Pillow's `precompute_coeffs` (no crop box): the normalised `f64` weights. When shrinking,
    /// the filter's support is scaled by the downscale factor (antialiasing).
    fn coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs<f64> {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0f64; out_size * ksize];
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C casts truncate toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
            let k = &mut weights[xx * ksize..][..xmax];
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate() {
                *kx = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
                ww += *kx;
            }
            if ww != 0.0 {
                k.iter_mut().for_each(|kx| *kx /= ww);
            }
            bounds.push((xmin, xmax));
        }
        Coeffs { bounds, ksize, weights }
    }

    /// A sample type Pillow resamples: its form of the weights and one output value from taps.
    trait Sample: Copy + Default {
        /// The weight type the passes multiply by.
        type Weight: Copy;
        /// From the normalised `f64` weights.
        fn weight(k: f64) -> Self::Weight;
        /// One output sample from `(input sample, weight)` taps, in order.
        fn convolve(taps: impl Iterator<Item = (Self, Self::Weight)>) -> Self;
    }

    /// 8 bits: `normalize_coeffs_8bpc` and the `_8bpc` passes' rounding and clipping.
    impl Sample for u8 {
        type Weight = i32;

        fn weight(k: f64) -> i32 {
            let fixed = k * (1u32 << PRECISION_BITS) as f64;
            if k < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 }
        }

        fn convolve(taps: impl Iterator<Item = (u8, i32)>) -> u8 {
            let ss = taps.fold(1i32 << (PRECISION_BITS - 1), |ss, (v, k)| ss + v as i32 * k);
            if ss >= (1 << PRECISION_BITS << 8) {
                255
            } else if ss <= 0 {
                0
            } else {
                (ss >> PRECISION_BITS) as u8
            }
        }
    }

    /// 32-bit float (mode `"F"`): the `_32bpc` passes, a `double` sum stored as `float`.
    impl Sample for f32 {
        type Weight = f64;

        fn weight(k: f64) -> f64 {
            k
        }

        fn convolve(taps: impl Iterator<Item = (f32, f64)>) -> f32 {
            taps.fold(0.0f64, |ss, (v, k)| ss + v as f64 * k) as f32
        }
    }

    /// `ImagingResampleInner` for `ch` interleaved channels of `w x h` samples.
    fn resample_channels<S: Sample>(
        src: &[S],
        ch: usize,
        (w, h): (usize, usize),
        (nw, nh): (usize, usize),
        filter: Filter,
    ) -> Vec<S> {
        let typed = |c: Coeffs<f64>| Coeffs {
            bounds: c.bounds,
            ksize: c.ksize,
            weights: c.weights.into_iter().map(S::weight).collect::<Vec<_>>(),
        };
        let horiz = typed(coeffs(w, nw, filter));
        let vert = typed(coeffs(h, nh, filter));
        // Rows of the input the vertical pass reads.
        let first = vert.bounds[0].0;
        let last = vert.bounds[nh - 1].0 + vert.bounds[nh - 1].1;
        let (mut img, mut iw, mut row0) = (src.to_vec(), w, 0usize);
        if nw != w {
            let rows = last - first;
            let mut out = vec![S::default(); nw * rows * ch];
            for y in 0..rows {
                let row = &src[(y + first) * w * ch..(y + first + 1) * w * ch];
                for (xx, &(xmin, xmax)) in horiz.bounds.iter().enumerate() {
                    let k = &horiz.weights[xx * horiz.ksize..][..xmax];
                    for c in 0..ch {
                        let taps = k.iter().enumerate().map(|(x, &kx)| (row[(x + xmin) * ch + c], kx));
                        out[(y * nw + xx) * ch + c] = S::convolve(taps);
                    }
                }
            }
            img = out;
            iw = nw;
            row0 = first;
        }
        if nh != h {
            let mut out = vec![S::default(); nw * nh * ch];
            for (yy, &(ymin, ymax)) in vert.bounds.iter().enumerate() {
                let k = &vert.weights[yy * vert.ksize..][..ymax];
                let ymin = ymin - row0;
                for x in 0..iw * ch {
                    let taps = k.iter().enumerate().map(|(y, &ky)| (img[(y + ymin) * iw * ch + x], ky));
                    out[yy * nw * ch + x] = S::convolve(taps);
                }
            }
            img = out;
        }
        img
    }

    /// Resizes packed RGB (`w * h * 3` bytes) to `nw x nh` as Pillow's `Image.resize` does.
    pub fn resample(rgb: &[u8], w: usize, h: usize, nw: usize, nh: usize, filter: Filter) -> Vec<u8> {
        resample_channels(rgb, 3, (w, h), (nw, nh), filter)
    }

    /// Resizes a row-major `w x h` float image to `nw x nh` as Pillow's `Image.resize` does for
    /// mode `"F"` (`Image.fromarray` of a float32 array): each pass accumulates in `f64` and
    /// stores `f32`.
    ///
    /// # Shapes
    /// - `img`: `[h, w]` (row-major); output `[nh, nw]`. Every size must be at least 1.
    pub fn resample_f32(img: &[f32], w: usize, h: usize, nw: usize, nh: usize, filter: Filter) -> Vec<f32> {
        resample_channels(img, 1, (w, h), (nw, nh), filter)
    }
}

/// RGB as transformers' `convert_to_rgb` makes it: images with transparency are composited onto
/// an opaque white background with Pillow's `alpha_composite` integer arithmetic; grey is
/// replicated to three channels.
pub fn to_rgb(img: &image::DynamicImage) -> image::RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = image::RgbImage::new(w, h);
    let div255 = |v: u32| ((v >> 8) + v) >> 8;
    for (src, dst) in rgba.pixels().zip(out.pixels_mut()) {
        let a = src[3] as u32;
        for c in 0..3 {
            dst[c] = if a == 0 {
                255
            } else {
                // Over white: coef1 = a*128, coef2 = (255-a)*128 (7 bits of extra precision).
                let t = src[c] as u32 * a * 128 + 255 * (255 - a) * 128;
                (div255(t + (0x80 << 7)) >> 7) as u8
            };
        }
    }
    out
}

/// transformers' centre crop: top = (h - ch) / 2, left = (w - cw) / 2 (floor); padding with zeros
/// where the image is smaller than the crop.
fn center_crop(rgb: &[u8], w: u32, h: u32, cw: u32, ch: u32, half_even: bool) -> (u32, u32, Vec<u8>) {
    // transformers: floor((h - ch) / 2); torchvision: round((h - ch) / 2), ties to even.
    let offset = |d: i64| {
        let floor = d.div_euclid(2);
        if half_even && d.rem_euclid(2) == 1 && floor.rem_euclid(2) == 1 { floor + 1 } else { floor }
    };
    let top = offset(h as i64 - ch as i64);
    let left = offset(w as i64 - cw as i64);
    let mut out = vec![0u8; (cw * ch * 3) as usize];
    for y in 0..ch as i64 {
        for x in 0..cw as i64 {
            let (sy, sx) = (y + top, x + left);
            if sy >= 0 && sx >= 0 && sy < h as i64 && sx < w as i64 {
                let s = ((sy as u32 * w + sx as u32) * 3) as usize;
                let d = ((y as u32 * cw + x as u32) * 3) as usize;
                out[d..d + 3].copy_from_slice(&rgb[s..s + 3]);
            }
        }
    }
    (cw, ch, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_and_crop() {
        let img = image::RgbImage::from_fn(40, 20, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let cfg: PreprocessorConfig = serde_json::from_str(
            r#"{"size": {"shortest_edge": 10}, "do_center_crop": true, "crop_size": {"height": 10, "width": 10}}"#,
        )
        .unwrap();
        let p = ImageProcessor::new(cfg);
        let (w, h, px) = p.resize_rgb8(&img).unwrap();
        assert_eq!((w, h, px.len()), (10, 10, 300));
        let (h, w, v) = p.preprocess(&image::DynamicImage::ImageRgb8(img)).unwrap();
        assert_eq!((h, w, v.len()), (10, 10, 300));
        // No normalisation configured: values are pixels / 255, third channel constant 7/255.
        assert!((v[200] - 7.0 / 255.0).abs() < 1e-7);
    }

    /// Every case of scripts/make_pillow_f32_fixture.py: Pillow's mode "F" resize, bit for bit.
    #[test]
    fn float_resize_equals_pillow() {
        let path = crate::testing::fixture("pillow-f32").join("resize.json");
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let floats = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
        };
        let size = |v: &serde_json::Value| -> (usize, usize) {
            (v[0].as_u64().unwrap() as usize, v[1].as_u64().unwrap() as usize)
        };
        let cases = r["cases"].as_array().unwrap();
        assert!(cases.len() >= 10);
        for (i, case) in cases.iter().enumerate() {
            let img = &r["images"][case["image"].as_u64().unwrap() as usize];
            let ((w, h), (nw, nh)) = (size(&img["size"]), size(&case["out_size"]));
            let filter = match case["filter"].as_str().unwrap() {
                "bilinear" => Filter::Bilinear,
                "bicubic" => Filter::Bicubic,
                "lanczos" => Filter::Lanczos,
                "box" => Filter::Box,
                "hamming" => Filter::Hamming,
                other => panic!("filter {other}"),
            };
            let got = pillow::resample_f32(&floats(&img["values"]), w, h, nw, nh, filter);
            let want = floats(&case["output"]);
            let max = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let differ = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            println!("case {i}: {w}x{h} -> {nw}x{nh} {filter:?}: {differ} values differ, largest {max:e}");
            assert_eq!((got.len(), differ), (want.len(), 0), "case {i}: {w}x{h} -> {nw}x{nh} {filter:?}");
        }
    }

    #[test]
    fn corrupt_image_names_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.png");
        std::fs::write(&path, b"\x89PNG not really").unwrap();
        let e = open_image(&path).unwrap_err().to_string();
        assert!(e.contains("broken.png"), "{e}");
    }
}
