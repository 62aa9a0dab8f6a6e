#!/usr/bin/env python3
"""Pillow's float (mode "F") resampling on a few images: the reference of
`zoo_nn::data::image::pillow::resample_f32` (the resize big_vision's segmentation evaluator applies
to the 64x64 mask decoder output, `PIL.Image.fromarray(float32 mask).resize(...)`).

Each case: one of three seeded float32 images (normal noise, a smooth ramp), a filter, and
`np.asarray(Image.fromarray(img).resize((nw, nh), resample=filter))`: shrinking and enlarging,
non-square, one axis only, identity. Values are float32 written as Python's repr of the float64
that holds them, so they read back exactly.

    .venv/bin/python scripts/make_pillow_f32_fixture.py   # pinned Pillow: scripts/requirements.txt
"""
import json
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "pillow-f32" / "resize.json"

FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
           "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX,
           "hamming": Image.Resampling.HAMMING}

# Input images: (w, h, kind). Values are multiples of 2^-10 (exact in float32, short in JSON).
IMAGES = [(64, 64, "noise"), (64, 64, "ramp"), (12, 9, "noise")]
# (image, output (w, h), filter)
CASES = [
    (0, (17, 23), "bilinear"),  # shrink, antialiased
    (0, (5, 1), "bilinear"),
    (0, (1, 1), "bilinear"),
    (0, (64, 29), "bilinear"),  # vertical pass only
    (1, (97, 41), "bilinear"),  # enlarge x, shrink y
    (1, (30, 70), "bilinear"),  # shrink x, enlarge y
    (2, (31, 20), "bilinear"),
    (2, (40, 9), "bilinear"),  # horizontal pass only
    (2, (12, 9), "bilinear"),  # identity
    (2, (5, 4), "bicubic"),
    (2, (7, 17), "lanczos"),
    (2, (8, 6), "box"),
    (2, (19, 5), "hamming"),
]


def image(w, h, kind, rng):
    if kind == "ramp":
        yy, xx = np.mgrid[0:h, 0:w]
        v = np.sin(xx / 7.0) * np.cos(yy / 5.0) - 0.1
    else:
        v = rng.standard_normal((h, w))
    return (np.round(v * 1024) / 1024).astype(np.float32)


def main():
    rng = np.random.default_rng(0)
    images = [image(w, h, kind, rng) for w, h, kind in IMAGES]
    cases = []
    for i, (nw, nh), name in CASES:
        pil = Image.fromarray(images[i])
        assert pil.mode == "F", pil.mode
        out = np.asarray(pil.resize((nw, nh), resample=FILTERS[name]))
        assert out.dtype == np.float32 and out.shape == (nh, nw), (out.dtype, out.shape)
        cases.append({"image": i, "filter": name, "out_size": [nw, nh],
                      "output": [float(v) for v in out.reshape(-1)]})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "pillow": PIL.__version__,
        "images": [{"size": [w, h], "values": [float(v) for v in img.reshape(-1)]}
                   for (w, h, _), img in zip(IMAGES, images)],
        "cases": cases}) + "\n")
    print(f"{len(cases)} cases -> {OUT.relative_to(ROOT)} ({OUT.stat().st_size} bytes)")


main()
