#!/usr/bin/env python3
"""Markdown table of a `scripts/bench_all.sh` run: every metric of every benchmark, each
vlm-zoo variant beside PyTorch, with the ratio. Ratios read "vlm-zoo's speed / PyTorch's speed"
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
                (f"end to end, {r['decode_tokens'] + 1} tokens (s)", r["total_s"], "time")]
    out.append(("peak RSS (MiB)", r["peak_rss_mib"], "mem"))
    return out


print("| benchmark | metric | " + " | ".join(["vlm-zoo", "PyTorch", "ratio"]) + " |")
print("|---|---|---|---|---|")
for bench, runs in by_bench.items():
    torch = runs.get("pytorch")
    if torch is None:
        continue
    ref = {name: v for name, v, _ in metrics(torch)}
    for label, r in runs.items():
        if label == "pytorch":
            continue
        for name, v, kind in metrics(r):
            t = ref.get(name)
            if t is None or v == 0 or t == 0:
                continue
            ratio = v / t if kind in ("speed", "mem") else t / v
            fmt = (lambda x: f"{x:.0f}") if kind == "mem" else (lambda x: f"{x:.3g}")
            print(f"| {bench} | {label}: {name} | {fmt(v)} | {fmt(t)} | {ratio:.2f}x |")
