//! Image-text pairs held in memory: CSV/TSV / JSONL files (`image` relative to the file,
//! `caption`) or a folder of images with same-named `.txt` captions; a seeded held-out split.

use super::sample::{ImageData, Job, Pair, Sample, Source, shuffle};
use super::stream::SourceOptions;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use zoo_nn::{NnError, Result, Rng};

/// What loading a dataset skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Skipped {
    /// Rows whose image is missing or cannot be decoded.
    pub bad_images: Vec<String>,
    /// Rows with an empty caption.
    pub empty_captions: usize,
}

/// Splits a CSV line into fields (double quotes, `""` escapes).
pub fn csv_fields(line: &str) -> Vec<String> {
    split_fields(line, ',')
}

/// Splits a line at `sep` (double quotes, `""` escapes).
pub fn split_fields(line: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (c, false) if c == sep => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Reads pairs from a CSV or JSONL file or a folder. Images are checked to decode; rows that do
/// not are skipped and counted (or, with `strict`, an error naming the row).
pub fn load_pairs(path: &Path, strict: bool) -> Result<(Vec<Pair>, Skipped)> {
    load_pairs_with(path, strict, &SourceOptions::default())
}

/// Image files a folder dataset may hold.
const FOLDER_IMAGE_EXTS: [&str; 7] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tiff"];

/// Every file under `dir`, sorted (img2dataset's `00000/000000012.jpg` trees included).
fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<()> {
    if depth > 16 {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| NnError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out, depth + 1)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// [`load_pairs`] with the caption key and CSV layout of `opts`:
/// - a folder with `metadata.jsonl` (HF imagefolder: `file_name`, `text`);
/// - a folder, searched recursively, of images with a same-named `.txt` caption or `.json`
///   (`--caption-key`, else `caption`): img2dataset's output;
/// - a CSV/TSV file (open_clip: tab-separated `filepath` / `title`; or `image` / `caption`);
/// - a JSONL file (`image`, `caption` or `--caption-key`).
pub fn load_pairs_with(path: &Path, strict: bool, opts: &SourceOptions) -> Result<(Vec<Pair>, Skipped)> {
    let mut pairs = Vec::new();
    let mut missing_captions = 0usize;
    let caption_field = opts.format.caption_key.as_deref().unwrap_or("caption");
    if path.is_dir() && path.join("metadata.jsonl").is_file() {
        let meta = path.join("metadata.jsonl");
        let text = zoo_nn::load::read_text(&meta, 4 << 30)?;
        let field = opts.format.caption_key.as_deref().unwrap_or("text");
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| NnError::Config(format!("{}:{}: invalid JSON: {e}", meta.display(), i + 1)))?;
            let Some(file) = v["file_name"].as_str() else {
                return Err(NnError::Config(format!("{}:{}: no \"file_name\"", meta.display(), i + 1)));
            };
            match v[field].as_str() {
                Some(c) => pairs.push(Pair { image: path.join(file), caption: c.trim().to_string() }),
                None if opts.every_row => pairs.push(Pair { image: path.join(file), caption: String::new() }),
                None => missing_captions += 1,
            }
        }
    } else if path.is_dir() {
        let mut files = Vec::new();
        walk(path, &mut files, 0)?;
        for image in files {
            let ext = image.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
            if !FOLDER_IMAGE_EXTS.contains(&ext.as_str()) {
                continue;
            }
            let (txt, json) = (image.with_extension("txt"), image.with_extension("json"));
            let caption = if opts.format.caption_key.is_none() && txt.is_file() {
                Some(std::fs::read_to_string(&txt).map_err(|e| NnError::io(&txt, e))?)
            } else if json.is_file() {
                let v: serde_json::Value = zoo_nn::read_json(&json)?;
                v[caption_field].as_str().map(str::to_string)
            } else {
                None
            };
            match caption {
                Some(c) => pairs.push(Pair { image, caption: c.trim().to_string() }),
                None if opts.every_row => pairs.push(Pair { image, caption: String::new() }),
                None => missing_captions += 1,
            }
        }
    } else {
        // A caption file of 4 GiB is tens of millions of pairs; more is not a data file.
        let text = zoo_nn::load::read_text(path, 4 << 30)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let is_jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
        if is_jsonl {
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                    NnError::Config(format!("{}:{}: invalid JSON: {e}", path.display(), i + 1))
                })?;
                let caption = v[caption_field].as_str().or(opts.every_row.then_some(""));
                let (Some(image), Some(caption)) = (v["image"].as_str(), caption) else {
                    return Err(NnError::Config(format!(
                        "{}:{}: each line needs string fields \"image\" and \"{caption_field}\"",
                        path.display(),
                        i + 1
                    )));
                };
                pairs.push(Pair { image: base.join(image), caption: caption.to_string() });
            }
        } else {
            let tsv = path.extension().is_some_and(|e| e == "tsv");
            let sep = opts.format.csv_separator.unwrap_or(if tsv { '\t' } else { ',' });
            let mut lines = text.lines();
            let header = split_fields(lines.next().unwrap_or_default(), sep);
            let col = |name: &str| header.iter().position(|h| h.trim() == name);
            let pick = |given: &Option<String>, defaults: [&str; 2]| match given {
                Some(k) => col(k),
                None => defaults.iter().find_map(|d| col(d)),
            };
            let (Some(ic), Some(cc)) = (
                pick(&opts.format.csv_img_key, ["filepath", "image"]),
                pick(&opts.format.csv_caption_key, ["title", "caption"]),
            ) else {
                return Err(NnError::Config(format!(
                    "{}: no image / caption columns {} (found {header:?}, separator {sep:?}; see --csv-img-key, --csv-caption-key, --csv-separator)",
                    path.display(),
                    match (&opts.format.csv_img_key, &opts.format.csv_caption_key) {
                        (Some(i), Some(c)) => format!("\"{i}\" / \"{c}\""),
                        _ => "(filepath/title or image/caption)".to_string(),
                    }
                )));
            };
            for line in lines.filter(|l| !l.trim().is_empty()) {
                let f = split_fields(line, sep);
                let caption = f.get(cc).cloned().or(opts.every_row.then(String::new));
                if let (Some(image), Some(caption)) = (f.get(ic), caption) {
                    pairs.push(Pair { image: base.join(image.trim()), caption });
                }
            }
        }
    }
    if strict && missing_captions > 0 {
        return Err(NnError::Config(format!(
            "{}: {missing_captions} image(s) without a caption (--strict)",
            path.display()
        )));
    }
    let mut skipped = Skipped { empty_captions: missing_captions, ..Default::default() };
    let mut kept = Vec::with_capacity(pairs.len());
    if opts.every_row {
        // Every row goes on to the workers, which skip and report images that do not decode.
        if pairs.is_empty() {
            return Err(NnError::Config(format!("{}: no rows", path.display())));
        }
        return Ok((pairs, skipped));
    }
    for p in pairs {
        if p.caption.trim().is_empty() {
            if strict {
                return Err(NnError::Config(format!("{}: empty caption (--strict)", p.image.display())));
            }
            skipped.empty_captions += 1;
            continue;
        }
        // --strict decodes every image now; otherwise the header is read here and the full
        // decode happens in the loader's workers, which skip and report what fails.
        let ok = if strict {
            zoo_nn::open_image(&p.image).map(|_| ()).map_err(|e| e.to_string())
        } else {
            image::ImageReader::open(&p.image)
                .and_then(|r| r.with_guessed_format())
                .map_err(|e| e.to_string())
                .and_then(|r| r.into_dimensions().map(|_| ()).map_err(|e| e.to_string()))
        };
        match ok {
            Ok(()) => kept.push(p),
            Err(reason) if strict => {
                return Err(NnError::Image { path: p.image.clone(), reason: format!("{reason} (--strict)") });
            }
            Err(_) => skipped.bad_images.push(p.image.display().to_string()),
        }
    }
    if kept.is_empty() {
        return Err(NnError::Config(format!("{}: no usable image-caption pairs", path.display())));
    }
    Ok((kept, skipped))
}

/// A seeded split: `(train, held_out)` with `fraction` of the pairs held out (at least one when
/// `fraction > 0` and there are two or more pairs).
pub fn split(mut pairs: Vec<Pair>, fraction: f64, seed: u64) -> (Vec<Pair>, Vec<Pair>) {
    shuffle(&mut pairs, &mut Rng::new(seed ^ 0x5EED));
    let n = ((pairs.len() as f64 * fraction).round() as usize).min(pairs.len().saturating_sub(1));
    let n = if fraction > 0.0 && pairs.len() > 1 { n.max(1) } else { n };
    let held = pairs.split_off(pairs.len() - n);
    (pairs, held)
}

/// In-memory pairs as a [`Source`]: each epoch a seeded order, cut into full batches.
#[derive(Debug, Clone)]
pub struct ListSource {
    /// The training pairs.
    pub pairs: Arc<Vec<Pair>>,
}

impl Source for ListSource {
    fn batches_per_epoch(&self, batch_size: usize) -> usize {
        self.pairs.len() / batch_size.max(1)
    }

    fn epoch(&self, batch_size: usize, order_seed: u64, skip: usize) -> mpsc::Receiver<Job> {
        let mut order: Vec<usize> = (0..self.pairs.len()).collect();
        shuffle(&mut order, &mut Rng::new(order_seed));
        let (tx, rx) = mpsc::sync_channel(2);
        let pairs = self.pairs.clone();
        std::thread::spawn(move || {
            for (index, chunk) in order.chunks_exact(batch_size.max(1)).enumerate().skip(skip) {
                let samples = chunk
                    .iter()
                    .map(|&i| Sample {
                        key: pairs[i].image.display().to_string(),
                        image: ImageData::File(pairs[i].image.clone()),
                        caption: pairs[i].caption.clone(),
                        index: i,
                        seed: order_seed.wrapping_mul(31).wrapping_add(i as u64),
                    })
                    .collect();
                if tx.send(Job { index, samples, skipped: Vec::new() }).is_err() {
                    return;
                }
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes() {
        assert_eq!(
            csv_fields(r#"a.png,"a ""red"", round circle""#),
            vec!["a.png", r#"a "red", round circle"#]
        );
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let pairs: Vec<Pair> =
            (0..20).map(|i| Pair { image: format!("{i}.png").into(), caption: i.to_string() }).collect();
        let (a, b) = split(pairs.clone(), 0.2, 1);
        let (a2, b2) = split(pairs, 0.2, 1);
        assert_eq!((a.len(), b.len()), (16, 4));
        assert_eq!((a.clone(), b.clone()), (a2, b2));
        assert!(b.iter().all(|p| !a.contains(p)));
    }
}
