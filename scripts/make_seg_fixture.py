#!/usr/bin/env python3
"""The segmentation fixture: a random-weight `vae-oid.npz` and the masks PyTorch decodes from
segment tokens that transformers generated with the PaliGemma fixture.

big_vision's mask decoder (the PaliGemma space's `vae-oid.npz`, read there by
`big_vision/.../paligemma` `_get_reconstruct_masks`) is written below in PyTorch from its facts:
codebook `_vq_vae._embedding` [128, 512]; 16 codes -> a 4x4x512 grid (row-major); decoder.0 1x1
conv to 128 + ReLU; decoder.2 / decoder.3 residual blocks (net.0 3x3, ReLU, net.2 3x3, ReLU,
net.4 1x1, + input); decoder.4/6/8/10 transposed convs 4x4 stride 2 padding 1 to 128, 64, 32, 16
channels, each + ReLU; decoder.12 1x1 conv to 1 channel -> a 64x64 mask in about [-1, 1]. The npz
holds PyTorch layouts (conv [out, in, kh, kw], transposed conv [in, out, kh, kw]), float32, with
the real file's key names.

Generation: transformers' `generate` on the paligemma-a fixture with a `segment` prompt, its
tokens constrained to the segment grammar (4 `<loc>`, 16 `<seg>`, the label, ` ;`) so the random
model writes groups; the model picks every location and code. The last group is cut off by the
fixture's 64 positions: a malformed group the decoder must report while keeping the others.

Each complete group: its box (`round(loc / 1024 * side)`, Python's round), its 64x64 decoded mask,
and the full-image mask: the 64x64 mask resized bilinearly (half-pixel centres, no antialias)
into the box, `> 0` inside, as COCO RLE (column-major run lengths starting with 0s).

    python scripts/make_seg_fixture.py   # pinned versions: scripts/requirements.txt
"""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "paligemma-seg"
IMAGE = "rgb_300x200.png"
PROMPT = "segment circle"


class ResBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, dim, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(dim, dim, 1))

    def forward(self, x):
        return x + self.net(x)


class MaskDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder = nn.Sequential(
            nn.Conv2d(512, 128, 1), nn.ReLU(), ResBlock(128), ResBlock(128),
            nn.ConvTranspose2d(128, 128, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(16, 1, 1))
        self.embedding = nn.Parameter(torch.randn(128, 512))

    def forward(self, codes):  # int64[B, 16] -> float32[B, 64, 64]
        x = self.embedding[codes].reshape(-1, 4, 4, 512).permute(0, 3, 1, 2)
        return self.decoder(x)[:, 0]

    def npz(self):
        d = {"_vq_vae._embedding": self.embedding}
        d.update({f"decoder.{k}": v for k, v in self.decoder.state_dict().items()})
        return {k: v.detach().numpy().astype(np.float32) for k, v in d.items()}


def rle(mask):  # bool[h, w] -> COCO uncompressed RLE
    flat = mask.T.reshape(-1)  # column-major
    counts, cur, run = [], False, 0
    for v in flat:
        if bool(v) != cur:
            counts.append(run)
            cur, run = not cur, 0
        run += 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


GROUP = re.compile(r"<loc(\d{4})><loc(\d{4})><loc(\d{4})><loc(\d{4})>((?:<seg\d{3}>){16})\s*([^;<>]*)")


def main():
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    torch.manual_seed(0)
    dec = MaskDecoder().eval()
    src = FIX / "paligemma-a"
    proc = PaliGemmaProcessor.from_pretrained(src)
    model = PaliGemmaForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
    tok = proc.tokenizer
    loc = [tok.convert_tokens_to_ids(f"<loc{i:04}>") for i in range(1024)]
    seg = [tok.convert_tokens_to_ids(f"<seg{i:03}>") for i in range(128)]
    label = tok(" circle", add_special_tokens=False)["input_ids"]
    sep = tok(" ;", add_special_tokens=False)["input_ids"]
    grammar = [loc] * 4 + [seg] * 16 + [[t] for t in label] + [[t] for t in sep]
    image = Image.open(FIX / "images" / IMAGE)
    x = proc(images=image, text=PROMPT, return_tensors="pt")
    n = x["input_ids"].shape[1]

    def allowed(_, ids):
        step = (ids.shape[0] - n) % len(grammar)
        if step in (2, 3):  # y2 > y1 and x2 > x1 by at least 1/8 of the side, so the box is not empty
            low = loc.index(int(ids[-2])) + 128
            return loc[low:] or loc[-1:]
        return grammar[step]

    with torch.no_grad():
        g = model.generate(**x, max_new_tokens=model.config.text_config.max_position_embeddings - n,
                           do_sample=False, prefix_allowed_tokens_fn=allowed, eos_token_id=None, pad_token_id=0)
    ids = g[0, n:].tolist()
    text = tok.decode(ids)
    w, h = image.size
    first = [int(c) for c in re.findall(r"<seg(\d{3})>", text)[:16]]
    with torch.no_grad():  # the last conv scaled so the first mask spans about [-1, 1] around its median
        m = dec(torch.tensor([first]))[0]
        last = dec.decoder[12]
        scale = 1.0 / float((m - m.median()).abs().max())
        last.weight.mul_(scale)
        last.bias.copy_((last.bias - m.median()) * scale)
    groups = []
    for m in GROUP.finditer(text):
        y1, x1, y2, x2 = (round(int(m[i]) / 1024 * s) for i, s in zip(range(1, 5), (h, w, h, w)))
        codes = [int(c) for c in re.findall(r"<seg(\d{3})>", m[5])]
        with torch.no_grad():
            m64 = dec(torch.tensor([codes]))[0]
        full = np.zeros((h, w), dtype=bool)
        values = np.zeros((h, w), dtype=np.float32)
        if y2 > y1 and x2 > x1:
            r = F.interpolate(m64[None, None], size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)[0, 0]
            values[y1:y2, x1:x2] = r.numpy()
            full[y1:y2, x1:x2] = r.numpy() > 0
        groups.append({"label": m[6].strip(), "box": [x1, y1, x2, y2], "codes": codes,
                       "mask64": [float(v) for v in m64.reshape(-1)], "mask_rle": rle(full),
                       "inside": int(full.sum()),
                       "min_abs_in_box": float(np.abs(values[y1:y2, x1:x2]).min()) if full.any() else None})
    assert all(g["inside"] and g["min_abs_in_box"] > 1e-4 for g in groups), "a mask too close to 0"
    assert len(groups) >= 1 and text.count("<loc") > 4 * len(groups), "expected complete groups and a cut-off one"

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    np.savez(OUT / "vae-oid.npz", **dec.npz())
    (OUT / "reference.json").write_text(json.dumps(
        {"model": "paligemma-a", "image": IMAGE, "prompt": PROMPT, "generated": ids, "text": text,
         "width": w, "height": h, "groups": groups}) + "\n")
    print(f"{len(groups)} complete group(s); text: {text[:120]}...")


main()
