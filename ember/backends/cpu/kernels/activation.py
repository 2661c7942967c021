"""Unary elementwise kernels with ONNX semantics: activations, math functions (rounding,
trigonometry, Softplus ...), bitwise/logical NOT and the IsNaN/IsInf predicates."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ember.backends.activations import gelu_erf
from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into
from ember.backends.cpu.kernels.common import Inputs, Tensor, arg
from ember.backends.cpu.registry import register_kernel
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import (
    AlphaAttrs,
    ClipAttrs,
    GeluAttrs,
    HardSigmoidAttrs,
    IsInfAttrs,
    LeakyReluAttrs,
    SeluAttrs,
)


def unary_kernel(fn: Callable[[Tensor], Tensor],
                 out_fn: Optional[Callable[[Tensor, Tensor], object]] = None) -> Kernel:
    """The kernel of a one-input op computed by ``fn``. ``out_fn(x, out)``, when given, computes
    the same into ``out`` (a TensorIterator ``out=`` form: it writes any strided view directly),
    which lets the kernel write into a Concat's slice (``WriteInto``)."""

    def run(inputs: Inputs) -> list:
        return [fn(inputs[0])]

    if out_fn is None:
        return run

    def write(inputs: Inputs, out: Tensor) -> bool:
        x = inputs[0]
        if x is None or not x.is_floating_point() or x.dtype != out.dtype or x.shape != out.shape \
                or x.device != out.device:
            return False
        out_fn(x, out)
        return True

    return with_write_into(run, WriteInto(write, lambda out: out.is_floating_point()))


#: ``out=`` forms of the simple float activations (same values as the functions in ``_SIMPLE``;
#: relu as clamp_min, which propagates NaN as relu does).
_OUT_FORMS: dict[OpType, Callable[[Tensor, Tensor], object]] = {
    OpType.RELU: lambda x, out: torch.clamp_min(x, 0.0, out=out),
    OpType.SIGMOID: lambda x, out: torch.sigmoid(x, out=out),
    OpType.TANH: lambda x, out: torch.tanh(x, out=out),
    OpType.ERF: lambda x, out: torch.erf(x, out=out),
    OpType.SQRT: lambda x, out: torch.sqrt(x, out=out),
    OpType.EXP: lambda x, out: torch.exp(x, out=out),
    OpType.LOG: lambda x, out: torch.log(x, out=out),
    OpType.NEG: lambda x, out: torch.neg(x, out=out),
    OpType.ABS: lambda x, out: torch.abs(x, out=out),
}


def _reciprocal(x: Tensor) -> Tensor:
    return torch.reciprocal(x) if x.is_floating_point() else (1 / x).to(x.dtype)


def _relu(x: Tensor) -> Tensor:
    return torch.relu(x) if x.dtype is not torch.bool else x


def _sign(x: Tensor) -> Tensor:
    """ONNX Sign: NaN stays NaN (``torch.sign`` gives 0 there; numpy and ONNX Runtime give NaN)."""
    s = torch.sign(x)
    return torch.where(torch.isnan(x), x, s) if x.is_floating_point() else s


#: Ops whose kernel is one parameter-free torch function (an explicit list, not a scan).
_SIMPLE: dict[OpType, Callable[[Tensor], Tensor]] = {
    OpType.RELU: _relu,
    OpType.SIGMOID: torch.sigmoid,
    OpType.TANH: torch.tanh,
    OpType.HARD_SWISH: F.hardswish,
    OpType.ERF: torch.erf,
    OpType.SQRT: torch.sqrt,
    OpType.EXP: torch.exp,
    OpType.LOG: torch.log,
    OpType.NEG: torch.neg,
    OpType.ABS: torch.abs,
    OpType.RECIPROCAL: _reciprocal,
    OpType.NOT: torch.logical_not,
    OpType.BITWISE_NOT: torch.bitwise_not,
    OpType.FLOOR: torch.floor,
    OpType.CEIL: torch.ceil,
    OpType.ROUND: torch.round,  # half to even, as ONNX
    OpType.SIGN: _sign,
    OpType.SIN: torch.sin, OpType.COS: torch.cos, OpType.TAN: torch.tan,
    OpType.ASIN: torch.asin, OpType.ACOS: torch.acos, OpType.ATAN: torch.atan,
    OpType.SINH: torch.sinh, OpType.COSH: torch.cosh, OpType.ASINH: torch.asinh,
    OpType.ACOSH: torch.acosh, OpType.ATANH: torch.atanh,
    OpType.IS_NAN: torch.isnan,
    OpType.SOFTPLUS: F.softplus,
    OpType.SOFTSIGN: F.softsign,
    OpType.MISH: F.mish,
}


def register_unary(op: OpType, fn: Callable[[Tensor], Tensor]) -> None:
    """Registers the kernel of a one-input op with no attributes, computed by ``fn``."""
    out_fn = _OUT_FORMS.get(op)

    @register_kernel(op)
    def factory(node: Node, ctx: CompileContext) -> Kernel:
        return unary_kernel(fn, out_fn)


for _op, _fn in _SIMPLE.items():
    register_unary(_op, _fn)


@register_kernel(OpType.LEAKY_RELU)
def leaky_relu(node: Node, ctx: CompileContext) -> Kernel:
    alpha = float((node.attrs or LeakyReluAttrs()).alpha)
    return unary_kernel(lambda x: F.leaky_relu(x, alpha))


@register_kernel(OpType.PRELU)
def prelu(node: Node, ctx: CompileContext) -> Kernel:
    """PRelu: ``slope`` broadcasts to ``x`` (unidirectionally), any shape ONNX allows."""

    def run(inputs: Inputs) -> list:
        x, slope = inputs[0], inputs[1]
        return [torch.where(x < 0, x * slope, x)]

    return run


@register_kernel(OpType.HARD_SIGMOID)
def hard_sigmoid(node: Node, ctx: CompileContext) -> Kernel:
    a = node.attrs or HardSigmoidAttrs()
    alpha, beta = float(a.alpha), float(a.beta)
    if math.isclose(alpha, 1 / 6, rel_tol=1e-7) and beta == 0.5:
        return unary_kernel(F.hardsigmoid)
    return unary_kernel(lambda x: torch.clamp(x * alpha + beta, 0.0, 1.0))


@register_kernel(OpType.GELU)
def gelu(node: Node, ctx: CompileContext) -> Kernel:
    approximate = (node.attrs or GeluAttrs()).approximate
    if approximate not in ("none", "tanh"):
        raise ValueError(f"Gelu approximate={approximate!r}; expected 'none' or 'tanh'")
    if approximate == "none":
        return unary_kernel(gelu_erf)  # keeps +inf, as ONNX Runtime does
    return unary_kernel(lambda x: F.gelu(x, approximate="tanh"))


def _bound(value: float | None, t: Tensor | None, x: Tensor) -> float | int | Tensor | None:
    if t is not None:
        t = t.reshape(()) if t.dim() else t
        # a bound read on the host (a CUDA host slot: a constant, or a step run uncaptured) is a
        # number to the GPU's clamp, which takes no host tensor
        return t.item() if t.device != x.device else t
    if value is None:
        return None
    return value if x.is_floating_point() else int(value)


@register_kernel(OpType.CLIP)
def clip(node: Node, ctx: CompileContext) -> Kernel:
    """Clip: bounds from attrs (constant at import), else inputs 1 and 2, else unbounded."""
    a = node.attrs or ClipAttrs()

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        lo = _bound(a.min, None if a.min is not None else arg(inputs, 1), x)
        hi = _bound(a.max, None if a.max is not None else arg(inputs, 2), x)
        if lo is None and hi is None:
            return [x]
        if isinstance(lo, Tensor) or isinstance(hi, Tensor):
            if lo is not None and not isinstance(lo, Tensor):
                lo = torch.tensor(lo, dtype=x.dtype)
            if hi is not None and not isinstance(hi, Tensor):
                hi = torch.tensor(hi, dtype=x.dtype)
        return [torch.clamp(x, lo, hi)]

    return run


@register_kernel(OpType.ELU)
def elu(node: Node, ctx: CompileContext) -> Kernel:
    alpha = float((node.attrs or AlphaAttrs()).alpha)
    return unary_kernel(lambda x: F.elu(x, alpha))


@register_kernel(OpType.CELU)
def celu(node: Node, ctx: CompileContext) -> Kernel:
    alpha = float((node.attrs or AlphaAttrs()).alpha)
    return unary_kernel(lambda x: F.celu(x, alpha))


@register_kernel(OpType.SELU)
def selu(node: Node, ctx: CompileContext) -> Kernel:
    """``gamma * (x if x > 0 else alpha * (exp(x) - 1))`` for any alpha and gamma (``F.selu``
    has only the fixed ones)."""
    a = node.attrs or SeluAttrs()
    alpha, gamma = float(a.alpha), float(a.gamma)
    return unary_kernel(lambda x: F.elu(x, alpha) * gamma)


@register_kernel(OpType.THRESHOLDED_RELU)
def thresholded_relu(node: Node, ctx: CompileContext) -> Kernel:
    alpha = float((node.attrs or AlphaAttrs()).alpha)
    return unary_kernel(lambda x: torch.where(x > alpha, x, torch.zeros((), dtype=x.dtype, device=x.device)))


@register_kernel(OpType.IS_INF)
def is_inf(node: Node, ctx: CompileContext) -> Kernel:
    a = node.attrs or IsInfAttrs()
    if a.detect_positive and a.detect_negative:
        return unary_kernel(torch.isinf)
    if a.detect_positive:
        return unary_kernel(torch.isposinf)
    if a.detect_negative:
        return unary_kernel(torch.isneginf)
    return unary_kernel(lambda x: torch.zeros_like(x, dtype=torch.bool))
