"""Binary / variadic elementwise ops with numpy (multidirectional) broadcasting.

Arithmetic ops keep the inputs' common dtype (``Pow`` keeps the base's dtype, as ONNX allows a
different exponent dtype; ``Mod`` needs numeric inputs); comparisons return ``bool``; logical ops
(``And``/``Or``/``Xor``) take and return ``bool``; bitwise ops take integers; ``Where(cond, x,
y)`` returns x's dtype.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops.attrs import BitShiftAttrs, ModAttrs
from ember.ops.common import Consts, Types, broadcast_shapes, need, need_input, require, same_dtype
from ember.ops.registry import register_op
from ember.ops.shape_values import Value, value_ints, value_rule


def _present(node: Node, in_types: Types) -> list[TensorType]:
    present = [t for t in in_types if t is not None]
    require(len(present) >= 1, f"{node.op} needs at least one input")
    return present


def _two(node: Node, in_types: Types) -> tuple[TensorType, TensorType]:
    require(len(in_types) == 2, f"{node.op} takes 2 inputs, got {len(in_types)}")
    return need(in_types[0], "A"), need(in_types[1], "B")


def _arith(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    present = _present(node, in_types)
    require(len(present) == len(in_types), f"{node.op} has an omitted input")
    dtype = same_dtype(present, f"{node.op} inputs")
    return [TensorType(dtype, broadcast_shapes(*(t.shape for t in present)))]


def _compare(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    a, b = _two(node, in_types)
    same_dtype([a, b], f"{node.op} inputs")
    return [TensorType(DType.BOOL, broadcast_shapes(a.shape, b.shape))]


def _logical(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    a, b = _two(node, in_types)
    require(a.dtype is DType.BOOL and b.dtype is DType.BOOL,
            f"{node.op} needs bool inputs, got {a} and {b}; insert a Cast to bool")
    return [TensorType(DType.BOOL, broadcast_shapes(a.shape, b.shape))]


def _bitwise(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    present = [need_input(in_types, i, "input") for i in range(len(in_types))]
    dtype = same_dtype(present, f"{node.op} inputs")
    require(dtype.is_int, f"{node.op} needs integer inputs, got {dtype.value}")
    return [TensorType(dtype, broadcast_shapes(*(t.shape for t in present)))]


for _op in (OpType.ADD, OpType.SUB, OpType.MUL, OpType.DIV, OpType.MAX, OpType.MIN):
    register_op(_op)(_arith)
for _op in (OpType.EQUAL, OpType.LESS, OpType.GREATER, OpType.GREATER_OR_EQUAL,
            OpType.LESS_OR_EQUAL):
    register_op(_op)(_compare)
for _op in (OpType.AND, OpType.OR, OpType.XOR):
    register_op(_op)(_logical)
for _op in (OpType.BITWISE_AND, OpType.BITWISE_OR, OpType.BITWISE_XOR, OpType.BITWISE_NOT):
    register_op(_op)(_bitwise)
register_op(OpType.BIT_SHIFT, attrs=BitShiftAttrs)(_bitwise)


@register_op(OpType.POW)
def infer_pow(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Pow(x, y): the result has x's dtype; y may have another numeric dtype."""
    require(len(in_types) == 2, f"Pow takes 2 inputs, got {len(in_types)}")
    x, y = need(in_types[0], "X"), need(in_types[1], "Y")
    return [TensorType(x.dtype, broadcast_shapes(x.shape, y.shape))]


@register_op(OpType.MOD, attrs=ModAttrs)
def infer_mod(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Mod(A, B): broadcast, the inputs' common numeric dtype."""
    a, b = _two(node, in_types)
    dtype = same_dtype([a, b], "Mod inputs")
    require(dtype is not DType.BOOL, "Mod needs numeric inputs, got bool")
    return [TensorType(dtype, broadcast_shapes(a.shape, b.shape))]


@register_op(OpType.WHERE)
def infer_where(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    require(len(in_types) == 3, f"Where takes 3 inputs, got {len(in_types)}")
    cond, x, y = need(in_types[0], "condition"), need(in_types[1], "X"), need(in_types[2], "Y")
    require(cond.dtype is DType.BOOL, f"Where condition must be bool, got {cond}")
    dtype = same_dtype([x, y], "Where X and Y")
    return [TensorType(dtype, broadcast_shapes(cond.shape, x.shape, y.shape))]


@value_rule(OpType.MOD)
def _mod_value(node: Node, t: Types, v: Sequence[Optional[Value]]) -> Optional[Value]:
    """Mod of known integer shape values (TorchScript's MultiheadAttention computes head dims so)."""
    a, b = v[0], v[1]
    if a is None or b is None or value_ints(a) is None or value_ints(b) is None:
        return None
    x, y = a.astype(np.int64), b.astype(np.int64)
    fmod = node.attrs is not None and node.attrs.fmod
    out: Value = np.fmod(x, y) if fmod else np.mod(x, y)
    return out
