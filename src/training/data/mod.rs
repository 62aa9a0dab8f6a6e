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
//! [`ordered`] reads the same formats for a pass that takes every sample once, in order, or one
//! shard's share of them (`vlm-zoo embed`), through the same pool ([`prepared`]).
//!
//! A new format: a reader in `list.rs` (rows in memory) or `stream.rs` (samples from disk), which
//! [`Dataset::open`] picks by the shape of `--data`.

pub mod list;
pub mod loader;
pub mod ordered;
pub mod sample;
pub mod stream;

pub use list::{ListSource, Skipped, csv_fields, load_pairs, load_pairs_with, split, split_fields};
pub use loader::{Dataset, DatasetOptions, Prepare, batches, loaded, prepared, stream_batches};
pub use ordered::{Ordered, Shard};
pub use sample::{Augment, Batch, ImageData, Job, Pair, Sample, Source, augment, load_image, shuffle};
pub use stream::{FormatOptions, ShuffleBuffer, SourceOptions, Stream, StreamSource, is_stream};
