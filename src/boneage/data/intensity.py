"""Per-image histogram equalisation, plain and slope-capped: gray levels by rank, whatever the film's exposure."""

from __future__ import annotations

import numpy as np


def equalize(gray: np.ndarray) -> np.ndarray:
    """Histogram equalisation of a float image to [0, 1]: each pixel becomes the fraction of pixels at or below it.

    It depends only on the order of gray levels, so contrast, brightness, gamma or a different bit depth (any strictly
    increasing change) gives the same output.
    """
    values, inverse, counts = np.unique(gray.ravel(), return_inverse=True, return_counts=True)
    cdf = np.cumsum(counts, dtype=np.float64)
    if len(values) == 1:
        return np.zeros_like(gray, dtype=np.float32)
    cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0])  # the darkest level maps to 0, the brightest to 1
    return cdf[inverse].reshape(gray.shape).astype(np.float32)


TAIL = 0.5  # percent of pixels at each end left out of the binned range (0.5th to 99.5th percentile)
CLIP_ROUNDS = 4  # redistributing the excess lifts every bin: a few rounds settle it under the cap


def equalize_clipped(gray: np.ndarray, clip_limit: float, bins: int = 256) -> np.ndarray:
    """Histogram equalisation whose slope is capped at `clip_limit` (a global CLAHE), to [0, 1].

    Levels are binned between the image's 0.5th and 99.5th percentiles, so contrast and brightness still do not matter;
    each bin's share is capped at clip_limit / bins and the excess spread evenly, and the mapping is interpolated
    between bin edges, so a small change of a pixel is a small change of its output (no jumps at bin borders).
    """
    lo, hi = np.percentile(gray, (TAIL, 100 - TAIL))
    if hi <= lo:
        return np.zeros_like(gray, dtype=np.float32)
    unit = np.clip((gray - lo) / (hi - lo), 0.0, 1.0)
    hist = np.bincount(np.minimum((unit * bins).astype(np.int64), bins - 1).ravel(), minlength=bins).astype(np.float64)
    hist /= hist.sum()
    cap = clip_limit / bins
    for _ in range(CLIP_ROUNDS):
        excess = np.clip(hist - cap, 0.0, None).sum()
        hist = np.minimum(hist, cap) + excess / bins
    cdf = np.concatenate([[0.0], np.cumsum(hist)])
    cdf /= cdf[-1]
    return np.interp(unit, np.linspace(0.0, 1.0, bins + 1), cdf).astype(np.float32)
