//! `--model org/name` downloads from a hub: a local HTTP server on 127.0.0.1 serves a fixture
//! repository the way the hub API does (repo info, `resolve` with ranges, commit and etag
//! headers), cuts connections, and asks for a token. No network.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use zoo_nn::testing::{PARITY_TOL, Reference, assert_slices_close};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// What the fake hub does.
#[derive(Clone, Default)]
struct Behaviour {
    /// Cut the body of this file halfway, this many times.
    cut: Option<(String, usize)>,
    /// Require `Authorization: Bearer TOKEN`.
    token: Option<String>,
    /// A hostile hub: this commit in the repo info and the `x-repo-commit` headers.
    commit: Option<String>,
    /// A hostile hub: this commit in the `x-repo-commit` headers only.
    header_commit: Option<String>,
    /// A hostile hub: this ETag on every file.
    etag: Option<String>,
    /// A hostile hub: one more file name in the repo info.
    sibling: Option<String>,
    /// A hostile hub, for the weights' body (not the metadata probe): a Content-Length larger
    /// than what it sends.
    lie_length: bool,
    /// ... a body that never ends (no length, bytes until the client leaves).
    endless: bool,
    /// ... a redirect to this location.
    redirect: Option<String>,
}

struct Hub {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

fn serve(repo: &Path, behaviour: Behaviour) -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let behaviour = Arc::new(Mutex::new(behaviour));
    let (log, rules, repo) = (requests.clone(), behaviour.clone(), repo.to_path_buf());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (log, rules, repo) = (log.clone(), rules.clone(), repo.clone());
            std::thread::spawn(move || {
                let _ = handle(stream, &repo, &log, &rules);
            });
        }
    });
    Hub { url, requests, behaviour }
}

fn respond(
    s: &mut TcpStream,
    status: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)
}

fn handle(
    mut stream: TcpStream,
    repo: &Path,
    log: &Mutex<Vec<String>>,
    rules_shared: &Mutex<Behaviour>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut range, mut auth) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((&h, ""));
        match k.to_ascii_lowercase().as_str() {
            "range" => range = Some(v.trim().to_string()),
            "authorization" => auth = Some(v.trim().to_string()),
            _ => {}
        }
    }
    log.lock().unwrap().push(format!("{path} {}", range.clone().unwrap_or_default()));
    let rules = rules_shared.lock().unwrap().clone();
    if let Some(t) = &rules.token
        && auth.as_deref() != Some(format!("Bearer {t}").as_str())
    {
        return respond(&mut stream, "401 Unauthorized", &[], b"{\"error\":\"gated\"}");
    }
    let files: Vec<String> = {
        let mut f: Vec<String> = std::fs::read_dir(repo)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        f.sort();
        f
    };
    if path.starts_with("/api/models/acme/tiny/revision/") {
        let mut names = files.clone();
        names.extend(rules.sibling.clone());
        let siblings: Vec<String> =
            names.iter().map(|f| serde_json::json!({"rfilename": f}).to_string()).collect();
        let sha = rules.commit.clone().unwrap_or(SHA.to_string());
        let body = format!("{{\"sha\":{},\"siblings\":[{}]}}", serde_json::json!(sha), siblings.join(","));
        let headers = [
            ("Content-Type".into(), "application/json".into()),
            ("Content-Length".into(), body.len().to_string()),
        ];
        return respond(&mut stream, "200 OK", &headers, body.as_bytes());
    }
    let Some(file) = path.strip_prefix("/acme/tiny/resolve/main/") else {
        return respond(&mut stream, "404 Not Found", &[("Content-Length".into(), "0".into())], b"");
    };
    let Ok(data) = std::fs::read(repo.join(file)) else {
        return respond(&mut stream, "404 Not Found", &[("Content-Length".into(), "0".into())], b"");
    };
    let n = data.len();
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap();
            (
                a.parse::<usize>().unwrap(),
                if b.is_empty() { n - 1 } else { b.parse::<usize>().unwrap().min(n - 1) },
            )
        }
        None => (0, n - 1),
    };
    // An etag from the content, as the hub gives (sha256 for LFS files; any stable digest here).
    let etag = format!(
        "\"{:016x}\"",
        data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
    );
    let commit = rules.header_commit.clone().or(rules.commit.clone()).unwrap_or(SHA.to_string());
    let etag = rules.etag.clone().map_or(etag, |e| format!("\"{e}\""));
    let headers = vec![
        ("x-repo-commit".to_string(), commit),
        ("etag".into(), etag),
        ("Content-Range".into(), format!("bytes {start}-{end}/{n}")),
        ("Content-Length".into(), (end + 1 - start).to_string()),
        ("Accept-Ranges".into(), "bytes".into()),
    ];
    let body = &data[start..=end];
    let probe = range.as_deref() == Some("bytes=0-0");
    if !probe && file == "model.safetensors" {
        if let Some(location) = &rules.redirect {
            let headers = [("Location".to_string(), location.clone()), ("Content-Length".into(), "0".into())];
            return respond(&mut stream, "302 Found", &headers, b"");
        }
        if rules.lie_length {
            let mut lying = headers.clone();
            lying.retain(|(k, _)| k != "Content-Length");
            lying.push(("Content-Length".into(), (body.len() + 1000).to_string()));
            return respond(&mut stream, "206 Partial Content", &lying, body);
        }
        if rules.endless {
            let mut head = "HTTP/1.1 206 Partial Content\r\nConnection: close\r\n".to_string();
            for (k, v) in headers.iter().filter(|(k, _)| k != "Content-Length") {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes())?;
            stream.write_all(body)?;
            let chunk = vec![0u8; 1 << 16];
            for _ in 0..16_384 {
                stream.write_all(&chunk)?; // 1 GiB, or until the client leaves
            }
            return Ok(());
        }
    }
    let cut_now = {
        let mut r = rules_shared.lock().unwrap();
        match r.cut.as_mut() {
            Some((f, times)) if f == file && *times > 0 && body.len() > 1 => {
                *times -= 1;
                true
            }
            _ => false,
        }
    };
    if cut_now {
        // Send the headers and half the body, then drop the connection.
        log.lock().unwrap().push(format!("cut {file} after {} of {} bytes", body.len() / 2, body.len()));
        let mut head = "HTTP/1.1 206 Partial Content\r\nConnection: close\r\n".to_string();
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body[..body.len() / 2])?;
        stream.flush()?;
        return stream.shutdown(std::net::Shutdown::Both);
    }
    respond(&mut stream, "206 Partial Content", &headers, body)
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Runs `vlm-zoo zero-shot --model acme/tiny` against the hub at `url`, caching in `home`.
fn zero_shot(url: &str, home: &Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("hub-siglip-base/reference.json")).unwrap(),
    )
    .unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_vlm-zoo"));
    c.args(["zero-shot", "--model", "acme/tiny", "--json"]);
    for img in meta["images"].as_array().unwrap() {
        c.arg("--image").arg(fixtures().join("images").join(img.as_str().unwrap()));
    }
    for t in meta["texts"].as_array().unwrap() {
        c.args(["--text", t.as_str().unwrap()]);
    }
    c.env("HF_ENDPOINT", url)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn probs(stdout: &str) -> Vec<f32> {
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    v["probs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn download_survives_cut_connections_and_resumes_across_runs() {
    let repo = fixtures().join("hub-siglip-base");
    let home = tempfile::tempdir().unwrap();
    // Every transfer of the weights is cut: the run fails after its retries, leaving only a
    // resumable .part file, never a truncated file under the final name.
    let hub = serve(&repo, Behaviour { cut: Some(("model.safetensors".into(), 100)), ..Default::default() });
    let (ok, _, stderr) = zero_shot(&hub.url, home.path(), &[]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("acme/tiny") && stderr.contains("model.safetensors"), "{stderr}");
    assert_eq!(stderr.trim().lines().filter(|l| l.starts_with("error")).count(), 1, "{stderr}");
    let files = files_under(home.path());
    assert!(files.iter().any(|p| p.extension().is_some_and(|e| e == "part")), "{files:?}");
    assert!(!files.iter().any(|p| p.ends_with("model.safetensors")), "{files:?}");
    // The connection comes back: the next run resumes where the .part file ends.
    hub.behaviour.lock().unwrap().cut = None;
    let (ok, stdout, stderr) = zero_shot(&hub.url, home.path(), &[]);
    assert!(ok, "{stderr}");
    let log = hub.requests.lock().unwrap().clone();
    let resumed = log.iter().any(|l| {
        l.contains("resolve/main/model.safetensors bytes=")
            && !l.ends_with("bytes=0-")
            && !l.ends_with("bytes=0-0")
    });
    assert!(resumed, "no ranged resume in {log:#?}");
    let r = Reference::read(&repo.join("reference.safetensors"));
    assert_slices_close(&probs(&stdout), &r.f32("probs"), PARITY_TOL, "downloaded hub-siglip-base probs");
    let files = files_under(home.path());
    assert!(!files.iter().any(|p| p.extension().is_some_and(|e| e == "part")), "{files:?}");
    // Only what the model needs was fetched (no reference files, no tokenizer corpus).
    assert!(!log.iter().any(|l| l.contains("reference") || l.contains("tokenizer_corpus")), "{log:#?}");
    // A second run finds everything in the cache and makes no request.
    let before = hub.requests.lock().unwrap().len();
    let (ok, _, stderr) = zero_shot(&hub.url, home.path(), &[]);
    assert!(ok, "{stderr}");
    assert_eq!(hub.requests.lock().unwrap().len(), before);
}

#[test]
fn a_cut_connection_is_resumed_within_one_run() {
    let repo = fixtures().join("hub-siglip-base");
    let home = tempfile::tempdir().unwrap();
    let hub = serve(&repo, Behaviour { cut: Some(("model.safetensors".into(), 1)), ..Default::default() });
    let (ok, stdout, stderr) = zero_shot(&hub.url, home.path(), &[]);
    let log = hub.requests.lock().unwrap().clone();
    assert!(ok, "{stderr} {log:#?}");
    assert!(log.iter().any(|l| l.starts_with("cut model.safetensors")), "{log:#?}");
    let r = Reference::read(&repo.join("reference.safetensors"));
    assert_slices_close(&probs(&stdout), &r.f32("probs"), PARITY_TOL, "resumed download probs");
}

#[test]
fn gated_repos_offline_and_unreachable_hubs_get_one_line_errors() {
    let repo = fixtures().join("hub-siglip-base");
    let home = tempfile::tempdir().unwrap();
    let hub = serve(&repo, Behaviour { token: Some("hf_right".into()), ..Default::default() });
    let (ok, _, stderr) = zero_shot(&hub.url, home.path(), &[]);
    assert!(
        !ok && stderr.contains("acme/tiny") && stderr.contains("gated") && stderr.contains("HF_TOKEN"),
        "{stderr}"
    );
    let (ok, _, stderr) = zero_shot(&hub.url, home.path(), &[("HF_TOKEN", "hf_wrong")]);
    assert!(!ok && stderr.contains("gated"), "{stderr}");
    // The token from the environment, then from the token file.
    let (ok, _, stderr) = zero_shot(&hub.url, home.path(), &[("HF_TOKEN", "hf_right")]);
    assert!(ok, "{stderr}");
    let home2 = tempfile::tempdir().unwrap();
    std::fs::write(home2.path().join("token"), "hf_right\n").unwrap();
    let (ok, _, stderr) = zero_shot(&hub.url, home2.path(), &[]);
    assert!(ok, "{stderr}");
    // Offline: the cache only.
    let empty = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = zero_shot(&hub.url, empty.path(), &[("HF_HUB_OFFLINE", "1")]);
    assert!(!ok && stderr.contains("acme/tiny") && stderr.contains("HF_HUB_OFFLINE"), "{stderr}");
    let (ok, _, stderr) = zero_shot(&hub.url, home.path(), &[("HF_HUB_OFFLINE", "1")]);
    assert!(ok, "cached copy works offline: {stderr}");
    // No hub at that address.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (ok, _, stderr) = zero_shot(&url, empty.path(), &[]);
    assert!(!ok && stderr.contains("acme/tiny") && stderr.contains("download failed"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// Runs zero-shot against a hub behaving as `behaviour` into a fresh HF_HOME and checks what
/// every hostile case must give: a failure, one error line naming the repository and `expect`,
/// no panic, nothing written outside the cache. Returns the files written, with their sizes.
fn refused(behaviour: Behaviour, expect: &str) -> Vec<(PathBuf, u64)> {
    let repo = fixtures().join("hub-siglip-base");
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let hub = serve(&repo, behaviour);
    let t = std::time::Instant::now();
    let (ok, _, stderr) = zero_shot(&hub.url, &home, &[]);
    eprintln!("hostile {expect:?}: exit ok={ok} after {:?}: {}", t.elapsed(), stderr.trim());
    assert!(!ok && !stderr.contains("panicked"), "{expect}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{expect}: {stderr}");
    assert!(stderr.contains("acme/tiny") && stderr.contains(expect), "{expect}: {stderr}");
    let cache = home.join("hub");
    let files = files_under(root.path());
    let outside: Vec<&PathBuf> = files.iter().filter(|p| !p.starts_with(&cache)).collect();
    assert!(outside.is_empty(), "{expect}: written outside the cache: {outside:?}");
    files
        .into_iter()
        .map(|f| {
            let n = std::fs::metadata(&f).unwrap().len();
            (f, n)
        })
        .collect()
}

/// A hub's answers are untrusted: a commit or an ETag that is a relative path, a file name with
/// separators, a commit that changes between answers, each is a one-line error naming the
/// repository and the value, with nothing written outside the HF cache and no panic.
#[test]
fn hostile_hub_answers_are_refused_before_anything_is_written() {
    let quoted = |v: &str| format!("{v:?}");
    refused(
        Behaviour { commit: Some("../../../../evil".into()), ..Default::default() },
        &quoted("../../../../evil"),
    );
    refused(
        Behaviour { header_commit: Some("../../../x".into()), ..Default::default() },
        &quoted("../../../x"),
    );
    refused(
        Behaviour { etag: Some("../../../../../evil".into()), ..Default::default() },
        &quoted("../../../../../evil"),
    );
    let name = "model..\\..\\evil.safetensors";
    refused(Behaviour { sibling: Some(name.into()), ..Default::default() }, &quoted(name));
}

/// A hostile hub's bodies: a Content-Length that lies, a body that never ends, a redirect to a
/// local path. Each is a one-line error naming the repository and the file, with no more bytes
/// written than the repository's largest file, nothing outside the cache and no panic.
#[test]
fn hostile_hub_bodies_are_bounded() {
    let repo = fixtures().join("hub-siglip-base");
    let largest = files_under(&repo).iter().map(|f| std::fs::metadata(f).unwrap().len()).max().unwrap();
    for (expect, behaviour) in [
        ("Content-Length", Behaviour { lie_length: true, ..Default::default() }),
        ("more than", Behaviour { endless: true, ..Default::default() }),
        (
            "file:///etc/passwd",
            Behaviour { redirect: Some("file:///etc/passwd".into()), ..Default::default() },
        ),
    ] {
        let files = refused(behaviour, expect);
        assert!(!files.iter().any(|(f, _)| f.ends_with("model.safetensors")), "{expect}: {files:?}");
        assert!(files.iter().all(|(_, n)| *n <= largest), "{expect}: {files:?}");
    }
}
