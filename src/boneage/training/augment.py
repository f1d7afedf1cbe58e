"""Augmentation of whole batches on the training device: flips, affine, intensity (contrast, brightness, gamma), and the
degradations a film picks up between the X-ray tube and our input (a lower resolution, blur, sensor noise).

Works on float images in [0, 1], shape (B, 1, H, W), before standardisation. One random draw per image, no Python
loop over samples. `film_noise` alone works on the films before their intensity normalisation (a raw store).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from boneage.config import TrainConfig
from boneage.data.intensity import CLIP_ROUNDS, TAIL


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


def low_resolution(x: torch.Tensor, low_res: float) -> torch.Tensor:
    """Half the batch (drawn per image) seen at a resolution lower by a factor from [1 - low_res, 1] (one per batch),
    then brought back to the input's size: a film scanned coarsely, or a small copy enlarged."""
    size = x.shape[-2:]
    factor = float(torch.empty(()).uniform_(1 - low_res, 1.0))
    small = [max(8, round(s * factor)) for s in size]
    coarse = F.interpolate(F.interpolate(x, size=small, mode="bilinear", antialias=True, align_corners=False),
                           size=size, mode="bilinear", align_corners=False)
    return torch.where(torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5, coarse, x)


def gaussian_blur(x: torch.Tensor, blur: float) -> torch.Tensor:
    """Each image blurred by a Gaussian of its own sigma from [0, blur] pixels: one grouped, separable convolution."""
    n = x.shape[0]
    radius = max(1, math.ceil(3 * blur))
    sigma = torch.empty(n, 1, device=x.device, dtype=x.dtype).uniform_(0, blur).clamp_min(1e-3)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum(dim=1, keepdim=True)  # (n, 2r+1); sigma ~0 gives the identity
    y = F.pad(x.transpose(0, 1), (radius, radius, radius, radius), mode="replicate")  # (1, n, H + 2r, W + 2r)
    y = F.conv2d(y, k[:, None, None, :], groups=n)
    y = F.conv2d(y, k[:, None, :, None], groups=n)
    return y.transpose(0, 1)


def sensor_noise(x: torch.Tensor, noise: float) -> torch.Tensor:
    """Gaussian noise of a standard deviation drawn per image from [0, noise] (on the [0, 1] scale).

    Why: a model trained only on clean, compressed copies read noise as age (one gray level of noise moved
    some answers by years), and every detector and every re-encoding brings its own."""
    std = _uniform(x.shape[0], 0.0, noise, x)
    return (x + torch.randn_like(x) * std).clamp(0.0, 1.0)


def film_noise(gray: torch.Tensor, levels: float) -> torch.Tensor:
    """Gaussian noise of an SD drawn per image from [0, levels] gray levels (of 255), on films before the intensity
    normalisation, clipped to the film's range as `boneage precision` does.

    Why: the normalisation stretches a dark, low-contrast film's few gray levels over the whole range, so one gray
    level of a detector's noise becomes up to 20-50 of the model's on such films (measured on the validation split),
    far beyond what `sensor_noise` adds after it. This is the noise a radiograph brings to inference."""
    std = _uniform(gray.shape[0], 0.0, levels, gray)
    top = gray.amax(dim=(1, 2, 3), keepdim=True).clamp_min(255.0)
    return (gray + torch.randn_like(gray) * std).clamp(min=0.0).minimum(top)


def narrow_range(gray: torch.Tensor, share: float, least: float = 0.25) -> torch.Tensor:
    """A `share` of the films (drawn per film) with their gray range narrowed toward their darkest level by a factor
    drawn from [least, 1], for `film_noise` to follow.

    Why: a detector's noise moves the answer on films of a narrow gray range (2026-12-07, 300 validation films: the 40
    spanning under 80 of 255 levels moved by SD 4.3 months under sensor noise, the other 260 by 0.8); about one
    training film in eight is that narrow, and narrowing more of them gives `film_noise` more of the films it moves.
    Narrowed, a film also meets the normalisation's capped slope as a narrow film does."""
    n = gray.shape[0]
    factor = _uniform(n, least, 1.0, gray)
    factor = torch.where(_uniform(n, 0.0, 1.0, gray) < share, factor, torch.ones_like(factor))
    low = gray.amin(dim=(1, 2, 3), keepdim=True)
    return low + (gray - low) * factor


def _percentiles(flat: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """np.percentile's linear rule per row at q and 100 - q (q < 50), (B, N) -> two (B, 1). From the two tails
    (topk), ten times faster than a sort of every pixel on a CPU; torch.quantile also refuses over 16M elements."""
    last = flat.shape[1] - 1
    pos = q / 100 * last
    below, frac = int(pos), pos - int(pos)
    k = min(below + 2, flat.shape[1])
    small = flat.topk(k, dim=1, largest=False).values  # ascending: small[:, i] is the i-th smallest
    large = flat.topk(k, dim=1, largest=True).values  # descending: large[:, i] is the (last - i)-th smallest

    def at(t: torch.Tensor, i: int) -> torch.Tensor:
        return t[:, min(i, k - 1)]  # a film of one pixel has no second

    lo = at(small, below) + (at(small, below + 1) - at(small, below)) * frac
    # 100 - q sits at last - pos: between the (last - below - 1)-th and the (last - below)-th smallest
    hi = at(large, below + 1) + (at(large, below) - at(large, below + 1)) * (1 - frac)
    return lo[:, None], hi[:, None]


def equalize_clipped_batch(gray: torch.Tensor, clip_limit: float, bins: int = 256) -> torch.Tensor:
    """`boneage.data.intensity.equalize_clipped` for a batch of films (B, 1, H, W) on the device, to [0, 1] rounded
    to 8 bits as the store and inference round. Float64: the same bin edges as the numpy original."""
    b = gray.shape[0]
    flat = gray.reshape(b, -1).double()
    lo, hi = _percentiles(flat, TAIL)
    unit = ((flat - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)
    index = (unit * bins).long().clamp_max(bins - 1)
    hist = torch.zeros(b, bins, dtype=flat.dtype, device=flat.device).scatter_add_(1, index, torch.ones_like(unit))
    hist /= hist.sum(1, keepdim=True)
    cap = clip_limit / bins
    for _ in range(CLIP_ROUNDS):
        excess = (hist - cap).clamp_min(0.0).sum(1, keepdim=True)
        hist = hist.clamp_max(cap) + excess / bins
    cdf = torch.cat([torch.zeros_like(hist[:, :1]), hist.cumsum(1)], 1)
    cdf = cdf / cdf[:, -1:]
    pos = unit * bins  # np.interp on the bin edges k / bins
    left = pos.floor().long().clamp_max(bins - 1)
    frac = pos - left
    out = cdf.gather(1, left) * (1 - frac) + cdf.gather(1, left + 1) * frac
    out = torch.where(hi > lo, out, torch.zeros_like(out))
    return (torch.round(out * 255.0) / 255.0).to(gray.dtype).reshape(gray.shape)


def augment(x: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    x = flips(x, cfg.hflip, cfg.vflip)
    if cfg.rotate_deg or cfg.scale or cfg.translate:
        x = affine(x, cfg.rotate_deg, cfg.scale, cfg.translate)
    x = intensity(x, cfg.contrast, cfg.brightness, cfg.gamma)
    if cfg.low_res:
        x = low_resolution(x, cfg.low_res)
    if cfg.blur:
        x = gaussian_blur(x, cfg.blur)
    if cfg.noise:
        x = sensor_noise(x, cfg.noise)
    return x
