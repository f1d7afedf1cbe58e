"""Which per-image intensity normalisation makes a radiograph's model input independent of how it was stored?

For N radiographs and each way of storing the same film differently (contrast halved, gray levels shifted, gamma 0.7
and 1.4, a 16-bit copy, a washed-out narrow window), it prints the mean absolute difference of the preprocessed
input (gray levels of 255) for each normalisation: none, percentile windowing, CLAHE (OpenCV, if installed) and
histogram equalisation. With --model it also prints how far the model's predictions move (months).

    python benchmarks/intensity.py --images DIR [--n 100] [--model CKPT]

Without --images it uses generated images. All figures come from one run.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from boneage.config import Preprocess
from boneage.data.images import decode_image
from boneage.data.preprocess import preprocess_gray

CHANGES = {
    "contrast x0.5": lambda g: g * 0.5 + 64,
    "shift +40": lambda g: np.clip(g + 40, 0, 255),
    "gamma 0.7": lambda g: 255 * (g / 255) ** 0.7,
    "gamma 1.4": lambda g: 255 * (g / 255) ** 1.4,
    "16-bit": lambda g: g * 257.0,
    "narrow window": lambda g: np.clip(g * 0.35 + 150, 0, 255),  # a washed-out 16->8-bit conversion
}


def clahe(gray: np.ndarray, pp: Preprocess) -> np.ndarray:
    import cv2

    base = preprocess_gray(gray, replace(pp, intensity="percentile", percentiles=(0.0, 100.0)))
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(base)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", help="folder of radiographs (default: generated images)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--model", help="also measure how far this model's predictions move")
    args = ap.parse_args()
    if args.images:
        files = sorted(Path(args.images).iterdir())[: args.n]
        grays = [decode_image(f) for f in files]
    else:
        from boneage.data.synthetic import make_image

        rng = np.random.default_rng(0)
        grays = [make_image(float(a), rng, 299).astype(np.float32) for a in rng.uniform(12, 228, args.n)]

    pp = Preprocess()
    methods = {m: (lambda g, m=m: preprocess_gray(g, replace(pp, intensity=m))) for m in ("none", "percentile")}
    try:
        import cv2  # noqa: F401

        methods["clahe"] = lambda g: clahe(g, pp)
    except ImportError:
        print("(OpenCV not installed: CLAHE left out)", file=sys.stderr)
    methods["equalize"] = lambda g: preprocess_gray(g, replace(pp, intensity="equalize"))

    print(f"mean |difference| of the model input, gray levels of 255, over {len(grays)} images")
    print(f"{'change':<15}" + "".join(f"{m:>12}" for m in methods))
    for name, change in CHANGES.items():
        row = []
        for fn in methods.values():
            row.append(np.mean([np.abs(fn(change(g)).astype(float) - fn(g)).mean() for g in grays]))
        print(f"{name:<15}" + "".join(f"{v:12.2f}" for v in row))

    if args.model:
        from boneage.inference.predictor import TorchPredictor

        predictor = TorchPredictor.load(args.model)
        male = [True] * len(grays)

        def predict(gs):
            return predictor.predict_batch(np.stack([predictor.model_input(g) for g in gs]), male)

        base = predict(grays)
        print(f"\nprediction change, months ({predictor.spec.model.arch}, intensity={predictor.preprocess.intensity})")
        for name, change in CHANGES.items():
            moved = np.abs(predict([change(g) for g in grays]) - base)
            print(f"{name:<15} mean {moved.mean():6.2f}  p90 {np.percentile(moved, 90):6.2f}  max {moved.max():6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
