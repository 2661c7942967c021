"""Normalizations (LRN, LayerNormalization, SkipLayerNormalization, InstanceNormalization,
GroupNormalization) and Softmax / LogSoftmax: the output has the input's shape."""
from __future__ import annotations

from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops.attrs import (
    AxisAttrs,
    GroupNormAttrs,
    InstanceNormAttrs,
    LayerNormAttrs,
    LossAttrs,
    LossReduction,
    LRNAttrs,
    RMSNormAttrs,
    SoftmaxAttrs,
)
from ember.ops.common import Consts, Types, broadcast_shapes, need, need_input, norm_axis, require
from ember.ops.registry import register_op


@register_op(OpType.LRN, attrs=LRNAttrs)
def infer_lrn(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """LRN(x[N, C, ...]) across channels."""
    x = need(in_types[0] if in_types else None, "X")
    require(x.rank >= 3, f"LRN needs a rank >= 3 input, got {x}")
    require(node.attrs.size >= 1, f"LRN size must be positive, got {node.attrs.size}")
    return [x]


@register_op(OpType.LAYER_NORM, attrs=LayerNormAttrs)
def infer_layer_norm(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """LayerNormalization(x, scale, bias?) over axes [axis, rank); scale/bias broadcast there."""
    x = need(in_types[0] if in_types else None, "X")
    axis = norm_axis(node.attrs.axis, x.rank, "LayerNormalization axis")
    normalized = x.shape[axis:]
    for i, name in ((1, "Scale"), (2, "B")):
        t = in_types[i] if i < len(in_types) else None
        if t is None:
            require(i == 2, "LayerNormalization needs its Scale input")
            continue
        require(t.rank <= len(normalized),
                f"LayerNormalization {name} {t} has more dims than the normalized shape {normalized}")
        broadcast_shapes(normalized, t.shape)
    return [x]


@register_op(OpType.RMS_NORM, attrs=RMSNormAttrs)
def infer_rms_norm(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """RMSNormalization(x, scale) over axes [axis, rank); scale broadcasts there."""
    x = need(in_types[0] if in_types else None, "X")
    require(x.dtype.is_float, f"RMSNormalization needs a floating-point input, got {x}")
    axis = norm_axis(node.attrs.axis, x.rank, "RMSNormalization axis")
    scale = need_input(in_types, 1, "scale")
    require(scale.rank <= x.rank - axis,
            f"RMSNormalization scale {scale} has more dims than the normalized shape {x.shape[axis:]}")
    broadcast_shapes(x.shape[axis:], scale.shape)
    return [x]


@register_op(OpType.HARDMAX, attrs=AxisAttrs)
def infer_hardmax(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Hardmax(x): 1 at the first maximum along ``axis``, 0 elsewhere (the input's type)."""
    x = need(in_types[0] if in_types else None, "X")
    if x.rank:
        norm_axis(node.attrs.axis, x.rank, "Hardmax axis")
    return [x]


@register_op(OpType.SKIP_LAYER_NORM, attrs=LayerNormAttrs)
def infer_skip_layer_norm(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """SkipLayerNormalization(x, skip, scale, bias?) = LayerNormalization(x + skip, scale, bias):
    ``skip`` has ``x``'s type (the residual add it absorbed did not broadcast)."""
    x = need(in_types[0] if in_types else None, "X")
    skip = need(in_types[1] if len(in_types) > 1 else None, "Skip")
    require(skip == x, f"SkipLayerNormalization skip {skip} must have the input's type {x}")
    return infer_layer_norm(node, [x, *in_types[2:]], [consts[0], *consts[2:]] if consts else consts)


def _softmax(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    x = need(in_types[0] if in_types else None, "X")
    require(x.dtype.is_float, f"{node.op} needs a floating-point input, got {x}")
    if x.rank:
        norm_axis(node.attrs.axis, x.rank, f"{node.op} axis")
    return [x]


register_op(OpType.SOFTMAX, attrs=SoftmaxAttrs)(_softmax)
register_op(OpType.LOG_SOFTMAX, attrs=SoftmaxAttrs)(_softmax)


@register_op(OpType.INSTANCE_NORM, attrs=InstanceNormAttrs)
def infer_instance_norm(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """InstanceNormalization(x[N, C, ...], scale[C], B[C])."""
    x = need_input(in_types, 0, "input")
    require(x.rank >= 3 and x.dtype.is_float, f"InstanceNormalization needs a float rank >= 3 input, got {x}")
    for i, name in ((1, "scale"), (2, "B")):
        t = need_input(in_types, i, name)
        require(t.rank == 1, f"InstanceNormalization {name} must be 1-D [C], got {t}")
        broadcast_shapes((x.shape[1],), t.shape)
    return [x]


@register_op(OpType.GROUP_NORM, attrs=GroupNormAttrs)
def infer_group_norm(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """GroupNormalization(x[N, C, ...], scale, bias): scale/bias [C] (opset 21) or [groups] (18)."""
    x = need_input(in_types, 0, "X")
    g: int = node.attrs.num_groups
    require(x.rank >= 3 and x.dtype.is_float, f"GroupNormalization needs a float rank >= 3 input, got {x}")
    c = x.shape[1]
    if isinstance(c, int):
        require(g >= 1 and c % g == 0, f"GroupNormalization channels {c} are not divisible by num_groups {g}")
    want = c if node.attrs.per_channel_affine else g
    for i, name in ((1, "scale"), (2, "bias")):
        t = need_input(in_types, i, name)
        require(t.rank == 1, f"GroupNormalization {name} must be 1-D, got {t}")
        broadcast_shapes((want,), t.shape)
    return [x]


def _infer_loss(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """NLL / softmax cross-entropy loss(x[N, C, *d], target[N, *d] int, weight[C]?) -> the loss
    (a scalar, or target's shape for reduction none) and, for the softmax one, log_prob."""
    x, target = need_input(in_types, 0, "input"), need_input(in_types, 1, "target")
    require(x.rank >= 2 and x.dtype.is_float, f"{node.op} needs a float input [N, C, ...], got {x}")
    require(target.rank == x.rank - 1 and target.dtype.is_int,
            f"{node.op} target {target} must be integer [N, ...] for input {x}")
    a: LossAttrs = node.attrs
    loss = x.with_shape(target.shape if a.reduction is LossReduction.NONE else ())
    return [loss, x] if node.op is OpType.SOFTMAX_CROSS_ENTROPY else [loss]


register_op(OpType.NLL_LOSS, attrs=LossAttrs)(_infer_loss)
register_op(OpType.SOFTMAX_CROSS_ENTROPY, attrs=LossAttrs)(_infer_loss)
