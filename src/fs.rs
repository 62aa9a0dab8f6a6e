//! Files written so that a reader never sees half of one: what checkpoints, exports, figures
//! and tokenizers all use.

use std::path::Path;
use zoo_nn::{NnError, Result};

/// Writes `bytes` to `path` atomically: a scratch file in the same folder, synced, renamed over.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| NnError::io(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        NnError::io(&tmp, e)
    })?;
    std::fs::rename(&tmp, path).map_err(|e| NnError::io(path, e))
}
