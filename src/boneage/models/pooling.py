"""The 3x3, stride-1 average pool of Inception v3's A, C and E blocks, in interchangeable implementations.

torchvision calls `F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)` (count_include_pad: a box filter over the
zero-padded input, divided by 9) in 9 blocks. PyTorch's NHWC kernels for it can take a large share of a GPU training
step (docs/benchmarks.md, "Where the step's time goes"). The same function as plain ops:

- "native": `F.avg_pool2d`, as torchvision has it.
- "conv": a depthwise convolution (groups=C) with fixed weights 1/9, made on the fly from the input's dtype and
  device: nothing is registered, so state_dicts and checkpoints do not change.
- "sum": the box sum as shifted slices of the zero-padded input, along rows then columns (3 terms each), over 9. Its
  backward is the same box filter on the gradient (a symmetric, zero-padded filter is its own adjoint); autograd
  through the slices would instead fill and copy a full-size zero tensor per slice.

All three agree to float rounding (tests/test_pooling.py). One bias to know in bfloat16: 1/9 rounds to 0.111328125,
so "conv" there returns the mean times 1 + 2^-9 (+0.2%, one bf16 rounding). In the Inception blocks the pooled tensor
goes through a bias-free 1x1 convolution into batch norm, which normalises a constant scale away in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from boneage.config import POOL_IMPLS, check_pool_impl


def _box_mean_by_sums(x: torch.Tensor) -> torch.Tensor:
    p = F.pad(x, (1, 1, 1, 1))
    rows = p[..., :-2] + p[..., 1:-1] + p[..., 2:]  # (.., H + 2, W): each pixel plus its left and right neighbours
    return (rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]) / 9


class _BoxMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _box_mean_by_sums(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _box_mean_by_sums(grad)  # self-adjoint; also differentiable (double backward)


def _box_mean_by_conv(x: torch.Tensor) -> torch.Tensor:
    channels = x.shape[1]
    return F.conv2d(x, x.new_full((channels, 1, 3, 3), 1 / 9), padding=1, groups=channels)


_IMPLS = {
    "native": lambda x: F.avg_pool2d(x, kernel_size=3, stride=1, padding=1),
    "conv": _box_mean_by_conv,
    "sum": _BoxMean.apply,
}


def avg_pool3x3(x: torch.Tensor, impl: str = "native") -> torch.Tensor:
    """`F.avg_pool2d(x, 3, stride=1, padding=1)` of a (B, C, H, W) tensor, computed by `impl` (one of POOL_IMPLS)."""
    check_pool_impl(impl)
    return _IMPLS[impl](x)


class PoolSwitch:
    """Mixin for a torchvision Inception block whose `_forward` average-pools its input for the `branch_pool` branch.

    The subclass computes its branches in `_branches(x, pooled)` with the block's own modules, so its state_dict keys
    and its initialisation stay torchvision's. "native" runs torchvision's own `_forward`, untouched.
    """

    pool_impl = "native"

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.pool_impl == "native":
            return super()._forward(x)
        return self._branches(x, avg_pool3x3(x, self.pool_impl))

    def _branches(self, x: torch.Tensor, pooled: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError


def set_pool_impl(module: nn.Module, impl: str) -> int:
    """Switch every `PoolSwitch` block inside `module` to `impl`; -> how many there are (0: nothing to switch)."""
    check_pool_impl(impl)
    blocks = [m for m in module.modules() if isinstance(m, PoolSwitch)]
    for block in blocks:
        block.pool_impl = impl
    return len(blocks)


__all__ = ["POOL_IMPLS", "PoolSwitch", "avg_pool3x3", "set_pool_impl"]
