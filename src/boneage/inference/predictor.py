"""Load a model from a training checkpoint or a shipped weights file, and predict bone age in months.

Imports neither Lightning nor the training code: a checkpoint is read as plain data with weights_only=True.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import boneage.inference.tta as tta_views
from boneage.config import ModelSpec, Preprocess
from boneage.data.images import load_image
from boneage.data.preprocess import preprocess_gray
from boneage.errors import UserError
from boneage.inference.weights import ENSEMBLE_FORMAT, FORMAT, unpack_state_dict
from boneage.models import BoneAgeNet, create_model

SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "boneage-reference.pt"


def default_model_path() -> Path:
    """BONEAGE_MODEL if set, else the reference model shipped inside the package."""
    return Path(os.environ.get("BONEAGE_MODEL", SHIPPED))


def _read(path: Path) -> dict:
    if not path.is_file():
        if path == SHIPPED:
            raise UserError(f"{path}: no shipped model in this installation; pass --model CKPT")
        raise UserError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a boneage checkpoint ({first[:160]})") from None


class EnsembleFile(UserError):
    """A file that packs several models where one is needed (`load_predictor` then takes it as an ensemble)."""


def load_model(path: str | Path | None = None) -> tuple[BoneAgeNet, ModelSpec, dict]:
    """-> (network in eval mode on the CPU, its spec (network and preprocessing), its model card or {})."""
    path = Path(path) if path else default_model_path()
    ckpt = _read(path)
    if isinstance(ckpt, dict) and ckpt.get("format") == ENSEMBLE_FORMAT:
        raise EnsembleFile(f"{path}: an ensemble of {len(ckpt.get('members', []))} models; this needs one model "
                        "(`boneage predict/evaluate/serve` take ensembles)")
    return model_from_checkpoint(ckpt, path)


def model_from_checkpoint(ckpt, path: Path) -> tuple[BoneAgeNet, ModelSpec, dict]:
    """A loaded checkpoint or weights dict -> (network in eval mode, spec, card)."""
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: not a boneage checkpoint (no dict inside)")
    if ckpt.get("format") == FORMAT:  # a shipped / exported weights file
        config, state = ckpt["config"], unpack_state_dict(ckpt["state_dict"], ckpt.get("scales", {}))
        card = ckpt.get("card", {})
    elif "boneage" in ckpt and "state_dict" in ckpt:  # a Lightning checkpoint written by `boneage train`
        config, card = ckpt["boneage"]["config"], {}
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    else:
        raise UserError(f"{path}: not a boneage checkpoint (no boneage config inside)")
    spec = ModelSpec.from_config(config, f"{path}")
    model = create_model(spec.model, in_chans=spec.preprocess.channels)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not fit {spec.model.arch} ({str(exc).splitlines()[0]})") from None
    return model.eval(), spec, card


def load_torch(path: str | Path | None = None, device: str = "cpu", tta: str = tta_views.DEFAULT):
    """A `Predictor`, or an `Ensemble` of them when the file packs several models (`boneage export` of several)."""
    path = Path(path) if path else default_model_path()
    ckpt = _read(path)
    if isinstance(ckpt, dict) and ckpt.get("format") == ENSEMBLE_FORMAT:
        from boneage.inference.ensemble import Ensemble

        members = [Predictor(*model_from_checkpoint(m, path), device=device, tta=tta) for m in ckpt["members"]]
        ensemble = Ensemble(members, [f"{path} member {i + 1}" for i in range(len(members))])
        ensemble.card.update(ckpt.get("card") or {})
        return ensemble
    return Predictor(*model_from_checkpoint(ckpt, path), device=device, tta=tta)


@dataclass
class Prediction:
    image: str
    male: bool
    bone_age_months: float

    @property
    def sex(self) -> str:
        return "M" if self.male else "F"


class Predictor:
    """`Predictor.load(path).predict_files([...], [True, ...])`; inputs are preprocessed exactly as in training."""

    runtime = "torch"
    members = 1

    def __init__(self, model: BoneAgeNet, spec: ModelSpec, card: dict | None = None, device: str = "cpu",
                 tta: str = tta_views.DEFAULT):
        self.model = model.to(device).eval()
        self.spec, self.card, self.device = spec, card or {}, torch.device(device)
        self.tta = tta_views.check(tta)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu", tta: str = tta_views.DEFAULT) -> Predictor:
        return cls(*load_model(path), device=device, tta=tta)

    @property
    def preprocess(self) -> Preprocess:
        return self.spec.preprocess

    def prepare(self, gray: np.ndarray) -> np.ndarray:
        """Float gray image of any size -> uint8 (S, S) model input."""
        return preprocess_gray(gray, self.preprocess)

    @torch.inference_mode()
    def run(self, x: torch.Tensor, male: np.ndarray) -> np.ndarray:
        """The network alone: standardised float (B, C, S, S) and (B,) male flags -> (B,) months."""
        sex = torch.as_tensor(male, device=self.device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        with autocast:
            return self.model(x.to(self.device), sex).float().cpu().numpy()

    def predict_views(self, images: np.ndarray | torch.Tensor, male) -> np.ndarray:
        """uint8 (B, S, S) prepared images and (B,) male flags -> (V, B) months, one row per test-time view."""
        return tta_views.predict_views(self.run, images, male, self.preprocess, self.tta, self.spec.bias_correction)

    def predict_batch(self, images: np.ndarray | torch.Tensor, male) -> np.ndarray:
        """uint8 (B, S, S) prepared images and (B,) male flags -> (B,) bone age in months (the mean over views)."""
        return self.predict_views(images, male).mean(axis=0)

    def predict_files(self, paths: list[str | Path], male: list[bool], batch_size: int = 16) -> list[Prediction]:
        out: list[Prediction] = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            images = np.stack([self.prepare(load_image(p)) for p in chunk])
            ages = self.predict_batch(images, male[start : start + batch_size])
            out += [Prediction(str(p), m, float(a)) for p, m, a in zip(chunk, male[start:], ages)]
        return out
