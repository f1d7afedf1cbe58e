"""`boneage evaluate`: a model on a labelled folder -> metrics, per-image predictions, figures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from boneage.data.images import decode_image
from boneage.data.labels import LabelRow, read_labels
from boneage.errors import UserError
from boneage.evaluation.metrics import error_summary
from boneage.inference.predictor import Predictor


class _Prepared(Dataset):
    """Decodes and preprocesses in loader workers, so the model never waits on JPEG decoding."""

    def __init__(self, records: list[LabelRow], predictor: Predictor):
        self.records, self.pp = records, predictor.preprocess
        self.model_input = predictor.model_input

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        r = self.records[i]
        try:
            return torch.from_numpy(self.model_input(decode_image(r.image))), r.male, i, ""
        except UserError as exc:
            return torch.zeros(self.pp.image_size, self.pp.image_size, dtype=torch.uint8), r.male, i, str(exc)


def predict_labelled(predictor, images: str, labels: str, batch_size: int = 32, workers: int = 2,
                     log=print) -> tuple[list[LabelRow], np.ndarray, np.ndarray, int]:
    """(records read, their answers (the mean over views and members), the answers' spread, films not scored)."""
    table = read_labels(labels, images)
    if table.skipped:
        log(f"{labels}: {table.skipped_summary()}")
    loader = DataLoader(_Prepared(table.rows, predictor), batch_size=batch_size, num_workers=workers)
    pred, spread = np.full(len(table.rows), np.nan), np.full(len(table.rows), np.nan)
    failed: list[str] = []
    for x, male, idx, errors in loader:
        views = predictor.predict_views(x, male.numpy())  # (views x members, B)
        for i, a, sd, e in zip(idx.tolist(), views.mean(axis=0), views.std(axis=0), errors):
            if e:
                failed.append(e)
            else:
                pred[i], spread[i] = a, sd
    ok = ~np.isnan(pred)
    if not ok.any():
        raise UserError(f"{labels}: no image could be read (first: {failed[0] if failed else 'none'})")
    records = [r for r, k in zip(table.rows, ok) if k]
    return records, pred[ok], spread[ok], len(table.skipped) + len(failed)


def evaluate(predictor: Predictor, images: str, labels: str, out: str | None = None, batch_size: int = 32,
             workers: int = 2, log=print) -> dict:
    records, pred, spread, skipped = predict_labelled(predictor, images, labels, batch_size, workers, log)
    true = np.array([r.age_months for r in records])
    male = np.array([r.male for r in records])
    result = error_summary(pred, true, male)
    result["skipped"] = skipped
    result["model_arch"] = predictor.spec.model.arch
    result["views"], result["members"] = predictor.tta, getattr(predictor, "members", 1)
    result["bias_corrected"] = predictor.spec.bias_correction is not None
    # The spread of the answers over views and members: its upper percentiles calibrate the "uncertain" flag.
    result["uncertainty_months"] = {f"p{q}": round(float(np.percentile(spread, q)), 2) for q in (50, 90, 99)}
    if out:
        result["files"] = write_outputs(Path(out), records, pred, result, spread)
    return result


def write_outputs(out: Path, records: list[LabelRow], pred: np.ndarray, result: dict,
                  spread: np.ndarray | None = None) -> dict[str, str]:
    from boneage.evaluation.figures import plot_bland_altman, plot_scatter

    out.mkdir(parents=True, exist_ok=True)
    with (out / "predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "male", "true_months", "predicted_months", "error_months", "uncertainty_months"])
        spread = np.full(len(pred), np.nan) if spread is None else spread
        for r, p, sd in zip(records, pred, spread):
            w.writerow([r.id, r.male, f"{r.age_months:g}", f"{p:.2f}", f"{p - r.age_months:+.2f}", f"{sd:.2f}"])
    true = np.array([r.age_months for r in records])
    male = np.array([r.male for r in records])
    files = {"predictions": str(out / "predictions.csv"),
             "scatter": str(plot_scatter(pred, true, male, out / "scatter.png")),
             "bland_altman": str(plot_bland_altman(pred, true, out / "bland_altman.png")),
             "metrics": str(out / "metrics.json")}
    (out / "metrics.json").write_text(json.dumps({k: v for k, v in result.items() if k != "files"}, indent=2))
    return files
