"""Unary activations and math functions."""
from __future__ import annotations

import numpy as np

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import HandlerFn, choice, direct, reject
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import (
    AlphaAttrs,
    AxesAttrs,
    ClipAttrs,
    GeluApproximate,
    GeluAttrs,
    HardSigmoidAttrs,
    IsInfAttrs,
    LeakyReluAttrs,
    SeluAttrs,
)

for _name, _op, _since in (
    ("Relu", OpType.RELU, 1), ("Sigmoid", OpType.SIGMOID, 1), ("Tanh", OpType.TANH, 1),
    ("Erf", OpType.ERF, 9), ("Sqrt", OpType.SQRT, 1), ("Exp", OpType.EXP, 1),
    ("Log", OpType.LOG, 1), ("Neg", OpType.NEG, 1), ("Abs", OpType.ABS, 1),
    ("Reciprocal", OpType.RECIPROCAL, 1), ("Not", OpType.NOT, 1), ("HardSwish", OpType.HARD_SWISH, 14),
):
    onnx_op(_name, since=_since)(direct(_op))

# math functions and smooth activations (one input; any later inputs are not theirs)
for _name, _op, _since in (
    ("Floor", OpType.FLOOR, 6), ("Ceil", OpType.CEIL, 6), ("Round", OpType.ROUND, 11),
    ("Sign", OpType.SIGN, 9), ("Sin", OpType.SIN, 7), ("Cos", OpType.COS, 7), ("Tan", OpType.TAN, 7),
    ("Asin", OpType.ASIN, 7), ("Acos", OpType.ACOS, 7), ("Atan", OpType.ATAN, 7),
    ("Sinh", OpType.SINH, 9), ("Cosh", OpType.COSH, 9), ("Asinh", OpType.ASINH, 9),
    ("Acosh", OpType.ACOSH, 9), ("Atanh", OpType.ATANH, 9), ("IsNaN", OpType.IS_NAN, 9),
    ("Softplus", OpType.SOFTPLUS, 1), ("Softsign", OpType.SOFTSIGN, 1), ("Mish", OpType.MISH, 18),
):
    onnx_op(_name, since=_since)(direct(_op, nin=1))


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
    approximate = choice(n, "approximate", GeluApproximate.NONE)
    ctx.emit(n, OpType.GELU, n.inputs[:1], n.outputs[:1], GeluAttrs(approximate=approximate))


def _alpha(op: OpType) -> HandlerFn:
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """One float ``alpha`` attribute (default 1.0)."""
        ctx.emit(n, op, n.inputs[:1], n.outputs[:1], AlphaAttrs(alpha=float(n.attr("alpha", 1.0))))

    handler.__name__ = f"import_{op.name.lower()}"
    return handler


onnx_op("Elu", since=6)(_alpha(OpType.ELU))
onnx_op("Celu", since=12)(_alpha(OpType.CELU))
onnx_op("ThresholdedRelu", since=10)(_alpha(OpType.THRESHOLDED_RELU))


@onnx_op("Selu", since=6)
def import_selu(ctx: ImportContext, n: OnnxNode) -> None:
    d = SeluAttrs()
    ctx.emit(n, OpType.SELU, n.inputs[:1], n.outputs[:1],
             SeluAttrs(alpha=float(n.attr("alpha", d.alpha)), gamma=float(n.attr("gamma", d.gamma))))


@onnx_op("IsInf", since=10)
def import_is_inf(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.IS_INF, n.inputs[:1], n.outputs[:1],
             IsInfAttrs(detect_positive=bool(n.attr("detect_positive", 1)),
                        detect_negative=bool(n.attr("detect_negative", 1))))


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


@onnx_op("PRelu", since=1)
def import_prelu(ctx: ImportContext, n: OnnxNode) -> None:
    """PRelu. Before opset 7 a 1-D slope of the input's channel count applies per channel (axis
    1, as the PyTorch exporters of that time wrote ``nn.PReLU(C)``); opset 7 made the slope
    broadcast from the right, where it would meet the last axis instead."""
    x, slope = n.input(0), n.input(1)
    xt, st = ctx.type(x), ctx.type(slope)
    if (ctx.opset < 7 and st.rank == 1 and xt.rank > 2 and st.shape[0] != 1
            and st.shape[0] == xt.shape[1]):
        value = ctx.value(slope)
        per_channel = ctx.temp(n, "slope")
        if value is not None:
            ctx.add_constant(per_channel, value.reshape((-1,) + (1,) * (xt.rank - 2)))
        else:
            ctx.emit(n, OpType.UNSQUEEZE, (slope,), (per_channel,), AxesAttrs(axes=tuple(range(1, xt.rank - 1))),
                     suffix="slope")
        slope = per_channel
    ctx.emit(n, OpType.PRELU, (x, slope), n.outputs[:1])

