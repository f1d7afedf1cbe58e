"""Generated radiograph-like images whose content encodes age, for tests and demos where real data is absent.

Each image: a dark film with noise and age-independent distractor blobs, and inside `signal_box` a bright disc whose
radius grows with age (a stand-in for ossification). A CNN can learn it; a model that does must look inside the box.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

MAX_AGE = 228.0  # months, the RSNA maximum


def _disc(img: np.ndarray, cy: float, cx: float, r: float, value: float) -> None:
    h, w = img.shape
    yy, xx = np.ogrid[:h, :w]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = value


def make_image(age: float, rng: np.random.Generator, size: int = 64,
               signal_box: tuple[float, float, float, float] = (0.1, 0.1, 0.9, 0.9)) -> np.ndarray:
    """uint8 (size, size). signal_box = (top, left, bottom, right) as fractions of the side."""
    img = rng.normal(40, 8, (size, size))
    y0, x0, y1, x1 = (int(round(f * size)) for f in signal_box)
    for _ in range(3):  # distractors: same brightness as the signal, random size, anywhere outside the box
        for _ in range(20):
            cy, cx = rng.uniform(0, size, 2)
            if not (y0 - 3 <= cy <= y1 + 3 and x0 - 3 <= cx <= x1 + 3):
                _disc(img, cy, cx, rng.uniform(1, size / 10), 200)
                break
    box = min(y1 - y0, x1 - x0)
    r = (0.1 + 0.35 * age / MAX_AGE) * box
    cy = rng.uniform(y0 + r, max(y0 + r, y1 - r)) if y1 - y0 > 2 * r else (y0 + y1) / 2
    cx = rng.uniform(x0 + r, max(x0 + r, x1 - r)) if x1 - x0 > 2 * r else (x0 + x1) / 2
    _disc(img, cy, cx, r, 200)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def make_dataset(folder: str | Path, n: int, size: int = 64, seed: int = 0,
                 signal_box: tuple[float, float, float, float] = (0.1, 0.1, 0.9, 0.9), ext: str = ".png") -> Path:
    """Writes `folder/images/<id><ext>` and `folder/labels.csv` (training layout); returns the CSV path."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        age = float(rng.uniform(12, MAX_AGE))
        male = bool(rng.integers(0, 2))
        Image.fromarray(make_image(age, rng, size, signal_box)).save(folder / "images" / f"{1000 + i}{ext}")
        rows.append((1000 + i, round(age, 1), male))
    labels = folder / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "boneage", "male"])
        w.writerows(rows)
    return labels


def hand_phantom(height: int = 400, width: int = 320, seed: int = 0, supersample: int = 4) -> np.ndarray:
    """float32 (H, W) in [0, 1]: a dark film, a soft-tissue hand and forearm, brighter bones, a little noise.

    Passes the quality checks as a real radiograph would; for tests and benchmarks of the input path (its age means
    nothing). Drawn at `supersample` times the size, then shrunk, for smooth edges.
    """
    rng = np.random.default_rng(seed)
    s = supersample
    W, H = width * s, height * s
    tissue, bone = Image.new("L", (W, H), 0), Image.new("L", (W, H), 0)
    t, b = ImageDraw.Draw(tissue), ImageDraw.Draw(bone)
    cx, palm = W * rng.uniform(0.46, 0.54), H * rng.uniform(0.55, 0.62)
    t.rectangle((cx - 0.17 * W, palm, cx + 0.17 * W, H), fill=255)  # forearm
    t.ellipse((cx - 0.24 * W, palm - 0.16 * H, cx + 0.24 * W, palm + 0.14 * H), fill=255)  # palm
    for k, dx in enumerate((-0.17, -0.085, 0.0, 0.085)):  # four fingers with three phalanges and a metacarpal
        x = cx + dx * W + 0.03 * W
        top = palm - H * (0.42 if k in (1, 2) else 0.36) * rng.uniform(0.95, 1.05)
        t.rounded_rectangle((x - 0.035 * W, top, x + 0.035 * W, palm), radius=int(0.03 * W), fill=255)
        for j in range(3):
            y0 = top + (palm - top) * j / 3 + 0.015 * H
            b.rectangle((x - 0.016 * W, y0, x + 0.016 * W, y0 + (palm - top) / 3 - 0.03 * H), fill=255)
        b.rectangle((x - 0.018 * W, palm + 0.01 * H, x + 0.015 * W, palm + 0.12 * H), fill=255)
    t.polygon([(cx - 0.2 * W, palm + 0.05 * H), (cx - 0.36 * W, palm - 0.12 * H), (cx - 0.3 * W, palm - 0.16 * H),
               (cx - 0.14 * W, palm - 0.02 * H)], fill=255)  # thumb
    for dx in (-0.08, 0.06):  # radius and ulna
        b.rectangle((cx + dx * W - 0.03 * W, palm + 0.18 * H, cx + dx * W + 0.03 * W, H), fill=255)

    def shrink(img: Image.Image, blur: float) -> np.ndarray:
        img = img.filter(ImageFilter.GaussianBlur(blur)).resize((width, height), Image.BILINEAR)
        return np.asarray(img, np.float32) / 255

    img = 0.06 + 0.03 * np.linspace(0, 1, height)[:, None] + 0.35 * shrink(tissue, 3 * s) + 0.4 * shrink(bone, 6)
    return np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1).astype(np.float32)
