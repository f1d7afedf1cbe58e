"""Quality checks on framed films: real radiographs put inside a border, and their inversions, answered or refused?

Each of N radiographs (a seeded sample of --images) is checked as it is, inverted (255 - image), and placed on a canvas
larger than it by a random 20-40% in each direction ("wide": 60-100%), at a random place, its border a random gray
of 128-180 that is:
  uniform    one gray level
  noise      plus Gaussian noise (SD 6 gray levels)
  gradient   plus a linear ramp of +-25 levels corner to corner
  vignette   darkened towards the corners by up to 20 levels
  text       with burned-in white text in the corners (as a viewer's overlay)
and each framed film inverted (255 - framed: a light frame around a bright film), and each inverted film framed (a
MONOCHROME1 film padded by a viewer). For each set it prints the share answered ("ok"), warned "may be inverted",
refused as inverted, and refused for another reason, and the median inversion score; then the counts as one JSON
line.

    python benchmarks/quality_frames.py --images DIR [--n 300] [--seed 0] [--sets "plain;framed text, inverted"]

Inputs are 8-bit; the RSNA training set's 299 px JPEGs are what the `boneage.quality` figures were measured on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from boneage.errors import UserError
from boneage.quality import check_image, image_features, inverted_score

BORDERS = ("uniform", "uniform_wide", "noise", "gradient", "vignette", "vignette_wide", "text")


def framed(img: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    h, w = img.shape
    ky, kx = rng.uniform(1.6, 2.0, 2) if kind.endswith("_wide") else rng.uniform(1.2, 1.4, 2)
    H, W = int(round(h * ky)), int(round(w * kx))
    canvas = np.full((H, W), rng.uniform(128, 180), np.float32)
    yy, xx = np.mgrid[0:H, 0:W] / np.array([H, W], np.float32)[:, None, None]
    if kind == "noise":
        canvas += rng.normal(0, 6, canvas.shape).astype(np.float32)
    elif kind == "gradient":
        canvas += 25 * (yy + xx - 1)
    elif kind.startswith("vignette"):
        canvas -= 40 * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2)
    elif kind == "text":
        page = Image.fromarray(np.round(canvas).astype(np.uint8))
        draw = ImageDraw.Draw(page)
        for y in (3, 15, H - 28, H - 15):
            draw.text((3, y), "ACC 12345 HAND PA", fill=255)
            draw.text((W - 110, y), "W 4095 L 2047", fill=255)
        canvas = np.asarray(page, np.float32).copy()
    y, x = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
    canvas[y:y + h, x:x + w] = img
    return np.clip(np.round(canvas), 0, 255)


def variants(img: np.ndarray, rng: np.random.Generator, sets: set[str]) -> dict[str, np.ndarray]:
    out = {"plain": img, "inverted": 255 - img}
    for kind in BORDERS:
        f = framed(img, rng, kind)
        out[f"framed {kind}"] = f
        out[f"framed {kind}, inverted"] = 255 - f
        out[f"inverted, framed {kind}"] = framed(255 - img, rng, kind)
    return {k: v for k, v in out.items() if not sets or k in sets}


def outcome(gray: np.ndarray) -> str:
    try:
        warnings = check_image(gray, "x")
    except UserError as err:
        return "inverted" if "probably inverted" in str(err) else "other"
    return "warn" if any("inverted" in w for w in warnings) else "ok"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", required=True, help="folder of 8-bit radiographs (*.jpg, *.png)")
    ap.add_argument("--n", type=int, default=300, help="how many (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", default="", help="set names to run, separated by semicolons (default: all)")
    args = ap.parse_args()
    files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    rng = np.random.default_rng(args.seed)
    if args.n:
        files = [files[i] for i in sorted(rng.choice(len(files), min(args.n, len(files)), replace=False))]
    sets = {s.strip() for s in args.sets.split(";") if s.strip()}
    results: dict[str, list[tuple[str, float]]] = {}
    start = time.perf_counter()
    for k, path in enumerate(files):
        img = np.asarray(Image.open(path).convert("L"), np.float32)
        for name, gray in variants(img, np.random.default_rng([args.seed, k]), sets).items():
            results.setdefault(name, []).append((outcome(gray), inverted_score(image_features(gray))))
    summary = {}
    print(f"{len(files)} radiographs from {args.images} (seed {args.seed}), {time.perf_counter() - start:.0f} s")
    print(f"{'set':34s} {'ok':>7s} {'warned':>7s} {'inverted':>9s} {'other':>7s} {'median score':>13s}")
    for name, rows in results.items():
        kinds = np.array([r[0] for r in rows])
        share = {k: float(np.mean(kinds == k)) for k in ("ok", "warn", "inverted", "other")}
        median = float(np.median([r[1] for r in rows]))
        summary[name] = {**{k: int(np.sum(kinds == k)) for k in share}, "median_score": round(median, 2),
                         "n": len(rows)}
        print(f"{name:34s} {share['ok']:7.1%} {share['warn']:7.1%} {share['inverted']:9.1%} {share['other']:7.1%} "
              f"{median:13.1f}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
