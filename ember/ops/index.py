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
from ember.ops.attrs import (
    AxesAttrs,
    AxisAttrs,
    GatherNDAttrs,
    NMSAttrs,
    OneHotAttrs,
    ReverseSequenceAttrs,
    ScatterAttrs,
    TensorScatterAttrs,
    TriluAttrs,
    UniqueAttrs,
)
from ember.ops.common import (
    Consts,
    Types,
    const_at,
    fresh_dims,
    mul_dims,
    need_input,
    norm_axis,
    require,
    same_dtype,
)
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


@register_op(OpType.NON_MAX_SUPPRESSION, attrs=NMSAttrs)
def infer_nms(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """NonMaxSuppression(boxes[B, N, 4], scores[B, C, N], max_per_class?, iou?, score?) ->
    selected_indices[K, 3] int64 (batch, class, box), K known only at run time."""
    boxes, scores = need_input(in_types, 0, "boxes"), need_input(in_types, 1, "scores")
    require(boxes.rank == 3 and scores.rank == 3 and boxes.dtype.is_float,
            f"NonMaxSuppression needs float boxes [B, N, 4] and scores [B, C, N], got {boxes}, {scores}")
    return [TensorType(DType.INT64, (fresh_dims(node.outputs[0], 1)[0], 3))]


@register_op(OpType.NON_ZERO)
def infer_non_zero(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """NonZero(x) -> int64 [rank, K]: the indices of the nonzero elements, K at run time."""
    x = need_input(in_types, 0, "X")
    return [TensorType(DType.INT64, (x.rank, fresh_dims(node.outputs[0], 1)[0]))]


@register_op(OpType.COMPRESS, attrs=AxesAttrs)
def infer_compress(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Compress(x, condition[bool, 1-D]) along ``axes[0]`` (None: the flattened input)."""
    x, cond = need_input(in_types, 0, "input"), need_input(in_types, 1, "condition")
    require(cond.rank == 1 and cond.dtype is DType.BOOL, f"Compress condition must be a 1-D bool tensor, got {cond}")
    k = fresh_dims(node.outputs[0], 1)[0]
    if node.attrs.axes is None:
        return [x.with_shape((k,))]
    axis = norm_axis(node.attrs.axes[0], x.rank, "Compress axis")
    return [x.with_shape(tuple(k if i == axis else d for i, d in enumerate(x.shape)))]


@register_op(OpType.REVERSE_SEQUENCE, attrs=ReverseSequenceAttrs)
def infer_reverse_sequence(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """ReverseSequence(x, sequence_lens[batch]): the first ``len`` steps of each batch reversed."""
    x, lens = need_input(in_types, 0, "input"), need_input(in_types, 1, "sequence_lens")
    require(x.rank >= 2 and lens.rank == 1, f"ReverseSequence needs a rank >= 2 input and 1-D lengths, got {x}, {lens}")
    a: ReverseSequenceAttrs = node.attrs
    require({norm_axis(a.batch_axis, x.rank, "batch_axis"), norm_axis(a.time_axis, x.rank, "time_axis")} <= {0, 1}
            and a.batch_axis % x.rank != a.time_axis % x.rank,
            f"ReverseSequence batch_axis {a.batch_axis} and time_axis {a.time_axis} must be 0 and 1")
    return [x]


@register_op(OpType.DET)
def infer_det(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Det(x[*, M, M]) -> [*]."""
    x = need_input(in_types, 0, "X")
    require(x.rank >= 2 and x.dtype.is_float, f"Det needs a float tensor [*, M, M], got {x}")
    return [x.with_shape(x.shape[:-2])]


@register_op(OpType.UNIQUE, attrs=UniqueAttrs)
def infer_unique(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Unique(x) -> (Y, indices[K], inverse_indices[N], counts[K]); K known at run time, N the
    input's element count (or its length along ``axis``)."""
    x = need_input(in_types, 0, "X")
    k = fresh_dims(node.outputs[0], 1)[0]
    a: UniqueAttrs = node.attrs
    if a.axis is None:
        y, n = x.with_shape((k,)), mul_dims(list(x.shape))
    else:
        axis = norm_axis(a.axis, x.rank, "Unique axis")
        y, n = x.with_shape(tuple(k if i == axis else d for i, d in enumerate(x.shape))), x.shape[axis]
    return [y, TensorType(DType.INT64, (k,)), TensorType(DType.INT64, (n,)), TensorType(DType.INT64, (k,))]


@register_op(OpType.TENSOR_SCATTER, attrs=TensorScatterAttrs)
def infer_tensor_scatter(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """TensorScatter(past_cache, update, write_indices?) -> present_cache (past_cache's type)."""
    past, update = need_input(in_types, 0, "past_cache"), need_input(in_types, 1, "update")
    require(past.rank == update.rank and past.rank >= 2,
            f"TensorScatter past_cache {past} and update {update} must have one rank (2 or more)")
    axis = norm_axis(node.attrs.axis, past.rank, "TensorScatter axis")
    require(axis > 0, f"TensorScatter axis {node.attrs.axis} must not be the batch axis")
    same_dtype([past, update], "TensorScatter past_cache and update")
    return [past]
