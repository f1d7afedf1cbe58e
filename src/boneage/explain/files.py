"""The figure files of `boneage explain` (`explain_file`) and the overlay of `predict --heatmap` (`heatmap_file`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from boneage.data.images import load_image
from boneage.data.preprocess import region_fractions
from boneage.errors import UserError
from boneage.explain.activations import activations
from boneage.explain.figures import activation_figure, age_text, saliency_figure, save_overlay
from boneage.explain.saliency import LABELS, METHODS, Saliency, saliency


def _subtitle(predictor, image: str | Path, gray, sal: Saliency) -> str:
    h, w = gray.shape
    return (f"{Path(image).name}, {w} x {h} px. {LABELS[sal.method]} on {predictor.spec.model.arch} {sal.layer}, "
            "target: the predicted age (warm = features that raise it concentrate here)")


def _check_method(method: str) -> None:
    if method not in METHODS:  # before any work: a typo should not cost a forward pass
        raise UserError(f"--method: unknown saliency method {method!r}; choose from {', '.join(METHODS)}")


def heatmap_file(predictor, image: str | Path, male: bool, path: str | Path, method: str = "gradcam",
                 layer: str | None = None, gray: np.ndarray | None = None) -> Path:
    """The titled saliency figure (radiograph | overlay + colour bar) for one file, written to `path`.

    gray: the image already decoded (e.g. uploaded bytes in the service); `image` then only names it."""
    _check_method(method)
    gray = load_image(image) if gray is None else gray
    sal = saliency(predictor.model, predictor.prepare(gray), male, predictor.preprocess, gray.shape, method, layer,
                   region=region_fractions(gray, predictor.preprocess))
    return saliency_figure(gray, sal.map, Path(path), age_text(sal.bone_age_months, male),
                           _subtitle(predictor, image, gray, sal))


def explain_file(predictor, image: str | Path, male: bool, out: str | Path, layers: list[str] | None = None,
                 method: str = "gradcam", saliency_layer: str | None = None) -> dict:
    """Writes OUT/<stem>_activations.png, <stem>_saliency.png (titled figure) and <stem>_overlay.png (bare overlay at
    the original resolution); returns the prediction and the paths."""
    _check_method(method)
    out, stem = Path(out), Path(image).stem
    gray = load_image(image)
    prepared = predictor.prepare(gray)
    pp = predictor.preprocess
    acts, _ = activations(predictor.model, prepared, male, pp, layers)  # first: a bad --layers fails fast
    sal = saliency(predictor.model, prepared, male, pp, gray.shape, method, saliency_layer,
                   region=region_fractions(gray, pp))
    h, w = gray.shape
    title = age_text(sal.bone_age_months, male)
    files = {
        "activations": activation_figure(prepared, acts, out / f"{stem}_activations.png",
                                         f"{Path(image).name}: activations, early to late ({predictor.spec.model.arch})"
                                         f" - {title}", pixel_aspect=h / w if pp.resize == "stretch" else 1.0),
        "saliency": saliency_figure(gray, sal.map, out / f"{stem}_saliency.png", title,
                                    _subtitle(predictor, image, gray, sal)),
        "overlay": save_overlay(gray, sal.map, out / f"{stem}_overlay.png"),
    }
    return {"image": str(image), "sex": "M" if male else "F", "bone_age_months": round(sal.bone_age_months, 2),
            "bone_age_years": round(sal.bone_age_months / 12, 2), "method": sal.method, "saliency_layer": sal.layer,
            "layers": [name for name, _ in acts], "width": w, "height": h,
            "files": {k: str(v) for k, v in files.items()}}
