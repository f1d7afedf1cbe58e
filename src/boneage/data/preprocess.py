"""One copy of the preprocessing, used by training, evaluation, explanation and serving alike.

file -> float gray (any size, any bit depth) -> [cut to the hand] -> resize to `image_size` -> per-image intensity
normalisation -> uint8.
The uint8 square is what the decode-once store holds; `to_model_input` turns a batch of them into the network's input.
Training with noise in the film's own gray levels (`film_noise`) stores the square before the intensity normalisation
and normalises each batch on the device (`boneage.training.augment.equalize_clipped_batch`, the same mapping).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from boneage.config import Preprocess
from boneage.data.crop import hand_box
from boneage.data.intensity import equalize, equalize_clipped


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


def normalise_intensity(gray: np.ndarray, pp: Preprocess) -> np.ndarray:
    """Float gray -> [0, 1] by the configured method."""
    if pp.intensity == "equalize":
        return equalize_clipped(gray, pp.clip_limit) if pp.clip_limit else equalize(gray)
    if pp.intensity == "percentile":
        lo, hi = np.percentile(gray, pp.percentiles)
    else:  # "none": the file's own scale, 8- or 16-bit
        lo, hi = 0.0, (255.0 if gray.max() <= 255 else 65535.0)
    if hi <= lo:
        return np.zeros_like(gray, dtype=np.float32)
    return np.clip((gray - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def model_region(gray: np.ndarray, pp: Preprocess) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the part of the film the model sees: the hand's box, or the whole film."""
    if pp.crop in ("hand", "hand-in-plate"):
        return hand_box(gray, plate=pp.crop == "hand-in-plate")
    return 0, gray.shape[0], 0, gray.shape[1]


def region_fractions(gray: np.ndarray, pp: Preprocess) -> tuple[float, float, float, float]:
    """`model_region` as fractions of the film's height and width: to place a map made on the input back on a copy of
    the film at any size."""
    top, bottom, left, right = model_region(gray, pp)
    h, w = gray.shape
    return top / h, bottom / h, left / w, right / w


def crop_and_resize(gray: np.ndarray, pp: Preprocess) -> np.ndarray:
    """Float gray of any size -> float (S, S) in the film's own gray levels: everything but the intensity normalisation.
    """
    top, bottom, left, right = model_region(gray, pp)
    return resize(gray[top:bottom, left:right], pp)


def preprocess_gray(gray: np.ndarray, pp: Preprocess) -> np.ndarray:
    """Float gray of any size -> uint8 (S, S): what the store holds and the model sees (after `to_model_input`)."""
    unit = normalise_intensity(crop_and_resize(gray, pp), pp)
    return np.round(unit * 255.0).astype(np.uint8)


def to_model_input(batch: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    """uint8 (B, 1, S, S) or float in [0, 1] -> float (B, C, S, S), standardised, the gray repeated to C channels."""
    x = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
    x = (x - pp.mean) / pp.std
    return x.expand(-1, pp.channels, -1, -1) if pp.channels != x.shape[1] else x
