"""Trunk registry: a new architecture is one decorated function that returns (module, feature width)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from boneage.errors import UserError

TrunkFactory = Callable[[int], tuple[nn.Module, int]]  # in_chans -> (trunk: (B,C,H,W) -> (B,F), F)
_TRUNKS: dict[str, TrunkFactory] = {}
MIN_SIZE: dict[str, int] = {}  # smallest input side each trunk accepts


def register_trunk(name: str, min_size: int = 32):
    def add(fn: TrunkFactory) -> TrunkFactory:
        _TRUNKS[name] = fn
        MIN_SIZE[name] = min_size
        return fn

    return add


def list_trunks() -> list[str]:
    return sorted(_TRUNKS)


def get_trunk(name: str) -> TrunkFactory:
    if name not in _TRUNKS:
        raise UserError(f"unknown architecture {name!r}; known: {', '.join(list_trunks())}")
    return _TRUNKS[name]
