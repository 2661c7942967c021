"""Ops that work along axes: the reductions (ReduceMean/Sum/Max/Min/Prod/L1/L2/SumSquare/
LogSum/LogSumExp), ArgMax/ArgMin, and the ops that scan or select along one axis (CumSum, TopK).

``axes`` is an attr when it was constant at import; with ``axes=None`` and an input 1 the axes
come at run time (output dims become fresh symbols; with ``keepdims=0`` the output rank is the
input rank minus the axes input's length). ``axes=None`` and no input 1 reduces every axis,
unless ``noop_with_empty_axes`` is set (then the op is an identity). CumSum's axis and TopK's k
are attrs when constant at import (``None``: input 1 at run time).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType
from ember.ops.attrs import ArgReduceAttrs, CumSumAttrs, ReduceAttrs, TopKAttrs
from ember.ops.common import (
    Consts,
    Types,
    const_at,
    const_ints,
    fresh_dims,
    need,
    need_input,
    norm_axes,
    norm_axis,
    require,
)
from ember.ops.registry import register_op


def reduced_axes(attrs: ReduceAttrs, rank: int,
                 axes_value: Optional[np.ndarray] = None) -> Optional[tuple[int, ...]]:
    """The normalized axes a reduction reduces, or None when the op is an identity.

    ``axes_value`` is the run-time axes input, used when ``attrs.axes`` is None.
    """
    axes = attrs.axes if attrs.axes is not None else (
        const_ints(axes_value) if axes_value is not None else None)
    if not axes:
        return None if attrs.noop_with_empty_axes else tuple(range(rank))
    return tuple(sorted(norm_axes(axes, rank, "reduction axes")))


def infer_reduce(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Output type of a reduction (axes attr or input 1, keepdims, noop_with_empty_axes); shared
    by every Reduce* op."""
    a: ReduceAttrs = node.attrs
    x = need(in_types[0] if in_types else None, "data")
    axes_t = in_types[1] if len(in_types) > 1 else None
    axes_v = consts[1] if len(consts) > 1 else None
    if a.axes is None and axes_t is not None and axes_v is None:
        return [_dynamic_axes(node, x, axes_t)]
    axes = reduced_axes(a, x.rank, axes_v)
    if axes is None:
        return [x]
    if a.keepdims:
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return [x.with_shape(shape)]


def _dynamic_axes(node: Node, x: TensorType, axes_t: TensorType) -> TensorType:
    """Axes known only at run time: the rank is known, the dims are not."""
    require(axes_t.rank == 1, f"{node.op} axes input must be 1-D, got {axes_t}")
    n_axes = axes_t.shape[0]
    rank = x.rank if node.attrs.keepdims else (x.rank - n_axes if isinstance(n_axes, int) else -1)
    require(rank >= 0,
            f"{node.op} with keepdims=0 and run-time axes of unknown length has an unknown rank; "
            f"make the axes a constant")
    return x.with_shape(fresh_dims(node.outputs[0], rank))


for _op in (OpType.REDUCE_MEAN, OpType.REDUCE_SUM, OpType.REDUCE_MAX, OpType.REDUCE_MIN,
            OpType.REDUCE_PROD, OpType.REDUCE_L1, OpType.REDUCE_L2, OpType.REDUCE_SUM_SQUARE,
            OpType.REDUCE_LOG_SUM, OpType.REDUCE_LOG_SUM_EXP):
    register_op(_op, attrs=ReduceAttrs)(infer_reduce)


def _arg_reduce(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    a: ArgReduceAttrs = node.attrs
    x = need_input(in_types, 0, "data")
    require(x.rank >= 1, f"{node.op} needs an input of rank >= 1, got {x}")
    axis = norm_axis(a.axis, x.rank, f"{node.op} axis")
    if a.keepdims:
        shape = tuple(1 if i == axis else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i != axis)
    return [TensorType(DType.INT64, shape)]


for _op in (OpType.ARG_MAX, OpType.ARG_MIN):
    register_op(_op, attrs=ArgReduceAttrs)(_arg_reduce)


@register_op(OpType.CUM_PROD, attrs=CumSumAttrs)
@register_op(OpType.CUM_SUM, attrs=CumSumAttrs)
def infer_cumsum(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """CumSum/CumProd(x, axis): the input's type; the axis (attr or scalar input 1) must be in range."""
    x = need_input(in_types, 0, "x")
    axis: Optional[int] = node.attrs.axis
    if axis is None:
        axis_t = need_input(in_types, 1, "axis")
        require(axis_t.rank == 0 or axis_t.shape == (1,), f"{node.op} axis must be a scalar, got {axis_t}")
        value = const_at(consts, 1)
        axis = const_ints(value)[0] if value is not None else None
    if axis is not None:
        norm_axis(axis, x.rank, f"{node.op} axis")
    return [x]


@register_op(OpType.TOP_K, attrs=TopKAttrs)
def infer_topk(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """TopK(x, k) -> (values, int64 indices), the axis dim becoming k."""
    x = need_input(in_types, 0, "X")
    axis = norm_axis(node.attrs.axis, x.rank, "TopK axis")
    k: Optional[int] = node.attrs.k
    k_value = const_at(consts, 1)
    if k is None and k_value is not None:
        k = const_ints(k_value)[0]
    dim: Dim = k if k is not None else f"{node.outputs[0]}_d{axis}"
    size = x.shape[axis]
    if k is not None and isinstance(size, int):
        require(0 <= k <= size, f"TopK k={k} is out of range for axis {axis} of {x}")
    shape = tuple(dim if i == axis else d for i, d in enumerate(x.shape))
    return [TensorType(x.dtype, shape), TensorType(DType.INT64, shape)]
