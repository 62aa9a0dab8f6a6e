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

Each complete group: its box and full-image mask as big_vision's PaliGemma segmentation evaluator
makes them (`bigvision_box`, `paste_mask`: `int(loc / 1023 * side)` in float64, the float32 64x64
mask resized into the box by Pillow's mode "F" BILINEAR resize, `> 0` inside; the evaluator's lines
are quoted there), its 64x64 decoded mask, and the full-image mask as COCO RLE (column-major run
lengths starting with 0s). scripts/make_seg_bigvision_fixture.py checks these two helpers against
big_vision's own `Evaluator.run`.

    python scripts/make_seg_fixture.py                  # everything; pinned: scripts/requirements.txt
    python scripts/make_seg_fixture.py --update-masks   # only the fields the box/paste rule decides
                                                        # (box, mask_rle, inside, min_abs_in_box),
                                                        # from reference.json's text and mask64
"""
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
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


def bigvision_box(locs, w, h):
    """loc tokens [y1, x1, y2, x2] -> pixels (y1, x1, y2, x2), as big_vision's evaluator
    (big_vision/evaluators/proj/paligemma/transfers/segmentation.py, Evaluator.run, commit
    0127fb6b337ee2a27bf4e54dea79cff176527356): `bbox = tokens[:, :4] / 1023` (int32 -> float64),
    then this line verbatim."""
    y1, x1, y2, x2 = np.asarray(locs, np.int32) / 1023
    y1, x1, y2, x2 = map(int, (y1 * h, x1 * w, y2 * h, x2 * w))
    return y1, x1, y2, x2


def paste_mask(m64, locs, w, h):
    """float32[64, 64] mask, loc tokens [y1, x1, y2, x2] -> (bool[h, w] whole-image mask,
    [x1, y1, x2, y2], float32 box-sized resized mask or None): Evaluator.run's lines (same file and
    commit), `mi` pasted at [y1:y2, x1:x2]."""
    y1, x1, y2, x2 = bigvision_box(locs, w, h)
    full = np.zeros((h, w), dtype=bool)
    if x2 <= x1 or y2 <= y1:  # Can still happen after int().
        return full, [x1, y1, x2, y2], None
    m64 = np.asarray(m64, np.float32).reshape(64, 64)
    mi = np.asarray(
        Image.fromarray(m64).resize(
            [x2 - x1, y2 - y1], resample=Image.BILINEAR
        )
    )  # Predicted mask in box-sized image.
    full[y1:y2, x1:x2] = mi > 0.0
    return full, [x1, y1, x2, y2], mi


def group_fields(m64, locs, w, h):
    """The fields of a reference.json group that the box and paste rule decides."""
    full, box, mi = paste_mask(m64, locs, w, h)
    return {"box": box, "mask_rle": rle(full), "inside": int(full.sum()),
            "min_abs_in_box": float(np.abs(mi).min()) if full.any() else None}


GROUP = re.compile(r"<loc(\d{4})><loc(\d{4})><loc(\d{4})><loc(\d{4})>((?:<seg\d{3}>){16})\s*([^;<>]*)")


def check(groups):
    # The Rust decoder's 64x64 masks differ from these by ~1e-6, and BILINEAR weights are >= 0 and
    # sum to 1, so the resized mask moves no more: a margin of 1e-5 keeps every pixel's side of 0
    # (tests/segment.rs checks the difference stays below min_abs_in_box).
    assert all(g["inside"] and g["min_abs_in_box"] > 1e-5 for g in groups), "a mask too close to 0"


def update_masks():
    """Recomputes the box/paste fields of reference.json's groups from its text and mask64;
    nothing else (tokens, codes, mask64, vae-oid.npz) changes."""
    path = OUT / "reference.json"
    ref = json.loads(path.read_text())
    w, h = ref["width"], ref["height"]
    found = list(GROUP.finditer(ref["text"]))
    assert len(found) == len(ref["groups"]), (len(found), len(ref["groups"]))
    for m, g in zip(found, ref["groups"]):
        assert [int(c) for c in re.findall(r"<seg(\d{3})>", m[5])] == g["codes"]
        before = (g["box"], g["inside"])
        g.update(group_fields(np.array(g["mask64"], np.float32), [int(m[i]) for i in range(1, 5)], w, h))
        print(f"group {g['label']}: box {before[0]} -> {g['box']}, inside {before[1]} -> {g['inside']}")
    check(ref["groups"])
    path.write_text(json.dumps(ref) + "\n")


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
        locs = [int(m[i]) for i in range(1, 5)]
        codes = [int(c) for c in re.findall(r"<seg(\d{3})>", m[5])]
        with torch.no_grad():
            m64 = dec(torch.tensor([codes]))[0].numpy()
        f = group_fields(m64, locs, w, h)
        groups.append({"label": m[6].strip(), "box": f["box"], "codes": codes,
                       "mask64": [float(v) for v in m64.reshape(-1)], "mask_rle": f["mask_rle"],
                       "inside": f["inside"], "min_abs_in_box": f["min_abs_in_box"]})
    check(groups)
    assert len(groups) >= 1 and text.count("<loc") > 4 * len(groups), "expected complete groups and a cut-off one"

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    np.savez(OUT / "vae-oid.npz", **dec.npz())
    (OUT / "reference.json").write_text(json.dumps(
        {"model": "paligemma-a", "image": IMAGE, "prompt": PROMPT, "generated": ids, "text": text,
         "width": w, "height": h, "groups": groups}) + "\n")
    print(f"{len(groups)} complete group(s); text: {text[:120]}...")


if __name__ == "__main__":
    if sys.argv[1:] == ["--update-masks"]:
        update_masks()
    else:
        main()
