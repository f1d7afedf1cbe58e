"""One copy of the preprocessing, used by training, evaluation, explanation and serving alike.

file -> float gray (any size, any bit depth) -> resize to `image_size` -> per-image intensity normalisation -> uint8.
The uint8 square is what the decode-once store holds; `to_model_input` turns a batch of them into the network's input.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from boneage.config import Preprocess


def resize(gray: np.ndarray, pp: Preprocess) -> np.ndarray:
    """Float gray (H, W) -> float (S, S). Bilinear with Pillow's antialiasing, so large originals are not aliased."""
    size = pp.image_size
    h, w = gray.shape
    img = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), mode="F")
    if pp.resize == "stretch" or h == w:
        return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32)
    # "pad": keep the aspect ratio, centre on a square of the image's darkest tenth (the film background)
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(img.resize((nw, nh), Image.BILINEAR), dtype=np.float32)
    out = np.full((size, size), np.percentile(gray, 10), dtype=np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = small
    return out


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


def normalise_intensity(gray: np.ndarray, pp: Preprocess) -> np.ndarray:
    """Float gray -> [0, 1] by the configured method."""
    if pp.intensity == "equalize":
        return equalize(gray)
    if pp.intensity == "percentile":
        lo, hi = np.percentile(gray, pp.percentiles)
    else:  # "none": the file's own scale, 8- or 16-bit
        lo, hi = 0.0, (255.0 if gray.max() <= 255 else 65535.0)
    if hi <= lo:
        return np.zeros_like(gray, dtype=np.float32)
    return np.clip((gray - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def preprocess_gray(gray: np.ndarray, pp: Preprocess) -> np.ndarray:
    """Float gray of any size -> uint8 (S, S): what the store holds and the model sees (after `to_model_input`)."""
    unit = normalise_intensity(resize(gray, pp), pp)
    return np.round(unit * 255.0).astype(np.uint8)


def to_model_input(batch: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    """uint8 (B, 1, S, S) or float in [0, 1] -> float (B, C, S, S), standardised, the gray repeated to C channels."""
    x = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
    x = (x - pp.mean) / pp.std
    return x.expand(-1, pp.channels, -1, -1) if pp.channels != x.shape[1] else x
