"""MobileNetV2 (Sandler et al. 2018) and MobileNetV3-small (Howard et al. 2019).

V2: inverted residuals with depthwise 3x3 convolutions and ReLU6 (exported as ``Clip``).
V3-small: adds 5x5 depthwise kernels, HardSwish, and squeeze-and-excitation blocks gated by
HardSigmoid. Both at width 1.0 and 224x224, laid out as the papers' tables.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ember.zoo.init import calibrate_batchnorm, init_weights
from ember.zoo.registry import InputSpec, ZooModel, register


def _divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn_act(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1,
                act: Callable[[], nn.Module] | None = nn.ReLU6) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand -> depthwise kxk -> optional SE -> 1x1 project; residual when shapes allow."""

    def __init__(self, c_in: int, c_exp: int, c_out: int, k: int, stride: int,
                 act: Callable[[], nn.Module], se: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if c_exp != c_in:
            layers.append(conv_bn_act(c_in, c_exp, 1, act=act))
        layers.append(conv_bn_act(c_exp, c_exp, k, stride, groups=c_exp, act=act))
        if se:
            layers.append(SqueezeExcite(c_exp, _divisible(c_exp // 4)))
        layers.append(conv_bn_act(c_exp, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class SqueezeExcite(nn.Module):
    """Channel gate: global pool -> 1x1 reduce -> ``act`` -> 1x1 expand -> ``gate`` -> scale
    (MobileNetV3: ReLU and HardSigmoid; EfficientNet: SiLU and Sigmoid)."""

    def __init__(self, channels: int, squeeze: int, act: Callable[[], nn.Module] = nn.ReLU,
                 gate: Callable[[], nn.Module] = nn.Hardsigmoid) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = act()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class PooledClassifier(nn.Module):
    """``features`` -> global average pooling -> flatten -> ``classifier``: the MobileNets' and
    EfficientNet's outer shape (the attribute names are the ONNX export's node names)."""

    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


# (expansion t, channels c, repeats n, stride s) from Table 2 of the MobileNetV2 paper
_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(PooledClassifier):
    def __init__(self, num_classes: int = 1000) -> None:
        layers: list[nn.Module] = [conv_bn_act(3, 32, 3, 2)]
        c_in = 32
        for t, c, n, s in _V2:
            for i in range(n):
                layers.append(InvertedResidual(c_in, c_in * t, c, 3, s if i == 0 else 1, nn.ReLU6))
                c_in = c
        layers.append(conv_bn_act(c_in, 1280, 1))
        super().__init__(nn.Sequential(*layers), nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes)))


# (kernel, expanded, out, SE, activation, stride) from Table 2 of the MobileNetV3 paper (small)
_V3_SMALL = (
    (3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1),
)
_ACTS: dict[str, Callable[[], nn.Module]] = {"RE": nn.ReLU, "HS": nn.Hardswish}


class MobileNetV3Small(PooledClassifier):
    def __init__(self, num_classes: int = 1000) -> None:
        layers: list[nn.Module] = [conv_bn_act(3, 16, 3, 2, act=nn.Hardswish)]
        c_in = 16
        for k, c_exp, c_out, se, act, s in _V3_SMALL:
            layers.append(InvertedResidual(c_in, c_exp, c_out, k, s, _ACTS[act], se))
            c_in = c_out
        layers.append(conv_bn_act(c_in, 576, 1, act=nn.Hardswish))
        super().__init__(nn.Sequential(*layers), nn.Sequential(
            nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(1024, num_classes)))


def _create(cls: type[nn.Module]) -> Callable[[torch.Generator], nn.Module]:
    def create(generator: torch.Generator) -> nn.Module:
        model = cls().eval()
        init_weights(model, generator)
        calibrate_batchnorm(model, lambda g: (torch.randn(4, 3, 224, 224, generator=g),), generator)
        return model
    return create


_IMAGE = (InputSpec("input", (3, 224, 224)),)

register(ZooModel("mobilenet-v2", _create(MobileNetV2), _IMAGE, ("output",),
                  "MobileNetV2 1.0, 224x224, 1000 classes", tags=("cnn", "full")))
register(ZooModel("mobilenet-v3-small", _create(MobileNetV3Small), _IMAGE, ("output",),
                  "MobileNetV3-small 1.0 (HardSwish, SE with HardSigmoid), 224x224, 1000 classes",
                  tags=("cnn", "small")))
