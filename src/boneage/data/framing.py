"""Framing the whole film: a wider margin, a closer view, a shift on the detector, a rotation.

These are the changes a technician makes without meaning to. `boneage precision` applies them to measure how far an
answer moves, and the `framings` test-time views (boneage.inference.tta) average over a few of them so that it moves
less. All work before the hand crop, on float gray (H, W) in the film's own gray levels, and fill what they uncover
with the film's own background gray, so the crop sees a film, not a frame.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def background(gray: np.ndarray) -> float:
    """The film's own background gray: the median of its outer ring."""
    return float(np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])))


def canvas(gray: np.ndarray, grow: float, where: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """The film on a canvas `grow` larger in each direction, of its background gray, at relative position `where`."""
    h, w = gray.shape
    big_h, big_w = round(h * (1 + grow)), round(w * (1 + grow))
    out = np.full((big_h, big_w), background(gray), dtype=np.float32)
    top, left = round((big_h - h) * where[0]), round((big_w - w) * where[1])
    out[top : top + h, left : left + w] = gray
    return out


def zoom_in(gray: np.ndarray, zoom: float) -> np.ndarray:
    """The central 1/(1+zoom) of the film: as if it had been taken closer."""
    h, w = gray.shape
    ch, cw = round(h / (1 + zoom)), round(w / (1 + zoom))
    top, left = (h - ch) // 2, (w - cw) // 2
    return gray[top : top + ch, left : left + cw]


def rotate(gray: np.ndarray, degrees: float) -> np.ndarray:
    """Rotated counter-clockwise about the film's centre, same size, corners filled with its background gray."""
    image = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), mode="F")
    return np.asarray(image.rotate(degrees, Image.BILINEAR, fillcolor=background(gray)), dtype=np.float32)


def drawn_framing(gray: np.ndarray, rng: np.random.Generator, rotate_deg: float, margin: float,
                  zoom: float) -> np.ndarray:
    """One framing drawn from `rng`: zoomed in, or on a wider canvas at a random place (even odds), then rotated."""
    if zoom > 0 and (margin <= 0 or rng.random() < 0.5):
        gray = zoom_in(gray, float(rng.uniform(0, zoom)))
    elif margin > 0:
        gray = canvas(gray, float(rng.uniform(0, margin)), (float(rng.random()), float(rng.random())))
    return rotate(gray, float(rng.uniform(-rotate_deg, rotate_deg))) if rotate_deg > 0 else gray
