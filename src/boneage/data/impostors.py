"""Generated images that are not hand radiographs but are gray and plausible enough to reach the model: for fitting
and testing the "not a hand radiograph" score of `boneage.quality` from pixels alone (no header to go by).

Kinds (`KINDS`), each drawn with random geometry, contrast and noise:
  whole_body  a nuclear-medicine whole-body scan: a blurred figure of counts on a dark field (or shown inverted)
  ultrasound  a fan-shaped sector of speckle with dark cysts and bright layers, black outside the fan
  ct_slice    an axial CT slice: a body disc with a fat ring, soft-tissue organs, a vertebra and ribs, black air around
  face        a gray photograph of a face: an oval with eyes, a mouth and smooth shading, on a soft gradient
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

KINDS = ("whole_body", "ultrasound", "ct_slice", "face")


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(np.asarray(img, dtype=np.float32), sigma)


def _canvas(h: int, w: int, value: float = 0.0) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("F", (w, h), value)
    return img, ImageDraw.Draw(img)


def whole_body(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    img, d = _canvas(h, w)
    cx, top, s = w * rng.uniform(0.45, 0.55), h * rng.uniform(0.03, 0.08), h * rng.uniform(0.85, 0.95)
    head = 0.06 * s
    d.ellipse((cx - head * 0.8, top, cx + head * 0.8, top + 2 * head), fill=rng.uniform(0.5, 0.9))
    body_w = min(0.2 * s, 0.42 * w)
    d.rounded_rectangle((cx - body_w / 2, top + 2.2 * head, cx + body_w / 2, top + 0.5 * s), radius=int(head),
                        fill=rng.uniform(0.35, 0.6))
    arm = 0.05 * s
    for side in (-1, 1):  # arms down the sides, legs below
        x = cx + side * (body_w / 2 + arm * 0.7)
        d.line((x, top + 2.4 * head, x + side * rng.uniform(0, 0.03) * s, top + 0.48 * s), fill=0.3, width=int(arm))
        x = cx + side * body_w * 0.25
        d.line((x, top + 0.5 * s, x + side * rng.uniform(0, 0.05) * s, top + s), fill=0.35, width=int(1.4 * arm))
    a = np.asarray(img, dtype=np.float32)
    for _ in range(rng.integers(2, 6)):  # hot spots: bladder, kidneys, lesions
        y, x = rng.uniform(top, top + 0.6 * s), rng.uniform(cx - body_w / 2, cx + body_w / 2)
        yy, xx = np.ogrid[:h, :w]
        a = a + rng.uniform(0.3, 1.0) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * rng.uniform(2, 8) ** 2))
    a = _blur(a / a.max(), rng.uniform(1.5, 4) * max(h, w) / 512)
    counts = rng.poisson(a * rng.uniform(20, 120)).astype(np.float32)  # a gamma camera counts photons
    out = counts / max(float(counts.max()), 1.0)
    return 1 - out if rng.random() < 0.5 else out  # often shown black-on-white


def ultrasound(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ax, ay = w / 2 + rng.uniform(-0.05, 0.05) * w, -rng.uniform(0, 0.1) * h
    r = np.hypot(xx - ax, yy - ay)
    theta = np.arctan2(xx - ax, yy - ay)
    half, r0, r1 = np.radians(rng.uniform(30, 45)), rng.uniform(0.05, 0.15) * h, rng.uniform(0.85, 0.98) * h
    fan = (np.abs(theta) < half) & (r > r0) & (r < r1)
    tissue = 0.5 + 0.25 * np.sin(r / h * rng.uniform(6, 14) + rng.uniform(0, 6)) * rng.uniform(0.3, 1)
    for _ in range(rng.integers(1, 4)):  # dark cysts or vessels
        cy, cx, rad = rng.uniform(0.3, 0.8) * h, ax + rng.uniform(-0.2, 0.2) * w, rng.uniform(0.03, 0.1) * h
        tissue = np.where(np.hypot(xx - cx, yy - cy) < rad, 0.05, tissue)
    speckle = rng.rayleigh(1.0, (h, w)).astype(np.float32)
    speckle = _blur(speckle / speckle.max(), rng.uniform(0.6, 1.5)) * 3
    img = tissue * speckle * np.exp(-r / h * rng.uniform(0.3, 1.2))  # deeper is darker
    return np.clip(np.where(fan, img, 0), 0, 1).astype(np.float32)


def ct_slice(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    img, d = _canvas(h, w)
    cx, cy = w / 2 + rng.uniform(-0.04, 0.04) * w, h / 2 + rng.uniform(-0.04, 0.04) * h
    rx, ry = rng.uniform(0.35, 0.46) * w, rng.uniform(0.25, 0.36) * h
    d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=0.32)  # fat
    k = rng.uniform(0.85, 0.92)
    d.ellipse((cx - rx * k, cy - ry * k, cx + rx * k, cy + ry * k), fill=0.45)  # muscle and organs
    for _ in range(rng.integers(2, 5)):  # organs and bowel
        ox, oy = cx + rng.uniform(-0.5, 0.5) * rx, cy + rng.uniform(-0.5, 0.3) * ry
        sx, sy = rng.uniform(0.1, 0.3) * rx, rng.uniform(0.1, 0.3) * ry
        d.ellipse((ox - sx, oy - sy, ox + sx, oy + sy), fill=rng.choice([0.05, 0.5, 0.55, 0.4]))
    vy = cy + 0.55 * ry
    d.ellipse((cx - 0.09 * rx, vy - 0.12 * ry, cx + 0.09 * rx, vy + 0.12 * ry), fill=0.95)  # vertebra
    for t in np.linspace(0.6, 2.5, rng.integers(3, 7)):  # ribs along the fat ring
        for side in (-1, 1):
            x, y = cx + side * rx * 0.8 * np.cos(t - 0.5), cy + ry * 0.8 * np.sin(t - 0.5)
            d.ellipse((x - 0.03 * rx, y - 0.03 * ry, x + 0.03 * rx, y + 0.03 * ry), fill=0.9)
    if rng.random() < 0.5:  # the table under the patient
        d.rectangle((0.15 * w, cy + ry * 1.05, 0.85 * w, cy + ry * 1.12), fill=0.25)
    a = _blur(np.asarray(img, dtype=np.float32), rng.uniform(0.5, 1.5))
    return np.clip(a + rng.normal(0, rng.uniform(0.01, 0.04), a.shape), 0, 1).astype(np.float32)


def face(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / np.float32(max(h, w))
    gx, gy = rng.uniform(-0.4, 0.4, 2)
    background = rng.uniform(0.3, 0.7) + gx * (xx - 0.5) + gy * (yy - 0.5)
    img, d = _canvas(h, w)
    cx, cy, rx, ry = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.55), w * rng.uniform(0.2, 0.3), h * 0.33
    d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=1.0)
    d.rectangle((cx - 0.45 * rx, cy + 0.8 * ry, cx + 0.45 * rx, h), fill=1.0)  # neck
    mask = _blur(np.asarray(img, dtype=np.float32), 3)
    skin = rng.uniform(0.45, 0.8) - 0.25 * ((xx * max(h, w) - cx) / w) ** 2 * rng.uniform(1, 4)  # shading
    hair, dh = _canvas(h, w)
    dh.ellipse((cx - 1.05 * rx, cy - 1.1 * ry, cx + 1.05 * rx, cy - 0.2 * ry), fill=1.0)
    hair_mask = _blur(np.asarray(hair, dtype=np.float32), 4) * (1 - mask * (yy * max(h, w) > cy - 0.55 * ry))
    feats, df = _canvas(h, w)
    for side in (-1, 1):
        ex, ey = cx + side * 0.4 * rx, cy - 0.15 * ry
        df.ellipse((ex - 0.18 * rx, ey - 0.07 * ry, ex + 0.18 * rx, ey + 0.07 * ry), fill=1.0)
    df.ellipse((cx - 0.35 * rx, cy + 0.45 * ry, cx + 0.35 * rx, cy + 0.55 * ry), fill=0.7)  # mouth
    df.line((cx, cy - 0.05 * ry, cx + 0.05 * rx, cy + 0.3 * ry), fill=0.4, width=max(1, int(0.04 * rx)))  # nose
    feats_a = _blur(np.asarray(feats, dtype=np.float32), 1.5)
    a = background * (1 - mask) + skin * mask
    a = a * (1 - 0.6 * feats_a) * (1 - rng.uniform(0.3, 0.7) * np.clip(hair_mask, 0, 1))
    a = _blur(a, rng.uniform(0.5, 1.5))
    return np.clip(a + rng.normal(0, rng.uniform(0.005, 0.02), a.shape), 0, 1).astype(np.float32)


_MAKERS = {"whole_body": whole_body, "ultrasound": ultrasound, "ct_slice": ct_slice, "face": face}


def make_impostor(kind: str, rng: np.random.Generator, side: int = 320) -> np.ndarray:
    """uint8 (H, W): one image of `kind` (see `KINDS`), about `side` pixels on its longer side."""
    if kind == "whole_body":
        h, w = side, int(side * rng.uniform(0.25, 0.4))
    elif kind == "ultrasound":
        h, w = int(side * rng.uniform(0.75, 0.85)), side
    elif kind == "ct_slice":
        h = w = side
    else:
        h, w = side, int(side * rng.uniform(0.75, 0.85))
    img = _MAKERS[kind](rng, h, w)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
