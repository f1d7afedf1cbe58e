"""The figure files of `boneage explain` (`explain_file`) and the overlay of `predict --heatmap` (`heatmap_for`).

Both explain an assessment already made (`boneage.assessment.assess`): their captions give its bone age (the mean
over test-time views and ensemble members) and say which part of it the map shows: the film as given, not its
mirror images, through the runtime's PyTorch network (an ensemble's first member).
"""

from __future__ import annotations

from pathlib import Path

from boneage.data.preprocess import region_fractions
from boneage.errors import UserError
from boneage.explain.activations import activations
from boneage.explain.figures import activation_figure, saliency_figure, save_overlay
from boneage.explain.saliency import LABELS, METHODS, Saliency, saliency
from boneage.inference.tta import as_is


def _check_method(method: str) -> None:
    if method not in METHODS:  # before any work: a typo should not cost a forward pass
        raise UserError(f"--method: unknown saliency method {method!r}; choose from {', '.join(METHODS)}")


def caption(record) -> str:
    """The assessment's answer, as every door prints it."""
    return (f"bone age {record.bone_age_months:.1f} ± {record.uncertainty_months:.1f} months ({record.bone_age}), "
            f"sex {record.sex}")


def _subtitle(predictor, record, sal: Saliency) -> str:
    member = f", member 1 of {predictor.members}" if predictor.members > 1 else ""
    return (f"{Path(record.image).name}, {record.width} x {record.height} px. {LABELS[sal.method]} on "
            f"{predictor.spec.model.arch} {sal.layer}: the film as given{member} (its own answer "
            f"{sal.bone_age_months:.1f} months); warm = features that raise the age concentrate here")


def saliency_of(predictor, prepared, method: str = "gradcam", layer: str | None = None, shape=None) -> Saliency:
    """The map of one prepared film on the runtime's PyTorch network, at `shape` (default: the film's own)."""
    net = predictor.explainer()
    return saliency(net.model, as_is(prepared.pixels), prepared.male, net.preprocess, shape or prepared.gray.shape,
                    method, layer, region=region_fractions(prepared.gray, net.preprocess))


def heatmap_for(predictor, record, prepared, path: str | Path, method: str = "gradcam",
                layer: str | None = None) -> Path:
    """The titled saliency figure (radiograph | overlay + colour bar) of one assessed film, written to `path`."""
    _check_method(method)
    sal = saliency_of(predictor, prepared, method, layer)
    return saliency_figure(prepared.gray, sal.map, Path(path), caption(record), _subtitle(predictor, record, sal))


def explain_file(predictor, record, prepared, out: str | Path, layers: list[str] | None = None,
                 method: str = "gradcam", saliency_layer: str | None = None) -> dict:
    """Writes OUT/<stem>_activations.png, <stem>_saliency.png (titled figure) and <stem>_overlay.png (bare overlay at
    the original resolution) for one assessed film; returns the record's JSON with the layers and the paths."""
    _check_method(method)
    out, stem = Path(out), Path(record.image).stem
    net = predictor.explainer()
    pp = net.preprocess
    pixels = as_is(prepared.pixels)  # the film as given: with framing views, the first of its framings
    acts, _ = activations(net.model, pixels, prepared.male, pp, layers)  # first: a bad --layers fails fast
    sal = saliency_of(predictor, prepared, method, saliency_layer)
    h, w = prepared.gray.shape
    title = caption(record)
    files = {
        "activations": activation_figure(pixels, acts, out / f"{stem}_activations.png",
                                         f"{Path(record.image).name}: activations, early to late "
                                         f"({predictor.spec.model.arch}) - {title}",
                                         pixel_aspect=h / w if pp.resize == "stretch" else 1.0),
        "saliency": saliency_figure(prepared.gray, sal.map, out / f"{stem}_saliency.png", title,
                                    _subtitle(predictor, record, sal)),
        "overlay": save_overlay(prepared.gray, sal.map, out / f"{stem}_overlay.png"),
    }
    return record.to_dict() | {"method": sal.method, "saliency_layer": sal.layer,
                               "layers": [name for name, _ in acts], "files": {k: str(v) for k, v in files.items()}}
