#!/usr/bin/env python3
"""The PyTorch (transformers) side of `vlm-zoo bench`: the same folder, inputs and counts, F32
weights, the same thread count. Prints one JSON line with the same keys as `vlm-zoo bench`.

    python scripts/bench_torch.py DIR [PROMPT_LEN] [NEW_TOKENS] [THREADS]        # gemma, gemma2, paligemma
    python scripts/bench_torch.py DIR --batch 1,8 [--iters N] [--threads T]      # siglip, clip: image encoding
    python scripts/bench_torch.py DIR --train --batch B [--steps N] [--threads T] # siglip, clip: training steps
"""
import argparse
import json
import resource
import time

import torch
from transformers import AutoConfig

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("prompt_len", nargs="?", type=int, default=64)
ap.add_argument("new_tokens", nargs="?", type=int, default=32)
ap.add_argument("threads_pos", nargs="?", type=int)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batch", default="1,8")
ap.add_argument("--iters", type=int, default=3)
ap.add_argument("--train", action="store_true")
# PyTorch's best CPU setting where the CPU has AVX512_BF16 (oneDNN bf16 kernels): bf16.
ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
ap.add_argument("--steps", type=int, default=3)
ap.add_argument("--lr", type=float, default=1e-4)
a = ap.parse_args()
torch.set_num_threads(a.threads_pos or a.threads)
d = a.dir
cfg = AutoConfig.from_pretrained(d)
DT = torch.bfloat16 if a.dtype == "bf16" else torch.float32


def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pattern(n, vocab, offset):  # the ids `vlm-zoo bench` uses
    return [10 + ((i + offset) * 7919) % (vocab - 10) for i in range(n)]


def pixels(b, s):  # the deterministic pixel pattern `vlm-zoo bench` uses, in [-1, 1)
    i = torch.arange(b * 3 * s * s, dtype=torch.float32)
    return ((i * 37 % 256) / 128.0 - 1.0).reshape(b, 3, s, s)


if cfg.model_type in ("siglip", "clip"):
    from transformers import AutoModel
    t = time.perf_counter()
    model = AutoModel.from_pretrained(d, dtype=torch.float32 if a.train else DT)
    load_s = time.perf_counter() - t
    s = cfg.vision_config.image_size
    out = {"model_type": cfg.model_type, "load_s": load_s, "dtype": a.dtype}
    if a.train:
        b = int(a.batch.split(",")[0])
        L, V = cfg.text_config.max_position_embeddings, cfg.text_config.vocab_size
        ids = torch.tensor([pattern(L, V, r * L) for r in range(b)])
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)

        def step():
            loss = model(input_ids=ids, pixel_values=pixels(b, s), return_loss=True).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.item()

        step()  # warm-up
        t = time.perf_counter()
        for _ in range(a.steps):
            step()
        out.update(task="train", batch=b, steps=a.steps, steps_per_s=a.steps / (time.perf_counter() - t))
    else:
        model.eval()
        enc = []
        with torch.no_grad():
            for b in [int(x) for x in a.batch.split(",")]:
                x = pixels(b, s).to(DT)
                model.get_image_features(pixel_values=x)  # warm-up
                t = time.perf_counter()
                for _ in range(a.iters):
                    model.get_image_features(pixel_values=x)
                enc.append({"batch": b, "images_per_s": b * a.iters / (time.perf_counter() - t)})
        out.update(task="encode_images", encode=enc)
    out["peak_rss_mib"] = rss()
    print(json.dumps(out))
    raise SystemExit(0)

t = time.perf_counter()
if cfg.model_type == "paligemma":
    from transformers import PaliGemmaForConditionalGeneration as M
    vocab = min(cfg.text_config.vocab_size, cfg.image_token_index)
    n_img = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
    prefix = [cfg.image_token_index] * n_img + [2]
else:
    from transformers import AutoModelForCausalLM as M
    vocab, prefix = cfg.vocab_size, [2]
model = M.from_pretrained(d, dtype=DT).eval()
load_s = time.perf_counter() - t
new = a.new_tokens
ids = torch.tensor([prefix + pattern(a.prompt_len, vocab, 0)])
kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, eos_token_id=None, pad_token_id=0)
if cfg.model_type == "paligemma":
    s = cfg.vision_config.image_size
    kw.update(pixel_values=pixels(1, s).to(DT), token_type_ids=torch.zeros_like(ids))
stamps = []


class Stamp:  # a logits processor runs once per generated token: it timestamps each
    def __call__(self, input_ids, scores):
        stamps.append(time.perf_counter())
        return scores


with torch.no_grad():
    model.generate(**kw, max_new_tokens=1, min_new_tokens=1)  # warm-up (first-call allocations)
    t = time.perf_counter()
    model.generate(**kw, max_new_tokens=new, min_new_tokens=new, logits_processor=[Stamp()])
    prefill = stamps[0] - t
    total = stamps[-1] - t
print(json.dumps({"model_type": cfg.model_type, "load_s": load_s, "prompt_tokens": ids.shape[1], "prefill_s": prefill,
                  "decode_tokens": new - 1, "decode_tok_s": (new - 1) / max(total - prefill, 1e-9),
                  "total_s": total, "peak_rss_mib": rss()}))
