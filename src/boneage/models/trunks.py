"""Trunks from torchvision, built from scratch (weights=None: the poster trains without pretrained weights).

Each returns a module mapping (B, C, H, W) -> pooled features (B, F), with its classifier removed. The decorator
says the rest (`boneage.models.registry.TrunkSpec`): activation maps spread from early (edges, texture) to late (the
map the head pools), and saliency on the last convolutional block: the finest map that still carries what the head
pools (Selvaraju et al.'s choice).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models import inception as tvi

from boneage.models.pooling import PoolSwitch
from boneage.models.registry import register_trunk


def _first_conv_channels(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    if in_chans == conv.in_channels:
        return conv
    return nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     bias=conv.bias is not None)


# torchvision's blocks with a switchable average pool (boneage.models.pooling): the same modules and parameters. Each
# `_branches` is the block's `_forward` with the pool's result passed in (checked against torchvision's in tests).
class _InceptionA(PoolSwitch, tvi.InceptionA):
    def _branches(self, x: torch.Tensor, pooled: torch.Tensor) -> list[torch.Tensor]:
        return [self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))), self.branch_pool(pooled)]


class _InceptionC(PoolSwitch, tvi.InceptionC):
    def _branches(self, x: torch.Tensor, pooled: torch.Tensor) -> list[torch.Tensor]:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7dbl = conv(b7dbl)
        return [self.branch1x1(x), b7, b7dbl, self.branch_pool(pooled)]


class _InceptionE(PoolSwitch, tvi.InceptionE):
    def _branches(self, x: torch.Tensor, pooled: torch.Tensor) -> list[torch.Tensor]:
        b3 = self.branch3x3_1(x)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return [self.branch1x1(x), torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1),
                torch.cat([self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)], 1), self.branch_pool(pooled)]


INCEPTION_BLOCKS = [tvi.BasicConv2d, _InceptionA, tvi.InceptionB, _InceptionC, tvi.InceptionD, _InceptionE,
                    tvi.InceptionAux]


class _Inception(nn.Module):
    """torchvision's Inception v3 up to its global pool. No auxiliary classifier: the regression has one output.

    Its A, C and E blocks take `pool_impl` (`boneage.models.pooling.set_pool_impl`); torchvision's F.avg_pool2d until
    switched. Module names, parameters and their initialisation are torchvision's.
    """

    def __init__(self, in_chans: int):
        super().__init__()
        net = tvm.inception_v3(weights=None, aux_logits=False, init_weights=True, transform_input=False,
                               inception_blocks=INCEPTION_BLOCKS)
        net.Conv2d_1a_3x3.conv = _first_conv_channels(net.Conv2d_1a_3x3.conv, in_chans)
        net.fc = nn.Identity()
        net.dropout = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out.logits if hasattr(out, "logits") else out


@register_trunk("inception_v3", min_size=75, root="net", pool_impl=True, cam_layer="Mixed_7c",
                layers=("Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"))
def inception_v3(in_chans: int = 3):
    return _Inception(in_chans), 2048


RESNET_LAYERS = ("relu", "layer1", "layer2", "layer3", "layer4")


def _resnet(builder, in_chans: int):
    net = builder(weights=None)
    net.conv1 = _first_conv_channels(net.conv1, in_chans)
    width = net.fc.in_features
    net.fc = nn.Identity()
    return net, width


@register_trunk("resnet101", layers=RESNET_LAYERS, cam_layer="layer4")
def resnet101(in_chans: int = 3):
    return _resnet(tvm.resnet101, in_chans)


@register_trunk("resnet50", layers=RESNET_LAYERS, cam_layer="layer4")
def resnet50(in_chans: int = 3):
    return _resnet(tvm.resnet50, in_chans)


@register_trunk("resnet18", layers=RESNET_LAYERS, cam_layer="layer4")
def resnet18(in_chans: int = 3):
    return _resnet(tvm.resnet18, in_chans)


@register_trunk("efficientnet_b0", stages="features", cam_layer="features.8",
                layers=("features.1", "features.3", "features.5", "features.7", "features.8"))
def efficientnet_b0(in_chans: int = 3):
    net = tvm.efficientnet_b0(weights=None)
    net.features[0][0] = _first_conv_channels(net.features[0][0], in_chans)
    net.classifier = nn.Identity()
    return net, 1280


@register_trunk("tiny_cnn", min_size=16, layers=("0", "1", "2", "4"), cam_layer="4")  # 4: the ReLU after its last conv
def tiny_cnn(in_chans: int = 3):
    """A few-thousand-parameter CNN for tests and quick experiments on generated images."""
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True), nn.MaxPool2d(2))

    net = nn.Sequential(block(in_chans, 16), block(16, 32), block(32, 32), nn.Conv2d(32, 32, 3, padding=1),
                        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return net, 32
