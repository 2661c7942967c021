"""Layers the zoo needs that PyTorch does not export as the ONNX operator a model file should hold.

``torch.nn.LocalResponseNorm`` is a Python composition (pad, avg_pool3d, pow, div), so both ONNX
exporters write a dozen small nodes where Caffe's GoogLeNet has one ``LRN``. ``LRN`` here is a
``torch.library`` custom op: eager PyTorch runs the composition, and each exporter is taught to
write a single ONNX ``LRN`` node (same formula: ``x / (bias + alpha / size * sum(x^2))^beta``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_OPSET_MIN_LRN = 1


@torch.library.custom_op("ember_zoo::lrn", mutates_args=())
def _lrn(x: torch.Tensor, size: int, alpha: float, beta: float, bias: float) -> torch.Tensor:
    return F.local_response_norm(x, size, alpha=alpha, beta=beta, k=bias)


@_lrn.register_fake
def _lrn_fake(x: torch.Tensor, size: int, alpha: float, beta: float, bias: float) -> torch.Tensor:
    return torch.empty_like(x)


def _lrn_symbolic(g: Any, x: Any, size: Any, alpha: Any, beta: Any, bias: Any) -> Any:
    """TorchScript exporter: one ONNX LRN node (scalars arrive as constant graph values)."""
    from torch.onnx import symbolic_helper as sh

    return g.op("LRN", x, size_i=sh._maybe_get_const(size, "i"), alpha_f=sh._maybe_get_const(alpha, "f"),
                beta_f=sh._maybe_get_const(beta, "f"), bias_f=sh._maybe_get_const(bias, "f"))


torch.onnx.register_custom_op_symbolic("ember_zoo::lrn", _lrn_symbolic, _OPSET_MIN_LRN)


def dynamo_translations() -> dict[Any, Any]:
    """Custom translation table for ``torch.onnx.export(..., dynamo=True)``."""
    from onnxscript import opset18 as op

    def lrn(x: Any, size: int, alpha: float, beta: float, bias: float) -> Any:
        return op.LRN(x, size=size, alpha=alpha, beta=beta, bias=bias)

    return {torch.ops.ember_zoo.lrn.default: lrn}


class LRN(nn.Module):
    """Cross-channel local response normalization, exported as one ONNX ``LRN`` node.

    >>> LRN(5)(torch.ones(1, 8, 4, 4)).shape
    torch.Size([1, 8, 4, 4])
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, bias: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.bias = size, alpha, beta, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _lrn(x, self.size, self.alpha, self.beta, self.bias)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, bias={self.bias}"


class Concat(nn.Module):
    """``torch.cat`` as a module, so the exported node is named after it (``inception_3a/output``)."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim)
