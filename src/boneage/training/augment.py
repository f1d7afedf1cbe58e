"""Augmentation of whole batches on the training device: flips, intensity (contrast, brightness, gamma), affine.

Works on float images in [0, 1], shape (B, 1, H, W), before standardisation. One random draw per image, no Python
loop over samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from boneage.config import TrainConfig


def _uniform(n: int, lo: float, hi: float, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(n, 1, 1, 1, device=like.device, dtype=like.dtype).uniform_(lo, hi)


def flips(x: torch.Tensor, h: bool, v: bool) -> torch.Tensor:
    n = x.shape[0]
    if h:
        x = torch.where(torch.rand(n, 1, 1, 1, device=x.device) < 0.5, x.flip(3), x)
    if v:
        x = torch.where(torch.rand(n, 1, 1, 1, device=x.device) < 0.5, x.flip(2), x)
    return x


def intensity(x: torch.Tensor, contrast: float, brightness: float, gamma: float) -> torch.Tensor:
    """Stored differently, the same film: gamma, then contrast about the image mean, then a gray-level shift."""
    n = x.shape[0]
    if gamma > 0:
        g = torch.exp(_uniform(n, -math.log1p(gamma), math.log1p(gamma), x))
        x = x.clamp_min(1e-6) ** g
    if contrast > 0:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * _uniform(n, 1 - contrast, 1 + contrast, x) + mean
    if brightness > 0:
        x = x + _uniform(n, -brightness, brightness, x)
    return x.clamp(0.0, 1.0)


def affine(x: torch.Tensor, rotate_deg: float, scale: float, translate: float) -> torch.Tensor:
    """Random rotation, zoom and shift with one `affine_grid` + `grid_sample` for the batch."""
    n = x.shape[0]
    angle = torch.empty(n, device=x.device).uniform_(-rotate_deg, rotate_deg) * math.pi / 180
    zoom = torch.empty(n, device=x.device).uniform_(1 - scale, 1 + scale)
    shift = torch.empty(n, 2, device=x.device).uniform_(-translate, translate) * 2  # grid units span [-1, 1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment(x: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    x = flips(x, cfg.hflip, cfg.vflip)
    if cfg.rotate_deg or cfg.scale or cfg.translate:
        x = affine(x, cfg.rotate_deg, cfg.scale, cfg.translate)
    return intensity(x, cfg.contrast, cfg.brightness, cfg.gamma)
