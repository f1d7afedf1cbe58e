"""The Python API: what the `boneage` command does for one film, in two lines.

    import boneage
    result = boneage.assess("hand.png", sex="F", age_months=130)   # -> boneage.Assessment
    result.bone_age_months, result.sds.sds, result.uncertain, result.to_dict()

For many films, load the model once: `model = boneage.load_model()`, then `boneage.assess(film, sex="M", model=model)`.
A film is a path, the file's bytes, or a 2-D array (gray, bone bright). Refusals (not a hand, inverted, unreadable,
sex unknown...) raise `boneage.UserError` with one line naming the film and the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from boneage.assessment import Case
from boneage.assessment import assess as _assess
from boneage.record import Assessment

Film = str | Path | bytes | np.ndarray


def load_model(model: str | Path | list | None = None, runtime: str = "auto", views: str = "flip",
               device: str = "cpu"):
    """A model ready to assess films: the shipped one by default, a .pt/.ckpt/.onnx file, or a list of them (an
    ensemble). runtime: "auto" (ONNX Runtime on the CPU when installed), "torch" or "onnx"; views: none | flip |
    flips (test-time mirror images, averaged) | framings (the film as is, rotated ±7° and with a wider margin, each
    with its mirror: steadier under rotation and framing, four times the work of flip)."""
    from boneage.inference.loading import load_predictor

    return load_predictor(model, runtime, tta=views, device=device)


def assess(film: Film, sex: str | bool | None = None, age_months: float | None = None, birth_date: str | None = None,
           study_date: str | None = None, model=None, check: bool = True, name: str | None = None) -> Assessment:
    """The bone age of one film, with its uncertainty and, given the chronological age (or the birth and study
    dates; or a DICOM header that has them), its SDS against Greulich & Pyle. `model`: from `load_model` (default:
    the shipped model, loaded once per call: pass one for many films). `check=False` skips the quality checks, for
    generated or unusual images."""
    case = Case(data=film, name=name, sex=sex, age_months=age_months, birth_date=birth_date, study_date=study_date,
                check=check)
    record, _ = _assess(case, model if model is not None else load_model())
    return record


def heatmap(film: Film, out: str | Path, sex: str | bool | None = None, model=None, method: str = "gradcam",
            check: bool = True) -> Path:
    """The saliency figure of `boneage predict --heatmap` for one film, written to `out` (PNG); captioned with the
    assessment's bone age."""
    from boneage.explain.files import heatmap_for

    model = model if model is not None else load_model(runtime="torch")
    record, prepared = _assess(Case(data=film, sex=sex, check=check), model)
    return heatmap_for(model, record, prepared, Path(out), method)


def chart(results: list[Assessment], out: str | Path) -> Path:
    """The Greulich & Pyle chart with these films of one child (each needs its chronological age), as a PNG."""
    from boneage.chart import chart_of

    return chart_of(results, out)
