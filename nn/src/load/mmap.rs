//! Read-only memory maps of checkpoint files, so bf16 weights are used where the page cache
//! holds them (`--dtype bf16` on the CPU: no copy, no anonymous memory, loading at the cost of
//! reading the headers).
//!
//! The third audited exception to the workspace's `unsafe_code = "deny"`: mapping a file is
//! unsafe because another process could truncate or rewrite it while mapped. vlm-zoo maps only
//! checkpoint files it opened read-only and whose lengths the header check already matched,
//! as safetensors, candle and burn-store's `memmap` feature do; a file changed under a running
//! process is outside what any of them can defend against.
#![allow(unsafe_code)]

use crate::error::{NnError, Result};
use std::path::Path;
use std::sync::Arc;

/// The whole file `path`, mapped read-only.
pub fn map(path: &Path) -> Result<Arc<memmap2::Mmap>> {
    let file = std::fs::File::open(path).map_err(|e| NnError::io(path, e))?;
    // SAFETY: see the module docs: a read-only map of a checkpoint file.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| NnError::io(path, e))?;
    Ok(Arc::new(map))
}

/// `len` bytes of `path` from `offset`, mapped read-only (for one tensor that is converted and
/// then dropped, so its pages leave the process with it).
pub fn map_range(path: &Path, offset: u64, len: usize) -> Result<Arc<memmap2::Mmap>> {
    let file = std::fs::File::open(path).map_err(|e| NnError::io(path, e))?;
    // SAFETY: see the module docs: a read-only map of a checkpoint file.
    let map = unsafe { memmap2::MmapOptions::new().offset(offset).len(len).map(&file) }
        .map_err(|e| NnError::io(path, e))?;
    Ok(Arc::new(map))
}
