#!/usr/bin/env python3
"""Fine-tuning reference: transformers' PaliGemma loss and the gradient of every parameter for one
batch of (image, prefix, suffix) rows on the paligemma-a fixture, as `vlm-zoo finetune` trains.

The batch is what PaliGemmaProcessor makes with `suffix=` (labels -100 on image, prompt and
padding; token_type_ids 1 on suffix + <eos>), padded on the right with an attention mask. The
gradients are written as a checkpoint of the same model whose every parameter holds its gradient
(`save_pretrained`, so the Rust test reads them through the ordinary loader, key layout and all).

    python scripts/make_finetune_reference.py   # pinned versions: scripts/requirements.txt
Writes tests/fixtures/paligemma-a-finetune/{batch.safetensors,config.json,model.safetensors,...}.
"""
import json
import shutil
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
OUT = FIX / "paligemma-a-finetune"
ROWS = [("rgb_64x48.png", "detect circle", "<loc0100><loc0200><loc0300><loc0400> circle"),
        ("rgb_23x37.png", "caption en", "a red circle")]


def main():
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    src = FIX / "paligemma-a"
    proc = PaliGemmaProcessor.from_pretrained(src)
    proc.tokenizer.padding_side = "right"
    model = PaliGemmaForConditionalGeneration.from_pretrained(src, dtype=torch.float32).train()
    images = [Image.open(FIX / "images" / f) for f, _, _ in ROWS]
    x = proc(images=images, text=[p for _, p, _ in ROWS], suffix=[s for _, _, s in ROWS], padding="longest",
             return_tensors="pt")
    out = model(**x)
    out.loss.backward()

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    batch = {k: x[k].contiguous() for k in ["pixel_values", "input_ids", "token_type_ids", "attention_mask", "labels"]}
    batch["loss"] = out.loss.detach().reshape(1)
    save_file({k: (v.to(torch.int64) if not v.is_floating_point() else v) for k, v in batch.items()},
              OUT / "batch.safetensors")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    model.save_pretrained(OUT)
    (OUT / "rows.json").write_text(json.dumps([{"image": f, "prefix": p, "suffix": s} for f, p, s in ROWS]) + "\n")
    print(f"loss {out.loss.item():.6f}; ids {x['input_ids'].tolist()}")


main()
