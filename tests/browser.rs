//! The web page of `vlm-zoo serve` in a real browser: headless Chromium (installed from the
//! distribution's packages by scripts/install_chromium.sh, which .ci/run calls) loads the page in
//! its self-test mode (`/?selftest=1`: a shape drawn on a canvas is sent as the image), the page
//! streams the answer, draws it, and reports in data attributes of <body>, read back from the DOM.
#![allow(clippy::unwrap_used)]

use base64::Engine;
mod common;
use common::{Server, fixtures};
use std::process::Command;

fn chromium() -> String {
    for b in ["chromium", "chromium-browser"] {
        if Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return b.to_string();
        }
    }
    panic!("no chromium on PATH: run scripts/install_chromium.sh (as .ci/run does)");
}

fn serve(model: &str) -> Server {
    Server::start(model, &[])
}

/// The page's <body> attributes after it ran, as (name, value) pairs, HTML entities undone.
fn run_page(addr: &str, query: &str) -> Vec<(String, String)> {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=60000", "--dump-dom"])
        .arg(format!("--user-data-dir={}", tmp.path().display()))
        .arg(format!("http://{addr}/?selftest=1{query}"))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let body = dom
        .split("<body")
        .nth(1)
        .and_then(|b| b.split('>').next())
        .unwrap_or_else(|| panic!("no <body> in: {dom}"));
    let mut attrs = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("=\"") {
        let name = rest[..i].trim().to_string();
        let after = &rest[i + 2..];
        let end = after.find('"').unwrap();
        let value = after[..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&amp;", "&");
        attrs.push((name, value));
        rest = &after[end + 1..];
    }
    attrs
}

fn get<'a>(attrs: &'a [(String, String)], name: &str) -> &'a str {
    attrs.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str())
}

#[test]
fn the_page_streams_and_draws_detections() {
    let srv = serve("paligemma-a");
    let prompt = "circle ; square";
    let attrs = run_page(&srv.addr, &format!("&task=detect&arg={}", prompt.replace(' ', "%20")));
    assert_eq!(get(&attrs, "data-status"), "done", "{attrs:?}");
    assert_eq!(get(&attrs, "data-streamed-matches"), "true", "the streamed pieces add up to the answer");
    assert!(get(&attrs, "data-pieces").parse::<usize>().unwrap() > 1, "tokens arrived one by one");
    let boxes: usize = get(&attrs, "data-boxes").parse().unwrap();
    let painted: usize = get(&attrs, "data-painted").parse().unwrap();
    assert!(boxes >= 1 && painted > 100, "boxes {boxes}, pixels changed {painted}");
    // The answer is the CLI's for the image the page sent.
    let data = get(&attrs, "data-image").split_once("base64,").unwrap().1.to_string();
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("page.png");
    std::fs::write(&png, base64::engine::general_purpose::STANDARD.decode(data).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vlm-zoo"))
        .args(["generate", "--model", fixtures().join("paligemma-a").to_str().unwrap(), "--image"])
        .arg(&png)
        .args(["--prompt", &format!("detect {prompt}"), "--max-new-tokens", "32", "--json"])
        .output()
        .unwrap();
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(get(&attrs, "data-text"), cli["text"].as_str().unwrap());
    assert_eq!(boxes, cli["detections"].as_array().unwrap().len());
}

#[test]
fn the_page_shows_zero_shot_bars() {
    let srv = serve("siglip-a");
    let attrs = run_page(&srv.addr, "&labels=a%20red%20circle|a%20blue%20square|two%20green%20triangles");
    assert_eq!(get(&attrs, "data-status"), "done", "{attrs:?}");
    assert_eq!(get(&attrs, "data-bars"), "3");
}
