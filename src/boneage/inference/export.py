"""`boneage export`: a checkpoint (or several, as one ensemble) -> a compact weights file (`boneage.inference.weights`).
Above both the loader and the file format, so neither imports the other."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from boneage.bias import BiasCorrection
from boneage.config import to_dict
from boneage.errors import UserError
from boneage.inference.checkpoint import load_network
from boneage.inference.weights import ENSEMBLE_FORMAT, make_weights_file


def _portable(spec) -> dict:
    """The spec as saved in a weights file: the pools in their reference form. `pool_impl` is a training speed setting
    (the same function), and the reference runs everywhere, ONNX included."""
    data = to_dict(spec)
    data["model"]["pool_impl"] = "native"
    return data


def _save(data: dict, out) -> Path:
    """Written to a temporary name, then renamed: an interrupted export never leaves half a file under the name."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, out)
    return out


def _compact(model, spec, storage: str, card: dict | None, calibration: dict | None) -> tuple[dict, dict]:
    """(the weights file of one network, what to add to the export's report). With `calibration` ({"images", "labels",
    "films"}) and int8 storage, batch-norm statistics are re-fitted to the rounded weights on those films
    (`boneage.inference.calibrate`); what that changed goes into the card and the report."""
    state, result = model.state_dict(), {}
    if calibration and storage == "int8":
        from boneage.inference.calibrate import calibration_batch, quantize_calibrated

        x, male = calibration_batch(calibration["images"], calibration["labels"], spec.preprocess,
                                    calibration.get("films", 128))
        state, report = quantize_calibrated(model, x, male, storage)
        report["labels"] = str(calibration["labels"])
        card = dict(card or {}, int8_calibration=report)
        result["int8_calibration"] = report
    return make_weights_file(state, _portable(spec), storage, card), result


def export_weights(model_path, out, storage: str = "int8", card: dict | None = None,
                   calibration: dict | None = None, bias_correction: BiasCorrection | None = None) -> dict:
    """A training checkpoint (or weights file) -> a compact weights file. Returns {"path", "bytes", "storage"}.
    `bias_correction` replaces the model's own (`boneage debias` fits one)."""
    model, spec, old_card = load_network(model_path)
    if bias_correction is not None:
        spec = replace(spec, bias_correction=bias_correction)
    data, result = _compact(model, spec, storage, card if card is not None else old_card, calibration)
    out = _save(data, out)
    return {"path": str(out), "bytes": out.stat().st_size, "storage": storage, **result}


def export_ensemble(model_paths, out, storage: str = "int8", card: dict | None = None) -> dict:
    """Several checkpoints or weights files -> one file that `predict`, `evaluate` and `serve` load as an ensemble."""
    members = []
    for path in model_paths:
        model, spec, member_card = load_network(path)
        members.append(make_weights_file(model.state_dict(), _portable(spec), storage, member_card))
    data = {"format": ENSEMBLE_FORMAT, "members": members, "card": card or {}}
    out = _save(data, out)
    return {"path": str(out), "bytes": out.stat().st_size, "storage": storage, "members": len(members)}


def export_average(model_paths, out, storage: str = "int8", card: dict | None = None,
                   calibration: dict | None = None) -> dict:
    """Several runs of one network -> one network with their weights averaged (a "model soup").

    Runs that started from the same weights (two warm restarts of one model) stay in one basin of the loss, so their
    average is usually as good as the better run, and sometimes as good as both as an ensemble, at the size and speed
    of one network. Runs from scratch do not average: measure the result (`boneage evaluate`) before shipping it.
    Batch-norm running statistics are averaged too, which is close to, not the same as, re-estimating them."""
    models = [load_network(path) for path in model_paths]
    _, first_spec, first_card = models[0]
    for path, (_, spec, _) in zip(model_paths[1:], models[1:]):
        if _portable(spec)["model"] != _portable(first_spec)["model"] or spec.preprocess != first_spec.preprocess:
            raise UserError(f"{path}: a different network or preprocessing than {model_paths[0]}; "
                            "only runs of one network average")
    states = [model.state_dict() for model, _, _ in models]
    average = {}
    for name, t in states[0].items():
        if t.is_floating_point():
            average[name] = torch.stack([s[name].float() for s in states]).mean(0).to(t.dtype)
        else:  # counters (batch norm's num_batches_tracked): not an average of anything
            average[name] = max((s[name] for s in states), key=lambda v: int(v.max()) if v.numel() else 0)
    card = card if card is not None else dict(first_card or {}, averaged_from=[str(p) for p in model_paths])
    soup = models[0][0]
    soup.load_state_dict(average)
    data, result = _compact(soup, first_spec, storage, card, calibration)
    out = _save(data, out)
    return {"path": str(out), "bytes": out.stat().st_size, "storage": storage, "averaged": len(models), **result}


def export(models: list | None, out: str, storage: str = "int8", average: bool = False, card: dict | None = None,
           calibration: dict | None = None) -> dict:
    """`boneage export`: which file the models become. FILE.onnx: one network for ONNX Runtime; FILE.pt: one
    network's compact weights, several runs of one network averaged (`average`), or several models as an ensemble.
    `calibration` ({"images", "labels", "films"}) is for one int8 network."""
    from boneage.inference.checkpoint import default_model_path

    models = models or [default_model_path()]
    if calibration:
        if not (calibration.get("images") and calibration.get("labels")):
            raise UserError("--calibrate-images and --calibrate-labels go together")
        if storage != "int8" or str(out).endswith(".onnx") or (len(models) > 1 and not average):
            raise UserError("calibration is for one int8 network (.pt, one model or --average)")
        if calibration.get("films", 128) < 1:
            raise UserError("--calibrate-films must be at least 1")
    if str(out).endswith(".onnx"):
        if len(models) > 1:
            raise UserError("--out FILE.onnx takes one model: export each member, or an ensemble as .pt")
        from boneage.inference.onnx import export_onnx

        return export_onnx(models[0], out)
    if len(models) > 1:
        return export_average(models, out, storage, card, calibration) if average \
            else export_ensemble(models, out, storage, card)
    return export_weights(models[0], out, storage, card, calibration)
