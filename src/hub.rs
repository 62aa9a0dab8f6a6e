//! `--model` as a hub id (`google/paligemma-3b-mix-224`): resolved in the standard HuggingFace
//! cache layout (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`;
//! `models--ORG--NAME/snapshots/REV` with `refs/main`). Nothing is downloaded: a model that is
//! not cached is a clear error.

use std::path::{Path, PathBuf};
use zoo_nn::{NnError, Result};

/// The hub cache folder.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(p).join("hub"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// A local folder as given, or a hub id resolved in the cache.
pub fn resolve_model(model: &Path) -> Result<PathBuf> {
    resolve_model_in(model, cache_dir())
}

/// [`resolve_model`] with an explicit cache folder.
pub fn resolve_model_in(model: &Path, cache: Option<PathBuf>) -> Result<PathBuf> {
    if model.exists() {
        return Ok(model.to_path_buf());
    }
    let id = model.to_string_lossy();
    let looks_like_id = id.split('/').count() == 2 && !id.starts_with('.') && !id.starts_with('/');
    if !looks_like_id {
        return Err(NnError::io(
            model,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such checkpoint folder"),
        ));
    }
    let cache =
        cache.ok_or_else(|| NnError::Config("no HF cache folder (set HF_HUB_CACHE or HF_HOME)".into()))?;
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let rev = std::fs::read_to_string(repo.join("refs/main")).ok().map(|s| s.trim().to_string());
    let snapshot = match rev {
        Some(r) => repo.join("snapshots").join(r),
        None => std::fs::read_dir(repo.join("snapshots"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path())
            .unwrap_or_default(),
    };
    if snapshot.join("config.json").is_file() {
        Ok(snapshot)
    } else {
        Err(NnError::Config(format!(
            "'{id}' is not a folder and is not in the HF cache at {} (vlm-zoo downloads nothing: fetch it with `huggingface-cli download {id}` where the network is reachable)",
            cache.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_cached_snapshots_and_explains_missing_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = tmp.path().join("models--acme--tiny/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::create_dir_all(tmp.path().join("models--acme--tiny/refs")).unwrap();
        std::fs::write(tmp.path().join("models--acme--tiny/refs/main"), "abc123").unwrap();
        let cache = Some(tmp.path().to_path_buf());
        assert_eq!(resolve_model_in(Path::new("acme/tiny"), cache.clone()).unwrap(), snap);
        let e = resolve_model_in(Path::new("acme/absent"), cache).unwrap_err().to_string();
        assert!(e.contains("acme/absent") && e.contains("not in the HF cache"), "{e}");
        let e = resolve_model_in(Path::new("./no/such/dir"), None).unwrap_err().to_string();
        assert!(e.contains("no/such/dir"), "{e}");
    }
}
