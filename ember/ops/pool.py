"""MaxPool, AveragePool, LpPool (with ceil_mode, dilations, auto_pad) and GlobalAveragePool."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops.attrs import LpPoolAttrs, MaxUnpoolAttrs, PoolAttrs
from ember.ops.common import need, require
from ember.ops.conv import window_out_dims
from ember.ops.registry import register_op

Types = Sequence[Optional[TensorType]]
Consts = Sequence[Optional[np.ndarray]]


def _pool(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Pool(x[N, C, *S]) -> [N, C, *S'] with S' from the window formula (ceil_mode aware)."""
    a: PoolAttrs = node.attrs.pool if isinstance(node.attrs, LpPoolAttrs) else node.attrs
    x = need(in_types[0] if in_types else None, "X")
    n = len(a.kernel_shape)
    require(x.rank == n + 2, f"{node.op} with a {n}-D kernel needs a rank-{n + 2} input, got {x}")
    require(len(a.strides) == n and len(a.dilations) == n,
            f"{node.op} strides {a.strides} and dilations {a.dilations} must have {n} entries")
    require(not a.pads or len(a.pads) == 2 * n, f"{node.op} pads {a.pads} must have {2 * n} entries")
    spatial = window_out_dims(x.shape[2:], a.kernel_shape, a.strides, a.dilations, a.pads,
                              a.auto_pad, ceil_mode=a.ceil_mode)
    y = x.with_shape((x.shape[0], x.shape[1], *spatial))
    if node.op is OpType.MAX_POOL and len(node.outputs) > 1:  # Indices: flat int64 positions in x
        return [y, TensorType(DType.INT64, y.shape)]
    return [y]


register_op(OpType.MAX_POOL, attrs=PoolAttrs)(_pool)
register_op(OpType.AVERAGE_POOL, attrs=PoolAttrs)(_pool)
register_op(OpType.LP_POOL, attrs=LpPoolAttrs)(_pool)


@register_op(OpType.GLOBAL_AVERAGE_POOL)
def infer_global_average_pool(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """GlobalAveragePool(x[N, C, *S]) -> [N, C, 1, ..., 1]."""
    x = need(in_types[0] if in_types else None, "X")
    require(x.rank >= 3, f"GlobalAveragePool needs a rank >= 3 input, got {x}")
    return [x.with_shape((x.shape[0], x.shape[1]) + (1,) * (x.rank - 2))]


@register_op(OpType.MAX_UNPOOL, attrs=MaxUnpoolAttrs)
def infer_max_unpool(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """MaxUnpool(X[N, C, *S], I, output_shape?) -> [N, C, *S'] with S' from output_shape or
    ``(S - 1) * stride + kernel - pads``."""
    a: MaxUnpoolAttrs = node.attrs
    x = need(in_types[0] if in_types else None, "X")
    n = len(a.kernel_shape)
    require(x.rank == n + 2, f"MaxUnpool with a {n}-D kernel needs a rank-{n + 2} input, got {x}")
    shape_v = consts[2] if len(consts) > 2 else None
    if len(node.inputs) > 2 and node.inputs[2]:
        if shape_v is None:
            return [x.with_shape((x.shape[0], x.shape[1], *(f"{node.outputs[0]}#{i}" for i in range(n))))]
        return [x.with_shape(tuple(int(v) for v in np.asarray(shape_v).reshape(-1)))]
    strides = a.strides or (1,) * n
    pads = a.pads or (0,) * (2 * n)
    spatial = [(d - 1) * s + k - pads[i] - pads[i + n] if isinstance(d, int) else f"{node.outputs[0]}#{i}"
               for i, (d, s, k) in enumerate(zip(x.shape[2:], strides, a.kernel_shape))]
    return [x.with_shape((x.shape[0], x.shape[1], *spatial))]
