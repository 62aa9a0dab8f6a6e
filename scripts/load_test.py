#!/usr/bin/env python3
"""Load test for `vlm-zoo serve`: a bounded number of concurrent clients send a fixed number of
requests (valid ones mixed with malformed ones) to a server on 127.0.0.1, then the script reports
throughput, latency percentiles, errors by kind, that every valid request got the CLI's answer,
and that the server is still up. Python standard library only.

    # a server already running (any generating model):
    python scripts/load_test.py --url http://127.0.0.1:8080 --model DIR [--image IMG] \\
        [--clients 8] [--requests 200] [--malformed 0.2] [--max-tokens 16] [--bin target/release/vlm-zoo]
    # the batching benchmark: valid requests only, at several concurrencies, against sequential:
    python scripts/load_test.py --url ... --model DIR --sweep 1,8,32 --requests 64 --json

Exit status 1 when a valid request got a wrong answer, a connection failed, or the server died.
"""
import argparse
import base64
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["caption en", "detect circle", "answer en what is this?", "describe the image", "segment circle"]
TEXT_PROMPTS = ["The capital of France is", "Once upon a time", "Rust is a language that", "1, 2, 3,"]


def request(host, port, method, path, body, content_type="application/json", key=None, timeout=300):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"Content-Type": content_type}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    t = time.perf_counter()
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data, time.perf_counter() - t


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def cli_answer(args, prompt, image):
    cmd = [args.bin, "generate", "--model", args.model, "--prompt", prompt, "--max-new-tokens", str(args.max_tokens),
           "--json"]
    if image:
        cmd += ["--image", image]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["token_ids"]


def make_requests(args, needs_image, n, malformed):
    image = None
    if needs_image:
        image = "data:image/png;base64," + base64.b64encode(Path(args.image).read_bytes()).decode()
    prompts = PROMPTS if needs_image else TEXT_PROMPTS
    bad = [
        ("bad-json", b'{"prompt": ', "application/json"),
        ("content-type", b"{}", "text/plain"),
        ("not-an-image", json.dumps({"prompt": "caption en", "image": "bm90IGFuIGltYWdl"}).encode(), "application/json"),
        ("max-tokens-0", json.dumps({"prompt": prompts[0], "image": image, "max_tokens": 0}).encode(), "application/json"),
        ("max-tokens-1e9", json.dumps({"prompt": prompts[0], "image": image, "max_tokens": 10**9}).encode(),
         "application/json"),
        ("unknown-model", json.dumps({"prompt": prompts[0], "image": image, "model": "gpt-4"}).encode(),
         "application/json"),
    ]
    reqs = []
    every = int(1 / malformed) if malformed > 0 else 0
    for i in range(n):
        if every and i % every == every - 1:
            kind, body, ct = bad[(i // every) % len(bad)]
            reqs.append({"kind": kind, "body": body, "ct": ct, "prompt": None})
        else:
            p = prompts[i % len(prompts)]
            body = {"prompt": p, "max_tokens": args.max_tokens}
            if image:
                body["image"] = image
            reqs.append({"kind": "valid", "body": json.dumps(body).encode(), "ct": "application/json", "prompt": p})
    return reqs


def run(args, host, port, reqs, clients):
    results = [None] * len(reqs)
    nxt = [0]
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(reqs):
                return
            r = reqs[i]
            try:
                status, data, secs = request(host, port, "POST", "/v1/generate", r["body"], r["ct"], args.api_key)
                results[i] = (status, data, secs)
            except Exception as e:  # a failed connection is a finding, not a crash of the test
                results[i] = (-1, str(e).encode(), 0.0)

    t = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results, time.perf_counter() - t


def summarise(args, reqs, results, wall, expected, clients):
    lat = [s for (st, _, s), r in zip(results, reqs) if r["kind"] == "valid" and st == 200]
    tokens = 0
    wrong = []
    kinds = Counter()
    for (st, data, _), r in zip(results, reqs):
        kinds[f"{r['kind']}:{st}"] += 1
        if r["kind"] == "valid" and st == 200:
            got = json.loads(data)["token_ids"]
            tokens += len(got)
            if expected is not None and got != expected[r["prompt"]]:
                wrong.append(r["prompt"])
    failed = sum(1 for st, _, _ in results if st == -1)
    return {
        "clients": clients, "requests": len(reqs), "seconds": round(wall, 3),
        "requests_per_s": round(len(reqs) / wall, 2), "tokens_per_s": round(tokens / wall, 2),
        "p50_s": round(percentile(lat, 50), 3), "p99_s": round(percentile(lat, 99), 3),
        "by_kind_and_status": dict(sorted(kinds.items())), "wrong_answers": len(wrong), "connection_failures": failed,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", required=True, help="the served model's folder (for the CLI's answers)")
    ap.add_argument("--image", default=str(ROOT / "tests/fixtures/images/rgb_64x48.png"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--malformed", type=float, default=0.2)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--bin", default=str(ROOT / "target/release/vlm-zoo"))
    ap.add_argument("--api-key")
    ap.add_argument("--sweep", help="concurrencies, e.g. 1,8,32: valid requests only, against sequential")
    ap.add_argument("--no-check", action="store_true", help="skip comparing answers with the CLI")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    u = urlparse(args.url)
    host, port = u.hostname, u.port or 80
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("this script drives servers on this machine only (127.0.0.1)")
    st, data, _ = request(host, port, "GET", "/health", None)
    info = json.loads(data)
    needs_image = info["needs_image"]
    expected = None
    if not args.no_check:
        prompts = PROMPTS if needs_image else TEXT_PROMPTS
        expected = {p: cli_answer(args, p, args.image if needs_image else None) for p in prompts}
    reports = []
    if args.sweep:
        for c in [int(x) for x in args.sweep.split(",")]:
            reqs = make_requests(args, needs_image, args.requests, 0.0)
            results, wall = run(args, host, port, reqs, c)
            reports.append(summarise(args, reqs, results, wall, expected, c))
        base = reports[0]["tokens_per_s"] or 1e-9
        for r in reports:
            r["tokens_per_s_vs_sequential"] = round(r["tokens_per_s"] / base, 2)
    else:
        reqs = make_requests(args, needs_image, args.requests, args.malformed)
        results, wall = run(args, host, port, reqs, args.clients)
        reports.append(summarise(args, reqs, results, wall, expected, args.clients))
    alive = request(host, port, "GET", "/health", None)[0] == 200
    out = {"model": info["model"], "model_type": info["model_type"], "server_alive": alive, "runs": reports}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{info['model']} ({info['model_type']}), server alive after the run: {alive}")
        for r in reports:
            print(f"  {r['clients']:>3} clients, {r['requests']} requests in {r['seconds']} s: {r['requests_per_s']} req/s, "
                  f"{r['tokens_per_s']} tok/s, p50 {r['p50_s']} s, p99 {r['p99_s']} s, wrong answers {r['wrong_answers']}, "
                  f"connection failures {r['connection_failures']}"
                  + (f", {r['tokens_per_s_vs_sequential']}x sequential" if "tokens_per_s_vs_sequential" in r else ""))
            print(f"      by kind:status {r['by_kind_and_status']}")
    bad = not alive or any(r["wrong_answers"] or r["connection_failures"] for r in reports)
    sys.exit(1 if bad else 0)


main()
