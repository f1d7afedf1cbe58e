"""Find the hand on a film: the bounding box of the largest bright region, so the model sees the hand, not the margins.

A film's margins, padding, framing and the hand's position carry no information about bone age, yet a network fed the
whole film squeezed to a square sees the hand larger or smaller, here or there, as they vary. Cutting to the hand
first removes that. The box is found on a small, smoothed, rank-normalised copy (noise, JPEG artefacts and exposure do
not move it): pixels brighter than a threshold between the background and Otsu's split, or on a sharp edge (a dim
finger on a vignetted film), closed so that bones separated by joint spaces form one region. The largest region and
any at least `KEEP` of its size are the hand (side markers and labels are smaller); a box under `MIN_BOX` of the film
keeps the whole film.

Cutting a stretched copy of a film to the box and stretching again gives the same pixels, scale for scale, as cutting
the original and stretching once: resizing is separable per axis. So a model trained on the squeezed RSNA copies sees
real full-size films the same way.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from boneage.data.intensity import equalize_clipped

WORK = 128  # side of the small copy the box is found on
MARGIN = 0.05  # of the box's own size, added on each side: the edges of the fingers and wrist stay in
THRESHOLD = 0.35  # between the background (0) and Otsu's split (1): low enough that soft tissue joins the fingers
EDGE = 0.06  # gradient magnitude (of the 1st-99th percentile range, per pixel of the small copy) that counts as an edge
KEEP = 0.15  # regions at least this share of the largest belong to the hand too (fingers cut off by a thin joint)
MIN_BOX = 0.02  # of the film: a smaller box is a side marker or a label, not a hand; keep the film


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    if values.size == 0 or float(values.max() - values.min()) < 1e-4:  # too few distinct levels to split
        return float(values.mean()) if values.size else 1.0
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between))])


def hand_box(gray: np.ndarray) -> tuple[int, int, int, int]:
    """Float gray (H, W), bone bright -> (top, bottom, left, right) of the hand, in pixels of `gray`.

    The whole film when no region stands out (a blank or uniform film, or a hand that fills it).
    """
    h, w = gray.shape
    whole = (0, h, 0, w)
    if h < 8 or w < 8:
        return whole
    small = np.asarray(Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), mode="F")
                       .resize((WORK, WORK), Image.BILINEAR), dtype=np.float32)
    small = ndimage.gaussian_filter(small, 1.5)
    if np.ptp(small) <= 1e-6:
        return whole
    # Gray levels by (slope-capped) rank: a film stored with another contrast, gamma or bit depth gives the same box.
    small = equalize_clipped(small, 4.0)
    # The background: the median of the film's outer ring, where a hand rarely is except at the wrist.
    ring = np.concatenate([small[:4].ravel(), small[-4:].ravel(), small[:, :4].ravel(), small[:, -4:].ravel()])
    background = float(np.median(ring))
    split = _otsu(small[small > background]) if np.any(small > background) else 1.0
    # Bright, or edged: a dim finger on a vignetted film still has sharp edges against the flat background.
    edges = ndimage.gaussian_gradient_magnitude(small, 1.0) > EDGE
    mask = (small > background + THRESHOLD * (split - background)) | edges
    mask = ndimage.binary_closing(mask, structure=np.ones((5, 5)), iterations=1)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n == 0:
        return whole
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    hand = np.isin(labels, np.flatnonzero(sizes >= KEEP * sizes.max()) + 1)
    rows = np.flatnonzero(np.any(hand, axis=1))
    cols = np.flatnonzero(np.any(hand, axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    if (bottom - top) * (right - left) < MIN_BOX * WORK * WORK:
        return whole
    dy, dx = MARGIN * (bottom - top), MARGIN * (right - left)
    sy, sx = h / WORK, w / WORK
    top = max(0, int(np.floor((top - dy) * sy)))
    bottom = min(h, int(np.ceil((bottom + dy) * sy)))
    left = max(0, int(np.floor((left - dx) * sx)))
    right = min(w, int(np.ceil((right + dx) * sx)))
    if bottom - top < 8 or right - left < 8:
        return whole
    return top, bottom, left, right


def crop_to_hand(gray: np.ndarray) -> np.ndarray:
    top, bottom, left, right = hand_box(gray)
    return gray[top:bottom, left:right]
