"""Deterministic weights for zoo models.

Zoo models are architectures, not trained networks, yet they must behave like trained ones where
an inference engine can tell the difference: activations of sane magnitude through 50+ layers,
and BatchNorm layers whose running statistics are far from the identity (mean 0, var 1), so that
folding BatchNorm into the convolution changes the weights for real. Every draw comes from a
private generator seeded by the caller; the global RNG is left untouched.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn


def init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """Kaiming-normal (fan-in) convolutions, small-normal linears and embeddings, random affine norms."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            _normal(module.weight, math.sqrt(2.0 / fan_in), generator)  # keeps ReLU activations O(1)
            if module.bias is not None:
                _normal(module.bias, 0.05, generator)
        elif isinstance(module, nn.Linear):
            _normal(module.weight, 1.0 / math.sqrt(module.in_features), generator)
            if module.bias is not None:
                _normal(module.bias, 0.02, generator)
        elif isinstance(module, nn.Embedding):
            _normal(module.weight, 0.02, generator)
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)) and module.weight is not None:
            _uniform(module.weight, 0.5, 1.5, generator)
            _normal(module.bias, 0.1, generator)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, make_input: Callable[[torch.Generator], tuple[torch.Tensor, ...]],
                        generator: torch.Generator, passes: int = 1) -> None:
    """Sets every BatchNorm's running mean/var to the statistics of real forward passes.

    The statistics are those of the random network on random inputs, then perturbed a little:
    per-channel means away from zero and variances far from one, which is what BN folding must
    get right, while each layer's output stays about as normalized as a trained network's.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        return
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration passes
        m.train()
    for _ in range(passes):
        model(*make_input(generator))
    for m, (momentum, training) in zip(norms, saved):
        m.momentum = momentum
        m.train(training)
        # A trained network's statistics never match the inference data exactly; shifting them a
        # little also keeps any BN whose input happens to be centred from having a zero mean.
        mean, var = m.running_mean, m.running_var
        assert mean is not None and var is not None  # the forward passes above tracked them
        std = var.sqrt()
        mean.add_(torch.randn(mean.shape, generator=generator) * 0.2 * std)
        var.mul_(torch.rand(var.shape, generator=generator) * 0.6 + 0.7)


def _normal(t: torch.Tensor, std: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        t.copy_(torch.randn(t.shape, generator=generator) * std)


def _uniform(t: torch.Tensor, lo: float, hi: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        t.copy_(torch.rand(t.shape, generator=generator) * (hi - lo) + lo)
