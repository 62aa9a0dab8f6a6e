//! Read-only memory maps of checkpoint files, so bf16 weights are used where the page cache
//! holds them (`--dtype bf16` on the CPU: no copy, no anonymous memory, loading at the cost of
//! reading the headers).
//!
//! Mapping a file is unsafe because another process could truncate or rewrite it while mapped.
//! vlm-zoo maps only checkpoint files it opened read-only and whose lengths the header check
//! already matched, as safetensors, candle and burn-store's `memmap` feature do; a file changed
//! under a running process is outside what any of them can defend against. Errors are plain
//! `io::Error`s; the caller names the file.
#![allow(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

/// The whole file `path`, mapped read-only.
pub fn map(path: &Path) -> std::io::Result<Arc<memmap2::Mmap>> {
    let file = std::fs::File::open(path)?;
    // SAFETY: see the module docs: a read-only map of a checkpoint file.
    let map = unsafe { memmap2::Mmap::map(&file) }?;
    Ok(Arc::new(map))
}

/// `len` bytes of `path` from `offset`, mapped read-only (for one tensor that is converted and
/// then dropped, so its pages leave the process with it).
pub fn map_range(path: &Path, offset: u64, len: usize) -> std::io::Result<Arc<memmap2::Mmap>> {
    let file = std::fs::File::open(path)?;
    // SAFETY: see the module docs: a read-only map of a checkpoint file.
    let map = unsafe { memmap2::MmapOptions::new().offset(offset).len(len).map(&file) }?;
    Ok(Arc::new(map))
}
