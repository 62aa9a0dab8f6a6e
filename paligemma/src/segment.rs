//! Segmentation output: PaliGemma answers `segment CLASS` with groups of four `<locYYYY>` tokens
//! (a box, as in detection), sixteen `<seg###>` codes and the class name, separated by ` ; `. The
//! codes are decoded to a 64x64 mask by big_vision's VQ-VAE decoder (`vae-oid.npz`, the file the
//! PaliGemma space and big_vision use; read there by `_get_reconstruct_masks`), resized bilinearly
//! into the box; `> 0` is inside.
//!
//! Boxes and masks are made as big_vision's PaliGemma segmentation evaluator makes them (the code
//! behind the published RefCOCO numbers: `big_vision/evaluators/proj/paligemma/transfers/segmentation.py`,
//! `Evaluator.run`, commit `0127fb6b337ee2a27bf4e54dea79cff176527356`), pixel for pixel: a box side is
//! `int(loc / 1023 * side)` in float64, and the float32 64x64 mask is resized into the box by
//! Pillow's mode `"F"` BILINEAR resize (antialiased when shrinking), then thresholded `> 0`.
//! tests/fixtures/paligemma-seg/bigvision_masks.json holds masks made by that code.
//!
//! Axis letters: `B` groups, `K` codebook entries (128), `D` code width (512).

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use std::io::Read;
use std::path::{Path, PathBuf};
use zoo_nn::data::image::{Filter, pillow};
use zoo_nn::{NnError, Result};

/// The file name of the decoder's weights, as big_vision and the PaliGemma space ship it.
pub const SEG_MODEL_FILE: &str = "vae-oid.npz";

/// The mask side the decoder writes.
pub const MASK_SIDE: usize = 64;

/// One `<loc>`x4 `<seg>`x16 label group, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentGroup {
    /// The class name.
    pub label: String,
    /// `[x1, y1, x2, y2]` in whole pixels, as big_vision's segmentation evaluator computes them:
    /// `int(loc / 1023 * side)`, the division and product in `f64` and the result truncated
    /// (`<loc1023>` is the image's edge). The box is empty when `x2 <= x1` or `y2 <= y1`.
    pub bbox: [u32; 4],
    /// The 16 codebook indices, row-major over a 4x4 grid.
    pub codes: [u32; 16],
}

/// What [`parse_segments`] found: the well-formed groups and one message per malformed one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedSegments {
    /// Groups with a box and 16 codes.
    pub groups: Vec<SegmentGroup>,
    /// One line per group that could not be read, naming it and what was wrong.
    pub errors: Vec<String>,
}

/// Parses the groups of a `segment` answer for an image of `width` x `height`. A malformed group
/// (not 4 `<loc>`, not 16 `<seg>`, a value out of range, tokens after the label) is reported in
/// `errors` and the others are still returned.
pub fn parse_segments(text: &str, width: u32, height: u32) -> ParsedSegments {
    let token = regex::Regex::new(r"^<(loc|seg)(\d+)>").expect("valid regex");
    let mut out = ParsedSegments::default();
    for (i, chunk) in text.split(';').enumerate() {
        let chunk = chunk.trim();
        if chunk.is_empty() {
            continue;
        }
        let shown: String = chunk.chars().take(60).collect();
        let ellipsis = if shown.len() < chunk.len() { "…" } else { "" };
        let fail = |why: String| format!("segment group {} ('{shown}{ellipsis}'): {why}", i + 1);
        let (mut locs, mut codes) = (Vec::new(), Vec::new());
        let mut rest = chunk;
        let mut error = None;
        while let Some(c) = token.captures(rest) {
            let value: u32 = c[2].parse().unwrap_or(u32::MAX);
            match &c[1] {
                "loc" if !codes.is_empty() => error = Some("a <loc> token after the <seg> codes".to_string()),
                "loc" if value > 1023 || c[2].len() != 4 => {
                    error = Some(format!("<loc{}> is not 0000..1023", &c[2]))
                }
                "loc" => locs.push(value),
                _ if value > 127 || c[2].len() != 3 => {
                    error = Some(format!("<seg{}> is not 000..127", &c[2]))
                }
                _ => codes.push(value),
            }
            rest = rest[c[0].len()..].trim_start();
        }
        let label = rest.trim();
        if error.is_none() {
            error = if locs.len() != 4 {
                Some(format!("{} <loc> tokens, expected 4", locs.len()))
            } else if codes.len() != 16 {
                Some(format!("{} <seg> codes, expected 16", codes.len()))
            } else if label.contains("<loc") || label.contains("<seg") {
                Some("<loc>/<seg> tokens after the label".to_string())
            } else {
                None
            };
        }
        if let Some(why) = error {
            out.errors.push(fail(why));
            continue;
        }
        // numpy: `tokens / 1023` (float64), times the side, `int()` truncates (both are >= 0).
        let px = |v: u32, side: u32| ((v as f64 / 1023.0) * side as f64) as u32;
        out.groups.push(SegmentGroup {
            label: label.to_string(),
            bbox: [px(locs[1], width), px(locs[0], height), px(locs[3], width), px(locs[2], height)],
            codes: codes.try_into().expect("16 codes checked above"),
        });
    }
    out
}

/// Whether a prompt asks for segmentation (`segment CLASS ; CLASS`).
pub fn is_segment_prompt(prompt: &str) -> bool {
    prompt.trim_start().starts_with("segment ")
}

/// A residual block of the mask decoder: `x + conv_2(relu(conv_1(relu(conv_0(x)))))`
/// (`decoder.{2,3}.net.{0,2,4}` in the npz).
#[derive(Module, Debug)]
pub struct MaskResBlock {
    /// 3x3, 128 -> 128.
    pub conv_0: Conv2d,
    /// 3x3, 128 -> 128.
    pub conv_1: Conv2d,
    /// 1x1, 128 -> 128.
    pub conv_2: Conv2d,
}

/// big_vision's VQ-VAE mask decoder (the decoder half of `vae-oid`). Field names follow
/// big_vision's Flax modules; [`SegmentationDecoder::KEYS`] maps them to the npz's PyTorch keys.
#[derive(Module, Debug)]
pub struct SegmentationDecoder {
    /// The codebook, `[K, D]` (`_vq_vae._embedding`).
    pub embeddings: Param<Tensor<2>>,
    /// 1x1, 512 -> 128 (`decoder.0`).
    pub conv_0: Conv2d,
    /// Two residual blocks (`decoder.2`, `decoder.3`).
    pub res_blocks: Vec<MaskResBlock>,
    /// 4x4 stride-2 transposed convs to 128, 64, 32, 16 channels (`decoder.4/6/8/10`).
    pub conv_transposes: Vec<ConvTranspose2d>,
    /// 1x1, 16 -> 1 (`decoder.12`).
    pub conv_1: Conv2d,
}

fn conv(cin: usize, cout: usize, k: usize, device: &Device) -> Conv2d {
    let pad = k / 2;
    Conv2dConfig::new([cin, cout], [k, k])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .init(device)
}

impl SegmentationDecoder {
    /// Codebook size.
    pub const CODES: usize = 128;
    /// Code width.
    pub const WIDTH: usize = 512;
    /// Channels of the transposed convs.
    const UP: [usize; 5] = [128, 128, 64, 32, 16];

    /// A randomly initialised decoder.
    pub fn new(device: &Device) -> Self {
        let embeddings =
            Tensor::random([Self::CODES, Self::WIDTH], burn::tensor::Distribution::Default, device);
        let block = || MaskResBlock {
            conv_0: conv(128, 128, 3, device),
            conv_1: conv(128, 128, 3, device),
            conv_2: conv(128, 128, 1, device),
        };
        Self {
            embeddings: Param::from_tensor(embeddings),
            conv_0: conv(Self::WIDTH, 128, 1, device),
            res_blocks: vec![block(), block()],
            conv_transposes: (0..4)
                .map(|i| {
                    ConvTranspose2dConfig::new([Self::UP[i], Self::UP[i + 1]], [4, 4])
                        .with_stride([2, 2])
                        .with_padding([1, 1])
                        .init(device)
                })
                .collect(),
            conv_1: conv(16, 1, 1, device),
        }
    }

    /// Decodes groups of 16 codes to masks in about `[-1, 1]`.
    ///
    /// # Shapes
    /// - `codes`: `[B][16]`, each `< 128`; output `[B, 64, 64]`
    pub fn forward(&self, codes: &[[u32; 16]]) -> Tensor<3> {
        let device = self.embeddings.device();
        let b = codes.len();
        let flat: Vec<i64> = codes.iter().flatten().map(|&c| c as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(flat, [b * 16]), &device);
        // [B*16, D] -> [B, 4, 4, D] (row-major grid) -> [B, D, 4, 4]
        let mut x =
            self.embeddings.val().select(0, idx).reshape([b, 4, 4, Self::WIDTH]).permute([0, 3, 1, 2]);
        x = relu(self.conv_0.forward(x));
        for r in &self.res_blocks {
            let h = relu(r.conv_0.forward(x.clone()));
            let h = relu(r.conv_1.forward(h));
            x = x + r.conv_2.forward(h);
        }
        for t in &self.conv_transposes {
            x = relu(t.forward(x));
        }
        self.conv_1.forward(x).reshape([b, MASK_SIDE, MASK_SIDE])
    }

    /// `(npz key, shape)` of every weight, in the npz's PyTorch layouts (conv `[out, in, kh, kw]`,
    /// transposed conv `[in, out, kh, kw]`).
    pub fn keys() -> Vec<(String, Vec<usize>)> {
        let mut keys = vec![("_vq_vae._embedding".to_string(), vec![Self::CODES, Self::WIDTH])];
        // A conv's bias has `out` = shape[0] entries, a transposed conv's shape[1].
        let mut conv = |name: String, shape: [usize; 4], transposed: bool| {
            keys.push((format!("{name}.bias"), vec![shape[usize::from(transposed)]]));
            keys.push((format!("{name}.weight"), shape.to_vec()));
        };
        conv("decoder.0".into(), [128, Self::WIDTH, 1, 1], false);
        for blk in [2, 3] {
            conv(format!("decoder.{blk}.net.0"), [128, 128, 3, 3], false);
            conv(format!("decoder.{blk}.net.2"), [128, 128, 3, 3], false);
            conv(format!("decoder.{blk}.net.4"), [128, 128, 1, 1], false);
        }
        for (i, idx) in [4, 6, 8, 10].into_iter().enumerate() {
            conv(format!("decoder.{idx}"), [Self::UP[i], Self::UP[i + 1], 4, 4], true);
        }
        conv("decoder.12".into(), [1, 16, 1, 1], false);
        keys
    }

    /// Loads `vae-oid.npz`: every key checked for presence, dtype (float32 or float64) and shape
    /// before its data is read; all missing keys are named at once; other keys (the encoder) are
    /// ignored.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bad = |reason: String| NnError::Load { path: path.to_path_buf(), reason };
        let file = std::fs::File::open(path).map_err(|e| NnError::io(path, e))?;
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| bad(format!("not an npz (zip) archive: {e}")))?;
        let keys = Self::keys();
        let missing: Vec<String> = keys
            .iter()
            .filter(|(k, _)| zip.index_for_name(&npyz::npz::file_name_from_array_name(k)).is_none())
            .map(|(k, _)| k.clone())
            .collect();
        if !missing.is_empty() {
            return Err(NnError::MissingKeys { dir: path.to_path_buf(), keys: missing });
        }
        let mut values = std::collections::HashMap::new();
        for (key, shape) in &keys {
            let entry = zip
                .by_name(&npyz::npz::file_name_from_array_name(key))
                .map_err(|e| bad(format!("array '{key}': {e}")))?;
            values.insert(key.clone(), read_array(entry, path, key, shape)?);
        }
        let mut take = |key: &str| -> Tensor<1> {
            let v = values.remove(key).expect("every key was read above");
            let n = v.len();
            Tensor::<1>::from_data(TensorData::new(v, [n]), device)
        };
        let mut dec = Self::new(device);
        let mut set_conv = |w: &mut Param<Tensor<4>>, b: &mut Option<Param<Tensor<1>>>, name: &str| {
            let dims = w.dims();
            *w = Param::from_tensor(take(&format!("{name}.weight")).reshape(dims));
            *b = Some(Param::from_tensor(take(&format!("{name}.bias"))));
        };
        set_conv(&mut dec.conv_0.weight, &mut dec.conv_0.bias, "decoder.0");
        for (blk, r) in [2, 3].into_iter().zip(dec.res_blocks.iter_mut()) {
            set_conv(&mut r.conv_0.weight, &mut r.conv_0.bias, &format!("decoder.{blk}.net.0"));
            set_conv(&mut r.conv_1.weight, &mut r.conv_1.bias, &format!("decoder.{blk}.net.2"));
            set_conv(&mut r.conv_2.weight, &mut r.conv_2.bias, &format!("decoder.{blk}.net.4"));
        }
        for (idx, t) in [4, 6, 8, 10].into_iter().zip(dec.conv_transposes.iter_mut()) {
            set_conv(&mut t.weight, &mut t.bias, &format!("decoder.{idx}"));
        }
        set_conv(&mut dec.conv_1.weight, &mut dec.conv_1.bias, "decoder.12");
        let emb = take("_vq_vae._embedding").reshape([Self::CODES, Self::WIDTH]);
        dec.embeddings = Param::from_tensor(emb);
        Ok(dec)
    }
}

/// One npy array, its header checked against `shape` before the data is read.
fn read_array(entry: impl Read, path: &Path, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let bad = |reason: String| NnError::Load {
        path: path.to_path_buf(),
        reason: format!("array '{key}': {reason}"),
    };
    let npy = npyz::NpyFile::new(entry).map_err(|e| bad(format!("not an npy array: {e}")))?;
    let actual: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if actual != shape {
        return Err(NnError::Shape {
            path: path.to_path_buf(),
            key: key.to_string(),
            expected: shape.to_vec(),
            actual,
        });
    }
    if npy.order() != npyz::Order::C {
        return Err(bad("stored in Fortran order, expected C order (np.ascontiguousarray)".into()));
    }
    let dtype = npy.dtype().descr();
    let v: Vec<f32> = match dtype.as_str() {
        "'<f4'" => npy.into_vec::<f32>().map_err(|e| bad(e.to_string()))?,
        "'<f8'" => {
            npy.into_vec::<f64>().map_err(|e| bad(e.to_string()))?.into_iter().map(|x| x as f32).collect()
        }
        _ => {
            return Err(NnError::Dtype {
                path: path.to_path_buf(),
                key: key.to_string(),
                expected: "float32, float64 (little-endian)".into(),
                actual: dtype,
            });
        }
    };
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(bad(format!("element {i} is {}", v[i])));
    }
    Ok(v)
}

/// The mask of a whole `width` x `height` image for one group, row-major, as big_vision's
/// segmentation evaluator makes it: the float32 64x64 `mask` resized into the box by Pillow's
/// mode `"F"` BILINEAR resize (`PIL.Image.fromarray(m64).resize([x2 - x1, y2 - y1])`:
/// antialiased when shrinking, each pass accumulated in `f64` and stored as `f32`), `> 0` inside,
/// pasted at `[y1..y2, x1..x2]` (the part of a box outside the image is dropped). An empty box
/// (`x2 <= x1` or `y2 <= y1`) gives an empty mask.
///
/// # Shapes
/// - `mask`: `[64, 64]` (row-major); output `[height, width]`
pub fn place_mask(mask: &[f32], bbox: [u32; 4], width: u32, height: u32) -> Vec<bool> {
    let (w, h) = (width as usize, height as usize);
    let mut out = vec![false; w * h];
    let [x1, y1, x2, y2] = bbox.map(|v| v as usize);
    if x2 <= x1 || y2 <= y1 || x1 >= w || y1 >= h {
        return out;
    }
    let (bw, bh) = (x2 - x1, y2 - y1);
    let resized = pillow::resample_f32(mask, MASK_SIDE, MASK_SIDE, bw, bh, Filter::Bilinear);
    for y in y1..y2.min(h) {
        for x in x1..x2.min(w) {
            out[y * w + x] = resized[(y - y1) * bw + (x - x1)] > 0.0;
        }
    }
    out
}

/// COCO's uncompressed run-length encoding of a row-major `height` x `width` mask: run lengths
/// over the column-major pixels, starting with a run of 0s (possibly empty).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CocoRle {
    /// `[height, width]`.
    pub size: [u32; 2],
    /// Alternating runs of 0s and 1s.
    pub counts: Vec<u32>,
}

impl CocoRle {
    /// Encodes a row-major mask.
    pub fn encode(mask: &[bool], width: u32, height: u32) -> Self {
        let (w, h) = (width as usize, height as usize);
        let mut counts = Vec::new();
        let (mut cur, mut run) = (false, 0u32);
        for x in 0..w {
            for y in 0..h {
                if mask[y * w + x] != cur {
                    counts.push(run);
                    cur = !cur;
                    run = 0;
                }
                run += 1;
            }
        }
        counts.push(run);
        Self { size: [height, width], counts }
    }

    /// The row-major mask back.
    pub fn decode(&self) -> Vec<bool> {
        let [h, w] = self.size.map(|v| v as usize);
        let mut out = vec![false; w * h];
        let mut i = 0usize;
        for (k, &n) in self.counts.iter().enumerate() {
            for j in i..(i + n as usize).min(w * h) {
                out[(j % h) * w + j / h] = k % 2 == 1;
            }
            i += n as usize;
        }
        out
    }
}

/// One decoded mask, as `generate --json` prints it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SegmentMask {
    /// The class name.
    pub label: String,
    /// `[x1, y1, x2, y2]` in whole pixels (see [`SegmentGroup::bbox`]).
    #[serde(rename = "box")]
    pub bbox: [u32; 4],
    /// The whole-image mask.
    pub mask_rle: CocoRle,
}

/// Decodes every group of `parsed` for a `width` x `height` image: one decoder call for all.
pub fn decode_masks(
    decoder: &SegmentationDecoder,
    parsed: &ParsedSegments,
    width: u32,
    height: u32,
) -> Vec<SegmentMask> {
    if parsed.groups.is_empty() {
        return Vec::new();
    }
    let codes: Vec<[u32; 16]> = parsed.groups.iter().map(|g| g.codes).collect();
    let m64 = zoo_nn::host::to_vec(decoder.forward(&codes));
    parsed
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let m = &m64[i * MASK_SIDE * MASK_SIDE..(i + 1) * MASK_SIDE * MASK_SIDE];
            let full = place_mask(m, g.bbox, width, height);
            SegmentMask {
                label: g.label.clone(),
                bbox: g.bbox,
                mask_rle: CocoRle::encode(&full, width, height),
            }
        })
        .collect()
}

/// Where `vae-oid.npz` is: `explicit` (`--seg-model`) when given, else next to the checkpoint,
/// else any snapshot in the HF cache `cache` that holds it (a model or a space).
pub fn find_seg_model(explicit: Option<&Path>, model_dir: &Path, cache: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let local = model_dir.join(SEG_MODEL_FILE);
    if local.is_file() {
        return Some(local);
    }
    let cache = cache?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .filter_map(|repo| std::fs::read_dir(repo.path().join("snapshots")).ok())
        .flat_map(|snaps| snaps.flatten().map(|s| s.path().join(SEG_MODEL_FILE)))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(locs: [u32; 4], codes: &[u32], label: &str) -> String {
        let mut s: String = locs.iter().map(|v| format!("<loc{v:04}>")).collect();
        s.extend(codes.iter().map(|c| format!("<seg{c:03}>")));
        s + " " + label
    }

    #[test]
    fn parses_groups_and_reports_malformed_ones() {
        let ok = group([0, 256, 512, 1023], &[5; 16], "cat");
        let short = group([10, 20, 30, 40], &[1; 7], "dog");
        let text = format!(
            "{ok} ; {short} ; <loc0001><loc0002> bird ; {}",
            group([0, 0, 512, 512], &[127; 16], "big cat")
        );
        let p = parse_segments(&text, 200, 100);
        assert_eq!(p.groups.len(), 2);
        assert_eq!(p.groups[0], SegmentGroup { label: "cat".into(), bbox: [50, 0, 200, 50], codes: [5; 16] });
        assert_eq!(p.groups[1].label, "big cat");
        assert_eq!(p.errors.len(), 2, "{:?}", p.errors);
        assert!(
            p.errors[0].contains("group 2") && p.errors[0].contains("7 <seg> codes, expected 16"),
            "{}",
            p.errors[0]
        );
        assert!(p.errors[1].contains("group 3") && p.errors[1].contains("2 <loc> tokens"), "{}", p.errors[1]);
        assert!(parse_segments("", 10, 10) == ParsedSegments::default());
        let bad = parse_segments(&group([1, 2, 3, 4], &[200; 16], "x"), 10, 10);
        assert!(bad.groups.is_empty() && bad.errors[0].contains("<seg200> is not 000..127"));
        assert!(is_segment_prompt("segment cat") && !is_segment_prompt("detect cat"));
    }

    #[test]
    fn boxes_truncate_in_f64_like_big_vision() {
        // y1 = int(3/1023 * 512) = int(1.50) = 1; x1 = int(512/1023 * 5) = int(2.50) = 2;
        // y2 = int(512/1023 * 512) = 256; x2 = <loc1023> = the width.
        let p = parse_segments(&group([3, 512, 512, 1023], &[0; 16], "a"), 5, 512);
        assert_eq!(p.groups[0].bbox, [2, 1, 5, 256]);
        // 279 * 55 / 1023 is 15 exactly, but 279 / 1023 * 55 in f64 is just below: numpy gives 14.
        let p = parse_segments(&group([279, 279, 1023, 1023], &[0; 16], "a"), 55, 55);
        assert_eq!(p.groups[0].bbox, [14, 14, 55, 55]);
    }

    #[test]
    fn rle_round_trips_column_major() {
        let (w, h) = (3u32, 2u32);
        // row-major: [[1,0,0],[1,1,0]] -> column-major 1,1,0,1,0,0 -> runs 0,2,1,1,2
        let m = vec![true, false, false, true, true, false];
        let r = CocoRle::encode(&m, w, h);
        assert_eq!(r.counts, vec![0, 2, 1, 1, 2]);
        assert_eq!(r.size, [2, 3]);
        assert_eq!(r.decode(), m);
    }

    #[test]
    fn a_mask_fills_its_box_only() {
        let full = place_mask(&vec![1.0; MASK_SIDE * MASK_SIDE], [2, 1, 5, 3], 8, 4);
        let inside: Vec<usize> = (0..32).filter(|&i| full[i]).collect();
        assert_eq!(inside, vec![10, 11, 12, 18, 19, 20]);
        assert!(place_mask(&vec![1.0; 4096], [5, 1, 2, 3], 8, 4).iter().all(|&b| !b));
    }
}
