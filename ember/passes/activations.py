"""Recognizing activations a fused layer can take into its epilogue.

One-node activations map directly (``Relu``, ``Clip``, ``LeakyRelu``, ``Sigmoid``, ``Tanh``,
``HardSigmoid``, ``HardSwish``, ``Gelu``). Two-node spellings that exporters write are patterns
over the producer ``y``: ``y * Sigmoid(y)`` (SiLU/Swish) and ``y * HardSigmoid(y)`` with
alpha 1/6, beta 1/2 (HardSwish before opset 14).
"""
from __future__ import annotations

import math
from collections.abc import Callable

from ember.errors import GraphError
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import Activation, HardSigmoidAttrs
from ember.passes.edit import scalar_value
from ember.passes.rewrite import Match, Op, View

Act = tuple[Activation, tuple[float, ...]]

UNARY_ACTIVATIONS = frozenset({OpType.RELU, OpType.CLIP, OpType.LEAKY_RELU, OpType.SIGMOID,
                               OpType.TANH, OpType.HARD_SIGMOID, OpType.HARD_SWISH, OpType.GELU})


def _clip_bound(node: Node, view: View, slot: int, attr: float | None,
                default: float) -> float | None:
    if attr is not None:
        return float(attr)
    name = node.input(slot)
    if not name:
        return default
    return scalar_value(view.const(name))  # None when the bound is computed at run time


def unary_activation(node: Node, view: View) -> Act | None:
    """The epilogue that ``node`` (a one-input activation) computes, or ``None``."""
    op, a = node.op, node.attrs
    if op is OpType.RELU:
        return Activation.RELU, ()
    if op is OpType.LEAKY_RELU:
        return Activation.LEAKY_RELU, (float(a.alpha),)
    if op is OpType.SIGMOID:
        return Activation.SIGMOID, ()
    if op is OpType.TANH:
        return Activation.TANH, ()
    if op is OpType.HARD_SWISH:
        return Activation.HARD_SWISH, ()
    if op is OpType.HARD_SIGMOID:
        return Activation.HARD_SIGMOID, (float(a.alpha), float(a.beta))
    if op is OpType.GELU:
        return (Activation.GELU_TANH if a is not None and a.approximate == "tanh"
                else Activation.GELU_ERF), ()
    if op is OpType.CLIP:
        lo = _clip_bound(node, view, 1, a.min if a is not None else None, -math.inf)
        hi = _clip_bound(node, view, 2, a.max if a is not None else None, math.inf)
        if lo is None or hi is None:
            return None
        if lo == 0.0 and hi == math.inf:
            return Activation.RELU, ()
        return Activation.CLIP, (lo, hi)
    return None


def _is_hard_swish_gate(node: Node, view: View) -> bool:
    a = node.attrs
    if not isinstance(a, HardSigmoidAttrs):  # the op verifier guarantees it on a valid graph
        raise GraphError(f"node {node.name!r} ({node.op.value}) has attrs {type(a).__name__}, "
                         f"expected HardSigmoidAttrs")
    return abs(a.alpha - 1.0 / 6.0) < 1e-6 and abs(a.beta - 0.5) < 1e-6


ActOf = Callable[[Match], Act | None]


def activation_patterns(producer: Callable[[], Op]) -> list[tuple[str, Op, ActOf]]:
    """``(spelling, pattern, act_of_match)`` for every activation applied to ``producer()``'s
    output; the producer is captured as ``"lin"``."""
    out: list[tuple[str, Op, ActOf]] = []
    lin = producer()
    out.append(("act", Op(UNARY_ACTIVATIONS, (lin,), name="act", extra_inputs=True),
                lambda m: unary_activation(m.node("act"), m.view)))
    lin = producer()
    out.append(("silu", Op(OpType.MUL, (lin, Op(OpType.SIGMOID, (lin,), name="gate"))),
                lambda m: (Activation.SILU, ())))
    lin = producer()
    out.append(("hard_swish", Op(OpType.MUL, (lin, Op(OpType.HARD_SIGMOID, (lin,), name="gate",
                                                      where=_is_hard_swish_gate))),
                lambda m: (Activation.HARD_SWISH, ())))
    return out
