"""Ship a candidate model only if it is better than the shipped one, and write a history row either way.

The rule (the model card states it too): on the saved validation split, with each model's own bias correction
measured by cross-fitting (`boneage debias`), and the precision of both measured on the same films and families
(`boneage precision`, sensor noise included), the candidate replaces the shipped model when

    (its MAD is not worse and its worst family's SD single is better)  or  (its MAD is better and its worst SD is not
    worse).

Better and worse are by at least 0.01 month (the figures' rounding). The script copies the weights and their figures
into place and appends a row to the model card's table of CPU sessions; committing is left to the person.

    python scripts/ship_if_better.py --candidate W/candidate.pt --candidate-bias W/bias-candidate/bias.json \
        --candidate-precision W/precision-candidate/precision.json --run RUN_DIR [--minutes M] [--dry-run]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "src" / "boneage" / "weights" / "boneage-reference.pt"
CARD = REPO / "src" / "boneage" / "weights" / "MODEL_CARD.md"
FIGURES = REPO / "docs" / "reference-model"
MARKER = "<!-- cpu-sessions: rows are appended here by scripts/ship_if_better.py -->"
TOLERANCE = 0.01


def figures(bias_json: Path, precision_json: Path) -> dict:
    bias, precision = json.loads(bias_json.read_text()), json.loads(precision_json.read_text())
    return {"mad": bias["mad_after"], "mad_raw": bias["mad_before"], "worst_band_bias": bias["worst_band_bias_after"],
            "films": bias["films"], "worst_sd": precision["worst_sd_single"], "largest": precision["largest_abs"],
            "precision_films": precision["n"], "families": sorted(precision["families"]),
            "worst_family": max(precision["families"], key=lambda f: precision["families"][f]["sd_single"])}


def better(new: dict, old: dict) -> tuple[bool, str]:
    """(ship?, why): the rule above."""
    if new["films"] != old["films"] or new["precision_films"] != old["precision_films"] \
            or new["families"] != old["families"]:
        return False, "not comparable: measured on other films or families"
    mad_better, mad_not_worse = new["mad"] < old["mad"] - TOLERANCE, new["mad"] <= old["mad"] + TOLERANCE
    sd_better = new["worst_sd"] < old["worst_sd"] - TOLERANCE
    sd_not_worse = new["worst_sd"] <= old["worst_sd"] + TOLERANCE
    if mad_not_worse and sd_better:
        return True, "MAD not worse, worst precision family better"
    if mad_better and sd_not_worse:
        return True, "MAD better, precision not worse"
    return False, ("MAD worse" if not mad_not_worse else "worst precision family worse" if not sd_not_worse
                   else "neither better")


def run_summary(run: Path) -> dict:
    """Epochs, training minutes and images/s of a run folder (metrics.csv), for the history row."""
    rows = list(csv.DictReader((run / "metrics.csv").open())) if (run / "metrics.csv").is_file() else []
    seconds = sum(float(r["seconds"] or 0) for r in rows)
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    films = sum(1 for _ in (run / "train.csv").open()) - 1 if (run / "train.csv").is_file() else 0
    return {"epochs": len(rows), "of": config.get("epochs"), "minutes": round(seconds / 60),
            "images_per_s": round(films * len(rows) / seconds, 1) if seconds else None,
            "best_val": min((float(r["val_mad"]) for r in rows if r["val_mad"]), default=None)}


def history_row(new: dict, old: dict, run: dict, shipped: bool, why: str, label: str) -> str:
    fmt = lambda f: f"{f['mad']:.2f} ({f['mad_raw']:.2f}) / {f['worst_band_bias']:.1f}"  # noqa: E731
    prec = lambda f: f"{f['worst_sd']:.1f} / {f['largest']:.0f} ({f['worst_family']})"  # noqa: E731
    return (f"| {datetime.date.today().isoformat()} | {label} | {run['epochs']} of {run['of']} | {run['minutes']} | "
            f"{run['images_per_s']} | {fmt(new)} | {fmt(old)} | {prec(new)} | {prec(old)} | "
            f"{'**yes**' if shipped else 'no'}: {why} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidate", required=True, type=Path, help="the candidate weights file (with its correction)")
    p.add_argument("--candidate-bias", required=True, type=Path, help="its `boneage debias --report` bias.json")
    p.add_argument("--candidate-precision", required=True, type=Path, help="its `boneage precision --out` JSON")
    p.add_argument("--shipped-bias", type=Path, default=FIGURES / "bias.json")
    p.add_argument("--shipped-precision", type=Path, default=FIGURES / "precision-cpu.json")
    p.add_argument("--run", required=True, type=Path, help="the training run folder")
    p.add_argument("--label", default="CPU", help="the machine, for the history row")
    p.add_argument("--dry-run", action="store_true", help="decide and print the row; change nothing")
    args = p.parse_args(argv)
    for path in (args.candidate, args.candidate_bias, args.candidate_precision, args.shipped_bias,
                 args.shipped_precision):
        if not path.is_file():
            print(f"ship_if_better: {path}: no such file", file=sys.stderr)
            return 2
    new = figures(args.candidate_bias, args.candidate_precision)
    old = figures(args.shipped_bias, args.shipped_precision)
    ship, why = better(new, old)
    row = history_row(new, old, run_summary(args.run), ship, why, args.label)
    print(json.dumps({"ship": ship, "why": why, "candidate": new, "shipped": old}))
    print(row)
    if args.dry_run:
        return 0
    card = CARD.read_text()
    if MARKER not in card:
        print(f"ship_if_better: {CARD}: no marker for the history rows", file=sys.stderr)
        return 2
    CARD.write_text(card.replace(MARKER, f"{row}\n{MARKER}"))
    if ship:
        shutil.copyfile(args.candidate, SHIPPED)
        shutil.copyfile(args.candidate_bias, FIGURES / "bias.json")
        shutil.copyfile(args.candidate_precision, FIGURES / "precision-cpu.json")
        for extra in (args.candidate_bias.with_name("bias.md"), args.candidate_precision.with_name("precision.md")):
            if extra.is_file():
                shutil.copyfile(extra, FIGURES / ("bias.md" if extra.name == "bias.md" else "precision-cpu.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
