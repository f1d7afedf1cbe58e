"""Where a model's error and imprecision live: the RSNA films in two blocks of ids, and films of a narrow gray range.

The RSNA training set's ids fall in two blocks with a gap between them (1377-4359 and 4560-15610: about a fifth and
four fifths of the films); the data come from two hospitals. The first block's films look different: two thirds of them
span under 80 of 255 gray levels between their 1st and 99th percentiles (dim, low-contrast exports), against almost none
of the second's. This prints, for a model's answers on the validation split (`boneage debias --out` or
`boneage evaluate --out`: a CSV with id, true_months and corrected_months or predicted_months) and, when given, its
per-film precision deltas (`boneage precision`'s deltas.csv), the MAD, bias and precision by block and by gray range.

    python benchmarks/film_sources.py --data ../shared/data/rsna-bone-age \
        [--answers docs/reference-model/answers.csv] [--deltas docs/reference-model/deltas-cpu.csv]

Reads each validation film once for its gray range (about 10 seconds for 2,522 films on one core).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from boneage.data.images import read_image
from boneage.evaluation.precision import CHANGES, summarise
from boneage.quality import NARROW_LEVELS as NARROW  # under it (of 255 levels), the input checks warn
from boneage.quality import gray_span


def id_blocks(labels: Path) -> tuple[int, int]:
    """The largest gap in the data set's sorted ids: (last id before it, first id after it)."""
    with open(labels, newline="") as f:
        ids = np.sort([int(r["id"]) for r in csv.DictReader(f)])
    k = int(np.argmax(np.diff(ids)))
    return int(ids[k]), int(ids[k + 1])


def read_answers(path: Path) -> dict[int, tuple[float, float]]:
    """id -> (true months, answer): the corrected answer where the file has one."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    col = next(c for c in ("corrected_months", "predicted_months", "answer_months") if c in rows[0])
    return {int(r["id"]): (float(r["true_months"]), float(r[col])) for r in rows}


def error_table(groups: dict[str, np.ndarray], truth: np.ndarray, answer: np.ndarray) -> list[str]:
    err = answer - truth
    lines = ["| films | n | MAD | bias | SD of error | mean true age |", "| --- | --- | --- | --- | --- | --- |"]
    for name, m in groups.items():
        if m.any():
            lines.append(f"| {name} | {m.sum()} | {np.abs(err[m]).mean():.2f} | {err[m].mean():+.2f} | "
                         f"{err[m].std():.2f} | {truth[m].mean():.0f} |")
    return lines


def precision_table(groups: dict[str, np.ndarray], deltas: np.ndarray) -> list[str]:
    """SD of one determination / largest |Δ| per family, as `boneage precision` computes them, per group."""
    summaries = {name: summarise(deltas[m]) for name, m in groups.items() if m.sum() > 1}
    families = list(next(iter(summaries.values()))["families"])
    lines = ["| family | " + " | ".join(f"{name} (n={groups[name].sum()})" for name in summaries) + " |",
             "| --- |" + " --- |" * len(summaries)]
    for fam in families:
        cells = [f"{s['families'][fam]['sd_single']:.2f} / {s['families'][fam]['max_abs']:.1f}"
                 for s in summaries.values()]
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    return lines


def groups_for(ids: np.ndarray, ranges: np.ndarray, last_low: int) -> dict[str, np.ndarray]:
    low = ids <= last_low
    return {
        "all": np.ones_like(low),
        f"ids up to {last_low}": low,
        f"ids above {last_low}": ~low,
        f"range under {NARROW} levels": ranges < NARROW,
        f"range {NARROW}-140": (ranges >= NARROW) & (ranges < 140),
        "range 140 and over": ranges >= 140,
        f"ids up to {last_low}, range 140 and over": low & (ranges >= 140),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with boneage-training-dataset/ and its CSV")
    ap.add_argument("--answers", type=Path, default=Path("docs/reference-model/answers.csv"))
    ap.add_argument("--deltas", default="docs/reference-model/deltas-cpu.csv",
                    help="boneage precision's deltas.csv (per film, per change); '' to skip")
    args = ap.parse_args()
    images, labels = args.data / "boneage-training-dataset", args.data / "boneage-training-dataset.csv"
    last_low, first_high = id_blocks(labels)
    print(f"ids: {last_low} then {first_high} (the largest gap): two blocks")

    answers = read_answers(args.answers)
    ids = np.array(sorted(answers))
    ranges = np.array([gray_span(read_image(images / f"{i}.jpg").gray) for i in ids])  # 8-bit: of 255
    truth, answer = (np.array([answers[i][k] for i in ids]) for k in (0, 1))
    print(f"\n{args.answers} ({len(ids)} films; median gray range {np.median(ranges):.0f} of 255)\n")
    print("\n".join(error_table(groups_for(ids, ranges, last_low), truth, answer)))

    if args.deltas:  # a str: Path("") would be "." and never empty
        with open(args.deltas, newline="") as f:
            rows = list(csv.DictReader(f))
        cols = [f"{fam}: {name}" for fam, name, _ in CHANGES]
        deltas = np.array([[float(r[c]) for c in cols] for r in rows])
        d_ids = np.array([int(r["id"]) for r in rows])
        d_ranges = ranges[np.searchsorted(ids, d_ids)]
        groups = groups_for(d_ids, d_ranges, last_low)
        groups = {k: groups[k] for k in ("all", f"ids up to {last_low}", f"ids above {last_low}",
                                         f"range under {NARROW} levels")}
        print(f"\n{args.deltas} ({len(d_ids)} films): SD of one determination / largest |Δ|, months\n")
        print("\n".join(precision_table(groups, deltas)))


if __name__ == "__main__":
    main()
