"""Trunk registry: a new architecture is one decorated function that returns (module, feature width), and what the rest
of the package needs to know about it is said once, in the decorator (timm's `pretrained_cfg` / `feature_info`).

    @register_trunk("resnet101", layers=("relu", "layer1", "layer2", "layer3", "layer4"), cam_layer="layer4")
    def resnet101(in_chans: int = 3): ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from boneage.errors import UserError

TrunkFactory = Callable[[int], tuple[nn.Module, int]]  # in_chans -> (trunk: (B,C,H,W) -> (B,F), F)


@dataclass(frozen=True)
class TrunkSpec:
    """Facts about one architecture, for training (input size), explanation (layers) and the speed settings."""

    name: str
    build: TrunkFactory
    min_size: int = 32  # smallest input side it accepts, pixels
    # Where the architecture's own modules sit inside the trunk (a wrapper's attribute, "" for the trunk itself):
    # layer names are given relative to it, so they read as in the architecture's papers (`Mixed_6e`, `layer3`).
    root: str = ""
    # The module under `root` whose children are the stages, in forward order ("" for `root` itself;
    # efficientnet's stages sit in `features`).
    stages: str = ""
    layers: tuple[str, ...] = ()  # activation maps: a spread from early to late (empty: evenly spaced stages)
    cam_layer: str | None = None  # saliency's layer: the last convolutional block (None: the last stage)
    pool_impl: bool = False  # takes ModelConfig.pool_impl (boneage.models.pooling)


_TRUNKS: dict[str, TrunkSpec] = {}


def register_trunk(name: str, **facts):
    """Registers the decorated factory under `name` with the `TrunkSpec` facts given."""
    def add(fn: TrunkFactory) -> TrunkFactory:
        _TRUNKS[name] = TrunkSpec(name, fn, **facts)
        return fn

    return add


def list_trunks() -> list[str]:
    return sorted(_TRUNKS)


def trunk_spec(name: str) -> TrunkSpec:
    if name not in _TRUNKS:
        raise UserError(f"unknown architecture {name!r}; known: {', '.join(list_trunks())}")
    return _TRUNKS[name]


def get_trunk(name: str) -> TrunkFactory:
    return trunk_spec(name).build
