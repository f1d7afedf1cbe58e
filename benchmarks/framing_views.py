"""Would averaging over framings of the whole film, before the crop, steady the answer under rotation and framing?

For each film, the changes of `boneage precision`'s rotation and framing families (rotation +-5/10/15 degrees, margin
+20 %, zoom in 10 %, shifted to a corner), each scored two ways: as one view (what ships; the model's own test-time
views still apply) and as the mean over four framings of that film (as is, rotated +7 and -7 degrees, a 10 % wider
margin), each cut to the hand and prepared as inference does. Prints, for both, the MAD of the originals and the SD of
one determination and the largest |change| per family, in one run. Four framings cost four times the inference.

    python benchmarks/framing_views.py --images DIR --labels docs/reference-model/val.csv [--model M] [--films 50]
"""

from __future__ import annotations

import argparse

import numpy as np

from boneage.data.images import decode_image
from boneage.data.labels import read_labels
from boneage.data.preprocess import preprocess_gray
from boneage.evaluation import precision as P
from boneage.inference.loading import load_predictor

CHANGES = {f"rotation {d:+d}": (lambda g, d=d: P._rotate(g, d)) for d in (-15, -10, -5, 5, 10, 15)} | {
    "margin +20%": lambda g: P._canvas(g, 0.2), "zoom in 10%": lambda g: P._zoom_in(g, 0.1),
    "shift to top left": lambda g: P._canvas(g, 0.2, (0.0, 0.0))}
FRAMINGS = (lambda g: g, lambda g: P._rotate(g, 7), lambda g: P._rotate(g, -7), lambda g: P._canvas(g, 0.1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--model", default=None, help="default: the shipped model")
    p.add_argument("--films", type=int, default=50)
    args = p.parse_args(argv)
    predictor = load_predictor(args.model)
    rows = read_labels(args.labels, args.images).rows[: args.films]
    changes = [lambda g: g, *CHANGES.values()]
    answers, true = [], []
    for r in rows:
        gray = decode_image(str(r.image))
        views = np.stack([preprocess_gray(f(c(gray)), predictor.preprocess) for c in changes for f in FRAMINGS])
        answers.append(predictor.predict_batch(views, np.repeat(r.male, len(views))).reshape(len(changes),
                                                                                              len(FRAMINGS)))
        true.append(r.age_months)
    answers, true = np.array(answers), np.array(true)  # (films, 1 + changes, framings)
    print(f"{len(rows)} films; SD single / largest |change| (months)")
    print("| scored as | MAD of the originals | rotation | framing (margin, zoom, shift) | all |")
    print("| --- | --- | --- | --- | --- |")
    for name, a in (("one view", answers[:, :, 0]), (f"mean of {len(FRAMINGS)} framings", answers.mean(2))):
        d = a[:, 1:] - a[:, :1]
        cells = [P._stats(x) for x in (d[:, :6], d[:, 6:], d)]
        print(f"| {name} | {np.mean(np.abs(a[:, 0] - true)):.2f} | "
              + " | ".join(f"{c['sd_single']:.2f} / {c['max_abs']:.1f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
