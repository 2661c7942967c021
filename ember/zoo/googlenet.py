"""GoogLeNet (Inception v1, Szegedy et al. 2014) as in the Caffe ``bvlc_googlenet`` model.

Layer names are the Caffe prototxt's (``conv1/7x7_s2``, ``inception_3a/1x1``, ...): each layer is
a module under that path, and the exporter names the ONNX node after it, so fused layers read
``conv1/7x7_s2 + conv1/relu_7x7`` as in TensorRT's profiler. The Caffe specifics are kept: biased
convolutions without BatchNorm, LRN after the first two convolution stages, ceil-mode max-pools,
a 7x7 average pool and dropout 0.4 before the classifier. The auxiliary classifiers are training
only and left out, as in the Caffe deploy prototxt.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import cast

import torch
from torch import nn

from ember.zoo.init import init_weights
from ember.zoo.layers import LRN, Concat
from ember.zoo.registry import InputSpec, ZooModel, register

# name: (in, 1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj), from bvlc_googlenet deploy.prototxt
_INCEPTIONS = {
    "inception_3a": (192, 64, 96, 128, 16, 32, 32),
    "inception_3b": (256, 128, 128, 192, 32, 96, 64),
    "inception_4a": (480, 192, 96, 208, 16, 48, 64),
    "inception_4b": (512, 160, 112, 224, 24, 64, 64),
    "inception_4c": (512, 128, 128, 256, 24, 64, 64),
    "inception_4d": (512, 112, 144, 288, 32, 64, 64),
    "inception_4e": (528, 256, 160, 320, 32, 128, 128),
    "inception_5a": (832, 256, 160, 320, 32, 128, 128),
    "inception_5b": (832, 384, 192, 384, 48, 128, 128),
}


def _maxpool(k: int, s: int, pad: int = 0) -> nn.MaxPool2d:
    return nn.MaxPool2d(k, s, padding=pad, ceil_mode=True)  # Caffe rounds pooled sizes up


class Inception(nn.Module):
    """Four branches (1x1 | 1x1->3x3 | 1x1->5x5 | 3x3 pool->1x1) concatenated on channels."""

    def __init__(self, c_in: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> None:
        super().__init__()
        layers = {
            "1x1": nn.Conv2d(c_in, c1, 1), "relu_1x1": nn.ReLU(),
            "3x3_reduce": nn.Conv2d(c_in, c3r, 1), "relu_3x3_reduce": nn.ReLU(),
            "3x3": nn.Conv2d(c3r, c3, 3, padding=1), "relu_3x3": nn.ReLU(),
            "5x5_reduce": nn.Conv2d(c_in, c5r, 1), "relu_5x5_reduce": nn.ReLU(),
            "5x5": nn.Conv2d(c5r, c5, 5, padding=2), "relu_5x5": nn.ReLU(),
            "pool": _maxpool(3, 1, 1),
            "pool_proj": nn.Conv2d(c_in, cp, 1), "relu_pool_proj": nn.ReLU(),
            "output": Concat(1),
        }
        for name, layer in layers.items():
            self.add_module(name, layer)

    def _run(self, x: torch.Tensor, *names: str) -> torch.Tensor:
        for name in names:
            x = cast(nn.Module, self._modules[name])(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(nn.Module, self._modules["output"])(
            self._run(x, "1x1", "relu_1x1"),
            self._run(x, "3x3_reduce", "relu_3x3_reduce", "3x3", "relu_3x3"),
            self._run(x, "5x5_reduce", "relu_5x5_reduce", "5x5", "relu_5x5"),
            self._run(x, "pool", "pool_proj", "relu_pool_proj"),
        )


class GoogLeNet(nn.Sequential):
    """bvlc_googlenet at 224x224: 22 weighted layers, 7.0 M parameters, 1.6 GFLOPs.

    A sequence of Caffe stages (``conv1``, ``pool1``, ..., ``inception_5b``, ``pool5``, ``loss3``),
    each a sequence of Caffe layers, so every module path is a Caffe layer name.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        stages: dict[str, nn.Module] = {
            "conv1": _stage(("7x7_s2", nn.Conv2d(3, 64, 7, 2, padding=3)), ("relu_7x7", nn.ReLU())),
            "pool1": _stage(("3x3_s2", _maxpool(3, 2)), ("norm1", LRN(5, 1e-4, 0.75))),
            "conv2": _stage(("3x3_reduce", nn.Conv2d(64, 64, 1)), ("relu_3x3_reduce", nn.ReLU()),
                            ("3x3", nn.Conv2d(64, 192, 3, padding=1)), ("relu_3x3", nn.ReLU()),
                            ("norm2", LRN(5, 1e-4, 0.75))),
            "pool2": _stage(("3x3_s2", _maxpool(3, 2))),
        }
        for name, cfg in _INCEPTIONS.items():
            stages[name] = Inception(*cfg)
            if name in ("inception_3b", "inception_4e"):
                stages["pool3" if name == "inception_3b" else "pool4"] = _stage(("3x3_s2", _maxpool(3, 2)))
        stages["pool5"] = _stage(("7x7_s1", nn.AvgPool2d(7, 1)), ("drop_7x7_s1", nn.Dropout(0.4)))
        stages["loss3"] = _stage(("flatten", nn.Flatten(1)), ("classifier", nn.Linear(1024, num_classes)))
        super().__init__(OrderedDict(stages))


def _stage(*layers: tuple[str, nn.Module]) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers))


# bvlc_googlenet is fed mean-subtracted 0-255 pixels, so its first layers see activations in the
# tens to hundreds, the range LRN's alpha=1e-4 is tuned for. Zoo inputs are N(0, 1): conv1 is
# scaled up so that LRN really normalizes (with O(1) activations it would be the identity).
_PIXEL_SCALE = 20.0


def _create(generator: torch.Generator) -> nn.Module:
    model = GoogLeNet().eval()
    init_weights(model, generator)
    with torch.no_grad():
        conv = model.get_submodule("conv1.7x7_s2")
        assert isinstance(conv, nn.Conv2d) and conv.bias is not None
        conv.weight.mul_(_PIXEL_SCALE)
        conv.bias.mul_(_PIXEL_SCALE)
    return model


register(ZooModel("googlenet", _create, (InputSpec("input", (3, 224, 224)),), ("output",),
                  "GoogLeNet / Inception v1 (Caffe bvlc_googlenet with LRN), 224x224, 1000 classes",
                  tags=("cnn", "full")))
