"""The service's door to the one assessment (`boneage.assessment`): an upload in, its record out, with the page's
extras (a Grad-CAM overlay and a preview at display size). Free of HTTP."""

from __future__ import annotations

import base64
import io
import threading
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from boneage.assessment import Case, predict_prepared, prepare, report


@dataclass
class Inputs:
    """What a caller may say about the radiograph. Sex and age fall back to the DICOM header."""

    sex: str | None = None  # M/F (the rules of `boneage.assessment.resolve_sex`)
    chronological_age_months: float | None = None
    birth_date: str | None = None  # ISO dates, used when no age in months is given
    study_date: str | None = None
    heatmap: bool = False
    preview: bool = False
    chart: bool = False  # the film on the Greulich & Pyle chart (when the chronological age is known)


def _png_b64(rgb_or_gray: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb_or_gray).save(buf, "PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _preview(gray: np.ndarray, longest: int = 768) -> np.ndarray:
    """The radiograph as a person would view it, at its own aspect ratio, at most `longest` pixels a side."""
    from boneage.explain.figures import display_gray

    # Box-reduced to about the preview's size first: the display window (percentiles) and its arithmetic on a
    # 9,000 x 9,000 film made ~1.2 GB of full-size float copies for a picture of 768 pixels.
    k = max(gray.shape) // longest
    if k > 1:  # block means over a reshaped view of the film: only the small result is allocated
        h, w = gray.shape[0] // k * k, gray.shape[1] // k * k
        gray = gray[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3), dtype=np.float32)
    img = Image.fromarray(np.round(display_gray(gray) * 255).astype(np.uint8))
    img.thumbnail((longest, longest))
    return np.asarray(img)


class Answerer:
    """Answers uploads with the predictor (and, for heatmaps, its PyTorch network). Thread-safe."""

    def __init__(self, predictor):
        self.predictor = predictor
        # One inference at a time: on a few cores, parallel forward passes only fight over the same threads.
        self._lock = threading.Lock()

    def answer(self, data: bytes, name: str, inputs: Inputs) -> dict:
        """The one assessment's record (`boneage.assessment`), plus what a page shows: heatmap, preview, timing."""
        t0 = time.perf_counter()
        case = Case(data=data, name=name, sex=inputs.sex, age_months=inputs.chronological_age_months,
                    birth_date=inputs.birth_date, study_date=inputs.study_date)
        prepared = prepare(case, self.predictor)  # decoding + quality checks; UserError on refusal
        with self._lock:
            answers = predict_prepared(self.predictor, [prepared])[0]
        record = report(prepared, answers, self.predictor)
        out = record.extras
        small = _preview(prepared.gray) if inputs.heatmap or inputs.preview else None
        if inputs.heatmap:
            from boneage.explain.figures import overlay_rgb
            from boneage.explain.files import saliency_of

            with self._lock:  # the map straight at the preview's size: never a full-resolution copy of a large film
                sal = saliency_of(self.predictor, prepared, shape=small.shape)
            out["heatmap_png"] = _png_b64(overlay_rgb(small.astype(np.float32), sal.map))
        if inputs.preview:
            out["preview_png"] = _png_b64(small)
        if inputs.chart and record.chronological_age_months is not None:
            from boneage.chart import draw_chart

            png = draw_chart([(record.chronological_age_months, record.bone_age_months, name)], record.male)
            out["chart_png"] = "data:image/png;base64," + base64.b64encode(png).decode()
        out["elapsed_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        return record.to_dict()
