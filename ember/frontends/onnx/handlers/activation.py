"""Unary activations and math functions."""
from __future__ import annotations

import numpy as np

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import direct, reject
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import ClipAttrs, GeluAttrs, HardSigmoidAttrs, LeakyReluAttrs

for _name, _op, _since in (
    ("Relu", OpType.RELU, 1), ("Sigmoid", OpType.SIGMOID, 1), ("Tanh", OpType.TANH, 1),
    ("Erf", OpType.ERF, 9), ("Sqrt", OpType.SQRT, 1), ("Exp", OpType.EXP, 1),
    ("Log", OpType.LOG, 1), ("Neg", OpType.NEG, 1), ("Abs", OpType.ABS, 1),
    ("Reciprocal", OpType.RECIPROCAL, 1), ("Not", OpType.NOT, 1), ("HardSwish", OpType.HARD_SWISH, 14),
    ("PRelu", OpType.PRELU, 1),
):
    onnx_op(_name, since=_since)(direct(_op))


@onnx_op("LeakyRelu", since=1)
def import_leaky_relu(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.LEAKY_RELU, n.inputs[:1], n.outputs[:1],
             LeakyReluAttrs(alpha=float(n.attr("alpha", 0.01))))


@onnx_op("HardSigmoid", since=1)
def import_hard_sigmoid(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.HARD_SIGMOID, n.inputs[:1], n.outputs[:1],
             HardSigmoidAttrs(alpha=float(n.attr("alpha", 0.2)), beta=float(n.attr("beta", 0.5))))


@onnx_op("Gelu", since=20)
def import_gelu(ctx: ImportContext, n: OnnxNode) -> None:
    approximate = n.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise reject(f"approximate={approximate!r} is not one of 'none', 'tanh'")
    ctx.emit(n, OpType.GELU, n.inputs[:1], n.outputs[:1], GeluAttrs(approximate=approximate))


@onnx_op("Clip", since=6)
def import_clip_6(ctx: ImportContext, n: OnnxNode) -> None:
    """Opset 6-10: bounds are attributes (absent: unbounded)."""
    lo, hi = n.attr("min"), n.attr("max")
    ctx.emit(n, OpType.CLIP, n.inputs[:1], n.outputs[:1],
             ClipAttrs(min=None if lo is None else float(lo), max=None if hi is None else float(hi)))


@onnx_op("Clip", since=11)
def import_clip_11(ctx: ImportContext, n: OnnxNode) -> None:
    """Opset 11+: bounds are optional inputs; constant ones become attrs."""
    lo_name, hi_name = n.input(1), n.input(2)
    if ctx.all_const((lo_name, hi_name)):
        ctx.emit(n, OpType.CLIP, n.inputs[:1], n.outputs[:1],
                 ClipAttrs(min=_scalar(ctx, lo_name), max=_scalar(ctx, hi_name)))
    else:
        ctx.emit(n, OpType.CLIP, (n.input(0), lo_name, hi_name), n.outputs[:1], ClipAttrs())


def _scalar(ctx: ImportContext, name: str) -> float | None:
    value = ctx.const(name)
    if value is None:
        return None
    flat = np.asarray(value).reshape(-1)
    if flat.size != 1:
        raise reject(f"its bound {name!r} has {flat.size} values; Clip bounds are scalars")
    return float(flat[0])
