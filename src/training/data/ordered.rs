//! Every sample of `--data` once, in a fixed order, or one shard's share of them (`--shard
//! I/N`): how a pass over a whole dataset reads it (`vlm-zoo embed`), through the same formats
//! (`list.rs`, `stream.rs`) and the same worker pool (`loader.rs`) as training. Nothing is
//! shuffled or held out, the last short batch is kept, and rows without a caption come through
//! with an empty one ([`SourceOptions::every_row`]).
//!
//! Sharding is a pure function of the input, so N processes that each take one share cover the
//! dataset exactly once: a stream of at least N files is split by file (file `j` goes to share
//! `j mod N`); anything else (a list, or fewer files than shares) by position (sample `p` of
//! the whole input, skipped ones counted, goes to share `p mod N`).

use super::list::load_pairs_with;
use super::sample::{ImageData, Job, Pair, Sample, Source};
use super::stream::{Item, SourceOptions, Stream, is_stream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use zoo_nn::{NnError, Result};

/// `I/N`: the `index`-th (from 0) of `count` disjoint shares of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    /// Which share, `0..count`.
    pub index: usize,
    /// How many shares.
    pub count: usize,
}

impl Shard {
    /// The whole dataset (`0/1`).
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Parses `I/N` (`0 <= I < N`); anything else is a one-line error saying what is wrong.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| NnError::Config(format!("--shard '{s}': {why}"));
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| bad("expected I/N, e.g. 3/10 for the fourth of ten shares (I counts from 0)"))?;
        let number = |v: &str, what: &str| {
            v.trim().parse::<usize>().map_err(|_| bad(&format!("{what} '{v}' is not a whole number")))
        };
        let (index, count) = (number(i, "I")?, number(n, "N")?);
        if count == 0 {
            return Err(bad("N must be at least 1"));
        }
        if index >= count {
            return Err(bad(&format!("I must be below N (the shares are 0..{})", count - 1)));
        }
        Ok(Self { index, count })
    }

    /// Whether item `position` belongs to this share.
    pub fn takes(&self, position: usize) -> bool {
        position % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[derive(Debug, Clone)]
enum Input {
    /// CSV/TSV, JSONL, folders: the rows, in the file's (or the sorted folder's) order.
    List(Arc<Vec<Pair>>),
    /// Tar shards and parquet files: this share's files (all of them when split by position).
    Stream(Stream),
}

/// One share of a dataset as a [`Source`] whose one "epoch" is every sample of the share once,
/// in order. Batches never straddle a multiple of `group` samples of the share, so a consumer
/// that writes `group` samples per file can resume at any file: group `g` starts at batch
/// `g * group.div_ceil(batch_size)`.
#[derive(Debug, Clone)]
pub struct Ordered {
    input: Input,
    shard: Shard,
    by_file: bool,
    group: usize,
}

impl Ordered {
    /// Opens `data` (any format `train` reads) for one pass over `shard`, batches restarting at
    /// every `group` samples.
    pub fn open(data: &Path, opts: &SourceOptions, shard: Shard, group: usize) -> Result<Self> {
        let opts = SourceOptions { every_row: true, ..opts.clone() };
        let group = group.max(1);
        if is_stream(data) {
            let mut stream = Stream::open(data, &opts)?;
            let by_file = shard.count > 1 && stream.files.len() >= shard.count;
            if by_file {
                stream.files = stream
                    .files
                    .into_iter()
                    .enumerate()
                    .filter(|(j, _)| shard.takes(*j))
                    .map(|(_, f)| f)
                    .collect();
            }
            Ok(Self { input: Input::Stream(stream), shard, by_file, group })
        } else {
            if !data.exists() {
                return Err(NnError::io(
                    data,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
                ));
            }
            let (pairs, _) = load_pairs_with(data, false, &opts)?;
            Ok(Self { input: Input::List(Arc::new(pairs)), shard, by_file: false, group })
        }
    }

    /// How the share is taken, in words (`embed.json` records it).
    pub fn sharding(&self) -> String {
        match (&self.input, self.by_file) {
            (_, _) if self.shard.count == 1 => "whole input".into(),
            (Input::Stream(s), true) => {
                format!(
                    "by file: files j with j mod {} = {} ({} files)",
                    self.shard.count,
                    self.shard.index,
                    s.files.len()
                )
            }
            _ => format!("by position: samples p with p mod {} = {}", self.shard.count, self.shard.index),
        }
    }

    /// This share's files when the input is a stream.
    pub fn files(&self) -> Vec<PathBuf> {
        match &self.input {
            Input::Stream(s) => s.files.clone(),
            Input::List(_) => Vec::new(),
        }
    }

    /// Samples in the share when known without reading the data (a list's rows).
    pub fn len(&self) -> Option<usize> {
        match &self.input {
            Input::List(p) => Some((0..p.len()).filter(|&i| self.shard.takes(i)).count()),
            Input::Stream(_) => None,
        }
    }

    /// Whether the share is known to hold no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// The share's items in order: a sample, or why one was skipped.
    fn items(&self) -> Box<dyn Iterator<Item = std::result::Result<Sample, String>>> {
        let sample = |p: usize, key: String, image: ImageData, caption: String| Sample {
            key,
            image,
            caption,
            index: p,
            seed: 0,
        };
        match &self.input {
            Input::List(pairs) => {
                let (pairs, shard) = (pairs.clone(), self.shard);
                Box::new((0..pairs.len()).filter(move |&i| shard.takes(i)).enumerate().map(move |(p, i)| {
                    let pair = &pairs[i];
                    Ok(sample(
                        p,
                        pair.image.display().to_string(),
                        ImageData::File(pair.image.clone()),
                        pair.caption.clone(),
                    ))
                }))
            }
            Input::Stream(s) => {
                let all: Box<dyn Iterator<Item = Item>> =
                    Box::new(Stream::read(s.files.clone(), s.opts.clone()));
                let (by_file, shard) = (self.by_file, self.shard);
                let share: Box<dyn Iterator<Item = Item>> = if by_file || shard.count == 1 {
                    all
                } else {
                    Box::new(all.enumerate().filter(move |(p, _)| shard.takes(*p)).map(|(_, i)| i))
                };
                Box::new(share.enumerate().map(move |(p, item)| {
                    item.map(|r| sample(p, r.key, ImageData::Bytes(r.bytes), r.caption))
                }))
            }
        }
    }
}

impl Source for Ordered {
    /// Batches of the share when its length is known (a list), else 0.
    fn batches_per_epoch(&self, batch_size: usize) -> usize {
        let Some(n) = self.len() else { return 0 };
        let per_group = self.group.div_ceil(batch_size.max(1));
        (n / self.group) * per_group + (n % self.group).div_ceil(batch_size.max(1))
    }

    /// Every item of the share once, in order (`order_seed` is not used): batches of
    /// `batch_size`, restarting at every `group` items, from batch `skip` on (a stream's earlier
    /// items are read but not sent). A batch may hold only skipped items.
    fn epoch(&self, batch_size: usize, _order_seed: u64, skip: usize) -> mpsc::Receiver<Job> {
        let (tx, rx) = mpsc::sync_channel(2);
        let (batch_size, group) = (batch_size.max(1), self.group);
        let per_group = group.div_ceil(batch_size);
        let this = self.clone();
        std::thread::spawn(move || {
            let items = this.items();
            let mut job = Job { index: 0, samples: Vec::new(), skipped: Vec::new() };
            for (p, item) in items.enumerate() {
                let index = (p / group) * per_group + (p % group) / batch_size;
                if index != job.index {
                    let done =
                        std::mem::replace(&mut job, Job { index, samples: Vec::new(), skipped: Vec::new() });
                    if done.index >= skip && tx.send(done).is_err() {
                        return;
                    }
                }
                if index < skip {
                    continue;
                }
                match item {
                    Ok(s) => job.samples.push(s),
                    Err(e) => job.skipped.push(e),
                }
            }
            if job.index >= skip && (!job.samples.is_empty() || !job.skipped.is_empty()) {
                let _ = tx.send(job);
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_or_say_why_not() {
        assert_eq!(Shard::parse("3/10").unwrap(), Shard { index: 3, count: 10 });
        assert_eq!(Shard::parse("0/1").unwrap(), Shard::WHOLE);
        for (bad, why) in [
            ("3", "expected I/N"),
            ("a/b", "not a whole number"),
            ("1/0", "at least 1"),
            ("3/3", "below N"),
            ("-1/2", "not a whole number"),
        ] {
            let e = Shard::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad) && !e.contains('\n'), "{bad}: {e}");
        }
    }

    /// The shares of a list are disjoint and cover it; batches restart at every group.
    #[test]
    fn shares_cover_a_list_once_in_order() {
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/rgb_64x48.png");
        let pairs: Vec<Pair> = (0..11)
            .map(|i| Pair { image: fixture.with_file_name(format!("{i}.png")), caption: i.to_string() })
            .collect();
        let list =
            |shard| Ordered { input: Input::List(Arc::new(pairs.clone())), shard, by_file: false, group: 5 };
        let mut seen = Vec::new();
        for i in 0..3 {
            let o = list(Shard { index: i, count: 3 });
            let jobs: Vec<Job> = o.epoch(2, 0, 0).into_iter().collect();
            assert_eq!(jobs.len(), o.batches_per_epoch(2));
            for j in &jobs {
                seen.extend(j.samples.iter().map(|s| s.caption.parse::<usize>().unwrap()));
            }
        }
        seen.sort();
        assert_eq!(seen, (0..11).collect::<Vec<_>>());
        // 11 items, groups of 5 in batches of 2: [2, 2, 1] [2, 2, 1] [1], numbered 0..=6; from batch 3 on.
        let jobs: Vec<Job> = list(Shard::WHOLE).epoch(2, 0, 3).into_iter().collect();
        assert_eq!(
            jobs.iter().map(|j| (j.index, j.samples.len())).collect::<Vec<_>>(),
            vec![(3, 2), (4, 2), (5, 1), (6, 1)]
        );
        assert_eq!(jobs[0].samples[0].caption, "5");
    }
}
