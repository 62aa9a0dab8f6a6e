#!/usr/bin/env python3
"""Boxes and whole-image masks made by big_vision's own PaliGemma segmentation evaluator, for the
64x64 masks of tests/fixtures/paligemma-seg: the reference of vlm-zoo's box rule and mask pasting.

big_vision's evaluator (the code behind the published RefCOCO numbers) is
`big_vision/evaluators/proj/paligemma/transfers/segmentation.py` at commit
0127fb6b337ee2a27bf4e54dea79cff176527356 (blob 6180ae09e6aa9c393ccee807bb0d423060ed7b43; the
script checks the blob id). It is imported from a checkout of that commit and its `Evaluator.run`
is run as is: jax, flax, tensorflow and the big_vision modules it imports for data, tokenizer and
model (`evaluators.common`, `pp.tokenizer`, `utils`) are stubbed in `sys.modules`; the "decoder"
returns the fixture's 64x64 masks; the ground-truth masks are recorders. `Evaluator.run` does, per
prediction: `bbox = tokens[:, :4] / 1023`, `y1, x1, y2, x2 = map(int, (y1 * h, x1 * w, y2 * h,
x2 * w))`, nothing if `x2 <= x1 or y2 <= y1`, else `mi = np.asarray(PIL.Image.fromarray(m64)
.resize([x2 - x1, y2 - y1], resample=PIL.Image.BILINEAR)) > 0.0` (m64 float32: Pillow's mode "F"
resize), and reads `gtm[y1:y2, x1:x2] & mi`. The recorder notes that slice and `mi`; the
whole-image mask is `mi` pasted there. The pixel boxes of the empty cases, which run never
indexes, are computed with the evaluator's two lines, copied below (`bigvision_box`).

Cases: each image size below x each box (the loc tokens of reference.json's text, by the regex
`<loc(\\d{4})>`, and hand-chosen edge boxes: the whole image, tiny boxes, boxes int() empties, an
inverted box, loc values whose float64 product falls just below an integer) x each mask (the
decoded 64x64 masks of reference.json's groups, and a smooth synthetic one). Output:
tests/fixtures/paligemma-seg/bigvision_masks.json with, per case, the size, the loc tokens
`[y1, x1, y2, x2]`, the box in pixels `[x1, y1, x2, y2]`, the mask's index and the mask as COCO RLE
(`rle` of scripts/make_seg_fixture.py). reference.json and vae-oid.npz are only read.

    git -C BIG_VISION_GIT_DIR archive 0127fb6b337ee2a27bf4e54dea79cff176527356 big_vision \\
        | tar -x -C /tmp/big_vision
    .venv/bin/python scripts/make_seg_bigvision_fixture.py /tmp/big_vision   # Pillow 12.3.0
"""
import hashlib
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_seg_fixture import bigvision_box, paste_mask, rle  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "paligemma-seg"
COMMIT = "0127fb6b337ee2a27bf4e54dea79cff176527356"
FILE = "big_vision/evaluators/proj/paligemma/transfers/segmentation.py"
BLOB = "6180ae09e6aa9c393ccee807bb0d423060ed7b43"

# (width, height): the fixture image's, small, non-square, large, one pixel wide, and 55x93, where
# loc 279/558 (x) and 143/286 (y) land just below an integer in float64.
SIZES = [(300, 200), (17, 23), (64, 64), (97, 41), (640, 480), (1, 5), (55, 93)]
# [y1, x1, y2, x2] loc tokens.
HAND_BOXES = [
    [0, 0, 1023, 1023],  # the whole image
    [0, 0, 1023, 40],  # a thin strip
    [500, 500, 503, 503],  # tiny: empty after int() on small sides
    [0, 0, 1, 1],  # empty unless a side is >= 1023 px
    [1021, 1021, 1023, 1023],  # the bottom-right corner
    [143, 279, 286, 558],  # truncation below an integer on 55x93
    [600, 100, 500, 900],  # inverted: y2 < y1
    [100, 300, 900, 301],  # x2 == x1 after int() on most widths
]


def load_evaluator(checkout):
    """Imports the evaluator's module from `checkout` with its heavy imports stubbed."""
    src = Path(checkout) / FILE
    data = src.read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    assert blob == BLOB, f"{src}: git blob {blob}, expected {BLOB} (commit {COMMIT})"

    def stub(name, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        parent, _, leaf = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], leaf, mod)
        return mod

    identity = lambda x, *a, **k: x  # noqa: E731
    stub("jax", jit=identity, device_put=identity, device_get=identity, local_devices=lambda **k: [None])
    stub("jax.numpy")
    stub("flax")
    stub("flax.linen", Module=object, compact=identity)
    stub("tensorflow")
    stub("tensorflow.io", gfile=types.SimpleNamespace())
    sys.path.insert(0, str(checkout))
    import big_vision.evaluators  # noqa: F401  (real, empty packages)
    import big_vision.pp  # noqa: F401
    stub("big_vision.evaluators.common", process_sum=identity)
    stub("big_vision.pp.tokenizer")
    stub("big_vision.utils", get_local_slice_from_fsarray=identity)
    import importlib

    mod = importlib.import_module(FILE[:-3].replace("/", "."))
    assert Path(mod.__file__).resolve() == src.resolve(), mod.__file__
    return mod


class GroundTruth:
    """Stands for `batch['objects/mask'][i]`: `gt[:, :, 0] > 0` is itself; notes the slice the
    evaluator takes and the box-sized mask `mi` it intersects with it."""

    def __init__(self, h, w):
        self.shape = (h, w)
        self.seen = None

    def __getitem__(self, key):
        if key == (slice(None), slice(None), 0):
            return self
        ys, xs = key
        return Intersect(self, ys, xs)

    def __gt__(self, other):
        return self

    def sum(self):
        return 1


class Intersect:
    def __init__(self, gt, ys, xs):
        self.gt, self.ys, self.xs = gt, ys, xs

    def __and__(self, mi):
        self.gt.seen = (self.ys.start, self.xs.start, self.ys.stop, self.xs.stop, np.array(mi))
        return mi


def run_evaluator(mod, w, h, boxes, masks):
    """`Evaluator.run` over one batch of (box, mask) predictions for a `w` x `h` image: for each,
    `(y1, x1, y2, x2, mi)` as the evaluator sliced it, or None where it found the box empty."""
    loc0, seg0 = 256000, 257024  # any ids: the evaluator subtracts them again
    ev = object.__new__(mod.Evaluator)
    pairs = [(b, m) for b in boxes for m in range(len(masks))]
    decoded = np.array([np.r_[np.array(b) + loc0, np.zeros(16, np.int64) + seg0] for b, _ in pairs])
    gts = [GroundTruth(h, w) for _ in pairs]
    batch = {"_mask": np.ones(len(pairs), bool), "objects/mask": GtList(gts),
             "objects/bbox": np.array([[0.0, 0.0, 1.0, 1.0]] * len(pairs))}
    ev.steps = 1
    ev.get_data_iter = lambda: iter([batch])
    ev.decode = lambda state, b: decoded
    ev.loc0, ev.seg0, ev.det_ious = np.array([loc0]), np.array([seg0]), (0.5,)
    ev.reconstruct_masks = lambda idx: np.stack([masks[m] for _, m in pairs])[..., None]
    metrics = dict(ev.run(None))
    assert metrics["total"] == len(pairs), metrics
    return pairs, [g.seen for g in gts]


class GtList(list):
    def __getitem__(self, key):
        if isinstance(key, np.ndarray):  # the `not_padding` boolean index
            return GtList(g for g, keep in zip(self, key) if keep)
        return super().__getitem__(key)


def main():
    assert PIL.__version__ == "12.3.0", f"Pillow {PIL.__version__}, pinned 12.3.0"
    checkout = sys.argv[1] if len(sys.argv) > 1 else "/tmp/big_vision"
    mod = load_evaluator(checkout)
    ref = json.loads((FIX / "reference.json").read_text())
    locs = [int(v) for v in re.findall(r"<loc(\d{4})>", ref["text"])]
    boxes = [locs[i:i + 4] for i in range(0, len(locs) - 3, 4)] + HAND_BOXES
    yy, xx = np.mgrid[0:64, 0:64]
    smooth = (np.sin(xx / 9.0) * np.cos(yy / 6.0) - 0.2).astype(np.float32)
    masks = [np.array(g["mask64"], np.float32).reshape(64, 64) for g in ref["groups"]] + [smooth]

    cases = []
    for w, h in SIZES:
        pairs, seen = run_evaluator(mod, w, h, boxes, masks)
        for (b, m), s in zip(pairs, seen):
            y1, x1, y2, x2 = bigvision_box(b, w, h)
            full = np.zeros((h, w), bool)
            if s is not None:
                assert s[:4] == (y1, x1, y2, x2), (s[:4], (y1, x1, y2, x2))
                full[y1:y2, x1:x2] = s[4]
            ours = paste_mask(masks[m], b, w, h)  # make_seg_fixture.py's copy of the rule
            assert (ours[0] == full).all() and ours[1] == [x1, y1, x2, y2], (w, h, b, m)
            cases.append({"size": [w, h], "locs": b, "box": [x1, y1, x2, y2], "mask": m,
                          "empty": s is None, "inside": int(full.sum()), "mask_rle": rle(full)})
    out = FIX / "bigvision_masks.json"
    out.write_text(json.dumps({
        "big_vision": {"commit": COMMIT, "file": FILE, "blob": BLOB}, "pillow": PIL.__version__,
        "masks64": {"count": len(masks), "from_reference_groups": len(ref["groups"]),
                    "synthetic": [float(v) for v in smooth.reshape(-1)]},
        "cases": cases}) + "\n")
    empty = sum(c["empty"] for c in cases)
    print(f"{len(cases)} cases ({empty} empty) -> {out.relative_to(ROOT)} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
