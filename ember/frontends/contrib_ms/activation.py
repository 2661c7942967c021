"""Activations: Gelu, FastGelu, BiasGelu, QuickGelu, and BiasAdd."""
from __future__ import annotations

from ember.frontends.contrib_ms.common import contrib, float_attr, need, out
from ember.ir.optype import OpType
from ember.ops.attrs import GeluApproximate, GeluAttrs
from ember.ops.plugin import Lowering, PluginAttrs


def _biased(lo: Lowering, x: str, bias: str) -> str:
    if not bias:
        return x
    (s,) = lo.op(OpType.ADD, [x, bias], None, suffix="bias")
    return s


@contrib("Gelu")
def gelu(lo: Lowering, a: PluginAttrs) -> None:
    """Gelu(X) with erf: the exact form."""
    lo.op(OpType.GELU, [need(lo, 0, "X")], GeluAttrs(), outputs=out(lo, 0), suffix="gelu")


@contrib("BiasGelu")
def bias_gelu(lo: Lowering, a: PluginAttrs) -> None:
    """Gelu(A + B), erf form."""
    x = _biased(lo, need(lo, 0, "A"), need(lo, 1, "B"))
    lo.op(OpType.GELU, [x], GeluAttrs(), outputs=out(lo, 0), suffix="gelu")


@contrib("FastGelu")
def fast_gelu(lo: Lowering, a: PluginAttrs) -> None:
    """0.5 x (1 + tanh(0.797885 x + 0.035677 x^3)) of X (+ bias): Gelu's tanh approximation."""
    x = _biased(lo, need(lo, 0, "X"), lo.input(1))
    lo.op(OpType.GELU, [x], GeluAttrs(GeluApproximate.TANH), outputs=out(lo, 0), suffix="gelu")


@contrib("QuickGelu")
def quick_gelu(lo: Lowering, a: PluginAttrs) -> None:
    """x * Sigmoid(alpha * x), alpha 1.702 by default."""
    x = need(lo, 0, "X")
    alpha = float_attr(a, "alpha", 1.702)
    (scaled,) = lo.op(OpType.MUL, [x, lo.scalar(alpha, lo.type(x).dtype, "alpha")], None, suffix="scale")
    (gate,) = lo.op(OpType.SIGMOID, [scaled], None, suffix="sigmoid")
    lo.op(OpType.MUL, [x, gate], None, outputs=out(lo, 0), suffix="mul")


@contrib("BiasAdd")
def bias_add(lo: Lowering, a: PluginAttrs) -> None:
    """X + bias + skip."""
    x = _biased(lo, need(lo, 0, "X"), need(lo, 1, "bias"))
    lo.op(OpType.ADD, [x, need(lo, 2, "skip")], None, outputs=out(lo, 0), suffix="skip")
