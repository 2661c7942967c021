"""Unary ops (activations and math functions): the output has the input's shape.

Semantics follow ONNX. ``Dropout`` is inference-mode (identity on its data input: the frontend
drops its ratio/training-mode inputs and its mask output); ``Cast`` changes only the dtype;
``IsNaN``/``IsInf`` return bool.
"""
from __future__ import annotations

from ember.errors import ShapeError
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops.attrs import (
    AlphaAttrs,
    CastAttrs,
    ClipAttrs,
    GeluAttrs,
    HardSigmoidAttrs,
    IsInfAttrs,
    LeakyReluAttrs,
    SeluAttrs,
)
from ember.ops.common import Consts, Types, broadcast_shapes, input_at, need_input, require
from ember.ops.registry import register_op


def _float_input(node: Node, in_types: Types) -> TensorType:
    x = need_input(in_types, 0, "X")
    require(x.dtype.is_float, f"{node.op} needs a floating-point input, got {x}")
    return x


def _same_as_input(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    return [need_input(in_types, 0, "X")]


def _float_unary(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    return [_float_input(node, in_types)]


def _numeric_unary(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    x = need_input(in_types, 0, "X")
    require(x.dtype is not DType.BOOL, f"{node.op} needs a numeric input, got {x}")
    return [x]


def _float_predicate(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    return [_float_input(node, in_types).with_dtype(DType.BOOL)]


for _op in (OpType.SIGMOID, OpType.TANH, OpType.HARD_SWISH, OpType.ERF, OpType.SQRT,
            OpType.EXP, OpType.LOG, OpType.RECIPROCAL,
            # math functions and smooth activations that exporters emit
            OpType.FLOOR, OpType.CEIL, OpType.ROUND, OpType.SIN, OpType.COS, OpType.TAN,
            OpType.ASIN, OpType.ACOS, OpType.ATAN, OpType.SINH, OpType.COSH, OpType.ASINH,
            OpType.ACOSH, OpType.ATANH, OpType.SOFTPLUS, OpType.SOFTSIGN, OpType.MISH):
    register_op(_op)(_float_unary)

for _op in (OpType.RELU, OpType.NEG, OpType.ABS, OpType.IDENTITY, OpType.DROPOUT):
    register_op(_op)(_same_as_input)

register_op(OpType.LEAKY_RELU, attrs=LeakyReluAttrs)(_float_unary)
register_op(OpType.HARD_SIGMOID, attrs=HardSigmoidAttrs)(_float_unary)
register_op(OpType.GELU, attrs=GeluAttrs)(_float_unary)
for _op in (OpType.ELU, OpType.CELU, OpType.THRESHOLDED_RELU):
    register_op(_op, attrs=AlphaAttrs)(_float_unary)
register_op(OpType.SELU, attrs=SeluAttrs)(_float_unary)
register_op(OpType.SIGN)(_numeric_unary)
register_op(OpType.IS_NAN)(_float_predicate)
register_op(OpType.IS_INF, attrs=IsInfAttrs)(_float_predicate)


@register_op(OpType.CLIP, attrs=ClipAttrs)
def infer_clip(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Clip(x, min?, max?): bounds are attrs when constant, else scalar inputs 1 and 2."""
    x = need_input(in_types, 0, "X")
    for i, name in ((1, "min"), (2, "max")):
        t = input_at(in_types, i)
        if t is not None:
            require(t.rank == 0 or t.shape == (1,), f"Clip {name} must be a scalar, got {t}")
    return [x]


@register_op(OpType.PRELU)
def infer_prelu(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """PRelu(x, slope): slope broadcasts to x (unidirectionally)."""
    x = _float_input(node, in_types)
    slope = need_input(in_types, 1, "slope")
    out = broadcast_shapes(x.shape, slope.shape)
    if len(out) != x.rank:
        raise ShapeError(f"PRelu slope {slope} does not broadcast to input {x}")
    return [x]


@register_op(OpType.NOT)
def infer_not(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    x = need_input(in_types, 0, "X")
    require(x.dtype is DType.BOOL, f"Not needs a bool input, got {x}")
    return [x]


@register_op(OpType.BIT_CAST, attrs=CastAttrs)
def infer_bit_cast(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """BitCast: the same bits read as another type of the same width."""
    x = need_input(in_types, 0, "X")
    a: CastAttrs = node.attrs
    require(x.dtype.itemsize == a.to.itemsize,
            f"BitCast from {x.dtype.value} to {a.to.value}: the widths differ "
            f"({x.dtype.itemsize * 8} and {a.to.itemsize * 8} bits)")
    return [x.with_dtype(a.to)]


@register_op(OpType.CAST, attrs=CastAttrs)
def infer_cast(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    x = need_input(in_types, 0, "X")
    a: CastAttrs = node.attrs
    return [x.with_dtype(a.to)]
