#!/usr/bin/env python3
"""The PyTorch (transformers) side of `vlm-zoo bench`: the same folder, prompt and token counts,
F32 weights, the same thread count. Prints one JSON line with the same keys.

    python scripts/bench_torch.py DIR [PROMPT_LEN] [NEW_TOKENS] [THREADS]
"""
import json
import resource
import sys
import time

import torch
from transformers import AutoConfig

d = sys.argv[1]
prompt_len = int(sys.argv[2]) if len(sys.argv) > 2 else 64
new = int(sys.argv[3]) if len(sys.argv) > 3 else 32
torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2)
cfg = AutoConfig.from_pretrained(d)
t = time.perf_counter()
if cfg.model_type == "paligemma":
    from transformers import PaliGemmaForConditionalGeneration as M
    vocab = min(cfg.text_config.vocab_size, cfg.image_token_index)
    n_img = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
    prefix = [cfg.image_token_index] * n_img + [2]
else:
    from transformers import AutoModelForCausalLM as M
    vocab, prefix = cfg.vocab_size, [2]
model = M.from_pretrained(d, dtype=torch.float32).eval()
load_s = time.perf_counter() - t
ids = torch.tensor([prefix + [10 + (i * 7919) % (vocab - 10) for i in range(prompt_len)]])
kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, eos_token_id=None, pad_token_id=0)
if cfg.model_type == "paligemma":
    s = cfg.vision_config.image_size
    kw.update(pixel_values=torch.zeros(1, 3, s, s), token_type_ids=torch.zeros_like(ids))
stamps = []


class Stamp:  # a logits processor runs once per generated token: it timestamps each
    def __call__(self, input_ids, scores):
        stamps.append(time.perf_counter())
        return scores


with torch.no_grad():
    model.generate(**kw, max_new_tokens=1, min_new_tokens=1)  # warm-up (first-call allocations)
    t = time.perf_counter()
    model.generate(**kw, max_new_tokens=new + 1, min_new_tokens=new + 1, logits_processor=[Stamp()])
    prefill = stamps[0] - t
    total = stamps[-1] - t
print(json.dumps({"model_type": cfg.model_type, "load_s": load_s, "prompt_tokens": ids.shape[1], "prefill_s": prefill,
                  "decode_tokens": new, "decode_tok_s": new / (total - prefill),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
