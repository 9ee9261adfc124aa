"""Image encoders shared by the pair models: a plain CNN or a ResNet, with optional SE or CBAM attention.

- SE (Hu et al., 2018): channel attention from globally average-pooled features.
- CBAM (Woo et al., 2018): channel attention from average- and max-pooled features, then spatial
  attention from a 7x7 convolution over the channel-pooled maps.
- ResNet (He et al., 2016): ``blocks`` residual blocks per stage (e.g. [3, 3, 3]), basic blocks or
  bottlenecks (1x1 -> 3x3 -> 1x1 at a quarter of the width); each stage after the first halves the size.
- FPN (Lin et al., 2017): the same ResNet stages with a feature pyramid -- each stage's output is
  projected to a common width (1x1), the coarser level is upsampled and added (top-down), a 3x3
  convolution smooths every level, and the globally pooled levels are concatenated, so fine and
  coarse scales both reach the embedding.
"""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        mid = max(channels // reduction, 4)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, mid, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(mid, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        mid = max(channels // reduction, 4)
        self.mlp = nn.Sequential(nn.Conv2d(channels, mid, 1), nn.ReLU(inplace=True), nn.Conv2d(mid, channels, 1))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = torch.sigmoid(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))
        x = x * channel
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


def attention(channels: int, use_se: bool, use_cbam: bool) -> list[nn.Module]:
    if use_se and use_cbam:
        raise ValueError("use_se and use_cbam are alternatives; choose one")
    return [SqueezeExcite(channels)] if use_se else [CBAM(channels)] if use_cbam else []


def conv_block(cin: int, cout: int, convs: int, use_se: bool = False, use_cbam: bool = False) -> nn.Sequential:
    """``convs`` x (3x3 conv, BatchNorm, ReLU), optional attention, then 2x2 max-pooling."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool2d(2), *attention(cout, use_se, use_cbam))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, bottleneck: bool, use_se: bool, use_cbam: bool):
        super().__init__()
        if bottleneck:
            mid = max(cout // 4, 4)
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout), *attention(cout, use_se, use_cbam))
        else:
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), *attention(cout, use_se, use_cbam))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _stem(in_channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                         nn.ReLU(inplace=True))


def _stages(channels: list[int], blocks: list[int], bottleneck: bool, use_se: bool, use_cbam: bool) -> nn.ModuleList:
    stages, cin = [], channels[0]
    for stage, (cout, n) in enumerate(zip(channels, blocks)):
        stages.append(nn.Sequential(*[ResidualBlock(cin if i == 0 else cout, cout, 2 if (i == 0 and stage > 0) else 1,
                                                    bottleneck, use_se, use_cbam) for i in range(n)]))
        cin = cout
    return nn.ModuleList(stages)


class FPN(nn.Module):
    """ResNet stages + a top-down feature pyramid; returns the pooled levels concatenated (``out_features``)."""

    def __init__(self, in_channels: int, channels: list[int], blocks: list[int], bottleneck: bool, use_se: bool,
                 use_cbam: bool, width: int):
        super().__init__()
        self.stem = _stem(in_channels, channels[0])
        self.stages = _stages(channels, blocks, bottleneck, use_se, use_cbam)
        self.laterals = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.smooth = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in channels)
        self.out_features = width * len(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        levels = []
        for stage in self.stages:
            x = stage(x)
            levels.append(x)
        top = self.laterals[-1](levels[-1])
        pooled = [self.smooth[-1](top).mean((2, 3))]
        for i in range(len(levels) - 2, -1, -1):
            top = self.laterals[i](levels[i]) + nn.functional.interpolate(top, size=levels[i].shape[-2:], mode="nearest")
            pooled.insert(0, self.smooth[i](top).mean((2, 3)))
        return torch.cat(pooled, dim=1)


def resnet(in_channels: int, channels: list[int], blocks: list[int], bottleneck: bool, use_se: bool,
           use_cbam: bool) -> tuple[nn.Sequential, int]:
    """(the residual trunk ending in global average pooling, its output width)."""
    layers = [*_stem(in_channels, channels[0]), *[block for stage in _stages(channels, blocks, bottleneck, use_se,
                                                                             use_cbam) for block in stage]]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), channels[-1]
