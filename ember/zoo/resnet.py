"""ResNet (He et al. 2015), v1.5 layout: the stride of a bottleneck sits on its 3x3 convolution.

``resnet-50`` is the MLPerf reference architecture (25.6 M parameters, 4.1 GFLOPs at 224x224);
``resnet-18`` is its basic-block sibling, used where tests need the same ops at a lower cost.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ember.zoo.init import calibrate_batchnorm, init_weights
from ember.zoo.registry import InputSpec, ZooModel, register


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=False), nn.BatchNorm2d(c_out)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, width, 3, stride)
        self.conv2, self.bn2 = _conv_bn(width, width, 3)
        self.relu = nn.ReLU()
        self.downsample = _shortcut(c_in, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, width * 4, 1)
        self.relu = nn.ReLU()
        self.downsample = _shortcut(c_in, width * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (self.downsample(x) if self.downsample is not None else x))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and c_in == c_out:
        return None
    conv, bn = _conv_bn(c_in, c_out, 1, stride)
    return nn.Sequential(conv, bn)


class ResNet(nn.Module):
    """ImageNet ResNet: 7x7/2 stem, 3x3/2 max-pool, four stages, global average pool, fc."""

    # the stages, set by name in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: Sequence[int],
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        c_in = 64
        for i, (depth, width) in enumerate(zip(depths, (64, 128, 256, 512))):
            blocks = []
            for j in range(depth):
                blocks.append(block(c_in, width, 2 if (j == 0 and i > 0) else 1))
                c_in = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def _create(block: type[BasicBlock] | type[Bottleneck], depths: Sequence[int]):
    def create(generator: torch.Generator) -> nn.Module:
        model = ResNet(block, depths).eval()
        init_weights(model, generator)
        calibrate_batchnorm(model, lambda g: (torch.randn(4, 3, 224, 224, generator=g),), generator)
        return model
    return create


_IMAGE = (InputSpec("input", (3, 224, 224)),)

register(ZooModel("resnet-50", _create(Bottleneck, (3, 4, 6, 3)), _IMAGE, ("output",),
                  "ResNet-50 v1.5, 224x224, 1000 classes", tags=("cnn", "full")))
register(ZooModel("resnet-18", _create(BasicBlock, (2, 2, 2, 2)), _IMAGE, ("output",),
                  "ResNet-18, 224x224, 1000 classes (small sibling for tests)", tags=("cnn", "small")))
