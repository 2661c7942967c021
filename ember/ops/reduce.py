"""ReduceMean, ReduceSum, ReduceMax.

``axes`` is an attr when it was constant at import; with ``axes=None`` and an input 1 the axes
come at run time (output dims become fresh symbols; with ``keepdims=0`` the output rank is the
input rank minus the axes input's length). ``axes=None`` and no input 1 reduces every axis,
unless ``noop_with_empty_axes`` is set (then the op is an identity).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType
from ember.ops.attrs import ReduceAttrs
from ember.ops.common import const_ints, fresh_dims, need, norm_axes, require
from ember.ops.registry import register_op

Types = Sequence[Optional[TensorType]]
Consts = Sequence[Optional[np.ndarray]]


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
    by every Reduce* op, including those registered in ``ember.ops.extra``."""
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
    rank: Dim = x.rank if node.attrs.keepdims else (
        x.rank - axes_t.shape[0] if isinstance(axes_t.shape[0], int) else -1)
    require(isinstance(rank, int) and rank >= 0,
            f"{node.op} with keepdims=0 and run-time axes of unknown length has an unknown rank; "
            f"make the axes a constant")
    return x.with_shape(fresh_dims(node.outputs[0], rank))  # type: ignore[arg-type]


for _op in (OpType.REDUCE_MEAN, OpType.REDUCE_SUM, OpType.REDUCE_MAX):
    register_op(_op, attrs=ReduceAttrs)(infer_reduce)
