"""PNG figures: predicted against true, Bland-Altman, and train/validation MAD over the epochs of a run."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CITE = "Data: RSNA Pediatric Bone Age Challenge (Halabi et al., Radiology 2019)"


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_scatter(pred, true, male, path: Path, title: str = "") -> Path:
    pred, true, male = np.asarray(pred), np.asarray(true), np.asarray(male, dtype=bool)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(true[male], pred[male], s=6, alpha=0.5, label="male", color="tab:blue")
    ax.scatter(true[~male], pred[~male], s=6, alpha=0.5, label="female", color="tab:red")
    hi = max(240.0, float(np.max(pred, initial=0)), float(np.max(true, initial=0)))
    ax.plot([0, hi], [0, hi], "k--", lw=1, label="identity")
    mad = float(np.mean(np.abs(pred - true))) if len(true) else float("nan")
    ax.set(xlabel="true bone age (months)", ylabel="predicted bone age (months)", xlim=(0, hi), ylim=(0, hi),
           title=title or f"Predicted vs true (n={len(true)}, MAD {mad:.2f} months)")
    ax.legend(loc="upper left")
    ax.text(0.99, 0.01, CITE, transform=ax.transAxes, fontsize=6, ha="right", va="bottom", color="gray")
    return _save(fig, path)


def plot_bland_altman(pred, true, path: Path) -> Path:
    pred, true = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    mean, diff = (pred + true) / 2, pred - true
    bias, sd = float(np.mean(diff)), float(np.std(diff, ddof=1)) if len(diff) > 1 else 0.0
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(mean, diff, s=6, alpha=0.5, color="tab:gray")
    hi, lo = bias + 1.96 * sd, bias - 1.96 * sd
    for y, style, label in ((bias, "-", f"bias {bias:+.2f}"), (hi, "--", f"+1.96 SD {hi:+.1f}"),
                            (lo, "--", f"-1.96 SD {lo:+.1f}")):
        ax.axhline(y, color="tab:red", ls=style, lw=1, label=label)
    ax.set(xlabel="mean of predicted and true (months)", ylabel="predicted - true (months)",
           title=f"Bland-Altman (n={len(diff)})")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def read_metrics(csv_path: Path) -> dict[str, np.ndarray]:
    with Path(csv_path).open() as f:
        rows = list(csv.DictReader(f))
    def col(name):
        return np.array([float(r[name]) if r.get(name) else np.nan for r in rows])
    return {k: col(k) for k in ("epoch", "train_mad", "val_mad", "lr")}


def plot_curves(csv_path: Path, path: Path) -> Path | None:
    """Train and validation MAD per epoch (the poster's learning curves), learning rate on a second axis."""
    if not Path(csv_path).is_file():
        return None
    m = read_metrics(csv_path)
    if not len(m["epoch"]):
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(m["epoch"], m["train_mad"], label="train MAD", color="tab:blue")
    ax.plot(m["epoch"], m["val_mad"], label="validation MAD", color="tab:orange")
    ax.set(xlabel="epoch", ylabel="MAD (months)", title="Mean absolute deviation over epochs")
    ax.set_ylim(0, max(10.0, float(np.nanpercentile(np.r_[m["train_mad"], m["val_mad"]], 95)) * 1.1))
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(m["epoch"], m["lr"], color="tab:gray", lw=0.8, ls=":", label="learning rate")
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    more = lr_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right")
    return _save(fig, path)
