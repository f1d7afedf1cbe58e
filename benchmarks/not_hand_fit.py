"""Fit the "not a hand radiograph" score of `boneage.quality` and measure it: catch rate on generated impostors
(`boneage.data.impostors`), refusal rate on real radiographs.

Real films: a seeded shuffle of --images; the first --fit are the negatives of the fit, the next --test measure it.
Impostors: --per-kind of each kind at 256-700 px, half (even indices) for the fit, half for the test. The logistic
regression (L2 1.0 on standardised features, impostors weighted to balance the real films, Newton's method) runs on
`quality.NOT_HAND_KEYS` + the 8 grid cells; the threshold is the highest score of a real film in the fit set. It prints
the constants for `quality.py` (--print-constants), then, with the shipped constants, the share refused per set: by
this score alone and by `check_image` as a whole (the envelope and the inversion score refuse some too).

    OMP_NUM_THREADS=1 python benchmarks/not_hand_fit.py --images DIR [--fit 3000] [--test 3000] [--per-kind 150]

Takes about a minute on one thread for the defaults (~7 ms a film).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from boneage.data.impostors import KINDS, make_impostor
from boneage.errors import UserError
from boneage.quality import NOT_HAND_KEYS, check_image, image_features, not_hand_score


def vector(f: dict) -> list[float]:
    return [f[k] for k in NOT_HAND_KEYS] + list(f["grid"])


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float = 1.0) -> np.ndarray:
    x1 = np.c_[np.ones(len(x)), x]
    b = np.zeros(x1.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-x1 @ b))
        grad = x1.T @ (w * (p - y)) + l2 * np.r_[0, b[1:]]
        hess = (x1 * (w * p * (1 - p))[:, None]).T @ x1 + l2 * np.eye(len(b))
        b -= np.linalg.solve(hess, grad)
    return b


def outcome(gray: np.ndarray) -> tuple[bool, bool]:
    """(refused by the score alone, refused by check_image)."""
    f = image_features(gray)
    try:
        check_image(gray, "x")
        refused = False
    except UserError:
        refused = True
    return not_hand_score(f) > 0, refused


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--fit", type=int, default=3000)
    ap.add_argument("--test", type=int, default=3000)
    ap.add_argument("--per-kind", type=int, default=150)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--print-constants", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    files = sorted(args.images.glob("*.jpg")) + sorted(args.images.glob("*.png"))
    rng.shuffle(files)
    fit_files, test_files = files[:args.fit], files[args.fit:args.fit + args.test]
    grays = lambda paths: (np.asarray(Image.open(p).convert("L"), np.float32) for p in paths)  # noqa: E731
    impostors = {k: [make_impostor(k, rng, int(rng.integers(256, 700))).astype(np.float32)
                     for _ in range(args.per_kind)] for k in KINDS}

    if args.print_constants:
        real = np.array([vector(image_features(g)) for g in grays(fit_files)])
        fake = np.array([vector(image_features(g)) for k in KINDS for g in impostors[k][::2]])
        x = np.r_[real, fake]
        y = np.r_[np.zeros(len(real)), np.ones(len(fake))]
        mu, sd = real.mean(0), real.std(0)
        b = fit_logistic((x - mu) / sd, y, np.where(y == 1, len(real) / len(fake), 1.0))
        weights, bias = b[1:] / sd, b[0] - float(np.sum(b[1:] * mu / sd))
        bias -= float(np.max(real @ weights + bias))  # 0 at the highest real film of the fit
        names = [*NOT_HAND_KEYS, *(f"grid{i}" for i in range(8))]
        print("NOT_HAND_WEIGHTS = {" + ", ".join(f'"{n}": {v:.4g}' for n, v in zip(names, weights)) + "}")
        print(f"NOT_HAND_BIAS = {bias:.6g}")
        print("(paste into quality.py and run again without --print-constants to measure them)")
        return

    rows = [("real (test)", list(grays(test_files))), ("real (fit)", list(grays(fit_files)))]
    rows += [(f"{k} (test)", impostors[k][1::2]) for k in KINDS]
    for label, images in rows:
        results = np.array([outcome(g) for g in images])
        print(f"{label:20s} n={len(images):5d}  refused by the score {results[:, 0].mean():7.2%}  "
              f"by check_image {results[:, 1].mean():7.2%}")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
