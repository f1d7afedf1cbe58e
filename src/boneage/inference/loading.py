"""`load_predictor`: a model file (or several: an ensemble) on a runtime, with its identity. What every door calls.

    runtime "torch" -> `TorchPredictor`; "onnx" -> `OnnxPredictor` on a .onnx file, or on a .pt/.ckpt exported once
    into a cache keyed by the file's SHA-256; "auto" -> ONNX Runtime on the CPU when it is installed (the model runs
    near this CPU's compute floor there, at about half of PyTorch's time: docs/benchmarks.md), PyTorch otherwise, on
    a GPU, or for a file ONNX cannot take (an ensemble file).
"""

from __future__ import annotations

from pathlib import Path

import torch

import boneage.inference.tta as tta_views
from boneage.errors import UserError
from boneage.inference.checkpoint import (
    EnsembleFile,
    default_model_path,
    file_sha256,
    is_ensemble,
    network_from_checkpoint,
    read_model_file,
)
from boneage.inference.predictor import Predictor, TorchPredictor

RUNTIMES = ("auto", "torch", "onnx")


def load_predictor(model=None, runtime: str = "torch", threads: int | None = None, cache: str | Path | None = None,
                   tta: str = tta_views.DEFAULT, device: str = "cpu", log=None) -> Predictor:
    """A predictor for `model`: a path (None: BONEAGE_MODEL or the shipped model), or a list of paths (an ensemble,
    pooled over members and test-time views)."""
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}; expected {', '.join(RUNTIMES)}")
    if isinstance(model, (list, tuple)):
        if len(model) > 1:
            from boneage.inference.ensemble import Ensemble

            return Ensemble([load_predictor(m, runtime, threads, cache, tta, device, log) for m in model],
                            [str(m) for m in model])
        model = model[0] if model else None
    path = Path(model) if model else default_model_path()
    tta_views.check(tta)
    if runtime in ("auto", "onnx") and (runtime == "onnx" or (device == "cpu" and onnx_available())):
        from boneage.inference.onnx import OnnxPredictor, onnx_for

        try:
            return OnnxPredictor(onnx_for(path, cache, log), threads, tta, source=path)
        except EnsembleFile:  # ONNX takes one network: on "auto", an ensemble file runs on PyTorch
            if runtime == "onnx":
                raise
    if path.suffix.lower() == ".onnx":
        raise UserError(f"{path}: an ONNX file needs --runtime onnx")
    if threads:
        torch.set_num_threads(threads)
    return load_torch(path, device, tta)


def load_torch(path: Path, device: str = "cpu", tta: str = tta_views.DEFAULT) -> Predictor:
    """A `TorchPredictor`, or an `Ensemble` of them when the file packs several models (`boneage export` of
    several)."""
    data = read_model_file(path)
    version = file_sha256(path)[:12]
    if is_ensemble(data):
        from boneage.inference.ensemble import Ensemble

        members = [TorchPredictor(*network_from_checkpoint(m, path), device=device, tta=tta, version=version)
                   for m in data["members"]]
        ensemble = Ensemble(members, [f"{path} member {i + 1}" for i in range(len(members))])
        ensemble.card.update(data.get("card") or {})
        ensemble.name, ensemble.version = model_name(ensemble.card, path), version
        return ensemble
    model, spec, card = network_from_checkpoint(data, path)
    return TorchPredictor(model, spec, card, device, tta, model_name(card, path), version)


def model_name(card: dict, path: Path) -> str:
    """The card's name, else the file's (without its suffix)."""
    return str(card.get("name") or path.stem)


def onnx_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
