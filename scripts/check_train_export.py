#!/usr/bin/env python3
"""Does a `vlm-zoo train` export give transformers users `vlm-zoo zero-shot`'s numbers through the
documented calls?

    python scripts/check_train_export.py EXPORT_DIR IMAGE [IMAGE ...] --text "a red circle" [--text ...]
        [--bin target/debug/vlm-zoo]

SigLIP: `AutoProcessor.from_pretrained(dir)(text=..., images=..., padding="max_length")` then
`AutoModel`; CLIP: the same with `padding=True`. Prints the largest difference of the normalised
image and text embeddings and of the logits against `vlm-zoo zero-shot --json`, and any warning
transformers printed while loading; exits 1 when a difference exceeds 1e-4 + 1e-4·|ref| or a
warning was printed. Pinned versions: scripts/requirements.txt.
"""
import argparse
import io
import json
import logging
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import torch
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("images", nargs="+")
    ap.add_argument("--text", action="append", required=True)
    ap.add_argument("--bin", default=str(Path(__file__).resolve().parent.parent / "target/debug/vlm-zoo"))
    a = ap.parse_args()
    from transformers import AutoModel, AutoProcessor
    from transformers.utils import logging as hf_logging

    log = io.StringIO()
    handler = logging.StreamHandler(log)
    hf_logging.get_logger().addHandler(handler)
    with redirect_stderr(log):
        proc = AutoProcessor.from_pretrained(a.dir)
        model = AutoModel.from_pretrained(a.dir).eval()
    kind = model.config.model_type
    padding = "max_length" if kind == "siglip" else True
    images = [Image.open(p).convert("RGB") for p in a.images]
    with redirect_stderr(log):
        x = proc(text=a.text, images=images, padding=padding, return_tensors="pt")
    with torch.no_grad():
        out = model(**x)
    img = torch.nn.functional.normalize(out.image_embeds, dim=-1)
    txt = torch.nn.functional.normalize(out.text_embeds, dim=-1)
    cmd = [a.bin, "zero-shot", "--model", str(a.dir), "--json"]
    for p in a.images:
        cmd += ["--image", p]
    for t in a.text:
        cmd += ["--text", t]
    ours = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    bad = False
    for name, theirs, mine in [("image_embeds", img, ours["image_embeds"]), ("text_embeds", txt, ours["text_embeds"]),
                               ("logits_per_image", out.logits_per_image, ours["logits_per_image"])]:
        mine = torch.tensor(mine)
        diff = (theirs - mine).abs()
        excess = (diff - (1e-4 + 1e-4 * theirs.abs())).max().item()
        bad |= excess > 0
        print(f"{kind} {name}: max |diff| {diff.max().item():.3e} ({'ok' if excess <= 0 else 'TOO LARGE'})")
    # Progress bars, and the warnings transformers prints for its own default SiglipTextConfig
    # (vocabulary 32000, ids 49406/49407) while building any SigLIP config, are not about the export.
    vocab = model.config.text_config.vocab_size
    warnings = [l for l in log.getvalue().splitlines()
                if l.strip() and not l.startswith("Loading weights") and "between 0 and 31999" not in l]
    assert vocab != 32000 or not warnings
    for w in warnings:
        print(f"warning while loading: {w}")
    sys.exit(1 if bad or warnings else 0)


main()
