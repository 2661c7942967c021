"""Ops that read or write elements by index: GatherElements, GatherND, ScatterND,
ScatterElements, OneHot, and Trilu (which keeps elements by their row/column index).

``Gather`` itself is a data-movement op of ``ember.ops.shape``. OneHot's depth and Trilu's k are
attrs when constant at import (``None``: input 1 at run time).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ember.errors import ShapeError
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType
from ember.ops.attrs import AxisAttrs, GatherNDAttrs, OneHotAttrs, ScatterAttrs, TriluAttrs
from ember.ops.common import Consts, Types, const_at, need_input, norm_axis, require, same_dtype
from ember.ops.registry import register_op


@register_op(OpType.GATHER_ELEMENTS, attrs=AxisAttrs)
def infer_gather_elements(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """GatherElements(data, indices): indices' shape, data's dtype."""
    data, idx = need_input(in_types, 0, "data"), need_input(in_types, 1, "indices")
    require(data.rank == idx.rank, f"GatherElements data {data} and indices {idx} must have one rank")
    require(idx.dtype in (DType.INT64, DType.INT32), f"GatherElements indices must be int32/int64, got {idx}")
    norm_axis(node.attrs.axis, data.rank, "GatherElements axis")
    return [TensorType(data.dtype, idx.shape)]


@register_op(OpType.GATHER_ND, attrs=GatherNDAttrs)
def infer_gather_nd(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """GatherND: ``indices.shape[:-1] + data.shape[batch_dims + indices.shape[-1]:]``."""
    data, idx = need_input(in_types, 0, "data"), need_input(in_types, 1, "indices")
    b: int = node.attrs.batch_dims
    last = idx.shape[-1] if idx.rank >= 1 else None
    if not isinstance(last, int):
        raise ShapeError(f"GatherND indices {idx} need a known last dim")
    require(b + last <= data.rank, f"GatherND indices {idx} index more dims than data {data} has")
    return [TensorType(data.dtype, tuple(idx.shape[:-1]) + tuple(data.shape[b + last:]))]


def _scatter(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """ScatterND / ScatterElements(data, indices, updates): data's type."""
    data = need_input(in_types, 0, "data")
    need_input(in_types, 1, "indices")
    updates = need_input(in_types, 2, "updates")
    same_dtype([data, updates], f"{node.op} data and updates")
    return [data]


for _op in (OpType.SCATTER_ND, OpType.SCATTER_ELEMENTS):
    register_op(_op, attrs=ScatterAttrs)(_scatter)


@register_op(OpType.ONE_HOT, attrs=OneHotAttrs)
def infer_one_hot(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """OneHot(indices, depth, values[off, on]): a ``depth`` axis inserted at ``axis``."""
    idx, values = need_input(in_types, 0, "indices"), need_input(in_types, 2, "values")
    require(values.rank == 1, f"OneHot values must be 1-D [off, on], got {values}")
    axis = norm_axis(node.attrs.axis, idx.rank + 1, "OneHot axis")
    depth: Optional[int] = node.attrs.depth
    depth_value = const_at(consts, 1)
    if depth is None and depth_value is not None:
        depth = int(np.asarray(depth_value).reshape(-1)[0])
    dim: Dim = depth if depth is not None else f"{node.outputs[0]}_d{axis}"
    shape = list(idx.shape)
    shape.insert(axis, dim)
    return [TensorType(values.dtype, tuple(shape))]


@register_op(OpType.TRILU, attrs=TriluAttrs)
def infer_trilu(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Trilu(x, k?): x's type (the upper or lower triangle kept, the rest zero)."""
    x = need_input(in_types, 0, "input")
    require(x.rank >= 2, f"Trilu needs a rank >= 2 input, got {x}")
    return [x]
