"""EfficientNet-B0 (Tan & Le 2019): MobileNetV2's inverted residuals with SiLU, 5x5 depthwise
kernels in some stages, and a squeeze-and-excitation block in every one, gated by a sigmoid and
squeezed to a quarter of the block's input channels. 224x224, 1000 classes, as the paper's Table 1
(stochastic depth and dropout are identities in inference).
"""
from __future__ import annotations

import torch
from torch import nn

from ember.zoo.init import calibrate_batchnorm, init_weights
from ember.zoo.mobilenet import PooledClassifier, SqueezeExcite, conv_bn_act
from ember.zoo.registry import InputSpec, ZooModel, register


class MBConv(nn.Module):
    """1x1 expand (unless the expansion is 1) -> depthwise kxk -> SE -> 1x1 project; residual when
    the shapes allow."""

    def __init__(self, c_in: int, expand: int, c_out: int, k: int, stride: int) -> None:
        super().__init__()
        c_exp = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_act(c_in, c_exp, 1, act=nn.SiLU))
        layers += [conv_bn_act(c_exp, c_exp, k, stride, groups=c_exp, act=nn.SiLU),
                   SqueezeExcite(c_exp, max(1, c_in // 4), nn.SiLU, nn.Sigmoid),
                   conv_bn_act(c_exp, c_out, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


# (expansion, kernel, stride, channels, repeats) of Table 1
_B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
       (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


class EfficientNetB0(PooledClassifier):
    def __init__(self, num_classes: int = 1000) -> None:
        layers: list[nn.Module] = [conv_bn_act(3, 32, 3, 2, act=nn.SiLU)]
        c_in = 32
        for expand, k, s, c, n in _B0:
            for i in range(n):
                layers.append(MBConv(c_in, expand, c, k, s if i == 0 else 1))
                c_in = c
        layers.append(conv_bn_act(c_in, 1280, 1, act=nn.SiLU))
        super().__init__(nn.Sequential(*layers), nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes)))


def _create(generator: torch.Generator) -> nn.Module:
    """EfficientNet-B0 with the zoo's weights, each residual branch's last BatchNorm scaled down
    (its gamma drawn from [0.1, 0.3]): with unit-variance branches the sixteen blocks doubled the
X
    about 10, and float32 rounding grew with them (PyTorch's own fp32 output 4e-4 from its fp64)."""
    model = EfficientNetB0().eval()
    init_weights(model, generator)
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, MBConv) and block.residual:
                bn = [m for m in block.block.modules() if isinstance(m, nn.BatchNorm2d)][-1]  # the projection's
                bn.weight.copy_(torch.rand(bn.weight.shape, generator=generator) * 0.2 + 0.1)
    calibrate_batchnorm(model, lambda g: (torch.randn(4, 3, 224, 224, generator=g),), generator)
    return model


register(ZooModel("efficientnet-b0", _create, (InputSpec("input", (3, 224, 224)),), ("output",),
                  "EfficientNet-B0 (SiLU, SE with Sigmoid in every block), 224x224, 1000 classes",
                  tags=("cnn", "small")))
