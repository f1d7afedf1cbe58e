"""Facts about decoded pixels that both decoders (Pillow's and DICOM's) need: the size guard and how colourful a
picture is."""

from __future__ import annotations

import numpy as np

MAX_PIXELS = 150_000_000  # decompression-bomb guard: ~12,000 x 12,000, far past any hand radiograph


def colour_fraction(rgb: np.ndarray) -> float:
    """Share of pixels that are clearly coloured, on a <= ~256 px subsample of an (H, W, 3) array in any scale.

    A pixel counts when its HSV saturation (max - min) / max exceeds 0.25 and it is not near black (max above 10% of
    the image's brightest). Gray radiographs saved as RGB (JPEG chroma noise included) score ~0; photographs score high.
    """
    step = max(1, max(rgb.shape[:2]) // 256)
    x = np.asarray(rgb[::step, ::step, :3], dtype=np.float32)
    hi, lo = x.max(axis=2), x.min(axis=2)
    top = float(hi.max()) if hi.size else 0.0
    if top <= 0:
        return 0.0
    lit = hi > 0.1 * top
    sat = (hi - lo) / np.maximum(hi, 1e-6)
    return float(np.mean(lit & (sat > 0.25)))
