"""Binary / variadic elementwise ops with numpy (multidirectional) broadcasting.

Arithmetic ops keep the inputs' common dtype (``Pow`` keeps the base's dtype, as ONNX allows a
different exponent dtype); comparisons return ``bool``; ``Where(cond, x, y)`` returns x's dtype.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops.common import broadcast_shapes, need, require, same_dtype
from ember.ops.registry import register_op

Types = Sequence[Optional[TensorType]]
Consts = Sequence[Optional[np.ndarray]]


def _present(node: Node, in_types: Types) -> list[TensorType]:
    present = [t for t in in_types if t is not None]
    require(len(present) >= 1, f"{node.op} needs at least one input")
    return present


def _arith(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    present = _present(node, in_types)
    require(len(present) == len(in_types), f"{node.op} has an omitted input")
    dtype = same_dtype(present, f"{node.op} inputs")
    return [TensorType(dtype, broadcast_shapes(*(t.shape for t in present)))]


def _compare(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    require(len(in_types) == 2, f"{node.op} takes 2 inputs, got {len(in_types)}")
    a, b = need(in_types[0], "A"), need(in_types[1], "B")
    same_dtype([a, b], f"{node.op} inputs")
    return [TensorType(DType.BOOL, broadcast_shapes(a.shape, b.shape))]


for _op in (OpType.ADD, OpType.SUB, OpType.MUL, OpType.DIV, OpType.MAX, OpType.MIN):
    register_op(_op)(_arith)

for _op in (OpType.EQUAL, OpType.LESS, OpType.GREATER):
    register_op(_op)(_compare)


@register_op(OpType.POW)
def infer_pow(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Pow(x, y): the result has x's dtype; y may have another numeric dtype."""
    require(len(in_types) == 2, f"Pow takes 2 inputs, got {len(in_types)}")
    x, y = need(in_types[0], "X"), need(in_types[1], "Y")
    return [TensorType(x.dtype, broadcast_shapes(x.shape, y.shape))]


@register_op(OpType.WHERE)
def infer_where(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    require(len(in_types) == 3, f"Where takes 3 inputs, got {len(in_types)}")
    cond, x, y = need(in_types[0], "condition"), need(in_types[1], "X"), need(in_types[2], "Y")
    require(cond.dtype is DType.BOOL, f"Where condition must be bool, got {cond}")
    dtype = same_dtype([x, y], "Where X and Y")
    return [TensorType(dtype, broadcast_shapes(cond.shape, x.shape, y.shape))]
