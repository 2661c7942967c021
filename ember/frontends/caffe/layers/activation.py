"""Element-wise layers: ReLU (negative_slope), PReLU (channel_shared), Sigmoid, TanH, ELU,
AbsVal, Power, Exp, Log, BNLL, Threshold, Clip and Swish."""
from __future__ import annotations

import math

from ember.frontends.caffe.context import CaffeContext, CaffeLayer, reject
from ember.frontends.caffe.registry import caffe_layer
from ember.ir.dtype import DType
from ember.ir.optype import OpType
from ember.ops.attrs import AlphaAttrs, CastAttrs, ClipAttrs, LeakyReluAttrs

_UNARY = {"Sigmoid": OpType.SIGMOID, "TanH": OpType.TANH, "AbsVal": OpType.ABS, "BNLL": OpType.SOFTPLUS}


@caffe_layer(*_UNARY)
def unary(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """Sigmoid, TanH, AbsVal; BNLL is log(1 + exp(x)), Softplus."""
    layer.count(bottoms=1, tops=1)
    ctx.emit(layer, _UNARY[layer.type], (layer.bottom(),), (layer.top(),))


@caffe_layer("ReLU")
def relu(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """max(x, 0) + negative_slope * min(x, 0)."""
    layer.count(bottoms=1, tops=1)
    slope = float(layer.param.relu_param.negative_slope)
    if slope == 0.0:
        ctx.emit(layer, OpType.RELU, (layer.bottom(),), (layer.top(),))
    else:
        ctx.emit(layer, OpType.LEAKY_RELU, (layer.bottom(),), (layer.top(),), LeakyReluAttrs(alpha=slope))


@caffe_layer("PReLU")
def prelu(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """A learned slope per channel (axis 1), or one for all (channel_shared)."""
    layer.count(bottoms=1, tops=1)
    x = ctx.type(layer.bottom())
    if x.rank < 2:
        raise reject(f"PReLU needs a bottom with a channel axis; this one is {x}")
    shared = bool(layer.param.prelu_param.channel_shared)
    layer.extra_blobs(1)
    if shared:
        slope = layer.blob(0, (), "slope", 1).reshape((1,) * (x.rank - 1))
    else:
        channels = x.shape[1]
        if not isinstance(channels, int):
            raise reject(f"its channel count must be known at import; the bottom is {x}")
        slope = layer.blob(0, (channels,), "slopes", 1).reshape((channels,) + (1,) * (x.rank - 2))
    ctx.emit(layer, OpType.PRELU, (layer.bottom(), ctx.weight(layer, "slope", slope)), (layer.top(),))


@caffe_layer("ELU")
def elu(ctx: CaffeContext, layer: CaffeLayer) -> None:
    layer.count(bottoms=1, tops=1)
    ctx.emit(layer, OpType.ELU, (layer.bottom(),), (layer.top(),),
             AlphaAttrs(alpha=float(layer.param.elu_param.alpha)))


def affine(ctx: CaffeContext, layer: CaffeLayer, x: str, scale: float, shift: float, last: str = "") -> str:
    """``shift + scale * x`` with the identity steps left out; the result is written to ``last``
    when given (else a fresh tensor, or ``x`` itself when nothing is to be done)."""
    steps = [(OpType.MUL, scale, "scale")] if scale != 1.0 else []
    if shift != 0.0:
        steps.append((OpType.ADD, shift, "shift"))
    for i, (op, value, what) in enumerate(steps):
        out = last if (last and i == len(steps) - 1) else ctx.temp(layer, what)
        ctx.emit(layer, op, (x, ctx.scalar(layer, what, value)), (out,), suffix=what)
        x = out
    return x


def _finish(ctx: CaffeContext, layer: CaffeLayer, x: str) -> None:
    """Writes ``x`` to the layer's top (an Identity when no step was needed)."""
    if x != layer.top():
        ctx.emit(layer, OpType.IDENTITY, (x,), (layer.top(),))


@caffe_layer("Power")
def power(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """(shift + scale * x) ^ power."""
    layer.count(bottoms=1, tops=1)
    p = layer.param.power_param
    exponent = float(p.power)
    if exponent == 1.0:
        _finish(ctx, layer, affine(ctx, layer, layer.bottom(), float(p.scale), float(p.shift), layer.top()))
        return
    base = affine(ctx, layer, layer.bottom(), float(p.scale), float(p.shift))
    ctx.emit(layer, OpType.POW, (base, ctx.scalar(layer, "power", exponent)), (layer.top(),))


def _log_base(base: float, layer: CaffeLayer) -> float:
    if base == -1.0:
        return 1.0  # Caffe's default: the natural base
    if base <= 0.0:
        raise reject(f"base {base:g} must be positive (or -1 for e)")
    return math.log(base)


@caffe_layer("Exp")
def exp(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """base ^ (shift + scale * x) = exp(ln(base) * (shift + scale * x))."""
    layer.count(bottoms=1, tops=1)
    p = layer.param.exp_param
    ln = _log_base(float(p.base), layer)
    x = affine(ctx, layer, layer.bottom(), float(p.scale) * ln, float(p.shift) * ln)
    ctx.emit(layer, OpType.EXP, (x,), (layer.top(),))


@caffe_layer("Log")
def log(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """log_base(shift + scale * x) = ln(shift + scale * x) / ln(base)."""
    layer.count(bottoms=1, tops=1)
    p = layer.param.log_param
    ln = _log_base(float(p.base), layer)
    x = affine(ctx, layer, layer.bottom(), float(p.scale), float(p.shift))
    if ln == 1.0:
        ctx.emit(layer, OpType.LOG, (x,), (layer.top(),))
        return
    y = ctx.temp(layer, "ln")
    ctx.emit(layer, OpType.LOG, (x,), (y,), suffix="log")
    ctx.emit(layer, OpType.MUL, (y, ctx.scalar(layer, "inv_ln_base", 1.0 / ln)), (layer.top(),))


@caffe_layer("Threshold")
def threshold(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """1 where x > threshold, else 0."""
    layer.count(bottoms=1, tops=1)
    above = ctx.temp(layer, "above")
    t = ctx.scalar(layer, "threshold", float(layer.param.threshold_param.threshold))
    ctx.emit(layer, OpType.GREATER, (layer.bottom(), t), (above,), suffix="compare")
    ctx.emit(layer, OpType.CAST, (above,), (layer.top(),), CastAttrs(to=DType.FLOAT32))


@caffe_layer("Clip")
def clip(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """min(max(x, min), max) (BVLC Caffe's Clip layer)."""
    layer.count(bottoms=1, tops=1)
    p = layer.param.clip_param
    if not (p.HasField("min") and p.HasField("max")):
        raise reject("clip_param needs both min and max")
    ctx.emit(layer, OpType.CLIP, (layer.bottom(),), (layer.top(),), ClipAttrs(min=float(p.min), max=float(p.max)))


@caffe_layer("Swish")
def swish(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """x * sigmoid(beta * x)."""
    layer.count(bottoms=1, tops=1)
    beta = float(layer.param.swish_param.beta)
    scaled = affine(ctx, layer, layer.bottom(), beta, 0.0)
    gate = ctx.temp(layer, "sigmoid")
    ctx.emit(layer, OpType.SIGMOID, (scaled,), (gate,), suffix="sigmoid")
    ctx.emit(layer, OpType.MUL, (layer.bottom(), gate), (layer.top(),))

