"""Model files: a training checkpoint (`boneage train`), a weights file (`boneage export`, the shipped model) or an
ensemble file, read as plain data with weights_only=True, into a network and its spec. Imports neither Lightning nor
the training code.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from boneage.config import ModelSpec
from boneage.errors import UserError
from boneage.inference.weights import ENSEMBLE_FORMAT, FORMAT, unpack_state_dict
from boneage.models import BoneAgeNet, create_model

SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "boneage-reference.pt"


def default_model_path() -> Path:
    """BONEAGE_MODEL if set, else the reference model shipped inside the package."""
    return Path(os.environ.get("BONEAGE_MODEL", SHIPPED))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_model_file(path: Path) -> dict:
    """The file's contents as plain data; one line for a file that is missing or not a checkpoint."""
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


def is_ensemble(data) -> bool:
    return isinstance(data, dict) and data.get("format") == ENSEMBLE_FORMAT


def load_network(path: str | Path | None = None) -> tuple[BoneAgeNet, ModelSpec, dict]:
    """-> (network in eval mode on the CPU, its spec (network and preprocessing), its model card or {})."""
    path = Path(path) if path else default_model_path()
    data = read_model_file(path)
    if is_ensemble(data):
        raise EnsembleFile(f"{path}: an ensemble of {len(data.get('members', []))} models; this needs one model "
                           "(`boneage predict/evaluate/serve` take ensembles)")
    return network_from_checkpoint(data, path)


def network_from_checkpoint(data, path: Path) -> tuple[BoneAgeNet, ModelSpec, dict]:
    """A loaded checkpoint or weights dict -> (network in eval mode, spec, card)."""
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a boneage checkpoint (no dict inside)")
    if data.get("format") == FORMAT:  # a shipped / exported weights file
        config, state = data["config"], unpack_state_dict(data["state_dict"], data.get("scales", {}))
        card = data.get("card", {})
    elif "boneage" in data and "state_dict" in data:  # a Lightning checkpoint written by `boneage train`
        config, card = data["boneage"]["config"], {}
        state = {k.removeprefix("model."): v for k, v in data["state_dict"].items() if k.startswith("model.")}
    else:
        raise UserError(f"{path}: not a boneage checkpoint (no boneage config inside)")
    spec = ModelSpec.from_config(config, f"{path}")
    model = create_model(spec.model, in_chans=spec.preprocess.channels)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not fit {spec.model.arch} ({str(exc).splitlines()[0]})") from None
    return model.eval(), spec, card
