#!/usr/bin/env python3
"""PyTorch side of `cargo bench --bench ops`: the same ops and shapes, one JSON line each.

    python scripts/bench_torch_ops.py [THREADS]
"""
import json
import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
b, l, c, f, h = 8, 197, 768, 3072, 12
x, w = torch.rand(b, l, c), torch.rand(c, f)
hid, scores, q = torch.rand(b, l, f), torch.rand(b, h, l, l), torch.rand(b, h, l, c // h)
ln = torch.nn.LayerNorm(c, eps=1e-6)
gelu = torch.nn.GELU(approximate="tanh")


def timed(fn):
    fn()
    t, n = time.perf_counter(), 0
    while n < 3 or time.perf_counter() - t < 1.0:
        fn()
        n += 1
    return (time.perf_counter() - t) / n


with torch.no_grad():
    for op, flop, fn in [
        ("matmul [8*197,768]x[768,3072]", 2 * b * l * c * f, lambda: x.reshape(b * l, c) @ w),
        ("attention q.k^T [8,12,197,64]", 2 * b * h * l * l * (c // h), lambda: q @ q.transpose(2, 3)),
        ("softmax [8,12,197,197]", 0, lambda: scores.softmax(-1)),
        ("layer_norm [8,197,768]", 0, lambda: ln(x)),
        ("gelu_tanh [8,197,3072]", 0, lambda: gelu(hid)),
        ("add [8,197,3072]", 0, lambda: hid + hid),
    ]:
        s = timed(fn)
        print(json.dumps({"backend": "pytorch", "op": op, "ms": round(s * 1e3, 3),
                          "gflop_s": round(flop / s / 1e9, 1) if flop else 0.0}))
