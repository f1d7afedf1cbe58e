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
from boneage.inference.checkpoint import EnsembleFile, default_model_path
from boneage.inference.predictor import Predictor, load_torch

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


def onnx_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
