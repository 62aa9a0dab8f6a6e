//! Training data in the forms people have it, read as streams: WebDataset tar shards
//! (img2dataset's output, `shards/{00000..00127}.tar`, several sources joined with `::`) and
//! Parquet files (image bytes or paths). Samples are read in order from disk each epoch (the shard
//! order shuffled per epoch), pass through a seeded shuffle buffer of bounded size and are decoded
//! by worker threads, so memory does not grow with the dataset. A sample that cannot be used
//! (no caption, no image, a truncated member, an undecodable image) is skipped and counted.
//!
//! The list formats (CSV/TSV, JSONL, HF imagefolder `metadata.jsonl`, folders) are in
//! `list.rs`; both are decoded by [`super::batches`].

use super::sample::{ImageData, Job, Pair, Sample, Source, shuffle};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use zoo_nn::{NnError, Result, Rng};

/// Image file extensions of a sample, as WebDataset names its members.
pub const IMAGE_EXTS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Where the captions and image paths are in each format (`train` and `embed` read the same).
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct FormatOptions {
    /// JSON field holding the caption (WebDataset `.json` members, img2dataset's `.json` files,
    /// JSONL rows) [default: the `.txt` member / `caption`].
    #[arg(long)]
    pub caption_key: Option<String>,
    /// CSV/TSV separator [default: tab for .tsv, comma for .csv].
    #[arg(long)]
    pub csv_separator: Option<char>,
    /// CSV/TSV column of the image path [default: `filepath` (open_clip) or `image`].
    #[arg(long)]
    pub csv_img_key: Option<String>,
    /// CSV/TSV column of the caption [default: `title` (open_clip) or `caption`].
    #[arg(long)]
    pub csv_caption_key: Option<String>,
}

/// Where captions come from, and how CSV/TSV files are laid out (open_clip's options).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct SourceOptions {
    /// Where captions and images are in each format.
    #[command(flatten)]
    pub format: FormatOptions,
    /// Samples held in the shuffle buffer of a stream (shards, parquet).
    #[arg(long, default_value_t = 2000)]
    pub shuffle_buffer: usize,
    /// Samples per epoch of a stream, as open_clip's `--train-num-samples` [default: counted
    /// from the shard headers / parquet metadata before training].
    #[arg(long)]
    pub train_num_samples: Option<usize>,
    /// Most held-out samples taken from a stream (the held-out set is written to
    /// OUT/held-out/ and evaluated every epoch).
    #[arg(long, default_value_t = 1000)]
    pub val_max: usize,
    /// Every row reaches the workers, for a pass that accounts for each sample (`vlm-zoo
    /// embed`), not training: a row without a caption comes through with an empty one (a parquet
    /// file needs no caption column), and a list's images are not checked while scanning (the
    /// workers skip and report those that do not decode).
    #[arg(skip)]
    pub every_row: bool,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            format: FormatOptions::default(),
            shuffle_buffer: 2000,
            train_num_samples: None,
            val_max: 1000,
            every_row: false,
        }
    }
}

/// Expands `a/{000..003}.tar::b/{x,y}.tar` into files, in order. A pattern that names no
/// existing file is an error naming it.
pub fn expand(spec: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for part in spec.split("::").map(str::trim).filter(|p| !p.is_empty()) {
        let names = braces(part)?;
        let found: Vec<PathBuf> = names.iter().map(PathBuf::from).filter(|p| p.is_file()).collect();
        if found.is_empty() {
            return Err(NnError::Config(format!(
                "--data '{part}': matches no file ({} name(s) tried, first {})",
                names.len(),
                names.first().map_or("", String::as_str)
            )));
        }
        if found.len() < names.len() {
            let missing = names.iter().find(|n| !Path::new(n).is_file()).cloned().unwrap_or_default();
            return Err(NnError::Config(format!(
                "--data '{part}': {} of {} files missing (first: {missing})",
                names.len() - found.len(),
                names.len()
            )));
        }
        out.extend(found);
    }
    if out.is_empty() {
        return Err(NnError::Config(format!("--data '{spec}': no files")));
    }
    Ok(out)
}

/// Bash-style brace expansion: `{0..3}`, `{00..03}` (zero-padded), `{a,b}`; nested left to right.
fn braces(s: &str) -> Result<Vec<String>> {
    let Some(open) = s.find('{') else { return Ok(vec![s.to_string()]) };
    let close = s[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or_else(|| NnError::Config(format!("--data '{s}': '{{' without '}}'")))?;
    let (head, body, tail) = (&s[..open], &s[open + 1..close], &s[close + 1..]);
    let items: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let (x, y): (u64, u64) = match (a.parse(), b.parse()) {
            (Ok(x), Ok(y)) => (x, y),
            _ => return Err(NnError::Config(format!("--data '{s}': '{{{body}}}' is not a numeric range"))),
        };
        if y < x || y - x > 10_000_000 {
            return Err(NnError::Config(format!("--data '{s}': range {{{body}}} is empty or too large")));
        }
        let width = if a.starts_with('0') && a.len() > 1 { a.len() } else { 0 };
        (x..=y).map(|i| format!("{i:0width$}")).collect()
    } else {
        body.split(',').map(str::to_string).collect()
    };
    let mut out = Vec::new();
    for rest in braces(tail)? {
        for i in &items {
            out.push(format!("{head}{i}{rest}"));
        }
    }
    // Order: by the first brace, then the rest (as written).
    out.sort_by_key(|n| items.iter().position(|i| n[head.len()..].starts_with(i.as_str())).unwrap_or(0));
    Ok(out)
}

/// Whether `--data` names a stream (tar shards or parquet files) rather than a list.
pub fn is_stream(spec: &Path) -> bool {
    let s = spec.to_string_lossy();
    s.contains(".tar") || s.contains("::") || s.ends_with(".parquet") || (s.contains('{') && s.contains('}'))
}

/// One sample as read: its key, the image bytes (with the extension they came with) and caption.
#[derive(Debug, Clone, PartialEq)]
pub struct RawSample {
    /// WebDataset key (`shard:key`) or parquet `file:row`.
    pub key: String,
    /// Image extension (`jpg`, `png`, ...).
    pub ext: String,
    /// Encoded image.
    pub bytes: Vec<u8>,
    /// Caption.
    pub caption: String,
}

/// A sample, or why one was skipped (`key: reason`).
pub type Item = std::result::Result<RawSample, String>;

/// A stream: tar shards and/or parquet files.
#[derive(Debug, Clone)]
pub struct Stream {
    /// The files, in the order given.
    pub files: Vec<PathBuf>,
    /// Options.
    pub opts: SourceOptions,
}

impl Stream {
    /// Opens `--data`.
    pub fn open(spec: &Path, opts: &SourceOptions) -> Result<Self> {
        let files = expand(&spec.to_string_lossy())?;
        for f in &files {
            let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext != "tar" && ext != "parquet" {
                return Err(NnError::Config(format!(
                    "{}: expected a .tar shard or a .parquet file",
                    f.display()
                )));
            }
        }
        if opts.shuffle_buffer == 0 {
            return Err(NnError::Config("--shuffle-buffer must be at least 1".into()));
        }
        // A parquet file without the columns is refused now, naming the columns it has.
        for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "parquet")) {
            use parquet::file::reader::FileReader;
            let file = std::fs::File::open(f).map_err(|e| NnError::io(f, e))?;
            let r = parquet::file::reader::SerializedFileReader::new(file)
                .map_err(|e| NnError::Load { path: f.clone(), reason: format!("not a parquet file: {e}") })?;
            let columns: Vec<String> = r
                .metadata()
                .file_metadata()
                .schema()
                .get_fields()
                .iter()
                .map(|c| c.name().to_string())
                .collect();
            let (image, caption) = parquet_columns(&columns, opts);
            if image.is_none() || (caption.is_none() && !opts.every_row) {
                return Err(NnError::Load {
                    path: f.clone(),
                    reason: format!(
                        "no {} column (looked for {}); its columns are: {}",
                        if image.is_none() { "image" } else { "caption" },
                        if image.is_none() {
                            PARQUET_IMAGE_COLUMNS.join(", ")
                        } else {
                            caption_candidates(opts).join(", ")
                        },
                        columns.join(", ")
                    ),
                });
            }
        }
        Ok(Self { files, opts: opts.clone() })
    }

    /// Every sample of `files` in order; `files` is a subset (a worker's or a device's shards).
    pub fn read(files: Vec<PathBuf>, opts: SourceOptions) -> impl Iterator<Item = Item> {
        files.into_iter().flat_map(move |f| -> Box<dyn Iterator<Item = Item>> {
            if f.extension().is_some_and(|e| e == "parquet") {
                Box::new(parquet_samples(&f, &opts))
            } else {
                Box::new(tar_samples(&f, &opts))
            }
        })
    }

    /// Counts usable samples from the shard headers and parquet metadata (images not read).
    pub fn count(&self) -> Result<usize> {
        let mut n = 0;
        for f in &self.files {
            if f.extension().is_some_and(|e| e == "parquet") {
                use parquet::file::reader::FileReader;
                let file = std::fs::File::open(f).map_err(|e| NnError::io(f, e))?;
                let r = parquet::file::reader::SerializedFileReader::new(file).map_err(|e| {
                    NnError::Load { path: f.clone(), reason: format!("not a parquet file: {e}") }
                })?;
                n += r.metadata().file_metadata().num_rows().max(0) as usize;
            } else {
                n += count_tar(f);
            }
        }
        Ok(n)
    }
}

/// Image columns a parquet file may have, in order of preference.
const PARQUET_IMAGE_COLUMNS: [&str; 7] = ["image", "jpg", "png", "webp", "img", "file_name", "filepath"];

fn caption_candidates(opts: &SourceOptions) -> Vec<String> {
    match &opts.format.caption_key {
        Some(k) => vec![k.clone()],
        None => ["caption", "text", "txt", "title"].map(String::from).to_vec(),
    }
}

/// The (image, caption) columns of a parquet schema.
fn parquet_columns(columns: &[String], opts: &SourceOptions) -> (Option<String>, Option<String>) {
    let image = PARQUET_IMAGE_COLUMNS.iter().find(|c| columns.iter().any(|x| x == *c)).map(|c| c.to_string());
    let caption = caption_candidates(opts).into_iter().find(|c| columns.contains(c));
    (image, caption)
}

/// WebDataset's key of a member: the path up to the first dot of its file name; the extension is
/// the rest (`a/b.c.jpg` -> key `a/b`, ext `c.jpg`).
fn split_key(name: &str) -> (String, String) {
    let (dir, file) = name.rsplit_once('/').map_or(("", name), |(d, f)| (d, f));
    let (stem, ext) = file.split_once('.').unwrap_or((file, ""));
    let key = if dir.is_empty() { stem.to_string() } else { format!("{dir}/{stem}") };
    (key, ext.to_lowercase())
}

/// Samples that have an image and a caption, counted from headers (image data skipped by seeking).
fn count_tar(path: &Path) -> usize {
    let Ok(file) = std::fs::File::open(path) else { return 0 };
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let Ok(entries) = archive.entries_with_seek() else { return 0 };
    let (mut n, mut key, mut has_img, mut has_cap) = (0, String::new(), false, false);
    for e in entries {
        let Ok(e) = e else { break };
        let name = e.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let (k, ext) = split_key(&name);
        if k != key {
            n += (has_img && has_cap) as usize;
            (key, has_img, has_cap) = (k, false, false);
        }
        has_img |= IMAGE_EXTS.contains(&ext.as_str());
        has_cap |= ext == "txt" || ext == "json";
    }
    n + (has_img && has_cap) as usize
}

/// Largest member read from a shard (an image file over this is skipped unread).
const MAX_MEMBER_BYTES: u64 = zoo_nn::data::image::MAX_IMAGE_FILE_BYTES;

fn caption_from_json(bytes: &[u8], key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.get(key)?.as_str().map(str::to_string)
}

/// The samples of one tar shard, grouped by key (members of a sample are adjacent, as
/// WebDataset writes them). A truncated shard ends with one skip naming where.
fn tar_samples(path: &Path, opts: &SourceOptions) -> impl Iterator<Item = Item> + use<> {
    let shard = path.display().to_string();
    let caption_key = opts.format.caption_key.clone();
    let every_row = opts.every_row;
    let (tx, rx) = mpsc::sync_channel::<Item>(64);
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let send = |i: Item| tx.send(i).is_ok();
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                send(Err(format!("{shard}: {e}")));
                return;
            }
        };
        let mut archive = tar::Archive::new(std::io::BufReader::new(file));
        let entries = match archive.entries() {
            Ok(e) => e,
            Err(e) => {
                send(Err(format!("{shard}: not a tar file: {e}")));
                return;
            }
        };
        #[derive(Default)]
        struct Group {
            key: String,
            image: Option<(String, Vec<u8>)>,
            txt: Option<String>,
            json: Option<Vec<u8>>,
            problem: Option<String>,
        }
        let finish = |g: Group, caption_key: &Option<String>| -> Option<Item> {
            if g.key.is_empty() {
                return None;
            }
            let key = format!("{shard}:{}", g.key);
            if let Some(p) = g.problem {
                return Some(Err(format!("{key}: {p}")));
            }
            let caption = match caption_key {
                Some(k) => g.json.as_deref().and_then(|j| caption_from_json(j, k)),
                None => g.txt.or_else(|| g.json.as_deref().and_then(|j| caption_from_json(j, "caption"))),
            };
            let caption = if every_row { Some(caption.unwrap_or_default()) } else { caption };
            Some(match (g.image, caption) {
                (None, _) => Err(format!("{key}: no image member ({})", IMAGE_EXTS.join("/"))),
                (_, None) => Err(format!(
                    "{key}: no caption ({})",
                    caption_key
                        .as_ref()
                        .map_or("a .txt member".to_string(), |k| format!("no \"{k}\" in its .json"))
                )),
                (Some(_), Some(c)) if c.trim().is_empty() && !every_row => {
                    Err(format!("{key}: empty caption"))
                }
                (Some((ext, bytes)), Some(caption)) => {
                    Ok(RawSample { key, ext, bytes, caption: caption.trim().to_string() })
                }
            })
        };
        let mut g = Group::default();
        let mut count = 0usize;
        for entry in entries {
            let mut e = match entry {
                Ok(e) => e,
                Err(err) => {
                    if let Some(i) = finish(std::mem::take(&mut g), &caption_key) {
                        send(i);
                    }
                    send(Err(format!("{shard}: truncated or corrupt after {count} members: {err}")));
                    return;
                }
            };
            count += 1;
            if !e.header().entry_type().is_file() {
                continue;
            }
            let name = e.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
            let (key, ext) = split_key(&name);
            if key != g.key {
                if let Some(i) = finish(std::mem::take(&mut g), &caption_key)
                    && !send(i)
                {
                    return;
                }
                g.key = key;
            }
            let size = e.header().size().unwrap_or(u64::MAX);
            let wanted = IMAGE_EXTS.contains(&ext.as_str()) || ext == "txt" || ext == "json";
            if !wanted {
                continue;
            }
            if size > MAX_MEMBER_BYTES {
                g.problem = Some(format!("{name}: {size} bytes, over the {MAX_MEMBER_BYTES}-byte limit"));
                continue;
            }
            let mut bytes = Vec::with_capacity(size as usize);
            if let Err(err) = e.read_to_end(&mut bytes) {
                let _ = finish(std::mem::take(&mut g), &caption_key);
                send(Err(format!("{shard}: truncated in member {name} after {count} members: {err}")));
                return;
            }
            match ext.as_str() {
                "txt" => g.txt = Some(String::from_utf8_lossy(&bytes).into_owned()),
                "json" => g.json = Some(bytes),
                _ => g.image = Some((ext, bytes)),
            }
        }
        if let Some(i) = finish(g, &caption_key) {
            send(i);
        }
    });
    rx.into_iter()
}

/// The samples of a parquet file: an image column (`image` / `jpg` / `png`, as HF datasets and
/// img2dataset write them: binary bytes, or a struct with `bytes` and/or `path`; or a path string)
/// and a caption column (`--caption-key`, else `caption` / `text` / `txt`).
fn parquet_samples(path: &Path, opts: &SourceOptions) -> impl Iterator<Item = Item> + use<> {
    use parquet::file::reader::FileReader;
    use parquet::record::Field;
    let (tx, rx) = mpsc::sync_channel::<Item>(64);
    let path = path.to_path_buf();
    let opts = opts.clone();
    std::thread::spawn(move || {
        let name = path.display().to_string();
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let reader = match std::fs::File::open(&path).map_err(|e| e.to_string()).and_then(|f| {
            parquet::file::reader::SerializedFileReader::new(f)
                .map_err(|e| format!("not a parquet file: {e}"))
        }) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(format!("{name}: {e}")));
                return;
            }
        };
        let columns: Vec<String> = reader
            .metadata()
            .file_metadata()
            .schema()
            .get_fields()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        let (image_col, caption_col) = parquet_columns(&columns, &opts);
        let caption_col = if opts.every_row { Some(caption_col.unwrap_or_default()) } else { caption_col };
        let (Some(image_col), Some(caption_col)) = (image_col, caption_col) else {
            let _ = tx.send(Err(format!(
                "{name}: no image or caption column; its columns are {}",
                columns.join(", ")
            )));
            return;
        };
        let rows = match reader.get_row_iter(None) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(format!("{name}: {e}")));
                return;
            }
        };
        for (i, row) in rows.enumerate() {
            let key = format!("{name}:{i}");
            let item = (|| -> std::result::Result<RawSample, String> {
                let row = row.map_err(|e| format!("{key}: {e}"))?;
                let mut image: Option<(String, Vec<u8>)> = None;
                let mut caption = None;
                for (col, field) in row.get_column_iter() {
                    if *col == image_col {
                        image = match field {
                            Field::Bytes(b) => Some(("bin".into(), b.data().to_vec())),
                            Field::Str(p) => Some(read_path(&base, p)?),
                            Field::Group(g) => {
                                let mut bytes = None;
                                let mut p = None;
                                for (k, v) in g.get_column_iter() {
                                    match (k.as_str(), v) {
                                        ("bytes", Field::Bytes(b)) => bytes = Some(b.data().to_vec()),
                                        ("path", Field::Str(s)) => p = Some(s.clone()),
                                        _ => {}
                                    }
                                }
                                match (bytes, p) {
                                    (Some(b), _) => Some(("bin".into(), b)),
                                    (None, Some(p)) => Some(read_path(&base, &p)?),
                                    _ => None,
                                }
                            }
                            _ => None,
                        };
                    } else if *col == caption_col
                        && let Field::Str(s) = field
                    {
                        caption = Some(s.trim().to_string());
                    }
                }
                let (ext, bytes) = image.ok_or_else(|| format!("{key}: no image in column '{image_col}'"))?;
                let caption = match caption.filter(|c| !c.is_empty()) {
                    Some(c) => c,
                    None if opts.every_row => String::new(),
                    None => return Err(format!("{key}: no caption in column '{caption_col}'")),
                };
                Ok(RawSample { key: key.clone(), ext, bytes, caption })
            })();
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    rx.into_iter()
}

fn read_path(base: &Path, p: &str) -> std::result::Result<(String, Vec<u8>), String> {
    let path = base.join(p);
    let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_MEMBER_BYTES {
        return Err(format!("{}: {} bytes, over the limit", path.display(), meta.len()));
    }
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let ext = path.extension().map_or("bin".into(), |e| e.to_string_lossy().to_lowercase());
    Ok((ext, bytes))
}

/// A seeded shuffle buffer: holds at most `size` items; each incoming item swaps with a random one
/// held, which goes out (WebDataset's `shuffle(n)`).
pub struct ShuffleBuffer<I: Iterator> {
    inner: I,
    held: Vec<I::Item>,
    size: usize,
    rng: Rng,
    /// The most items held at once (for the memory bound).
    pub peak: usize,
}

impl<I: Iterator> ShuffleBuffer<I> {
    /// Wraps `inner`.
    pub fn new(inner: I, size: usize, seed: u64) -> Self {
        Self {
            inner,
            held: Vec::with_capacity(size.min(1 << 16)),
            size: size.max(1),
            rng: Rng::new(seed),
            peak: 0,
        }
    }
}

impl<I: Iterator> Iterator for ShuffleBuffer<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        while self.held.len() < self.size {
            match self.inner.next() {
                Some(x) => self.held.push(x),
                None => break,
            }
        }
        self.peak = self.peak.max(self.held.len());
        if self.held.is_empty() {
            return None;
        }
        let j = (self.rng.next_f64() * self.held.len() as f64) as usize;
        Some(self.held.swap_remove(j.min(self.held.len() - 1)))
    }
}

/// Whether a sample belongs to the held-out set: a seeded hash of its key below `fraction`.
pub fn is_held_out(key: &str, fraction: f64, seed: u64) -> bool {
    // FNV-1a, then a multiplicative mix with the seed.
    let mut h: u64 = 0xcbf29ce484222325 ^ seed.wrapping_mul(0x9E3779B97F4A7C15);
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    (h as f64 / u64::MAX as f64) < fraction
}

/// The held-out samples of a stream (at most `max`), written as image files into `dir` so the
/// evaluation reads them as pairs; returns them and the samples skipped on the way.
pub fn held_out(
    stream: &Stream,
    fraction: f64,
    seed: u64,
    max: usize,
    dir: &Path,
) -> Result<(Vec<Pair>, Vec<String>)> {
    let (mut pairs, mut skipped) = (Vec::new(), Vec::new());
    if fraction <= 0.0 || max == 0 {
        return Ok((pairs, skipped));
    }
    std::fs::create_dir_all(dir).map_err(|e| NnError::io(dir, e))?;
    for item in Stream::read(stream.files.clone(), stream.opts.clone()) {
        match item {
            Ok(s) if is_held_out(&s.key, fraction, seed) => {
                if let Err(e) = zoo_nn::data::image::decode_image(&s.bytes) {
                    skipped.push(format!("{}: {e}", s.key));
                    continue;
                }
                let path =
                    dir.join(format!("{:06}.{}", pairs.len(), if s.ext == "bin" { "img" } else { &s.ext }));
                std::fs::write(&path, &s.bytes).map_err(|e| NnError::io(&path, e))?;
                pairs.push(Pair { image: path, caption: s.caption });
                if pairs.len() >= max {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => skipped.push(e),
        }
    }
    Ok((pairs, skipped))
}

/// A stream as a training [`Source`]: held-out samples left out, `per_epoch` batches an epoch.
#[derive(Debug, Clone)]
pub struct StreamSource {
    /// The files.
    pub stream: Stream,
    /// `(fraction, seed)` of the held-out split ([`is_held_out`]).
    pub split: (f64, u64),
    /// Batches per epoch.
    pub per_epoch: usize,
}

impl Source for StreamSource {
    fn batches_per_epoch(&self, _batch_size: usize) -> usize {
        self.per_epoch
    }

    /// Shard order shuffled with `order_seed`, held-out samples left out, a shuffle buffer,
    /// `per_epoch` full batches (the stream is re-read from the start if it ends first); the first
    /// `skip` batches are read but not sent (resuming mid-epoch).
    fn epoch(&self, batch_size: usize, order_seed: u64, skip: usize) -> mpsc::Receiver<Job> {
        let (tx, rx) = mpsc::sync_channel(2);
        let (stream, (fraction, split_seed), per_epoch) = (self.stream.clone(), self.split, self.per_epoch);
        std::thread::spawn(move || {
            let mut files = stream.files.clone();
            shuffle(&mut files, &mut Rng::new(order_seed));
            let (mut index, mut batch, mut skipped) = (0usize, Vec::with_capacity(batch_size), Vec::new());
            let mut passes = 0;
            while index < per_epoch && passes < 1000 {
                passes += 1;
                let before = index;
                let samples = Stream::read(files.clone(), stream.opts.clone())
                    .filter(|i| i.as_ref().map_or(true, |s| !is_held_out(&s.key, fraction, split_seed)));
                for item in ShuffleBuffer::new(samples, stream.opts.shuffle_buffer, order_seed ^ passes) {
                    match item {
                        Ok(s) => batch.push(s),
                        Err(e) => skipped.push(e),
                    }
                    if batch.len() == batch_size {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
                        let sk = std::mem::take(&mut skipped);
                        let samples = full
                            .into_iter()
                            .enumerate()
                            .map(|(j, s)| Sample {
                                key: s.key,
                                image: ImageData::Bytes(s.bytes),
                                caption: s.caption,
                                index: index * batch_size + j,
                                seed: order_seed.wrapping_mul(31).wrapping_add((index * 100_003 + j) as u64),
                            })
                            .collect();
                        if index >= skip && tx.send(Job { index, samples, skipped: sk }).is_err() {
                            return;
                        }
                        index += 1;
                        if index >= per_epoch {
                            return;
                        }
                    }
                }
                if index == before {
                    return; // not one full batch in a whole pass
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
    fn braces_expand_like_bash() {
        assert_eq!(braces("s/{000..002}.tar").unwrap(), vec!["s/000.tar", "s/001.tar", "s/002.tar"]);
        assert_eq!(braces("{a,b}-{1..2}").unwrap(), vec!["a-1", "a-2", "b-1", "b-2"]);
        assert_eq!(braces("plain.tar").unwrap(), vec!["plain.tar"]);
        assert!(
            braces("s/{3..1}.tar").is_err()
                && braces("s/{0..x}.tar").is_err()
                && braces("s/{0..1.tar").is_err()
        );
    }

    #[test]
    fn keys_split_at_the_first_dot() {
        assert_eq!(split_key("a/000012.jpg"), ("a/000012".into(), "jpg".into()));
        assert_eq!(split_key("x.seg.PNG"), ("x".into(), "seg.png".into()));
    }

    #[test]
    fn the_shuffle_buffer_holds_at_most_its_size_and_keeps_every_item() {
        let mut b = ShuffleBuffer::new(0..10_000, 64, 3);
        let mut out: Vec<i32> = b.by_ref().collect();
        assert!(b.peak <= 64);
        assert_ne!(out[..100], (0..100).collect::<Vec<_>>()[..]);
        out.sort();
        assert_eq!(out, (0..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn held_out_is_a_stable_fraction() {
        let n = (0..10_000).filter(|i| is_held_out(&format!("s:{i}"), 0.1, 7)).count();
        assert!((800..1200).contains(&n), "{n}");
        assert_eq!(is_held_out("k", 0.1, 7), is_held_out("k", 0.1, 7));
    }
}
