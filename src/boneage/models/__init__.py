"""Models: `create_model(ModelConfig, in_chans)` over a registry of trunks, all sharing the poster's sex-aware head."""

from boneage.config import ModelConfig
from boneage.models import trunks as _trunks  # noqa: F401  (fills the registry)
from boneage.models.net import BoneAgeNet, SexHead
from boneage.models.registry import TrunkSpec, get_trunk, list_trunks, register_trunk, trunk_spec


def create_model(cfg: ModelConfig | None = None, in_chans: int = 3, **overrides) -> BoneAgeNet:
    """`create_model(ModelConfig(arch="resnet101"))` or `create_model(arch="resnet101")`; None options are dropped."""
    cfg = cfg or ModelConfig()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        from dataclasses import replace

        cfg = replace(cfg, **overrides)
    get_trunk(cfg.arch)  # an unknown name fails here, listing the known ones
    return BoneAgeNet(cfg, in_chans)


__all__ = ["BoneAgeNet", "SexHead", "TrunkSpec", "create_model", "get_trunk", "list_trunks", "register_trunk",
           "trunk_spec"]
