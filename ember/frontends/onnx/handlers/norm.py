"""Normalizations (LRN, LayerNormalization, InstanceNormalization, GroupNormalization) and
Softmax / LogSoftmax."""
from __future__ import annotations

import numpy as np

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import HandlerFn, choice, reject, strip_trailing_empty
from ember.frontends.onnx.registry import onnx_op
from ember.ir.dtype import DType
from ember.ir.optype import OpType
from ember.ops.attrs import (
    AxisAttrs,
    CastAttrs,
    GroupNormAttrs,
    InstanceNormAttrs,
    LayerNormAttrs,
    LossAttrs,
    LossReduction,
    LRNAttrs,
    ReduceAttrs,
    ReshapeAttrs,
    RMSNormAttrs,
    SoftmaxAttrs,
)
from ember.ops.common import norm_axis


@onnx_op("LRN", since=1)
def import_lrn(ctx: ImportContext, n: OnnxNode) -> None:
    size = n.attr("size")
    if size is None:
        raise reject("size is missing (it is required)")
    ctx.emit(n, OpType.LRN, n.inputs[:1], n.outputs[:1],
             LRNAttrs(size=int(size), alpha=float(n.attr("alpha", 1e-4)),
                      beta=float(n.attr("beta", 0.75)), bias=float(n.attr("bias", 1.0))))


@onnx_op("LayerNormalization", since=17)
def import_layer_norm(ctx: ImportContext, n: OnnxNode) -> None:
    """LayerNormalization; used Mean / InvStdDev outputs are computed by extra IR nodes."""
    axis, eps = int(n.attr("axis", -1)), float(n.attr("epsilon", 1e-5))
    inputs = n.inputs[:3] if n.input(2) else n.inputs[:2]
    ctx.emit(n, OpType.LAYER_NORM, inputs, n.outputs[:1], LayerNormAttrs(axis=axis, epsilon=eps))
    if ctx.is_used(n.output(1)) or ctx.is_used(n.output(2)):
        _statistics(ctx, n, axis, eps)


def _statistics(ctx: ImportContext, n: OnnxNode, axis: int, eps: float) -> None:
    """Mean and 1/sqrt(var + eps) over axes [axis, rank), in the stash type (float32)."""
    if int(n.attr("stash_type", 1)) != 1:
        raise reject("stash_type other than 1 (float32) is not supported")
    x = n.input(0)
    t = ctx.type(x)
    axes = tuple(range(norm_axis(axis, t.rank, "LayerNormalization axis"), t.rank))
    if t.dtype is not DType.FLOAT32:
        xf = ctx.temp(n, "x_f32")
        ctx.emit(n, OpType.CAST, (x,), (xf,), CastAttrs(to=DType.FLOAT32), suffix="cast")
        x = xf
    red = ReduceAttrs(axes=axes, keepdims=True)
    mean = n.output(1) or ctx.temp(n, "mean")
    ctx.emit(n, OpType.REDUCE_MEAN, (x,), (mean,), red, suffix="mean")
    centered, square, var = ctx.temp(n, "centered"), ctx.temp(n, "square"), ctx.temp(n, "var")
    ctx.emit(n, OpType.SUB, (x, mean), (centered,), suffix="centered")
    ctx.emit(n, OpType.MUL, (centered, centered), (square,), suffix="square")
    ctx.emit(n, OpType.REDUCE_MEAN, (square,), (var,), red, suffix="var")
    if ctx.is_used(n.output(2)):
        eps_name = ctx.add_scalar(f"{n.name}/epsilon", eps, DType.FLOAT32)
        shifted, std = ctx.temp(n, "var_eps"), ctx.temp(n, "std")
        ctx.emit(n, OpType.ADD, (var, eps_name), (shifted,), suffix="var_eps")
        ctx.emit(n, OpType.SQRT, (shifted,), (std,), suffix="std")
        ctx.emit(n, OpType.RECIPROCAL, (std,), (n.output(2),), suffix="inv_std")


def _softmax(op: OpType, legacy: bool) -> HandlerFn:
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """Opset < 13: axis defaults to 1 and the input is coerced to 2-D at the axis; opset 13+:
        axis defaults to -1 and only that axis is normalized. A legacy softmax over the last axis
        is the same as the modern one and is stored as such."""
        rank = ctx.type(n.input(0)).rank
        axis = int(n.attr("axis", 1 if legacy else -1))
        flatten = legacy and rank > 0 and norm_axis(axis, rank, "softmax axis") != rank - 1
        ctx.emit(n, op, n.inputs[:1], n.outputs[:1], SoftmaxAttrs(axis=axis, legacy_flatten=flatten))

    handler.__name__ = f"import_{op.name.lower()}{'_legacy' if legacy else ''}"
    return handler


for _name, _op in (("Softmax", OpType.SOFTMAX), ("LogSoftmax", OpType.LOG_SOFTMAX)):
    onnx_op(_name, since=1)(_softmax(_op, legacy=True))
    onnx_op(_name, since=13)(_softmax(_op, legacy=False))


@onnx_op("InstanceNormalization", since=6)
def import_instance_norm(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.INSTANCE_NORM, n.inputs[:3], n.outputs[:1],
             InstanceNormAttrs(epsilon=float(n.attr("epsilon", 1e-5))))


def _group_norm(per_channel: bool) -> HandlerFn:
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """Opset 18: scale/bias per group; opset 21: per channel (18 was deprecated for that)."""
        groups = n.attr("num_groups")
        if groups is None:
            raise reject("num_groups is missing (it is required)")
        if int(n.attr("stash_type", 1)) != 1:
            raise reject("stash_type other than 1 (float32) is not supported")
        ctx.emit(n, OpType.GROUP_NORM, n.inputs[:3], n.outputs[:1],
                 GroupNormAttrs(num_groups=int(groups), epsilon=float(n.attr("epsilon", 1e-5)),
                                per_channel_affine=per_channel))

    handler.__name__ = f"import_group_norm_{21 if per_channel else 18}"
    return handler


onnx_op("GroupNormalization", since=18)(_group_norm(per_channel=False))
onnx_op("GroupNormalization", since=21)(_group_norm(per_channel=True))


@onnx_op("RMSNormalization", since=23)
def import_rms_norm(ctx: ImportContext, n: OnnxNode) -> None:
    if int(n.attr("stash_type", 1)) != 1:
        raise reject("stash_type other than 1 (float32) is not supported")
    ctx.emit(n, OpType.RMS_NORM, n.inputs[:2], n.outputs[:1],
             RMSNormAttrs(axis=int(n.attr("axis", -1)), epsilon=float(n.attr("epsilon", 1e-5))))


def _hardmax(legacy: bool) -> HandlerFn:
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """Opset < 13: axis defaults to 1 and the input is coerced to 2-D there (a Flatten, the
        Hardmax over axis 1, a Reshape back); opset 13+: axis defaults to -1, that axis only."""
        axis = int(n.attr("axis", 1 if legacy else -1))
        x = ctx.type(n.input(0))
        if not legacy or x.rank == 0 or norm_axis(axis, x.rank, "Hardmax axis") == x.rank - 1:
            ctx.emit(n, OpType.HARDMAX, n.inputs[:1], n.outputs[:1], AxisAttrs(axis=-1 if legacy else axis))
            return
        if not x.is_static:
            raise reject(f"opset {n.opset} Hardmax over axis {axis} of a symbolic shape {x}")
        flat, out2d = ctx.temp(n, "flat"), ctx.temp(n, "hardmax2d")
        ctx.emit(n, OpType.FLATTEN, n.inputs[:1], (flat,), AxisAttrs(axis=axis), suffix="flatten")
        ctx.emit(n, OpType.HARDMAX, (flat,), (out2d,), AxisAttrs(axis=1), suffix="hardmax")
        shape = ctx.add_constant(ctx.temp(n, "shape"), np.array(x.shape, dtype=np.int64))
        ctx.emit(n, OpType.RESHAPE, (out2d, shape), n.outputs[:1], ReshapeAttrs(), suffix="reshape")

    handler.__name__ = f"import_hardmax{'_legacy' if legacy else ''}"
    return handler


onnx_op("Hardmax", since=1)(_hardmax(legacy=True))
onnx_op("Hardmax", since=13)(_hardmax(legacy=False))


def _loss(op: OpType, n_out: int) -> HandlerFn:
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """The loss as a function of its inputs (inference: no gradient)."""
        ignore = n.attr("ignore_index")
        attrs = LossAttrs(reduction=choice(n, "reduction", LossReduction.MEAN),
                          ignore_index=None if ignore is None else int(ignore))
        ctx.emit(n, op, strip_trailing_empty(n.inputs[:3]), n.outputs[:n_out], attrs)

    handler.__name__ = f"import_{op.name.lower()}"
    return handler


onnx_op("NegativeLogLikelihoodLoss", since=12)(_loss(OpType.NLL_LOSS, 1))
onnx_op("SoftmaxCrossEntropyLoss", since=12)(_loss(OpType.SOFTMAX_CROSS_ENTROPY, 2))
