"""`boneage precision`: how far the answer for the same film moves under changes that carry no information.

For each film of a labelled set and each harmless change (re-saving, mirroring, rotating, zooming, framing, shifting,
cutting to the hand, exposure, resolution, sensor noise), Δ = prediction(changed film) − prediction(original film).
Per family of changes it reports the median and largest |Δ| and the precision of one determination, SD(Δ)/√2, the
figure clinical software quotes (BoneXpert: about 2.1 months, a new X-ray included).
The changed films go through the one preprocessing and predictor, exactly as a user's file would.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

from boneage.config import Preprocess, to_dict
from boneage.data.crop import crop_to_hand
from boneage.data.framing import canvas, rotate, zoom_in
from boneage.data.images import decode_image
from boneage.data.labels import read_labels
from boneage.errors import UserError
from boneage.inference.tta import VIEWS, count, model_input

Change = Callable[[np.ndarray], np.ndarray]  # float gray (H, W), 0..255 -> float gray, any size


def _pil(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), mode="F")


def _encode(gray: np.ndarray, fmt: str, **options) -> np.ndarray:
    buf = io.BytesIO()
    if fmt == "PNG16":
        Image.fromarray((np.clip(gray, 0, 255) * 257).astype(np.uint16)).save(buf, "PNG")
    else:
        Image.fromarray(np.clip(np.round(gray), 0, 255).astype(np.uint8)).save(buf, fmt, **options)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im, dtype=np.float32)


def _scale(gray: np.ndarray, factor: float) -> np.ndarray:
    h, w = gray.shape
    return np.asarray(_pil(gray).resize((max(8, round(w * factor)), max(8, round(h * factor))), Image.BILINEAR),
                      dtype=np.float32)


def _noise(gray: np.ndarray, sd: float) -> np.ndarray:
    """Gaussian noise of `sd` gray levels (of 255), the same draw for every run, clipped to the film's range."""
    rng = np.random.default_rng(0)
    return np.clip(gray + rng.normal(0.0, sd, gray.shape), 0, max(255.0, float(gray.max())))


FAMILIES: dict[str, dict[str, Change]] = {
    "re-encoding": {
        "JPEG 70": lambda g: _encode(g, "JPEG", quality=70),
        "JPEG 80": lambda g: _encode(g, "JPEG", quality=80),
        "JPEG 95": lambda g: _encode(g, "JPEG", quality=95),
        "PNG 8-bit": lambda g: _encode(g, "PNG"),
        "PNG 16-bit": lambda g: _encode(g, "PNG16"),
    },
    "mirroring": {
        "left-right": lambda g: g[:, ::-1],
        "up-down": lambda g: g[::-1],
    },
    "rotation": {f"{d:+d}°": (lambda g, d=d: rotate(g, d)) for d in (-15, -10, -5, 5, 10, 15)},
    "zoom and margin": {
        "margin +10%": lambda g: canvas(g, 0.1),
        "margin +20%": lambda g: canvas(g, 0.2),
        "zoom in 10%": lambda g: zoom_in(g, 0.1),
        "zoom in 20%": lambda g: zoom_in(g, 0.2),
    },
    "shift": {
        "to top left": lambda g: canvas(g, 0.2, (0.0, 0.0)),
        "to bottom right": lambda g: canvas(g, 0.2, (1.0, 1.0)),
        "to top right": lambda g: canvas(g, 0.2, (0.0, 1.0)),
    },
    "cut to the hand": {"hand only": crop_to_hand},
    "exposure": {
        "contrast x0.5": lambda g: g * 0.5 + 64,
        "brightness +30": lambda g: np.clip(g + 30, 0, 255),
        "gamma 0.6": lambda g: 255 * (g / 255) ** 0.6,
        "gamma 1.5": lambda g: 255 * (g / 255) ** 1.5,
    },
    "resolution": {
        "2x": lambda g: _scale(g, 2.0),
        "1/2": lambda g: _scale(g, 0.5),
    },
    # Not in the list, but the same film on another detector or re-digitised: the noise level must not read
    # as age (measured: one gray level of noise moved some answers of the session-2 model by years).
    "sensor noise": {
        "SD 1 gray level": lambda g: _noise(g, 1.0),
        "SD 3 gray levels": lambda g: _noise(g, 3.0),
    },
}
CHANGES = [(family, name, fn) for family, changes in FAMILIES.items() for name, fn in changes.items()]


def select(families: list[str] | None = None) -> list[tuple[str, str, Change]]:
    """The changes of the named families (all of them when None), in FAMILIES' order; an unknown name is a UserError."""
    if not families:
        return CHANGES
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise UserError(f"precision: no family {unknown[0]!r}; the families are: {', '.join(FAMILIES)}")
    return [c for c in CHANGES if c[0] in families]


def _prepare_film(args: tuple[str, dict, list[str] | None, str]) -> np.ndarray:
    """One film -> uint8 (1 + n changes, [F,] S, S): the original first, then each changed copy, each prepared as the
    predictor's views `tta` take it (F framings of the whole film for `framings`)."""
    path, pp, families, tta = args
    pp = Preprocess(**pp)
    gray = decode_image(path)
    return np.stack([model_input(gray, pp, tta)] + [model_input(fn(gray), pp, tta) for _, _, fn in select(families)])


def measure(predictor, images: str, labels: str, limit: int | None = None, workers: int | None = None,
            chunk: int = 128, log=print, families: list[str] | None = None) -> dict:
    """Predictions for every film and change (of `families`, default all) -> the table (see `summarise`) plus the
    deltas per film."""
    changes = select(families)
    records = read_labels(labels, images).rows[: limit or None]
    pp = to_dict(predictor.preprocess)
    workers = workers or min(16, os.cpu_count() or 1)
    base, deltas = np.zeros(len(records)), np.zeros((len(records), len(changes)))
    films = [(str(r.image), pp, families, predictor.tta) for r in records]
    views_per_film = count(predictor.tta)
    step = max(1, 256 // views_per_film)  # films per forward pass: 256 images, whatever the views
    chunk = max(1, chunk // len(VIEWS[predictor.tta].framings))  # the same memory, whatever the framings
    with ProcessPoolExecutor(workers) as pool:
        # The workers prepare the next chunk while the model scores this one; two chunks at most are held.
        ahead = pool.map(_prepare_film, films[:chunk], chunksize=2)
        for start in range(0, len(records), chunk):
            prepared = ahead
            if start + chunk < len(records):
                ahead = pool.map(_prepare_film, films[start + chunk : start + 2 * chunk], chunksize=2)
            part = records[start : start + chunk]
            views = np.stack(list(prepared))  # (B, 1 + C, [F,] S, S)
            b, c = views.shape[:2]
            flat, male = views.reshape(b * c, *views.shape[2:]), np.repeat([r.male for r in part], c)
            pred = np.concatenate([predictor.predict_batch(flat[i : i + step], male[i : i + step])
                                   for i in range(0, b * c, step)]).reshape(b, c)
            base[start : start + b], deltas[start : start + b] = pred[:, 0], pred[:, 1:] - pred[:, :1]
            log(f"precision: {start + b}/{len(records)} films")
    true = np.array([r.age_months for r in records])
    result = summarise(deltas, changes)
    result["n"] = len(records)
    result["mad_original"] = round(float(np.mean(np.abs(base - true))), 3)
    result["per_film"] = {"ids": [r.id for r in records], "base": base.round(2).tolist(),
                          "deltas": deltas.round(2).tolist(), "changes": [f"{f}: {n}" for f, n, _ in changes]}
    return result


def _stats(d: np.ndarray) -> dict:
    d = d.ravel()
    return {"median_abs": round(float(np.median(np.abs(d))), 2), "max_abs": round(float(np.max(np.abs(d))), 2),
            "sd_single": round(float(np.std(d, ddof=1) / np.sqrt(2)) if d.size > 1 else 0.0, 2),
            "share_over_12": round(float(np.mean(np.abs(d) > 12)), 4)}


def summarise(deltas: np.ndarray, measured: list[tuple[str, str, Change]] | None = None) -> dict:
    """(films, changes) deltas, one column per change of `measured` (default all) -> per family and per change:
    median |Δ|, largest |Δ|, SD of one determination."""
    measured = CHANGES if measured is None else measured
    families, changes = {}, {}
    for family in dict.fromkeys(f for f, _, _ in measured):
        cols = [i for i, (f, _, _) in enumerate(measured) if f == family]
        families[family] = _stats(deltas[:, cols])
        for i in cols:
            changes[f"{family}: {measured[i][1]}"] = _stats(deltas[:, i])
    worst = max(s["sd_single"] for s in families.values())
    largest = max(s["max_abs"] for s in families.values())
    return {"families": families, "changes": changes, "worst_sd_single": worst, "largest_abs": largest}


def format_table(result: dict, per_change: bool = False) -> str:
    rows = result["changes"] if per_change else result["families"]
    lines = ["| change to the film | median abs Δ (months) | SD single (months) | largest abs Δ | share > 12 months |",
             "| --- | --- | --- | --- | --- |"]
    for name, s in rows.items():
        lines.append(f"| {name} | {s['median_abs']:.1f} | {s['sd_single']:.1f} | {s['max_abs']:.1f} | "
                     f"{100 * s['share_over_12']:.1f}% |")
    return "\n".join(lines)


def write_outputs(result: dict, out) -> None:
    """precision.json (the summary), precision.md (the tables), deltas.csv (one row per film, one column per change)."""
    import csv
    import json
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in result.items() if k != "per_film"}
    (out / "precision.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "precision.md").write_text(f"{result['n']} films, MAD of the originals {result['mad_original']:.2f} "
                                      f"months\n\n{format_table(result)}\n\n{format_table(result, True)}\n")
    films = result["per_film"]
    with (out / "deltas.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "predicted_months"] + films["changes"])
        for i, b, d in zip(films["ids"], films["base"], films["deltas"]):
            w.writerow([i, b] + d)
