//! Training checkpoints: the model (burnpack, parameter identities kept), the optimiser state and
//! the position in the data, written into a scratch folder that is renamed into place; `latest`
//! names the newest complete one. A failed or interrupted save leaves the previous checkpoint.

use crate::fs::write_atomic;
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

/// The checkpoint folder under a run's output folder.
pub fn root(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// The newest complete checkpoint, if any. A `latest` pointer that cannot be read, that names
/// anything but a `step-N` folder beside it, or whose folder is incomplete, is an error: resuming
/// from step 0 over a run's checkpoints would lose them.
pub fn latest(out: &Path) -> Result<Option<PathBuf>> {
    let pointer = root(out).join("latest");
    if std::fs::symlink_metadata(&pointer).is_err() {
        return Ok(None);
    }
    let bad = |why: String| {
        NnError::Config(format!(
            "{}: {why}; refusing to resume (move the checkpoints away to start over)",
            pointer.display()
        ))
    };
    let name = std::fs::read_to_string(&pointer).map_err(|e| bad(format!("unreadable ({e})")))?;
    let name = name.trim();
    let plain =
        name.strip_prefix("step-").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !plain {
        return Err(bad(format!("names {name:?}, not a step-N checkpoint folder")));
    }
    let dir = root(out).join(name);
    if !dir.join("state.json").is_file() {
        return Err(bad(format!("names {name}, which is missing or incomplete")));
    }
    Ok(Some(dir))
}

/// An exclusive lock on a run's output folder, held for the life of the value (the OS drops it
/// when the process ends, however it ends).
#[derive(Debug)]
pub struct OutLock {
    _file: std::fs::File,
}

/// Locks `out` for one training run; a second run into the same folder is refused, naming the
/// process that holds it.
pub fn lock(out: &Path) -> Result<OutLock> {
    lock_for(out, "training run")
}

/// [`lock`] for a run of another kind (`what`: "embed run"), named in the refusal.
pub fn lock_for(out: &Path, what: &str) -> Result<OutLock> {
    use std::io::{Read, Seek, Write};
    let path = out.join(".vlm-zoo.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| NnError::io(&path, e))?;
    if file.try_lock().is_err() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(NnError::Config(format!(
            "{}: another {what} (pid {}) is writing to this folder; wait for it or choose another --out",
            out.display(),
            holder.trim()
        )));
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    Ok(OutLock { _file: file })
}

/// Saves a checkpoint with `write(dir)` filling a scratch folder, then publishes it.
pub fn save(out: &Path, state: &TrainState, write: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let root = root(out);
    std::fs::create_dir_all(&root).map_err(|e| NnError::io(&root, e))?;
    let name = format!("step-{:08}", state.step);
    let scratch = root.join(format!("{name}.partial"));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| NnError::io(&scratch, e))?;
    // A failed save removes its scratch folder: the previous checkpoint stays the latest.
    let written = write(&scratch).and_then(|_| {
        let json = serde_json::to_vec_pretty(state).map_err(|e| NnError::Config(e.to_string()))?;
        write_atomic(&scratch.join("state.json"), &json)
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&scratch);
        return Err(e);
    }
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
