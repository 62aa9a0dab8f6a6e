#!/usr/bin/env python3
"""Markdown table of a `scripts/bench_all.sh` run: every metric of every benchmark, each
vlm-zoo variant beside PyTorch at its best dtype for that metric (f32 or bf16, named), with the
ratio, and each decode rate as a share of the memory-bandwidth bound (the bytes of weights one
step reads / the read bandwidth measured in the same run). Ratios read "vlm-zoo's speed / PyTorch's speed"
(> 1: vlm-zoo is faster; for times that is PyTorch's time / vlm-zoo's), and for memory
"vlm-zoo's / PyTorch's" (< 1: vlm-zoo uses less).

    python scripts/bench_table.py bench.jsonl
"""
import json
import sys
from collections import defaultdict

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by_bench = defaultdict(dict)
for r in rows:
    by_bench[r["bench"]][r["label"]] = r
bandwidth = by_bench.get("bandwidth", {}).get("hardware", {}).get("GB/s")


def metrics(r):
    """(name, value, kind) with kind: 'speed' (higher is better), 'time' (lower), 'mem'."""
    out = []
    if r.get("task") == "encode_images":
        out += [(f"images/s, batch {e['batch']}", e["images_per_s"], "speed") for e in r["encode"]]
    elif r.get("task") == "train":
        out.append((f"training steps/s, batch {r['batch']}", r["steps_per_s"], "speed"))
    else:
        out += [("load (s)", r["load_s"], "time"), (f"prefill of {r['prompt_tokens']} tokens (s)", r["prefill_s"], "time"),
                ("decode (tokens/s)", r["decode_tok_s"], "speed"),
                ("decode, of the bandwidth bound", bound(r), "bound"),
                (f"end to end, {r['decode_tokens'] + 1} tokens (s)", r["total_s"], "time")]
    out.append(("peak RSS (MiB)", r["peak_rss_mib"], "mem"))
    return out


def bound(r):
    """Decode tokens/s over what the bandwidth allows (bytes per token / bandwidth)."""
    if not bandwidth or not r.get("decode_weight_bytes"):
        return None
    return r["decode_tok_s"] / (bandwidth * 1e9 / r["decode_weight_bytes"])


print("| benchmark | metric | vlm-zoo | PyTorch best | ratio |")
print("|---|---|---|---|---|")
for bench, runs in by_bench.items():
    torch = {label[len("pytorch"):].strip() or "f32": r for label, r in runs.items() if label.startswith("pytorch")}
    if not torch:
        continue
    best = {}  # metric -> (value, dtype), PyTorch's best
    for dtype, r in torch.items():
        for name, v, kind in metrics(r):
            if v is None or v == 0:
                continue
            better = (lambda a, b: a > b) if kind == "speed" else (lambda a, b: a < b)
            if name not in best or better(v, best[name][0]):
                best[name] = (v, dtype)
    for label, r in runs.items():
        if label.startswith("pytorch"):
            continue
        for name, v, kind in metrics(r):
            if v is None:
                continue
            if kind == "bound":
                print(f"| {bench} | {label}: {name} | {v:.0%} | | |")
                continue
            t = best.get(name)
            if t is None or v == 0:
                continue
            ratio = v / t[0] if kind in ("speed", "mem") else t[0] / v
            fmt = (lambda x: f"{x:.0f}") if kind == "mem" else (lambda x: f"{x:.3g}")
            print(f"| {bench} | {label}: {name} | {fmt(v)} | {fmt(t[0])} ({t[1]}) | {ratio:.2f}x |")
