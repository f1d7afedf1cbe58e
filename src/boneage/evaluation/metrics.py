"""Error summaries in months. MAD = mean |pred - true| (the poster's metric and the L1 loss)."""

from __future__ import annotations

import numpy as np

AGE_BANDS_YEARS = ((0, 2), (2, 6), (6, 10), (10, 14), (14, 20))  # infancy, early childhood, mid, puberty, late


def summarise(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    err = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    if err.size == 0:
        return {"n": 0}
    return {
        "n": int(err.size),
        "mad_months": float(np.mean(np.abs(err))),
        "rmse_months": float(np.sqrt(np.mean(err**2))),
        "bias_months": float(np.mean(err)),  # mean (pred - true): positive = over-estimates
        "median_ad_months": float(np.median(np.abs(err))),
        "p90_ad_months": float(np.percentile(np.abs(err), 90)),
    }


def error_summary(pred: np.ndarray, true: np.ndarray, male: np.ndarray) -> dict:
    """Overall figures at the top level, then `by_sex` and `by_age_band` (bands of true age, in years)."""
    pred, true, male = np.asarray(pred), np.asarray(true), np.asarray(male, dtype=bool)
    out: dict = summarise(pred, true)
    out["by_sex"] = {"M": summarise(pred[male], true[male]), "F": summarise(pred[~male], true[~male])}
    out["by_age_band"] = {name: summarise(pred[sel], true[sel]) for name, sel in age_bands(true)}
    return out


def age_bands(true: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(name, films in it) for each band of true age; the last band takes every age above its start."""
    true = np.asarray(true, dtype=np.float64)
    return [(f"{lo}-{hi}y", (true >= lo * 12) & (true < hi * 12) if hi < 20 else (true >= lo * 12))
            for lo, hi in AGE_BANDS_YEARS]


def format_summary(r: dict) -> str:
    def line(name: str, s: dict) -> str:
        if not s.get("n"):
            return f"  {name:<10} n=0"
        return (f"  {name:<10} n={s['n']:<5} MAD {s['mad_months']:6.2f}  RMSE {s['rmse_months']:6.2f}  "
                f"bias {s['bias_months']:+6.2f}")

    lines = ["months", line("all", r)]
    lines += [line(f"sex {k}", v) for k, v in r["by_sex"].items()]
    lines += [line(f"age {k}", v) for k, v in r["by_age_band"].items()]
    return "\n".join(lines)
