#!/usr/bin/env python3
"""Does transformers load a `vlm-zoo finetune` export and answer as `vlm-zoo generate` does?

    python scripts/check_finetune_export.py RUN_DIR [--bin target/debug/vlm-zoo] [--tokens 20]

For every held-out row of RUN_DIR/samples.tsv (the last epoch's), greedy generation with
transformers (PaliGemmaForConditionalGeneration + PaliGemmaProcessor on RUN_DIR/model) and with
`vlm-zoo generate --json` on the same folder; prints each pair and exits 1 on any difference.
Pinned versions: scripts/requirements.txt.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--bin", default=str(Path(__file__).resolve().parent.parent / "target/debug/vlm-zoo"))
    ap.add_argument("--tokens", type=int, default=20)
    a = ap.parse_args()
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    model_dir = a.run / "model"
    proc = PaliGemmaProcessor.from_pretrained(model_dir)
    model = PaliGemmaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = [l.split("\t") for l in (a.run / "samples.tsv").read_text().splitlines()[1:]]
    last = max(int(r[0]) for r in rows)
    bad = 0
    for _, image, prefix, _, _ in [r for r in rows if int(r[0]) == last]:
        x = proc(images=Image.open(image).convert("RGB"), text=prefix, return_tensors="pt")
        with torch.no_grad():
            g = model.generate(**x, max_new_tokens=a.tokens, do_sample=False)
        hf = g[0, x["input_ids"].shape[1]:].tolist()
        hf = hf[:hf.index(1)] if 1 in hf else hf
        out = subprocess.run([a.bin, "generate", "--model", str(model_dir), "--image", image, "--prompt", prefix,
                              "--max-new-tokens", str(a.tokens), "--json"], capture_output=True, text=True, check=True)
        ours = json.loads(out.stdout)["token_ids"]
        same = ours == hf
        bad += not same
        print(f"{'same' if same else 'DIFFERENT'}  {prefix!r} on {Path(image).name}: {proc.tokenizer.decode(hf)!r}")
    sys.exit(1 if bad else 0)


main()
