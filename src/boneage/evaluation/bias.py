"""Fitting the bias correction (`boneage.bias`) on held-out answers, and measuring it honestly.

The curve f(true age) = the model's mean answer at that age is piecewise linear on knots every year, fitted by
least squares with a penalty on its second differences (smooth where films are few: 21 validation films under two
years), then made increasing. Its figures are cross-fitted: the films are split into folds, each fold corrected by a
curve fitted on the others, so no film is corrected by a curve that saw it. The curve shipped is then fitted on all.
"""

from __future__ import annotations

import csv
import datetime
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from boneage.bias import BiasCorrection
from boneage.errors import UserError
from boneage.evaluation.metrics import error_summary

# Every year, not every two: the networks under-read the first two years (films of 12-21 months answered 7-10), a
# bend a two-year grid cannot follow. Cross-fitted on the validation answers of the shipped file and the one before
# it (2026-12-07; means of 5 draws of the folds), yearly knots gave both a smaller MAD (7.504 -> 7.470,
# 7.432 -> 7.331) and a 0-2 y bias within 2 months (-4.04 -> -1.82, -3.52 -> -0.90); knots every 6 months fitted
# the 21 infants' noise (MAD +0.06).
KNOTS = tuple(float(k) for k in range(0, 241, 12))  # months: 0 to 20 years
SMOOTH = 2.0  # weight of the second-difference penalty, per film: enough to carry a curve over sparse ages
MIN_SLOPE = 0.2  # the curve must rise at least this much per month of age, so that its inverse stays tame


def _basis(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """(n, K): hat functions, so that basis @ values interpolates linearly between knots (flat beyond the ends)."""
    x = np.clip(x, knots[0], knots[-1])
    return np.stack([np.interp(x, knots, np.eye(len(knots))[k]) for k in range(len(knots))], axis=1)


def fit_curve(true: np.ndarray, answers: np.ndarray, knots=KNOTS, smooth: float = SMOOTH) -> np.ndarray:
    """The model's mean answer at each knot (increasing)."""
    knots = np.asarray(knots, dtype=float)
    b = _basis(np.asarray(true, float), knots)
    d = np.diff(np.eye(len(knots)), n=2, axis=0)
    # The penalty pulls toward a straight line, which is what the answers look like where data are dense.
    values = np.linalg.solve(b.T @ b + smooth * len(true) / len(knots) * d.T @ d, b.T @ np.asarray(answers, float))
    steps = np.maximum(np.diff(values), MIN_SLOPE * np.diff(knots))
    return np.concatenate([[values[0]], values[0] + np.cumsum(steps)])


def fit(answers, true, male, per_sex: bool, provenance: dict | None = None) -> BiasCorrection:
    answers, true, male = np.asarray(answers, float), np.asarray(true, float), np.asarray(male, bool)
    if per_sex:
        if min(male.sum(), (~male).sum()) < 50:
            raise UserError("bias correction per sex needs at least 50 films of each sex")
        curves = {"M": fit_curve(true[male], answers[male]), "F": fit_curve(true[~male], answers[~male])}
    else:
        if len(answers) < 50:
            raise UserError(f"bias correction: {len(answers)} films are too few to fit it (at least 50)")
        curves = {"all": fit_curve(true, answers)}
    return BiasCorrection(KNOTS, {k: tuple(round(float(x), 3) for x in v) for k, v in curves.items()},
                          provenance or {})


def cross_fit(answers, true, male, per_sex: bool, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each film's answer corrected by a curve fitted on the other folds."""
    answers, true, male = np.asarray(answers, float), np.asarray(true, float), np.asarray(male, bool)
    fold = np.random.default_rng(seed).permutation(len(answers)) % folds
    out = np.empty_like(answers)
    for k in range(folds):
        held = fold == k
        out[held] = fit(answers[~held], true[~held], male[~held], per_sex).apply(answers[held], male[held])
    return out


def worst_band_bias(result: dict) -> float:
    return max(abs(s["bias_months"]) for s in result["by_age_band"].values() if s.get("n"))


def choose(answers, true, male, folds: int = 5, seed: int = 0) -> dict:
    """Both kinds of curve (one for both sexes, one per sex), cross-fitted; the one with the smaller worst band bias
    is chosen unless it costs more than 0.05 months of MAD. Returns the figures before and after, and the choice."""
    before = error_summary(answers, true, male)
    fewest = min(int(np.sum(male)), int(np.sum(~np.asarray(male, bool)))) * (folds - 1) // folds
    tried = {}
    for per_sex in (False, True) if fewest >= 50 else (False,):
        corrected = cross_fit(answers, true, male, per_sex, folds, seed)
        tried["per sex" if per_sex else "both sexes"] = {"per_sex": per_sex, "corrected": corrected,
                                                         "result": error_summary(corrected, true, male)}
    pooled, split = tried["both sexes"], tried.get("per sex")
    better = split is not None and worst_band_bias(split["result"]) < worst_band_bias(pooled["result"]) \
        and split["result"]["mad_months"] <= pooled["result"]["mad_months"] + 0.05
    chosen = split if better else pooled
    return {"before": before, "tried": {k: v["result"] for k, v in tried.items()}, "per_sex": chosen["per_sex"],
            "after": chosen["result"], "corrected": chosen["corrected"], "folds": folds, "seed": seed}


def band_table(before: dict, after: dict) -> str:
    """Markdown: MAD and bias overall, by sex and by age band, before and after (cross-fitted) the correction."""
    rows = [("all", before, after)]
    rows += [(f"sex {k}", before["by_sex"][k], after["by_sex"][k]) for k in before["by_sex"]]
    rows += [(f"age {k}", before["by_age_band"][k], after["by_age_band"][k]) for k in before["by_age_band"]]
    lines = ["| subset | n | MAD before | bias before | MAD after | bias after |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, b, a in rows:
        if b.get("n"):
            lines.append(f"| {name} | {b['n']} | {b['mad_months']:.2f} | {b['bias_months']:+.2f} | "
                         f"{a['mad_months']:.2f} | {a['bias_months']:+.2f} |")
    return "\n".join(lines)


def debias(model, images: str, labels: str, out, report_dir=None, folds: int = 5, batch_size: int = 32,
           workers: int = 2, log=print) -> dict:
    """`boneage debias`: the model's answers on held-out labelled films (its own correction, if any, left out), the
    correction chosen and measured by cross-fitting, then fitted on all films and written with the model to `out`
    (the same weights, in the same storage). Returns the figures; `report_dir` gets bias.json, bias.md and the
    answers per film."""
    from boneage.evaluation.evaluate import predict_labelled
    from boneage.inference.checkpoint import default_model_path, file_sha256, load_network
    from boneage.inference.export import export_weights
    from boneage.inference.loading import load_predictor

    model = Path(model) if model else default_model_path()
    _, spec, card = load_network(model)  # an ensemble file is refused here, in one line
    predictor = load_predictor(model, "auto", log=log)
    predictor.spec = replace(predictor.spec, bias_correction=None)  # the raw answers: fit on what the network says
    records, answers, spread, skipped = predict_labelled(predictor, images, labels, batch_size, workers, log)
    true = np.array([r.age_months for r in records])
    male = np.array([r.male for r in records])
    chosen = choose(answers, true, male, folds)
    before, after = chosen["before"], chosen["after"]
    provenance = {
        "fitted_on": Path(labels).name, "films": len(records), "views": predictor.tta,
        "model_sha256": file_sha256(model), "date": datetime.date.today().isoformat(),
        "curve": "per sex" if chosen["per_sex"] else "both sexes",
        "method": "inverse of the mean answer by true age (piecewise linear, knots every 12 months, smoothed, "
                  "increasing)",
        "cross_fitted": {"folds": folds, "mad_before": round(before["mad_months"], 3),
                         "mad_after": round(after["mad_months"], 3),
                         "worst_band_bias_before": round(worst_band_bias(before), 2),
                         "worst_band_bias_after": round(worst_band_bias(after), 2)},
    }
    correction = fit(answers, true, male, chosen["per_sex"], provenance)
    # The card's figures are re-measured on the same films: validation (cross-fitted), and the spread above which
    # an answer is flagged uncertain (its 99th percentile: the correction moves every view alike, so spreads stand).
    flag_above = round(float(np.percentile(spread, 99)), 2)
    card = dict(card or {}, validation_mad_months=round(after["mad_months"], 3),
                validation_rmse_months=round(after["rmse_months"], 3),
                validation_bias_months=round(after["bias_months"], 3), validation_n=len(records),
                validation_views=predictor.tta,
                validation_note=f"cross-fitted ({folds} folds) with the bias correction, on {len(records)} films of "
                                f"{Path(labels).name}, views {predictor.tta}",
                uncertain_above_months=flag_above,
                uncertain_above_months_by_views={**(card or {}).get("uncertain_above_months_by_views", {}),
                                                 predictor.tta: flag_above},
                uncertain_calibration=f"99th percentile of the spread over the {predictor.tta} views, "
                                      f"{len(records)} films of {Path(labels).name}")
    storage = _storage_of(model)
    written = export_weights(model, out, storage, card, bias_correction=correction)
    result = {"model": str(model), "out": written["path"], "storage": storage, "films": len(records),
              "skipped": skipped, **provenance["cross_fitted"], "curve": provenance["curve"],
              "before": before, "after": after, "tried": chosen["tried"]}
    if report_dir:
        _write_report(Path(report_dir), result, records, answers, chosen["corrected"])
    return result


def _storage_of(model: Path) -> str:
    """A weights file keeps its storage (int8 stays the same bytes); a training checkpoint is kept whole (float32)."""
    import torch

    data = torch.load(model, map_location="cpu", weights_only=True)
    return data.get("storage", "float32") if isinstance(data, dict) and "storage" in data else "float32"


def _write_report(out: Path, result: dict, records, answers, corrected) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bias.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bias.md").write_text(
        f"{result['films']} films, bias correction '{result['curve']}', figures cross-fitted over "
        f"{result['folds']} folds. Months.\n\n{band_table(result['before'], result['after'])}\n")
    with (out / "answers.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "male", "true_months", "answer_months", "corrected_months"])
        for r, a, c in zip(records, answers, corrected):
            w.writerow([r.id, r.male, f"{r.age_months:g}", f"{a:.2f}", f"{c:.2f}"])
