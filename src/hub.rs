//! `--model` as a hub id (`google/paligemma-3b-mix-224`, `org/name@revision`): found in the
//! standard HuggingFace cache layout (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`; `models--ORG--NAME/snapshots/REV` with `refs/REVISION`), and
//! downloaded there when it is not (the `hf-hub` crate: resumable `.part` files, a progress bar,
//! `HF_ENDPOINT`, the token from `HF_TOKEN` or `$HF_HOME/token`). Only the files a model needs
//! are fetched. `HF_HUB_OFFLINE=1` never touches the network.

use std::path::{Path, PathBuf};
use zoo_nn::{NnError, Result};

/// The hub cache folder.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = hf_home() {
        return Some(p.join("hub"));
    }
    None
}

fn hf_home() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface"))
}

/// A hub id: `org/name`, optionally `@revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `org/name`.
    pub repo: String,
    /// Branch, tag or commit (`main` when not given).
    pub revision: String,
}

impl HubId {
    /// Parses `org/name[@revision]`; `None` for anything that does not look like one.
    pub fn parse(s: &str) -> Option<Self> {
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, rev),
            Some(_) => return None,
            None => (s, "main"),
        };
        let mut parts = repo.split('/');
        let (org, name) = (parts.next()?, parts.next()?);
        let ok = |p: &str| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        // A branch, tag or commit: path components that stay inside `refs/` (`refs/pr/1` is one).
        let rev_ok = revision.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        });
        (parts.next().is_none() && ok(org) && ok(name) && rev_ok)
            .then(|| Self { repo: repo.to_string(), revision: revision.to_string() })
    }

    /// `models--org--name`.
    fn folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.revision == "main" {
            f.write_str(&self.repo)
        } else {
            write!(f, "{}@{}", self.repo, self.revision)
        }
    }
}

/// A local folder as given, or a hub id found in the cache or downloaded into it.
pub fn resolve_model(model: &Path) -> Result<PathBuf> {
    if model.exists() {
        return Ok(model.to_path_buf());
    }
    let Some(id) = HubId::parse(&model.to_string_lossy()) else {
        return Err(NnError::io(
            model,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such checkpoint folder"),
        ));
    };
    let cache = cache_dir()
        .ok_or_else(|| NnError::Config("no HF cache folder (set HF_HUB_CACHE or HF_HOME)".into()))?;
    if let Some(dir) = cached(&id, &cache) {
        return Ok(dir);
    }
    if offline() {
        return Err(NnError::Config(format!(
            "'{id}' is not a folder and is not in the HF cache at {} (HF_HUB_OFFLINE is set, so nothing is downloaded)",
            cache.display()
        )));
    }
    download(&id, &cache, &Download { progress: true, retries: 3 })
}

/// [`resolve_model`] without the network: a folder, or a snapshot in `cache`.
pub fn resolve_model_in(model: &Path, cache: Option<PathBuf>) -> Result<PathBuf> {
    if model.exists() {
        return Ok(model.to_path_buf());
    }
    let id = HubId::parse(&model.to_string_lossy()).ok_or_else(|| {
        NnError::io(model, std::io::Error::new(std::io::ErrorKind::NotFound, "no such checkpoint folder"))
    })?;
    let cache =
        cache.ok_or_else(|| NnError::Config("no HF cache folder (set HF_HUB_CACHE or HF_HOME)".into()))?;
    cached(&id, &cache).ok_or_else(|| {
        NnError::Config(format!(
            "'{id}' is not a folder and is not in the HF cache at {} (download it with `vlm-zoo inspect --model {id}` where the network is reachable)",
            cache.display()
        ))
    })
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"))
}

/// The snapshot of `id` in `cache` when it holds a config.json.
fn cached(id: &HubId, cache: &Path) -> Option<PathBuf> {
    let repo = cache.join(id.folder());
    let commit = std::fs::read_to_string(repo.join("refs").join(&id.revision))
        .ok()
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| id.revision.clone()); // a commit hash names its snapshot directly
    let snapshot = repo.join("snapshots").join(commit);
    let complete = snapshot.join("config.json").is_file() || snapshot.join("open_clip_config.json").is_file();
    complete.then_some(snapshot)
}

/// Download settings.
#[derive(Debug, Clone, Copy)]
pub struct Download {
    /// Show a progress bar per file (stderr).
    pub progress: bool,
    /// Times a broken transfer is resumed before giving up.
    pub retries: usize,
}

/// Which repository files a model needs: configs, tokenizer and processor files, and one set
/// of weights (safetensors when there are any, else `pytorch_model.bin`).
pub fn needed_files(files: &[String]) -> Vec<String> {
    const SIDE: [&str; 10] = [
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "spiece.model",
        "tokenizer.model",
        "open_clip_config.json",
    ];
    let top = |f: &&String| !f.contains('/');
    let safetensors: Vec<&String> = files
        .iter()
        .filter(top)
        .filter(|f| {
            (f.starts_with("model") || f.starts_with("open_clip_model"))
                && (f.ends_with(".safetensors") || f.ends_with(".safetensors.index.json"))
        })
        .collect();
    let weights: Vec<&String> = if safetensors.is_empty() {
        files
            .iter()
            .filter(top)
            .filter(|f| {
                f.starts_with("pytorch_model") && (f.ends_with(".bin") || f.ends_with(".bin.index.json"))
            })
            .collect()
    } else {
        safetensors
    };
    files.iter().filter(top).filter(|f| SIDE.contains(&f.as_str())).chain(weights).cloned().collect()
}

/// The token: `HF_TOKEN`, else the token file (`$HF_HOME/token`).
fn token() -> Option<String> {
    if let Ok(t) = std::env::var("HF_TOKEN")
        && !t.trim().is_empty()
    {
        return Some(t.trim().to_string());
    }
    let t = std::fs::read_to_string(hf_home()?.join("token")).ok()?;
    (!t.trim().is_empty()).then(|| t.trim().to_string())
}

/// Downloads the files of `id` a model needs into `cache` and returns the snapshot folder.
pub fn download(id: &HubId, cache: &Path, opts: &Download) -> Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    // hf-hub asks for the repo info and each file's metadata only; `fetch` downloads (with
    // `opts`' progress bar and retries).
    let mut builder = ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf()))
        .with_progress(false)
        .with_token(token());
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    let api = builder.build().map_err(|e| hub_error(id, None, e))?;
    let repo =
        api.repo(hf_hub::Repo::with_revision(id.repo.clone(), hf_hub::RepoType::Model, id.revision.clone()));
    let info = repo.info().map_err(|e| hub_error(id, None, e))?;
    // Everything the hub answers becomes a path or a size here: checked before hf-hub writes.
    let untrusted = |what: &str, value: &str, expected: &str| {
        NnError::Config(format!(
            "{id}: the hub answered {what} {value:?}; expected {expected} (nothing was written)"
        ))
    };
    if !is_commit_hash(&info.sha) {
        return Err(untrusted("the commit", &info.sha, "40 hex digits"));
    }
    let names: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    let files = needed_files(&names);
    if let Some(bad) = files.iter().find(|f| !is_plain_file_name(f)) {
        return Err(untrusted("the file name", bad, "a plain file name (no separators, no ..)"));
    }
    if !files.iter().any(|f| f == "config.json" || f == "open_clip_config.json") {
        return Err(NnError::Config(format!(
            "{id}: the repository has no config.json (files: {})",
            names.join(", ")
        )));
    }
    // config.json last: a snapshot that has it is complete (an interrupted download leaves
    // none, so the next run resumes instead of loading a partial folder).
    let mut files = files;
    files.sort_by_key(|f| f == "config.json" || f == "open_clip_config.json");
    let mut snapshot = None;
    for f in &files {
        let meta = api.metadata(&repo.url(f)).map_err(|e| hub_error(id, Some(f), e))?;
        let file_untrusted =
            |what: &str, value: &str, expected: &str| untrusted(&format!("for {f} {what}"), value, expected);
        if meta.commit_hash() != info.sha {
            return Err(file_untrusted(
                "the commit",
                meta.commit_hash(),
                &format!("the repository's {}", info.sha),
            ));
        }
        if !is_etag(meta.etag()) {
            return Err(file_untrusted("the ETag", meta.etag(), "8 to 128 hex digits"));
        }
        let limit = if is_weights_file(f) { MAX_WEIGHTS_FILE } else { MAX_SIDE_FILE };
        if meta.size() as u64 > limit {
            return Err(file_untrusted(
                "the size",
                &meta.size().to_string(),
                &format!("at most {limit} bytes"),
            ));
        }
        // The body is fetched here, not by hf-hub: with the checked commit, ETag and size, and
        // never more bytes than that size.
        let path = fetch(id, f, &repo.url(f), &cache.join(id.folder()), &meta, opts)?;
        snapshot = path.parent().map(Path::to_path_buf);
    }
    // A branch or tag also gets its ref (hf-hub writes refs/main only).
    let dir = snapshot.ok_or_else(|| NnError::Config(format!("{id}: nothing to download")))?;
    // The revision may hold `/` (`refs/pr/1`), as the HF tools' cache allows.
    let reference = cache.join(id.folder()).join("refs").join(&id.revision);
    if let Some(dir) = reference.parent() {
        std::fs::create_dir_all(dir).map_err(|e| NnError::io(dir, e))?;
    }
    crate::fs::write_atomic(&reference, info.sha.as_bytes())?;
    Ok(dir)
}

/// Downloads one file of `id` at `url` into the cache layout the HF tools share (`repo_dir`:
/// `blobs/<etag>`, `snapshots/<commit>/<file>` linking to it), resuming `blobs/<etag>.part`,
/// with the already checked `meta`. At most `meta.size()` bytes are written; a body that is
/// shorter (after the retries) or longer, or a `Content-Range` that disagrees, is an error.
fn fetch(
    id: &HubId,
    file: &str,
    url: &str,
    repo_dir: &Path,
    meta: &hf_hub::api::sync::Metadata,
    opts: &Download,
) -> Result<PathBuf> {
    let (etag, size) = (meta.etag(), meta.size() as u64);
    let blobs = repo_dir.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(|e| NnError::io(&blobs, e))?;
    let blob = blobs.join(etag);
    let pointer = repo_dir.join("snapshots").join(meta.commit_hash()).join(file);
    let lock_path = blobs.join(format!("{etag}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(|e| NnError::io(&lock_path, e))?;
    lock.lock().map_err(|e| NnError::io(&lock_path, e))?;
    let have = std::fs::metadata(&blob).map(|m| m.len()).ok();
    if have != Some(size) {
        let part = blobs.join(format!("{etag}.part"));
        let bar = opts.progress.then(|| {
            let bar = indicatif::ProgressBar::new(size);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(file.to_string());
            bar
        });
        let mut last = None;
        for attempt in 0..=opts.retries {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(300 << attempt.min(5)));
            }
            match fetch_range(id, file, url, &part, size, bar.as_ref()) {
                Ok(()) => {
                    last = None;
                    break;
                }
                // A hub that breaks the protocol is not retried.
                Err(Fetch::Refused(e)) => {
                    let _ = std::fs::remove_file(&part);
                    return Err(e);
                }
                Err(Fetch::Retry(e)) => last = Some(e),
            }
        }
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        if let Some(e) = last {
            return Err(e);
        }
        std::fs::rename(&part, &blob).map_err(|e| NnError::io(&blob, e))?;
    }
    drop(lock);
    if let Some(dir) = pointer.parent() {
        std::fs::create_dir_all(dir).map_err(|e| NnError::io(dir, e))?;
    }
    if std::fs::symlink_metadata(&pointer).is_err() {
        link_or_copy(&blob, &pointer, etag)?;
    }
    Ok(pointer)
}

/// Why a transfer stopped: worth another try (a cut connection), or not (a hostile answer).
enum Fetch {
    Retry(NnError),
    Refused(NnError),
}

/// One request for the rest of `part` (up to `size` bytes in all), appended to it.
fn fetch_range(
    id: &HubId,
    file: &str,
    url: &str,
    part: &Path,
    size: u64,
    bar: Option<&indicatif::ProgressBar>,
) -> std::result::Result<(), Fetch> {
    use std::io::{Read, Write};
    let refused =
        |what: String| Fetch::Refused(NnError::Config(format!("{id}: {file}: {what} (nothing kept)")));
    let retry =
        |what: String| Fetch::Retry(NnError::Config(format!("{id}: {file}: download failed: {what}")));
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)
        .map_err(|e| Fetch::Retry(NnError::io(part, e)))?;
    let mut start = out.metadata().map_err(|e| Fetch::Retry(NnError::io(part, e)))?.len();
    if start >= size {
        out.set_len(0).map_err(|e| Fetch::Retry(NnError::io(part, e)))?;
        start = 0;
    }
    if size == 0 {
        return Ok(());
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .timeout_connect(Some(std::time::Duration::from_secs(30)))
        .timeout_per_read(Some(std::time::Duration::from_secs(60)))
        .build()
        .into();
    // Redirects are followed here, to http(s) locations only; the token goes to the hub's host
    // alone (an LFS redirect points at a CDN).
    let origin = |u: &str| u.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
    let hub_origin = origin(url);
    let mut location = url.to_string();
    let mut hops = 0;
    let response = loop {
        let mut request = agent.get(&location).header("Range", &format!("bytes={start}-"));
        if origin(&location) == hub_origin
            && let Some(t) = token()
        {
            request = request.header("Authorization", &format!("Bearer {t}"));
        }
        let response = request.call().map_err(|e| retry(e.to_string()))?;
        if !response.status().is_redirection() {
            break response;
        }
        let to = response.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        location = if to.starts_with("https://") || to.starts_with("http://") {
            to
        } else if to.starts_with('/') && !to.starts_with("//") {
            format!("{}{to}", origin(&location))
        } else {
            return Err(refused(format!("the hub redirected to {to:?}; expected an http(s) location")));
        };
        hops += 1;
        if hops > 5 {
            return Err(refused("the hub redirected more than 5 times".into()));
        }
    };
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    match status {
        206 => {
            let range = header("content-range").unwrap_or_default();
            let want = format!("bytes {start}-{}/{size}", size - 1);
            if range != want {
                return Err(refused(format!("the hub answered Content-Range {range:?}; expected {want:?}")));
            }
        }
        200 => {
            // The whole file again (the server ignored the range).
            out.set_len(0).map_err(|e| Fetch::Retry(NnError::io(part, e)))?;
            start = 0;
        }
        401 | 403 => {
            return Err(Fetch::Refused(NnError::Config(format!(
                "{id}: {file}: access denied ({status}): the repository is gated or private; accept its license on the hub and set HF_TOKEN (or log in with `huggingface-cli login`)"
            ))));
        }
        408 | 429 | 500.. => return Err(retry(format!("HTTP {status}"))),
        other => return Err(refused(format!("the hub answered HTTP {other}"))),
    }
    let remaining = size - start;
    if let Some(len) = header("content-length")
        && len.parse::<u64>().ok() != Some(remaining)
    {
        return Err(refused(format!("the hub answered Content-Length {len:?}; expected {remaining}")));
    }
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    while got < remaining {
        let want = (remaining - got).min(buf.len() as u64) as usize;
        let n = match body.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = out.flush();
                return Err(retry(format!("{e} after {} of {size} bytes", start + got)));
            }
        };
        out.write_all(&buf[..n]).map_err(|e| Fetch::Retry(NnError::io(part, e)))?;
        got += n as u64;
        if let Some(bar) = bar {
            bar.set_position(start + got);
        }
    }
    out.sync_all().map_err(|e| Fetch::Retry(NnError::io(part, e)))?;
    if got < remaining {
        return Err(retry(format!("the connection ended after {} of {size} bytes", start + got)));
    }
    // Not one byte more than the file's size.
    if body.read(&mut buf[..1]).is_ok_and(|n| n > 0) {
        return Err(refused(format!("the hub sent more than the {size} bytes it announced")));
    }
    Ok(())
}

/// `snapshots/<commit>/<file>` -> `../../blobs/<etag>` (a copy where links are not allowed).
fn link_or_copy(blob: &Path, pointer: &Path, etag: &str) -> Result<()> {
    #[cfg(unix)]
    {
        let target = Path::new("../../blobs").join(etag);
        if std::os::unix::fs::symlink(&target, pointer).is_ok() {
            return Ok(());
        }
    }
    std::fs::copy(blob, pointer).map(|_| ()).map_err(|e| NnError::io(pointer, e))
}

/// Largest weights file accepted from a hub (the largest real shards are tens of GB).
const MAX_WEIGHTS_FILE: u64 = 1 << 40;
/// Largest config, tokenizer or processor file accepted from a hub.
const MAX_SIDE_FILE: u64 = 1 << 30;

/// A git commit hash as the hub writes it: 40 lowercase or uppercase hex digits.
fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An ETag as the hub gives them (a git blob sha1 or an LFS sha256; quotes already removed).
fn is_etag(s: &str) -> bool {
    (8..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A file name that stays inside its folder: no separators, no `..`, no control characters.
fn is_plain_file_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains(['/', '\\', ':'])
        && !s.chars().any(char::is_control)
}

fn is_weights_file(f: &str) -> bool {
    f.ends_with(".safetensors") || f.ends_with(".bin")
}

/// One line for a failed hub request, naming the repository and the file.
fn hub_error(id: &HubId, file: Option<&str>, e: hf_hub::api::sync::ApiError) -> NnError {
    use hf_hub::api::sync::ApiError;
    let what = file.map_or_else(|| id.to_string(), |f| format!("{id}: {f}"));
    let status = match &e {
        ApiError::RequestError(r) => r.to_string(),
        other => other.to_string(),
    };
    let reason = if status.contains("401") || status.contains("403") {
        format!(
            "access denied ({status}): the repository is gated or private; accept its license on the hub and set HF_TOKEN (or log in with `huggingface-cli login`)"
        )
    } else if status.contains("404") {
        format!("not found on the hub ({status}): check the name and the revision")
    } else {
        format!("download failed: {status} (set HF_HUB_OFFLINE=1 to use only the local cache)")
    };
    NnError::Config(format!("{what}: {reason}"))
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
        assert_eq!(resolve_model_in(Path::new("acme/tiny@abc123"), cache.clone()).unwrap(), snap);
        let e = resolve_model_in(Path::new("acme/absent"), cache).unwrap_err().to_string();
        assert!(e.contains("acme/absent") && e.contains("not in the HF cache"), "{e}");
        let e = resolve_model_in(Path::new("./no/such/dir"), None).unwrap_err().to_string();
        assert!(e.contains("no/such/dir"), "{e}");
    }

    #[test]
    fn revisions_stay_inside_refs() {
        assert_eq!(HubId::parse("a/b@refs/pr/1").unwrap().revision, "refs/pr/1");
        for bad in ["a/b@../../x", "a/b@v1/../../x", "a/b@/abs", "a/b@x//y", "a/b@x y"] {
            assert!(HubId::parse(bad).is_none(), "{bad}");
        }
        let plain = |s: &str| is_plain_file_name(s);
        assert!(plain("model-00001-of-00002.safetensors") && plain("model..safetensors"));
        assert!(!plain("..") && !plain("a/b") && !plain("a\\b") && !plain("") && !plain("c:x"));
        assert!(
            is_commit_hash(&"a".repeat(40)) && !is_commit_hash("../../x") && !is_commit_hash(&"g".repeat(40))
        );
        assert!(is_etag("0123456789abcdef") && !is_etag("\"abc\"") && !is_etag("../../evil"));
    }

    #[test]
    fn hub_ids_and_needed_files() {
        assert_eq!(HubId::parse("a/b").unwrap().revision, "main");
        assert_eq!(HubId::parse("google/siglip-so400m-patch14-384@v1.0").unwrap().revision, "v1.0");
        for bad in ["a", "a/b/c", "../b", "a/", "a/b@", "a b/c"] {
            assert!(HubId::parse(bad).is_none(), "{bad}");
        }
        let files: Vec<String> = [
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "tf_model.h5",
            "flax_model.msgpack",
            "spiece.model",
            "tokenizer_config.json",
            "README.md",
            ".gitattributes",
            "onnx/model.onnx",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            needed_files(&files),
            ["config.json", "spiece.model", "tokenizer_config.json", "model.safetensors"]
        );
        let bin: Vec<String> = ["config.json", "pytorch_model.bin"].map(String::from).to_vec();
        assert_eq!(needed_files(&bin), bin);
    }
}
