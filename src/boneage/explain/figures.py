"""PNG figures for `boneage explain`: activation maps of several layers, and the saliency over the radiograph.

Every image is drawn with its true pixel aspect: the model's square input is shown un-stretched back to the original's
proportions, so a hand from a non-square film keeps its shape.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from PIL import Image  # noqa: E402

SALIENCY_CMAP = "jet"  # the convention of the CAM literature, so readers know red = most salient
ACTIVATION_CMAP = "viridis"  # perceptually uniform: channel maps are read as magnitudes
DPI = 100


def age_text(months: float, male: bool) -> str:
    total = math.floor(months + 0.5)  # half up, as `predict` prints it
    return f"predicted bone age {months:.1f} months ({total // 12} y {total % 12} m), sex {'M' if male else 'F'}"


def display_gray(gray: np.ndarray) -> np.ndarray:
    """Float gray of any bit depth -> [0, 1] for display only (a percentile window; the model's input is separate)."""
    lo, hi = np.percentile(gray, (0.5, 99.5))
    return np.clip((gray - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(gray, dtype=np.float32)


def overlay_rgb(gray: np.ndarray, sal: np.ndarray) -> np.ndarray:
    """(H, W) radiograph and [0, 1] saliency -> uint8 (H, W, 3) at the same resolution."""
    base = np.repeat(display_gray(gray)[..., None], 3, axis=2)
    heat = colormaps[SALIENCY_CMAP](sal)[..., :3]
    # Opacity grows with saliency: unremarkable bone stays readable as a radiograph, hot regions stand out.
    alpha = (0.15 + 0.5 * sal)[..., None]
    return np.round(255 * ((1 - alpha) * base + alpha * heat)).astype(np.uint8)


def save_overlay(gray: np.ndarray, sal: np.ndarray, path: Path) -> Path:
    """The bare overlay, pixel for pixel the original's size: for viewers, the service, and further processing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay_rgb(gray, sal)).save(path, optimize=True)
    return path


def _save(fig, path: Path, dpi: int = DPI) -> Path:
    """Saved as RGB, not matplotlib's RGBA: the alpha channel of an opaque figure only costs bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    plt.close(fig)
    with Image.open(buffer) as img:
        img.convert("RGB").save(path, optimize=True)
    return path


def saliency_figure(gray: np.ndarray, sal: np.ndarray, path: Path, title: str, subtitle: str = "",
                    max_side: int = 800, min_side: int = 360) -> Path:
    """Radiograph | overlay with a colour bar, titled. Axes are placed in pixels so each panel has the image's exact
    aspect (undistorted); shown at native size when it lies between min_side and max_side."""
    h, w = gray.shape
    f = min(max_side / max(h, w), max(1.0, min_side / max(h, w)))
    dw, dh = round(w * f), round(h * f)
    left, gap, bar, right, bottom = 10, 16, 16, 70, 12
    fw = left + 2 * dw + gap + 10 + bar + right
    # wrapped to the figure's width (~6.5 px a character at 8 pt), so a narrow, tall film does not clip it
    subtitle = textwrap.fill(subtitle, width=max(30, int((fw - 2 * left) / 6.5))) if subtitle else ""
    top = 40 + 13 * (subtitle.count("\n") + 1 if subtitle else 0)
    fh = top + dh + bottom
    fig = plt.figure(figsize=(fw / DPI, fh / DPI), dpi=DPI)
    ax0 = fig.add_axes((left / fw, bottom / fh, dw / fw, dh / fh))
    ax1 = fig.add_axes(((left + dw + gap) / fw, bottom / fh, dw / fw, dh / fh))
    cax = fig.add_axes(((left + 2 * dw + gap + 10) / fw, bottom / fh, bar / fw, dh / fh))
    ax0.imshow(display_gray(gray), cmap="gray", vmin=0, vmax=1, interpolation="antialiased")
    ax1.imshow(overlay_rgb(gray, sal), interpolation="antialiased")
    for ax in (ax0, ax1):
        ax.set_axis_off()
    bar_ = fig.colorbar(plt.cm.ScalarMappable(Normalize(0, 1), SALIENCY_CMAP), cax=cax)
    bar_.set_label("relative saliency (1 = image max)", fontsize=8)
    bar_.ax.tick_params(labelsize=7)
    fig.text(left / fw, 1 - 8 / fh, title, fontsize=10, fontweight="bold", va="top", ha="left")
    if subtitle:
        fig.text(left / fw, 1 - 30 / fh, subtitle, fontsize=8, va="top", ha="left", color="dimgray")
    return _save(fig, path)


def activation_figure(prepared: np.ndarray, layers: list[tuple[str, np.ndarray]], path: Path, title: str,
                      pixel_aspect: float = 1.0, channels: int = 5) -> Path:
    """One row per layer, early to late: the channel mean over the model input, then the most active channels.

    pixel_aspect = height / width of one model-input pixel on the original film (H / W for a stretched input), so a
    stretched hand is drawn with its real proportions.
    """
    rows, cols = len(layers), 1 + channels
    cell = 1.6
    fig, axes = plt.subplots(rows, cols + 1, figsize=(cell * cols + 0.9, cell * min(pixel_aspect, 1.6) * rows + 0.8),
                             gridspec_kw={"width_ratios": [1] * cols + [0.07]}, squeeze=False, dpi=DPI)
    for r, (name, act) in enumerate(layers):
        c, h, w = act.shape
        mean = act.mean(axis=0)
        ax = axes[r, 0]
        ax.imshow(prepared, cmap="gray", aspect=pixel_aspect, interpolation="antialiased")
        # Upsampled onto the input via extent, so the layer's response sits over the anatomy that caused it.
        span = float(mean.max() - mean.min()) or 1.0
        ax.imshow((mean - mean.min()) / span, cmap=SALIENCY_CMAP, alpha=0.45, aspect=pixel_aspect,
                  extent=(-0.5, prepared.shape[1] - 0.5, prepared.shape[0] - 0.5, -0.5), interpolation="bilinear")
        ax.set_title(f"{name}: mean of {c}", fontsize=7)
        ax.set_ylabel(f"{c} x {h} x {w}", fontsize=7)
        top = np.argsort(act.reshape(c, -1).mean(axis=1))[::-1][: cols - 1]
        vmin, vmax = float(act[top].min()), float(act[top].max())
        for k, ch in enumerate(top):
            im = axes[r, 1 + k].imshow(act[ch], cmap=ACTIVATION_CMAP, vmin=vmin, vmax=vmax or 1.0,
                                      aspect=pixel_aspect, interpolation="nearest")
            axes[r, 1 + k].set_title(f"channel {ch}", fontsize=7)
        for k in range(len(top) + 1, cols):  # fewer channels than columns (a very thin layer)
            axes[r, k].set_visible(False)
        bar = fig.colorbar(im, cax=axes[r, -1])
        bar.ax.tick_params(labelsize=6)
        for ax in axes[r, :cols]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=10, fontweight="bold")
    fig.text(0.5, 0.005, "left: channel mean over the model input (relative, jet); right: the most active channels "
             "of the layer (activation, viridis, shared scale per row)", ha="center", fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    # ~700k pixels whatever the aspect: legible panels, and under ~300 KB for 30 of them
    width, height = fig.get_size_inches()
    return _save(fig, path, dpi=min(90, int((700_000 / (width * height)) ** 0.5)))
