#!/usr/bin/env python3
"""Greedy ids of the Gemma fixture with their weights rounded as `--dtype q8` rounds
them (every nn.Linear weight and the token embedding: per output row, symmetric int8 with scale
max|w| / 127, round half to even), in f32 otherwise. Written to FIXTURE/reference-q8.json and
checked by tests/cli.rs: q8 changes the model, so its ids are compared with the q8 model's.

`generated_I_a8` are the ids when the products of more than 4 rows (the prompt's forward) also
quantise their inputs as the AMX-INT8 kernel does (zoo_kernels::gemm, `Q8_GROUP`): per row and
group of 256 k, symmetric int8 with scale max|x| / 127, round half to even. The output head runs
on the last position only, so it keeps f32 inputs.

    python scripts/make_q8_reference.py   # pinned versions: scripts/requirements.txt
"""
import json
from pathlib import Path

import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM

F = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def q8(w):
    s = w.abs().amax(dim=1, keepdim=True) / 127
    s[s == 0] = 1
    return (w / s).round().clamp(-127, 127) * s


def quantize(model, embed):
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(q8(mod.weight))
        embed.weight.copy_(q8(embed.weight))


def a8(x, group=256):
    """The AMX-INT8 kernel's activations: only products of more than 4 rows (GEMV_ROWS)."""
    if x.shape[-2] <= 4:
        return x
    parts = []
    for g in torch.split(x, group, dim=-1):
        mx = g.abs().amax(dim=-1, keepdim=True)
        inv = torch.where(mx > 0, 127.0 / mx, torch.zeros_like(mx))
        parts.append((g * inv).round().clamp(-127, 127) * (mx / 127.0))
    return torch.cat(parts, -1)


def gemma(name, new_tokens=8):
    d = F / name
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    quantize(m, m.model.embed_tokens)
    r = load_file(d / "reference.safetensors")
    out = {}
    for i in range(3):
        ids = torch.tensor(r[f"input_ids_{i}"])
        g = m.generate(ids, max_new_tokens=new_tokens, do_sample=False)
        out[f"generated_{i}"] = g[0, ids.shape[1]:].tolist()
    hooks = [
        mod.register_forward_pre_hook(lambda mod, inp: (a8(inp[0]),))
        for mod in m.modules()
        if isinstance(mod, torch.nn.Linear) and mod is not m.lm_head
    ]
    for i in range(3):
        ids = torch.tensor(r[f"input_ids_{i}"])
        g = m.generate(ids, max_new_tokens=new_tokens, do_sample=False)
        out[f"generated_{i}_a8"] = g[0, ids.shape[1]:].tolist()
    for h in hooks:
        h.remove()
    (d / "reference-q8.json").write_text(json.dumps(out) + "\n")


gemma("gemma-gqa")
