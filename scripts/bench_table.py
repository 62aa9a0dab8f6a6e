#!/usr/bin/env python3
"""Markdown table of a `scripts/bench_all.sh` run: every metric of every benchmark, each
vlm-zoo variant beside PyTorch at its best dtype for that metric (f32 or bf16, named), with the
ratio, and each decode rate as a share of the memory-bandwidth bound (the bytes of weights one
step reads / the read bandwidth measured in the same run). Ratios read "vlm-zoo's speed / PyTorch's speed"
(> 1: vlm-zoo is faster; for times that is PyTorch's time / vlm-zoo's), and for memory
"vlm-zoo's / PyTorch's" (< 1: vlm-zoo uses less).

Rows of `scripts/bench_llama_cpp.sh` (labels "llama.cpp ...") make a second table: for each of
its benchmarks and weight formats, vlm-zoo's prefill and decode tokens/s beside llama.cpp's in
the same format (bf16 beside bf16, q8 beside Q8_0), with the ratio "vlm-zoo / llama.cpp".

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
amx_peak = by_bench.get("amx peak", {}).get("hardware")


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


def pytorch_table():
    print("| benchmark | metric | vlm-zoo | PyTorch best | ratio |")
    print("|---|---|---|---|---|")
    for bench, runs in by_bench.items():
        pytorch_rows(bench, runs)


def pytorch_rows(bench, runs):
    torch = {label[len("pytorch"):].strip() or "f32": r for label, r in runs.items() if label.startswith("pytorch")}
    if not torch:
        return
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


# The llama.cpp comparison: its labels name the format ("llama.cpp bf16", "llama.cpp q8_0"),
# paired with the vlm-zoo label of the same weight format.
PAIRS = [("bf16", "vlm-zoo flex bf16", "llama.cpp bf16"), ("q8 / Q8_0", "vlm-zoo flex q8", "llama.cpp q8_0")]


def llama_cpp_table():
    setup = by_bench.get("llama.cpp", {}).get("setup")
    if setup:
        feats = ", ".join(f for f in ("avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni") if setup.get(f))
        print(f"{setup['llama_cpp']}; llama-bench -t {setup['threads']} -r {setup['reps']}; "
              f"CPU: {setup['cpu']} ({feats or 'none of avx512_bf16, amx_bf16, amx_int8, avx512_vnni'})\n")
    print("| benchmark | weights | metric | vlm-zoo | llama.cpp | ratio |")
    print("|---|---|---|---|---|---|")
    for bench, runs in by_bench.items():
        for fmt, ours_label, theirs_label in PAIRS:
            ours, theirs = runs.get(ours_label), runs.get(theirs_label)
            if not ours or not theirs:
                continue
            n = theirs["prompt_tokens"]
            if ours["prompt_tokens"] != n:  # not the same benchmark: say so rather than compare
                print(f"| {bench} | {fmt} | prompt tokens differ | {ours['prompt_tokens']} | {n} | |")
                continue
            for name, key in ((f"prefill of {n} tokens (tokens/s)", "prefill"), ("decode (tokens/s)", "decode")):
                a, b = rate(ours, key), rate(theirs, key)
                print(f"| {bench} | {fmt} | {name} | {a:.3g} | {b:.3g} | {a / b:.2f}x |")


def rate(r, key):
    """Tokens/s of prefill (prompt tokens over the time to the first token) or of decode."""
    return r["prompt_tokens"] / r["prefill_s"] if key == "prefill" else r["decode_tok_s"]


def bounds_line():
    """The hardware bounds measured in the run (benches/gemm.rs --bandwidth)."""
    parts = []
    if bandwidth:
        parts.append(f"read bandwidth {bandwidth:.1f} GB/s")
    if amx_peak:
        parts.append(f"AMX tiles {amx_peak['GFLOP/s']:.0f} GFLOP/s (products alone), "
                     f"{amx_peak['GFLOP/s with tile loads']:.0f} GFLOP/s (steps loading their tiles from L1)")
        if "int8 GOP/s" in amx_peak:
            parts.append(f"AMX-INT8 tiles {amx_peak['int8 GOP/s']:.0f} GOP/s (products alone), "
                         f"{amx_peak['int8 GOP/s with tile loads']:.0f} GOP/s (steps loading their tiles from L1)")
    if parts:
        print("Hardware bounds, same run, all cores: " + "; ".join(parts) + ".")
        print()


has_llama_cpp = any(label.startswith("llama.cpp") for runs in by_bench.values() for label in runs)
bounds_line()
has_pytorch = any(label.startswith("pytorch") for runs in by_bench.values() for label in runs)
if has_pytorch or not has_llama_cpp:
    pytorch_table()
if has_llama_cpp:
    if has_pytorch:
        print()
    llama_cpp_table()
