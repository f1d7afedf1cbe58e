"""The poster's network: trunk features ++ sex through FC 16 + ReLU, then FC 1000, FC 500 (ReLU) and a linear output."""

from __future__ import annotations

import torch
from torch import nn

from boneage.config import ModelConfig
from boneage.errors import UserError
from boneage.models.pooling import set_pool_impl
from boneage.models.registry import trunk_spec


class SexHead(nn.Module):
    """One head for every trunk: (features (B, F), male (B,)) -> bone age in months (B,)."""

    def __init__(self, feature_width: int, cfg: ModelConfig):
        super().__init__()
        self.sex = nn.Sequential(nn.Linear(1, cfg.sex_units), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        width = feature_width + cfg.sex_units
        for units in cfg.hidden:
            layers += [nn.Linear(width, units), nn.ReLU(inplace=True)]
            width = units
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        # months = mean + std * z: buffers, saved with the weights, so a checkpoint carries its own label scale
        self.register_buffer("age_mean", torch.tensor(float(cfg.age_mean)))
        self.register_buffer("age_std", torch.tensor(float(cfg.age_std)))

    def forward(self, features: torch.Tensor, male: torch.Tensor) -> torch.Tensor:
        # In float32 even under bf16 autocast: bf16 keeps ~3 significant digits, i.e. ~0.5 month steps at z ~ 2.
        with torch.autocast(features.device.type, enabled=False):
            features = features.float()
            sex = self.sex(male.float().view(-1, 1))
            z = self.mlp(torch.cat([features, sex], dim=1)).squeeze(1)
        return self.age_mean + self.age_std * z


class BoneAgeNet(nn.Module):
    def __init__(self, cfg: ModelConfig, in_chans: int = 3):
        super().__init__()
        self.cfg = cfg
        spec = trunk_spec(cfg.arch)
        if cfg.pool_impl != "native" and not spec.pool_impl:
            raise UserError(f"model: pool_impl {cfg.pool_impl!r} is for inception_v3; {cfg.arch} has no such pools")
        self.trunk, width = spec.build(in_chans)
        set_pool_impl(self.trunk, cfg.pool_impl)
        self.head = SexHead(width, cfg)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, F) pooled trunk features."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor, male: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), (B,) with male 1 / female 0 -> (B,) bone age in months."""
        return self.head(self.forward_features(x), male)
