"""What every runtime offers the doors (`Predictor`), and the PyTorch one (`TorchPredictor`).

Runtimes: PyTorch (`TorchPredictor`), ONNX Runtime (`boneage.inference.onnx.OnnxPredictor`) and several models as
one (`boneage.inference.ensemble.Ensemble`). `boneage.inference.loading.load_predictor` picks and loads one. Inputs
are preprocessed exactly as in training, from the model file's own spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

import boneage.inference.tta as tta_views
from boneage.config import ModelSpec, Preprocess
from boneage.inference.checkpoint import (
    default_model_path,
    file_sha256,
    is_ensemble,
    load_network,
    network_from_checkpoint,
    read_model_file,
)
from boneage.models import BoneAgeNet


@runtime_checkable
class Predictor(Protocol):
    """The surface every runtime has. Answers are in months; images are uint8 (B, S, S) model inputs."""

    runtime: str  # "torch" | "onnx"
    members: int  # models pooled (1, or an ensemble's size)
    spec: ModelSpec  # the network and the preprocessing it was trained with (of the first member)
    card: dict  # the model card: validation figures, the "uncertain" threshold, provenance
    tta: str  # test-time views: none | flip | flips | framings
    name: str  # what the model is called (its card's name, else its file's)
    version: str | None  # the first 12 hex digits of the weights file's SHA-256 (members joined by +)

    @property
    def preprocess(self) -> Preprocess: ...

    def model_input(self, gray: np.ndarray) -> np.ndarray:
        """A float gray film of any size -> the uint8 (S, S) model input; (F, S, S) for views that frame the film
        F ways (`framings`)."""

    def predict_views(self, images, male) -> np.ndarray:
        """(B, S, S) or (B, F, S, S) inputs (`model_input`) and (B,) male flags -> (views x members, B) answers,
        bias-corrected."""

    def predict_batch(self, images, male) -> np.ndarray:
        """(B,) answers: the mean over views and members."""

    def explainer(self) -> TorchPredictor:
        """The PyTorch network that saliency maps are drawn from (for an ensemble, its first member's)."""


class TorchPredictor:
    """A network in PyTorch, on the CPU or a GPU (bf16 there)."""

    runtime = "torch"
    members = 1

    def __init__(self, model: BoneAgeNet, spec: ModelSpec, card: dict | None = None, device: str = "cpu",
                 tta: str = tta_views.DEFAULT, name: str = "", version: str | None = None):
        self.model = model.to(device).eval()
        self.spec, self.card, self.device = spec, card or {}, torch.device(device)
        self.tta = tta_views.check(tta)
        self.name, self.version = name or spec.model.arch, version

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu", tta: str = tta_views.DEFAULT
             ) -> TorchPredictor:
        return load_torch(Path(path) if path else default_model_path(), device, tta)

    @property
    def preprocess(self) -> Preprocess:
        return self.spec.preprocess

    def model_input(self, gray: np.ndarray) -> np.ndarray:
        return tta_views.model_input(gray, self.preprocess, self.tta)

    @torch.inference_mode()
    def run(self, x: torch.Tensor, male: np.ndarray) -> np.ndarray:
        """The network alone: standardised float (B, C, S, S) and (B,) male flags -> (B,) months."""
        sex = torch.as_tensor(male, device=self.device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        with autocast:
            return self.model(x.to(self.device), sex).float().cpu().numpy()

    def predict_views(self, images: np.ndarray | torch.Tensor, male) -> np.ndarray:
        return tta_views.predict_views(self.run, images, male, self.preprocess, self.tta, self.spec.bias_correction)

    def predict_batch(self, images: np.ndarray | torch.Tensor, male) -> np.ndarray:
        return self.predict_views(images, male).mean(axis=0)

    def explainer(self) -> TorchPredictor:
        return self


def torch_predictor(path: Path, device: str = "cpu", tta: str = tta_views.DEFAULT) -> TorchPredictor:
    """One network file as a `TorchPredictor` (no identity: `load_predictor` gives it one)."""
    return TorchPredictor(*load_network(path), device=device, tta=tta)


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
