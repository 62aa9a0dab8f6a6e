//! Training checkpoints: the model (burnpack, parameter identities kept), the optimiser state and
//! the position in the data, written into a scratch folder that is renamed into place; `latest`
//! names the newest complete one. A failed or interrupted save leaves the previous checkpoint.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use zoo_nn::{NnError, Result};

/// Where training stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TrainState {
    /// Optimiser steps taken.
    pub step: usize,
    /// Current epoch.
    pub epoch: usize,
    /// Batches of this epoch already consumed.
    pub batch_in_epoch: usize,
    /// Every step's loss so far.
    pub losses: Vec<f64>,
}

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

/// The checkpoint folder under a run's output folder.
pub fn root(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// The newest complete checkpoint, if any.
pub fn latest(out: &Path) -> Result<Option<PathBuf>> {
    let pointer = root(out).join("latest");
    if !pointer.is_file() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&pointer).map_err(|e| NnError::io(&pointer, e))?;
    let dir = root(out).join(name.trim());
    Ok(dir.join("state.json").is_file().then_some(dir))
}

/// Saves a checkpoint with `write(dir)` filling a scratch folder, then publishes it.
pub fn save(out: &Path, state: &TrainState, write: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let root = root(out);
    std::fs::create_dir_all(&root).map_err(|e| NnError::io(&root, e))?;
    let name = format!("step-{:08}", state.step);
    let scratch = root.join(format!("{name}.partial"));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| NnError::io(&scratch, e))?;
    write(&scratch)?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| NnError::Config(e.to_string()))?;
    write_atomic(&scratch.join("state.json"), &json)?;
    let dir = root.join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&scratch, &dir).map_err(|e| NnError::io(&dir, e))?;
    let previous = latest(out)?;
    write_atomic(&root.join("latest"), name.as_bytes())?;
    if let Some(prev) = previous.filter(|p| *p != dir) {
        let _ = std::fs::remove_dir_all(prev);
    }
    Ok(dir)
}
