"""One radiograph in, one clinical report out: the logic the service and `predict` share, free of HTTP."""

from __future__ import annotations

import base64
import io
import threading
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from boneage.errors import UserError
from boneage.quality import read_checked
from boneage.sds import age_from_dates, bone_age_sds, format_years_months


@dataclass
class Inputs:
    """What a caller may say about the radiograph. Sex and age fall back to the DICOM header."""

    sex: str | None = None  # "M" / "F"
    chronological_age_months: float | None = None
    birth_date: str | None = None  # ISO dates, used when no age in months is given
    study_date: str | None = None
    heatmap: bool = False
    preview: bool = False


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


def _sex(inputs: Inputs, header_male: bool | None, name: str) -> tuple[bool, str]:
    if inputs.sex:
        s = inputs.sex.strip().upper()
        if s not in ("M", "F"):
            raise UserError(f"sex: expected M or F, got {inputs.sex!r}")
        return s == "M", "given"
    if header_male is not None:
        return header_male, "dicom"
    raise UserError(f"{name}: sex is required (M or F); it is not in the request nor in a DICOM header")


def _age(inputs: Inputs, header_age: float | None) -> tuple[float | None, str | None]:
    if inputs.chronological_age_months is not None:
        return float(inputs.chronological_age_months), "given"
    if inputs.birth_date and inputs.study_date:
        return age_from_dates(inputs.birth_date, inputs.study_date), "dates"
    if inputs.birth_date or inputs.study_date:
        raise UserError("chronological age: give both birth_date and study_date, or chronological_age_months")
    if header_age is not None:
        return header_age, "dicom"
    return None, None


class Reporter:
    """Holds the predictor (and, for heatmaps, a PyTorch model); makes reports. Thread-safe."""

    def __init__(self, predictor, heatmap_predictor_factory=None):
        self.predictor = predictor
        self._heatmap_factory = heatmap_predictor_factory
        self._heatmap_predictor = None
        # One inference at a time: on a few cores, parallel forward passes only fight over the same threads.
        self._lock = threading.Lock()

    def _torch_predictor(self):
        if hasattr(self.predictor, "model"):
            return self.predictor
        if self._heatmap_predictor is None:
            self._heatmap_predictor = self._heatmap_factory()
        return self._heatmap_predictor

    def report(self, data: bytes, name: str, inputs: Inputs) -> dict:
        t0 = time.perf_counter()
        checked = read_checked(data, name)  # decoding + quality checks; UserError on refusal
        header = checked.dicom
        male, sex_source = _sex(inputs, header.male if header else None, name)
        age, age_source = _age(inputs, header.age_months if header else None)
        prepared = self.predictor.prepare(checked.gray)
        with self._lock:
            bone_age = float(self.predictor.predict_batch(prepared[None], [male])[0])
        h, w = checked.gray.shape
        out: dict = {
            "image": name, "width": w, "height": h,
            "sex": "M" if male else "F", "sex_source": sex_source,
            "bone_age_months": round(bone_age, 2),
            "bone_age_years_months": format_years_months(bone_age),
            "warnings": checked.warnings,
            "model": {"arch": self.predictor.cfg.model.arch,
                      "validation_mad_months": self.predictor.card.get("validation_mad_months")
                      if hasattr(self.predictor, "card") else None,
                      "runtime": "onnx" if not hasattr(self.predictor, "model") else "torch"},
        }
        if header is not None:
            out["dicom"] = header.header()
        if age is not None:
            out["chronological_age_months"] = round(age, 2)
            out["chronological_age_source"] = age_source
            out["sds"] = bone_age_sds(bone_age, age, male).to_dict()
        small = _preview(checked.gray) if inputs.heatmap or inputs.preview else None
        if inputs.heatmap:
            from boneage.explain.figures import overlay_rgb
            from boneage.explain.saliency import saliency

            torch_predictor = self._torch_predictor()
            with self._lock:  # the map straight at the preview's size: never a full-resolution copy of a large film
                sal = saliency(torch_predictor.model, prepared, male, torch_predictor.preprocess, small.shape)
            out["heatmap_png"] = _png_b64(overlay_rgb(small.astype(np.float32), sal.map))
        if inputs.preview:
            out["preview_png"] = _png_b64(small)
        out["elapsed_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        return out
