"""LRN (ACROSS_CHANNELS and WITHIN_CHANNEL), BatchNorm (its scale-factor blob, use_global_stats,
eps), Scale and Bias (learned or from a second bottom; axis, num_axes)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ember.frontends.caffe import caffe_pb2
from ember.frontends.caffe.context import CaffeContext, CaffeLayer, reject
from ember.frontends.caffe.layers.common import static_dims, trailing_ones
from ember.frontends.caffe.registry import caffe_layer
from ember.ir.optype import OpType
from ember.ops.attrs import BatchNormAttrs, LRNAttrs, PoolAttrs, ReduceAttrs, ReshapeAttrs

_LRN = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["lrn_param"].message_type
WITHIN_CHANNEL = _LRN.enum_types_by_name["NormRegion"].values_by_name["WITHIN_CHANNEL"].number


@caffe_layer("LRN")
def lrn(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """ACROSS_CHANNELS: x / (k + alpha/n * sum over n channels of x^2)^beta, ONNX's LRN.
    WITHIN_CHANNEL: x / (1 + alpha * mean over an n x n window of x^2)^beta, the window padded
    with zeros that count (Caffe builds it from a Power, an AVE Pooling and another Power; k is
    not used)."""
    layer.count(bottoms=1, tops=1)
    p = layer.param.lrn_param
    size = int(p.local_size)
    if size < 1 or size % 2 == 0:
        raise reject(f"local_size {size} must be odd (Caffe checks the same)")
    x = layer.bottom()
    if ctx.type(x).rank != 4:
        raise reject(f"Caffe's LRN takes 4-D blobs; this bottom is {ctx.type(x)}")
    if p.norm_region != WITHIN_CHANNEL:
        ctx.emit(layer, OpType.LRN, (x,), (layer.top(),),
                 LRNAttrs(size=size, alpha=float(p.alpha), beta=float(p.beta), bias=float(p.k)))
        return
    half = (size - 1) // 2
    square, mean, scale, denom = (ctx.temp(layer, w) for w in ("square", "mean", "scale", "denominator"))
    ctx.emit(layer, OpType.MUL, (x, x), (square,), suffix="square")
    ctx.emit(layer, OpType.AVERAGE_POOL, (square,), (mean,),
             PoolAttrs(kernel_shape=(size, size), strides=(1, 1), pads=(half,) * 4, dilations=(1, 1),
                       count_include_pad=True), suffix="pool")
    ctx.emit(layer, OpType.MUL, (mean, ctx.scalar(layer, "alpha", float(p.alpha))), (scale,), suffix="alpha")
    shifted = ctx.temp(layer, "shifted")
    ctx.emit(layer, OpType.ADD, (scale, ctx.scalar(layer, "one", 1.0)), (shifted,), suffix="shift")
    ctx.emit(layer, OpType.POW, (shifted, ctx.scalar(layer, "beta", -float(p.beta))), (denom,), suffix="power")
    ctx.emit(layer, OpType.MUL, (x, denom), (layer.top(),))


@caffe_layer("BatchNorm")
def batch_norm(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """(x - mean / s) / sqrt(variance / s + eps) per channel (axis 1), where s is the third
    blob, Caffe's moving-average scale factor (0 means no statistics: mean and variance 0). With
    ``use_global_stats: false`` the statistics are the batch's own, as Caffe computes them then."""
    layer.count(bottoms=1, tops=1)
    p = layer.param.batch_norm_param
    x = layer.bottom()
    t = ctx.type(x)
    if t.rank < 2:
        raise reject(f"BatchNorm needs a channel axis; this bottom is {t}")
    eps = float(p.eps)
    if p.HasField("use_global_stats") and not p.use_global_stats:
        _batch_statistics(ctx, layer, x, t.rank, eps)
        return
    (channels,) = static_dims(ctx, x, t.shape[1:2], "the channel count")
    layer.extra_blobs(3)
    mean = layer.blob(0, (channels,), "mean", 3)
    var = layer.blob(1, (channels,), "variance", 3)
    factor = float(layer.blob(2, (1,), "moving-average scale factor", 3).reshape(-1)[0])
    inv = 0.0 if factor == 0.0 else 1.0 / factor
    inputs = (x, ctx.weight(layer, "scale", np.ones(channels, np.float32)),
              ctx.weight(layer, "bias", np.zeros(channels, np.float32)),
              ctx.weight(layer, "mean", mean * np.float32(inv)),
              ctx.weight(layer, "variance", var * np.float32(inv)))
    ctx.emit(layer, OpType.BATCH_NORM, inputs, (layer.top(),), BatchNormAttrs(epsilon=eps))


def _batch_statistics(ctx: CaffeContext, layer: CaffeLayer, x: str, rank: int, eps: float) -> None:
    axes = (0,) + tuple(range(2, rank))
    red = ReduceAttrs(axes=axes, keepdims=True)
    mean, centered, square, var, shifted, std = (
        ctx.temp(layer, w) for w in ("mean", "centered", "square", "variance", "shifted", "std"))
    ctx.emit(layer, OpType.REDUCE_MEAN, (x,), (mean,), red, suffix="mean")
    ctx.emit(layer, OpType.SUB, (x, mean), (centered,), suffix="center")
    ctx.emit(layer, OpType.MUL, (centered, centered), (square,), suffix="square")
    ctx.emit(layer, OpType.REDUCE_MEAN, (square,), (var,), red, suffix="variance")
    ctx.emit(layer, OpType.ADD, (var, ctx.scalar(layer, "eps", eps)), (shifted,), suffix="eps")
    ctx.emit(layer, OpType.SQRT, (shifted,), (std,), suffix="std")
    ctx.emit(layer, OpType.DIV, (centered, std), (layer.top(),))


def _param_shape(ctx: CaffeContext, layer: CaffeLayer, x: str, axis: int, num_axes: int) -> tuple[int, ...]:
    rank = ctx.type(x).rank
    end = rank if num_axes == -1 else axis + num_axes
    if num_axes < -1 or end > rank:
        raise reject(f"num_axes {num_axes} from axis {axis} runs past the bottom's {rank} axes")
    return static_dims(ctx, x, ctx.type(x).shape[axis:end], "the shape of its learned parameter")


def _broadcast_bottom(ctx: CaffeContext, layer: CaffeLayer, b: str, axis: int, rank: int) -> str:
    """The second bottom reshaped to broadcast against the first from ``axis`` on."""
    t = ctx.type(b)
    extra = rank - axis - t.rank
    if extra < 0:
        raise reject(f"its second bottom {t} does not fit the first bottom's axes from {axis}")
    if extra == 0:
        return b
    out = ctx.temp(layer, "broadcast")
    shape = ctx.ints(layer, "broadcast_shape", [0] * t.rank + [1] * extra)
    ctx.emit(layer, OpType.RESHAPE, (b, shape), (out,), ReshapeAttrs(), suffix="broadcast")
    return out


def _scale_or_bias(ctx: CaffeContext, layer: CaffeLayer, op: OpType, axis_field: int, num_axes: int,
                   bias_term: bool) -> None:
    """Scale (op MUL, optional bias) and Bias (op ADD): the operand is the second bottom, or a
    learned blob of shape ``bottom.shape[axis:axis + num_axes]``."""
    if len(layer.bottoms) not in (1, 2):
        raise reject(f"it takes 1 or 2 bottoms, the network gives {len(layer.bottoms)}")
    layer.count(tops=1, min_bottoms=1)
    x = layer.bottom()
    rank = ctx.type(x).rank
    axis = axis_field + rank if axis_field < 0 else axis_field
    if not 0 <= axis <= rank:
        raise reject(f"axis {axis_field} is out of range for a rank-{rank} bottom")
    blobs_needed = (0 if len(layer.bottoms) == 2 else 1) + (1 if bias_term and op is OpType.MUL else 0)
    layer.extra_blobs(blobs_needed)
    if len(layer.bottoms) == 2:
        operand = _broadcast_bottom(ctx, layer, layer.bottom(1), axis, rank)
        shape = static_dims(ctx, layer.bottom(1), ctx.type(layer.bottom(1)).shape, "the second bottom's shape")
        next_blob = 0
    else:
        shape = _param_shape(ctx, layer, x, axis, num_axes)
        what = "scale" if op is OpType.MUL else "bias"
        value = layer.blob(0, shape, what, blobs_needed)
        operand = ctx.weight(layer, what, value.reshape(trailing_ones(shape, axis, rank)))
        next_blob = 1
    bias: Optional[str] = None
    if bias_term and op is OpType.MUL:
        value = layer.blob(next_blob, shape, "bias", blobs_needed)
        bias = ctx.weight(layer, "bias", value.reshape(trailing_ones(shape, axis, rank)))
    if bias is None:
        ctx.emit(layer, op, (x, operand), (layer.top(),))
        return
    scaled = ctx.temp(layer, "scaled")
    ctx.emit(layer, op, (x, operand), (scaled,))
    ctx.emit(layer, OpType.ADD, (scaled, bias), (layer.top(),), suffix="bias")


@caffe_layer("Scale")
def scale(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """x * scale (+ bias), the scale learned or the second bottom, along ``axis`` for
    ``num_axes`` axes (default: the channels); after a BatchNorm this is its affine part, which
    the optimizer folds into the convolution before it."""
    p = layer.param.scale_param
    _scale_or_bias(ctx, layer, OpType.MUL, int(p.axis), int(p.num_axes), bool(p.bias_term))


@caffe_layer("Bias")
def bias(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """x + bias, the bias learned or the second bottom."""
    p = layer.param.bias_param
    _scale_or_bias(ctx, layer, OpType.ADD, int(p.axis), int(p.num_axes), False)

