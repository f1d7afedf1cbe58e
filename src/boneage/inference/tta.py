"""Test-time augmentation: the same film seen as its mirror images, the answers averaged, their spread reported.

Training draws horizontal and vertical flips, so every view here is one the network has learnt; averaging the left-
right pair also makes a mirrored film (a right hand) get exactly the answer of the original. The spread (standard
deviation over views, in months) is part of each answer's uncertainty.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from boneage.bias import BiasCorrection, correct_views
from boneage.config import Preprocess
from boneage.data.preprocess import to_model_input
from boneage.errors import UserError

# name -> the flips of each view, (horizontal, vertical)
VIEWS: dict[str, tuple[tuple[bool, bool], ...]] = {
    "none": ((False, False),),
    "flip": ((False, False), (True, False)),
    "flips": ((False, False), (True, False), (False, True), (True, True)),
}
DEFAULT = "flip"


def check(tta: str) -> str:
    if tta not in VIEWS:
        raise UserError(f"test-time augmentation must be one of {', '.join(VIEWS)}, not {tta!r}")
    return tta


def views(x: torch.Tensor, tta: str) -> torch.Tensor:
    """(B, 1, S, S) -> (V * B, 1, S, S), view-major."""
    out = []
    for h, v in VIEWS[tta]:
        dims = [d for d, on in ((3, h), (2, v)) if on]
        out.append(x.flip(dims) if dims else x)
    return torch.cat(out) if len(out) > 1 else x


def predict_views(run: Callable[[torch.Tensor, np.ndarray], np.ndarray], images, male, pp: Preprocess,
                  tta: str, correction: BiasCorrection | None = None) -> np.ndarray:
    """uint8 (B, S, S) prepared images -> (V, B) months, one row per view. `run(model input, male)` is the network;
    `correction`, the model's own bias correction (every view moved by the correction of their mean)."""
    x = torch.as_tensor(np.asarray(images)).unsqueeze(1)
    sex = np.asarray(male, dtype=np.float32).reshape(-1)
    n_views = len(VIEWS[tta])
    out = np.asarray(run(to_model_input(views(x, tta), pp), np.tile(sex, n_views)), dtype=np.float64)
    return correct_views(out.reshape(n_views, len(sex)), sex > 0.5, correction)
