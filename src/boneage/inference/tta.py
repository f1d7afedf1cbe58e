"""Test-time augmentation: the same film seen in several ways, the answers averaged, their spread reported.

A view is a framing of the whole film (before the hand crop) seen as is or as a mirror image. Training draws
horizontal and vertical flips, so every mirror here is one the network has learnt; averaging the left-right pair also
makes a mirrored film (a right hand) get exactly the answer of the original. `framings` adds the film rotated by ±7°
and with a 10 % wider margin, the changes that move a single view's answer most (`boneage precision`): averaging over
them steadies the answer under a tilted hand or another framing, at four times the inference. The spread (standard
deviation over views, in months) is part of each answer's uncertainty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from boneage.bias import BiasCorrection, correct_views
from boneage.config import Preprocess
from boneage.data.framing import canvas, rotate
from boneage.data.preprocess import preprocess_gray, to_model_input
from boneage.errors import UserError

# The framings of the whole film, made before the crop. ±7° and +10 %: within what training draws, and the mirror
# of "rotated +7°" is "rotated -7°" of the mirrored film, so the left-right symmetry of the answer holds.
FRAMINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "as is": lambda g: g,
    "rotated +7°": lambda g: rotate(g, 7.0),
    "rotated -7°": lambda g: rotate(g, -7.0),
    "margin +10%": lambda g: canvas(g, 0.1),
}

NO_FLIP, LEFT_RIGHT = ((False, False),), ((False, False), (True, False))


@dataclass(frozen=True)
class Views:
    framings: tuple[str, ...]  # keys of FRAMINGS
    flips: tuple[tuple[bool, bool], ...]  # (horizontal, vertical) of each mirror image


VIEWS: dict[str, Views] = {
    "none": Views(("as is",), NO_FLIP),
    "flip": Views(("as is",), LEFT_RIGHT),
    "flips": Views(("as is",), ((False, False), (True, False), (False, True), (True, True))),
    "framings": Views(tuple(FRAMINGS), LEFT_RIGHT),
}
DEFAULT = "flip"


def check(tta: str) -> str:
    if tta not in VIEWS:
        raise UserError(f"test-time augmentation must be one of {', '.join(VIEWS)}, not {tta!r}")
    return tta


def count(tta: str) -> int:
    """Views per film: each framing with each mirror image."""
    return len(VIEWS[tta].framings) * len(VIEWS[tta].flips)


def model_input(gray: np.ndarray, pp: Preprocess, tta: str) -> np.ndarray:
    """A float gray film of any size -> uint8 (S, S), or (F, S, S) when the views frame the film F ways."""
    framings = VIEWS[tta].framings
    if len(framings) == 1:
        return preprocess_gray(FRAMINGS[framings[0]](gray), pp)
    return np.stack([preprocess_gray(FRAMINGS[f](gray), pp) for f in framings])


def as_is(pixels: np.ndarray) -> np.ndarray:
    """The unframed (S, S) input among a film's prepared inputs: what a saliency map is drawn on."""
    return pixels if pixels.ndim == 2 else pixels[0]


def views(x: torch.Tensor, tta: str) -> torch.Tensor:
    """(B, 1, S, S) -> (V * B, 1, S, S), mirror-major."""
    out = []
    for h, v in VIEWS[tta].flips:
        dims = [d for d, on in ((3, h), (2, v)) if on]
        out.append(x.flip(dims) if dims else x)
    return torch.cat(out) if len(out) > 1 else x


def predict_views(run: Callable[[torch.Tensor, np.ndarray], np.ndarray], images, male, pp: Preprocess,
                  tta: str, correction: BiasCorrection | None = None) -> np.ndarray:
    """uint8 (B, S, S) or (B, F, S, S) prepared images (`model_input`) -> (V, B) months, one row per view. `run(model
    input, male)` is the network; `correction`, the model's own bias correction (every view moved by the correction
    of their mean)."""
    x = torch.as_tensor(np.asarray(images))
    x = x.unsqueeze(1) if x.ndim == 3 else x
    framings = len(VIEWS[tta].framings)
    if x.shape[1] != framings:
        raise ValueError(f"views {tta!r} take {framings} framing(s) of each film, not {x.shape[1]}: prepare the "
                         "films with the predictor's model_input")
    sex = np.asarray(male, dtype=np.float32).reshape(-1)
    x = x.transpose(0, 1).reshape(-1, 1, *x.shape[2:])  # framing-major: (F * B, 1, S, S)
    n_views = count(tta)
    out = np.asarray(run(to_model_input(views(x, tta), pp), np.tile(sex, n_views)), dtype=np.float64)
    return correct_views(out.reshape(n_views, len(sex)), sex > 0.5, correction)
