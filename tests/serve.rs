//! `vlm-zoo serve` end to end, over real sockets: every endpoint (an OpenAI-client-shaped chat
//! request included) against the CLI's answers, batched answers equal to one-at-a-time ones, the
//! limits (queue, body, pixels, bad JSON, content type, max_tokens, prompt length, model field,
//! API key), clients that leave mid-stream or never read, and SIGTERM draining in-flight work.
#![allow(clippy::unwrap_used)]

use base64::Engine;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{Server, fixtures};

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One HTTP/1.1 request on its own connection.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply { status, headers: headers.to_string(), body }
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// A POST to /v1/generate whose reply is left unread on the returned socket (streams, slow
/// clients, clients that leave).
fn open_stream(addr: &str, body: &str, extra: &[(&str, &str)]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut head = format!(
        "POST /v1/generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    s
}

fn post(addr: &str, path: &str, body: &serde_json::Value) -> Reply {
    http(addr, "POST", path, "application/json", body.to_string().as_bytes(), &[])
}

fn data_url(path: &Path) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
    )
}

fn cli_generate(image: &Path, prompt: &str, tokens: usize) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_vlm-zoo"))
        .args(["generate", "--model", fixtures().join("paligemma-a").to_str().unwrap(), "--image"])
        .arg(image)
        .args(["--prompt", prompt, "--max-new-tokens", &tokens.to_string(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A PNG whose header claims `w` x `h` pixels (no pixel data): what a decompression bomb looks
/// like before decoding.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    // An empty IDAT and IEND: the decoder has read the whole header once it meets IDAT.
    for chunk in [&b"IDAT"[..], &b"IEND"[..]] {
        png.extend(0u32.to_be_bytes());
        png.extend(chunk);
        png.extend(crc32(chunk).to_be_bytes());
    }
    png
}

#[test]
fn paligemma_endpoints_answer_as_the_cli() {
    let srv = Server::start("paligemma-a", &["--batch-window-ms", "50"]);
    let a = &srv.addr;
    let health = http(a, "GET", "/health", "text/plain", b"", &[]);
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["model_type"], "paligemma");
    let models = http(a, "GET", "/v1/models", "text/plain", b"", &[]).json();
    assert!(models["data"][0]["id"].as_str().unwrap().ends_with("paligemma-a"), "{models}");
    let page = http(a, "GET", "/", "text/plain", b"", &[]);
    assert!(page.status == 200 && page.body.contains("<title>vlm-zoo</title>"));

    let images = [fixtures().join("images/rgb_64x48.png"), fixtures().join("images/rgb_23x37.png")];
    let prompts = ["caption en", "detect circle ; square"];
    let want: Vec<serde_json::Value> =
        images.iter().zip(prompts).map(|(i, p)| cli_generate(i, p, 6)).collect();

    // One at a time.
    for ((img, p), w) in images.iter().zip(prompts).zip(&want) {
        let r = post(
            a,
            "/v1/generate",
            &serde_json::json!({"prompt": p, "image": data_url(img), "max_tokens": 6}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["token_ids"], w["token_ids"], "{p}");
        assert_eq!(v["text"], w["text"]);
        assert_eq!(v.get("detections").is_some(), p.starts_with("detect"));
    }
    // Eight at once: batched (the window gathers them), each the same answer.
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (a, img, p) = (a.clone(), images[i % 2].clone(), prompts[i % 2]);
            std::thread::spawn(move || {
                post(
                    &a,
                    "/v1/generate",
                    &serde_json::json!({"prompt": p, "image": data_url(&img), "max_tokens": 6}),
                )
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["token_ids"], want[i % 2]["token_ids"], "concurrent request {i}");
    }
    let metrics = http(a, "GET", "/metrics", "text/plain", b"", &[]).body;
    let batched: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("vlm_zoo_batches_total{size=") && !l.contains("size=\"1\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(batched >= 1, "no batch of 2 or more:\n{metrics}");
    assert!(
        metrics.contains("vlm_zoo_request_seconds_bucket{route=\"/v1/generate\"")
            && metrics.contains("vlm_zoo_queue_depth")
    );

    // The OpenAI client's request: content parts with a data-URL image; plain and streamed.
    let chat = serde_json::json!({
        "model": "paligemma-a",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "caption en"},
            {"type": "image_url", "image_url": {"url": data_url(&images[0]), "detail": "auto"}}]}],
        "max_tokens": 6, "temperature": 0, "stream_options": null,
    });
    let r = post(a, "/v1/chat/completions", &chat);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], want[0]["text"]);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 6);
    let mut streamed = chat.clone();
    streamed["stream"] = serde_json::json!(true);
    let r = post(a, "/v1/chat/completions", &streamed);
    assert!(r.headers.to_ascii_lowercase().contains("text/event-stream"), "{}", r.headers);
    let mut content = String::new();
    let events: Vec<&str> = r.body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    for e in &events[..events.len() - 1] {
        let v: serde_json::Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        content.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert_eq!(content, want[0]["text"].as_str().unwrap());
    // /v1/generate streamed: pieces, then the whole object.
    let r = post(
        a,
        "/v1/generate",
        &serde_json::json!({"prompt": "caption en", "image": data_url(&images[0]), "max_tokens": 6, "stream": true}),
    );
    assert!(r.body.contains("event: done"), "{}", r.body);

    // Embeddings and zero-shot are not this model's: a clear 400.
    let r = post(a, "/v1/zero-shot", &serde_json::json!({"images": [data_url(&images[0])], "texts": ["a"]}));
    assert!(
        r.status == 400 && r.json()["error"]["message"].as_str().unwrap().contains("paligemma"),
        "{}",
        r.body
    );
}

#[test]
fn a_request_joins_the_running_batch() {
    // No start window: the second request can only share the decoder by joining mid-run.
    let srv = Server::start("paligemma-a", &["--batch-window-ms", "0"]);
    let a = &srv.addr;
    let image = fixtures().join("images/rgb_64x48.png");
    let long = cli_generate(&image, "caption en", 37);
    let short = cli_generate(&image, "caption en", 6);
    let body = serde_json::json!({"prompt": "caption en", "image": data_url(&image), "max_tokens": 37, "stream": true})
        .to_string();
    let mut s = open_stream(a, &body, &[]);
    // Wait for the first token: the long request is decoding.
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("data: {\"text\"") {
        s.read_exact(&mut byte).unwrap();
        seen.push(byte[0]);
    }
    let joined = post(
        a,
        "/v1/generate",
        &serde_json::json!({"prompt": "caption en", "image": data_url(&image), "max_tokens": 6}),
    );
    assert_eq!(joined.json()["token_ids"], short["token_ids"]);
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    let done =
        rest.split("event: done\ndata: ").nth(1).unwrap_or_else(|| panic!("{rest}")).lines().next().unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(done).unwrap()["token_ids"], long["token_ids"]);
    let metrics = http(a, "GET", "/metrics", "text/plain", b"", &[]).body;
    let joins: u64 = metrics
        .lines()
        .find(|l| l.starts_with("vlm_zoo_joined_total "))
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // The short request arrived with 36 of the long one's tokens still to come (~50 ms here).
    assert!(joins >= 1, "the second request did not join the running batch:\n{metrics}");
}

#[test]
fn bad_requests_get_a_status_and_a_json_error() {
    let srv = Server::start("paligemma-a", &["--max-body-mb", "1"]);
    let a = &srv.addr;
    let img = data_url(&fixtures().join("images/rgb_64x48.png"));
    let check = |r: Reply, status: u16, words: &[&str]| {
        assert_eq!(r.status, status, "{}", r.body);
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        for w in words {
            assert!(msg.contains(w), "{msg:?} lacks {w:?}");
        }
    };
    check(http(a, "POST", "/v1/generate", "application/json", b"{\"prompt\": ", &[]), 400, &["invalid JSON"]);
    check(http(a, "POST", "/v1/generate", "text/plain", b"{}", &[]), 415, &["application/json"]);
    check(
        post(a, "/v1/generate", &serde_json::json!({"prompt": "caption en", "image": "bm90IGFuIGltYWdl"})),
        400,
        &["not an image"],
    );
    check(
        post(
            a,
            "/v1/generate",
            &serde_json::json!({"prompt": "caption en", "image": "https://example.com/a.png"}),
        ),
        400,
        &["does not fetch"],
    );
    let bomb = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png_header(10_000, 10_000))
    );
    check(
        post(a, "/v1/generate", &serde_json::json!({"prompt": "caption en", "image": bomb})),
        413,
        &["10000x10000", "limit"],
    );
    check(
        post(a, "/v1/generate", &serde_json::json!({"prompt": "caption en", "image": img, "max_tokens": 0})),
        400,
        &["max_tokens 0"],
    );
    check(
        post(
            a,
            "/v1/generate",
            &serde_json::json!({"prompt": "caption en", "image": img, "max_tokens": 1_000_000_000}),
        ),
        400,
        &["exceeds", "context"],
    );
    check(
        post(a, "/v1/generate", &serde_json::json!({"prompt": "caption en ".repeat(40), "image": img})),
        400,
        &["does not fit"],
    );
    check(
        post(a, "/v1/generate", &serde_json::json!({"prompt": "caption en", "image": img, "model": "gpt-4"})),
        404,
        &["gpt-4", "not served"],
    );
    check(
        post(a, "/v1/generate", &serde_json::json!({"prompt": "caption en", "image": img, "temprature": 1})),
        400,
        &["temprature"],
    );
    check(post(a, "/v1/generate", &serde_json::json!({"prompt": "caption en"})), 400, &["needs an image"]);
    check(post(a, "/v1/chat/completions", &serde_json::json!({"messages": []})), 400, &["messages"]);
    let big = vec![b'x'; 2 << 20];
    let r = http(a, "POST", "/v1/generate", "application/json", &big, &[]);
    assert_eq!(r.status, 413, "{}", r.body);
    check(http(a, "GET", "/v1/nope", "text/plain", b"", &[]), 404, &["no such endpoint"]);
    // The server is still up and answering.
    assert_eq!(http(a, "GET", "/health", "text/plain", b"", &[]).status, 200);
}

#[test]
fn limits_queue_key_disconnects_and_sigterm() {
    let mut srv = Server::start(
        "paligemma-a",
        &["--max-queue", "1", "--max-batch", "1", "--batch-window-ms", "0", "--api-key", "s3cret"],
    );
    let a = srv.addr.clone();
    let img = data_url(&fixtures().join("images/rgb_64x48.png"));
    let body = serde_json::json!({"prompt": "caption en", "image": img, "max_tokens": 40}).to_string();
    let auth = [("Authorization", "Bearer s3cret")];
    // The key: missing or wrong is 401; /health stays open.
    assert_eq!(http(&a, "POST", "/v1/generate", "application/json", body.as_bytes(), &[]).status, 401);
    assert_eq!(
        http(
            &a,
            "POST",
            "/v1/generate",
            "application/json",
            body.as_bytes(),
            &[("Authorization", "Bearer s3creT")]
        )
        .status,
        401
    );
    assert_eq!(http(&a, "GET", "/health", "text/plain", b"", &[]).status, 200);
    assert_eq!(http(&a, "POST", "/v1/generate", "application/json", body.as_bytes(), &auth).status, 200);

    // A full queue: 503 with Retry-After for some of 12 simultaneous requests, 200 for the rest.
    let handles: Vec<_> = (0..12)
        .map(|_| {
            let (a, body) = (a.clone(), body.clone());
            std::thread::spawn(move || {
                http(
                    &a,
                    "POST",
                    "/v1/generate",
                    "application/json",
                    body.as_bytes(),
                    &[("Authorization", "Bearer s3cret")],
                )
            })
        })
        .collect();
    let replies: Vec<Reply> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let busy: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert!(!busy.is_empty() && replies.iter().all(|r| r.status == 200 || r.status == 503));
    assert!(busy[0].headers.to_ascii_lowercase().contains("retry-after: 1"), "{}", busy[0].headers);

    // A client that leaves mid-stream, and one that never reads: others are still served.
    let stream_body = serde_json::json!({"prompt": "caption en", "image": data_url(&fixtures().join("images/rgb_64x48.png")), "max_tokens": 60, "stream": true}).to_string();
    let open = |a: &str| open_stream(a, &stream_body, &[("Authorization", "Bearer s3cret")]);
    let mut leaver = open(&a);
    let mut first = [0u8; 64];
    let _ = leaver.read(&mut first).unwrap();
    drop(leaver);
    let _never_reads = open(&a);
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    assert_eq!(http(&a, "POST", "/v1/generate", "application/json", body.as_bytes(), &auth).status, 200);
    assert!(t.elapsed() < Duration::from_secs(60));

    // SIGTERM while a request runs: it completes, then the process exits cleanly.
    let (a2, body2) = (a.clone(), body.clone());
    let inflight = std::thread::spawn(move || {
        http(
            &a2,
            "POST",
            "/v1/generate",
            "application/json",
            body2.as_bytes(),
            &[("Authorization", "Bearer s3cret")],
        )
    });
    std::thread::sleep(Duration::from_millis(100));
    let status = srv.stop();
    let r = inflight.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(status.success(), "{status:?}");
}

#[test]
fn siglip_embeddings_and_zero_shot_answer_as_the_cli() {
    let srv = Server::start("siglip-a", &[]);
    let a = &srv.addr;
    let images = [fixtures().join("images/rgb_64x48.png"), fixtures().join("images/rgb_300x200.png")];
    let texts = ["a photo of a red circle", "two green triangles"];
    let out = Command::new(env!("CARGO_BIN_EXE_vlm-zoo"))
        .args(["zero-shot", "--model", fixtures().join("siglip-a").to_str().unwrap(), "--json"])
        .args(images.iter().flat_map(|i| ["--image".to_string(), i.display().to_string()]))
        .args(texts.iter().flat_map(|t| ["--text", t]))
        .output()
        .unwrap();
    let want: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let body =
        serde_json::json!({"images": images.iter().map(|i| data_url(i)).collect::<Vec<_>>(), "texts": texts});
    let r = post(a, "/v1/zero-shot", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let close = |x: &serde_json::Value, y: &serde_json::Value| {
        let (x, y): (Vec<f64>, Vec<f64>) = (
            x.as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
                .collect(),
            y.as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
                .collect(),
        );
        assert_eq!(x.len(), y.len());
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() <= 1e-5 + 1e-5 * b.abs()), "{x:?} vs {y:?}");
    };
    close(&v["probs"], &want["probs"]);
    close(&v["logits_per_image"], &want["logits_per_image"]);
    let r = post(a, "/v1/embeddings", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    close(&r.json()["image_embeds"], &want["image_embeds"]);
    close(&r.json()["text_embeds"], &want["text_embeds"]);
    // OpenAI's embeddings form.
    let r = post(a, "/v1/embeddings", &serde_json::json!({"model": "siglip-a", "input": texts}));
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][1]["index"], 1);
    let e: Vec<Vec<f64>> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect();
    close(&serde_json::json!(e), &want["text_embeds"]);
    // Generation is not this model's.
    let r = post(a, "/v1/generate", &serde_json::json!({"prompt": "hi"}));
    assert!(r.status == 400 && r.body.contains("does not generate"), "{}", r.body);
}

/// Fixture gemma2-a in `dst` with Gemma's turn tokens in its tokenizer, so the chat format
/// applies (the committed tokenizers have none): `<start_of_turn>` and `<end_of_turn>` take the
/// ids of two merged tokens, `Ġd` and `Ġp`, whose merges go.
fn gemma_with_turn_tokens(dst: &Path) -> std::path::PathBuf {
    let src = fixtures().join("gemma2-a");
    for f in ["config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap()).unwrap();
    for (old, token) in [("Ġd", "<start_of_turn>"), ("Ġp", "<end_of_turn>")] {
        let vocab = t["model"]["vocab"].as_object_mut().unwrap();
        let id = vocab.remove(old).unwrap();
        vocab.insert(token.into(), id.clone());
        let merge = serde_json::json!(["Ġ", old.trim_start_matches('Ġ')]);
        t["model"]["merges"].as_array_mut().unwrap().retain(|m| *m != merge);
        t["added_tokens"].as_array_mut().unwrap().push(serde_json::json!({"id": id, "content": token,
            "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
    }
    std::fs::write(dst.join("tokenizer.json"), t.to_string()).unwrap();
    dst.to_path_buf()
}

#[test]
fn gemma_chat_answers_as_generate_chat() {
    let tmp = tempfile::tempdir().unwrap();
    let model = gemma_with_turn_tokens(tmp.path());
    let messages = serde_json::json!([
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]);
    let body = serde_json::json!({"messages": messages, "max_tokens": 8});
    // The CLI reads the request body itself.
    let file = tmp.path().join("chat.json");
    std::fs::write(&file, body.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vlm-zoo"))
        .args(["generate", "--model", model.to_str().unwrap(), "--chat", file.to_str().unwrap()])
        .args(["--max-new-tokens", "8", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Gemma's chat format: three turns, then the model's opened (after <bos>).
    let ids: Vec<u64> =
        cli["prompt_token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let (bos, start_of_turn, end_of_turn) = (2, 297, 298);
    assert_eq!(ids[0], bos);
    assert_eq!(ids[1], start_of_turn);
    assert_eq!(ids.iter().filter(|&&i| i == start_of_turn).count(), 4, "{ids:?}");
    assert_eq!(ids.iter().filter(|&&i| i == end_of_turn).count(), 3, "{ids:?}");

    let srv = Server::start(model.to_str().unwrap(), &[]);
    let a = &srv.addr;
    let r = post(a, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["content"], cli["text"]);
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());
    assert_eq!(v["usage"]["completion_tokens"], cli["token_ids"].as_array().unwrap().len());
    // The same ids: the template's text through /v1/generate.
    let turns: Vec<vlm_zoo::gemma::ChatMessage> = serde_json::from_value(messages).unwrap();
    let prompt = vlm_zoo::gemma::apply_chat_template(&turns).unwrap();
    let r = post(a, "/v1/generate", &serde_json::json!({"prompt": prompt, "max_tokens": 8}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["prompt_token_ids"], cli["prompt_token_ids"]);
    assert_eq!(r.json()["token_ids"], cli["token_ids"]);
    assert_eq!(r.json()["text"], cli["text"]);
}

/// Reads from `s` until it closes; true if it closed (EOF or reset) within `within`.
fn closes_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// The value of a Prometheus line `name value`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Slow and stuck clients cannot hold the server: connections that send half a request's
/// headers are closed after --header-timeout-s while real requests are answered; a body that
/// never arrives is 408 after --body-timeout-s; over --max-connections a client gets 503 at
/// once; SIGTERM with stuck clients connected exits 0 at the --shutdown-timeout-s deadline.
/// Every limit shows in /metrics.
#[test]
fn slow_and_stuck_clients_are_bounded() {
    let mut srv = Server::start("siglip-a", &["--header-timeout-s", "1", "--body-timeout-s", "1"]);
    let a = srv.addr.clone();
    let mut stuck: Vec<TcpStream> = (0..30)
        .map(|_| {
            let mut s = TcpStream::connect(&a).unwrap();
            s.write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    assert_eq!(http(&a, "GET", "/health", "text/plain", b"", &[]).status, 200);
    let t = Instant::now();
    for s in &mut stuck {
        assert!(closes_within(s, Duration::from_secs(10)), "a half-open connection stayed open");
    }
    eprintln!("30 half-open connections closed {:?} after the real request", t.elapsed());
    // A body that never arrives.
    let mut slow = TcpStream::connect(&a).unwrap();
    slow.write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"input\"").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = String::new();
    let t = Instant::now();
    let _ = slow.read_to_string(&mut reply);
    eprintln!("stalled body: {:?} after {:?}", reply.lines().next(), t.elapsed());
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    let m = http(&a, "GET", "/metrics", "text/plain", b"", &[]).body;
    assert!(metric(&m, "vlm_zoo_header_timeouts_total") >= 30.0, "{m}");
    assert_eq!(metric(&m, "vlm_zoo_body_timeouts_total"), 1.0, "{m}");
    assert!(srv.stop().success());

    // The connection cap, and SIGTERM's deadline with stuck clients that never time out.
    let mut srv = Server::start(
        "siglip-a",
        &["--header-timeout-s", "300", "--max-connections", "4", "--shutdown-timeout-s", "1"],
    );
    let a = srv.addr.clone();
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(&a).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut over = TcpStream::connect(&a).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reply = String::new();
    let _ = over.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 503") && reply.contains("--max-connections"), "{reply}");
    // One stuck client leaves: a request gets through again, and the refusal was counted.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(300));
    let m = http(&a, "GET", "/metrics", "text/plain", b"", &[]).body;
    assert_eq!(metric(&m, "vlm_zoo_connections_refused_total"), 1.0, "{m}");
    let t = Instant::now();
    let status = srv.stop();
    eprintln!("SIGTERM with 3 stuck clients: {status:?} after {:?}", t.elapsed());
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "SIGTERM took {:?}", t.elapsed());
    for s in &mut held {
        assert!(closes_within(s, Duration::from_secs(5)));
    }
}

/// Malformed bodies for `valid`: every truncation that is not JSON, wrong types and shapes for each
/// field, random JSON values, random bytes and nesting past serde's limit (seeded, so a failure
/// names a reproducible case).
fn malformed_bodies(valid: &serde_json::Value, seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let text = valid.to_string();
    let mut out: Vec<Vec<u8>> = (1..text.len())
        .map(|cut| text.as_bytes()[..cut].to_vec())
        .filter(|b| serde_json::from_slice::<serde_json::Value>(b).is_err())
        .collect();
    let wrong = [
        serde_json::json!(null),
        serde_json::json!(-1),
        serde_json::json!(1e308),
        serde_json::json!("x"),
        serde_json::json!([[]]),
        serde_json::json!({"a": {}}),
        serde_json::json!(true),
    ];
    if let Some(obj) = valid.as_object() {
        for key in obj.keys() {
            for w in &wrong {
                let mut v = valid.clone();
                v[key] = w.clone();
                out.push(v.to_string().into_bytes());
            }
        }
    }
    for w in &wrong {
        out.push(w.to_string().into_bytes());
    }
    out.push(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes());
    out.push(format!("{{\"prompt\": {}}}", "[".repeat(5_000)).into_bytes());
    for _ in 0..n {
        let len = next() % 64;
        out.push((0..len).map(|_| (next() % 256) as u8).collect());
    }
    out
}

/// Every endpoint's JSON body, fuzzed: a malformed body is a 4xx with a JSON error, never a 5xx,
/// a hang or a crash; the server answers a valid request afterwards.
#[test]
fn malformed_bodies_are_4xx_on_every_endpoint() {
    let img = data_url(&fixtures().join("images/rgb_64x48.png"));
    let check = |srv: &Server, endpoints: &[(&str, serde_json::Value)]| {
        for (i, (path, valid)) in endpoints.iter().enumerate() {
            for body in malformed_bodies(valid, i as u64, 100) {
                let r = http(&srv.addr, "POST", path, "application/json", &body, &[]);
                // Not JSON at all: always a 4xx. A JSON value of the wrong shape is a 4xx too,
                // except where a field is optional (`"max_tokens": null` is the default): never
                // a server error.
                let is_json = serde_json::from_slice::<serde_json::Value>(&body).is_ok();
                assert!(
                    (400..500).contains(&r.status) || (is_json && r.status == 200),
                    "{path} {:?} -> {} {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)]),
                    r.status,
                    r.body
                );
                if r.status != 200 {
                    assert!(r.body.contains("\"error\""), "{path}: {}", r.body);
                }
            }
            assert_eq!(post(&srv.addr, path, valid).status, 200, "{path} after the fuzzing");
        }
    };
    let scorer = Server::start("siglip-a", &[]);
    check(
        &scorer,
        &[
            ("/v1/embeddings", serde_json::json!({"images": [img], "texts": ["a red square"]})),
            ("/v1/zero-shot", serde_json::json!({"images": [img], "texts": ["a red square", "a cat"]})),
        ],
    );
    let generator = Server::start("paligemma-a", &[]);
    check(
        &generator,
        &[
            ("/v1/generate", serde_json::json!({"prompt": "caption en", "image": img, "max_tokens": 3})),
            (
                "/v1/chat/completions",
                serde_json::json!({"messages": [{"role": "user", "content": [
                    {"type": "text", "text": "caption en"},
                    {"type": "image_url", "image_url": {"url": img}}]}], "max_tokens": 3}),
            ),
        ],
    );
}
