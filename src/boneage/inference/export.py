"""`boneage export`: a checkpoint (or several, as one ensemble) -> a compact weights file (`boneage.inference.weights`).
Above both the loader and the file format, so neither imports the other."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from boneage.config import to_dict
from boneage.inference.predictor import load_model
from boneage.inference.weights import ENSEMBLE_FORMAT, make_weights_file


def _save(data: dict, out) -> Path:
    """Written to a temporary name, then renamed: an interrupted export never leaves half a file under the name."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, out)
    return out


def export_weights(model_path, out, storage: str = "int8", card: dict | None = None) -> dict:
    """A training checkpoint (or weights file) -> a compact weights file. Returns {"path", "bytes", "storage"}."""
    model, spec, old_card = load_model(model_path)
    data = make_weights_file(model.state_dict(), to_dict(spec), storage, card if card is not None else old_card)
    out = _save(data, out)
    return {"path": str(out), "bytes": out.stat().st_size, "storage": storage}


def export_ensemble(model_paths, out, storage: str = "int8", card: dict | None = None) -> dict:
    """Several checkpoints or weights files -> one file that `predict`, `evaluate` and `serve` load as an ensemble."""
    members = []
    for path in model_paths:
        model, spec, member_card = load_model(path)
        members.append(make_weights_file(model.state_dict(), to_dict(spec), storage, member_card))
    data = {"format": ENSEMBLE_FORMAT, "members": members, "card": card or {}}
    out = _save(data, out)
    return {"path": str(out), "bytes": out.stat().st_size, "storage": storage, "members": len(members)}
