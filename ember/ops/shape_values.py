"""Build-time values of small integer "shape tensors", symbolic dims included.

Exporters compute shapes at run time: ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``.
When the dims involved are known (ints) or named (symbols such as ``"batch"``), the *value* of
such a tensor is known at build time even though it is not a constant. ``propagate`` derives
these values node by node; shape inference then uses them like constants, so a Reshape whose
target is ``[batch, seq, 12, 32]`` gets that shape instead of fresh symbols, and an ``If`` whose
condition is ``Equal(Gather(Shape(x), 2), 1)`` can be resolved by the frontend.

A value is a numpy array: ``int64`` (or ``bool``) when every entry is known, ``object`` holding
``int``/``str`` dims when some are symbols. Only tensors of at most ``MAX_ELEMENTS`` elements are
tracked. Symbolic values are given only to the inputs listed in ``SYMBOLIC_INPUTS`` (whose
inference understands symbols); fully known values are given to every consumer.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType
from ember.ops.common import add_dims, div_dim, mul_dims

MAX_ELEMENTS = 64
Value = np.ndarray
Values = Sequence[Optional[Value]]
Types = Sequence[Optional[TensorType]]
Rule = Callable[[Node, Types, Values], Optional[Value]]

#: (op, input index) pairs whose inference accepts symbolic (object) values.
SYMBOLIC_INPUTS = {(OpType.RESHAPE, 1), (OpType.EXPAND, 1), (OpType.CONSTANT_OF_SHAPE, 0),
                   (OpType.RANGE, 0), (OpType.RANGE, 1), (OpType.RANGE, 2), (OpType.SLICE, 2)}

_TRACKED = (DType.INT64, DType.INT32, DType.BOOL)
_RULES: dict[OpType, Rule] = {}


def is_symbolic(value: Value) -> bool:
    return value.dtype == object


def make_value(items: Sequence[object], shape: Optional[tuple[int, ...]] = None) -> Value:
    """An int64 array when every item is an int, else an object array of dims."""
    arr = np.array(items, dtype=object)
    if shape is not None:
        arr = arr.reshape(shape)
    if all(isinstance(v, (int, np.integer, bool, np.bool_)) for v in arr.reshape(-1)):
        if arr.size and all(isinstance(v, (bool, np.bool_)) for v in arr.reshape(-1)):
            return arr.astype(bool)
        return arr.astype(np.int64)
    return arr


def value_for(node: Node, index: int, value: Optional[Value]) -> Optional[Value]:
    """What a node's inference may see of an input's build-time value."""
    if value is None or not is_symbolic(value) or (node.op, index) in SYMBOLIC_INPUTS:
        return value
    return None


def propagate(node: Node, in_types: Sequence[Optional[TensorType]], in_values: Values,
              out_types: Sequence[TensorType]) -> list[Optional[Value]]:
    """Build-time values of a node's outputs (None where unknown)."""
    rule = _RULES.get(node.op)
    outs: list[Optional[Value]] = [None] * len(out_types)
    if rule is None or not out_types or out_types[0].dtype not in _TRACKED:
        return outs
    if not out_types[0].is_static or out_types[0].numel() > MAX_ELEMENTS:
        return outs
    try:
        value = rule(node, in_types, in_values)
    except (ValueError, TypeError, IndexError, ZeroDivisionError, AttributeError):
        return outs
    if value is not None and value.size == out_types[0].numel():
        outs[0] = value.reshape(tuple(int(d) for d in out_types[0].shape))
    return outs


def value_rule(*ops: OpType) -> Callable[[Rule], Rule]:
    """Register the decorated function as the build-time value rule of ``ops`` (used by
    ``propagate``); other modules add rules for their own ops with it."""
    def deco(fn: Rule) -> Rule:
        for op in ops:
            _RULES[op] = fn
        return fn

    return deco


def value_ints(v: Optional[Value]) -> Optional[list[int]]:
    """A value's entries as a flat list of ints, or None when it is unknown or symbolic."""
    if v is None or is_symbolic(v):
        return None
    return [int(x) for x in v.reshape(-1)]


@value_rule(OpType.SHAPE)
def _shape(node: Node, t: Types, v: Values) -> Optional[Value]:
    if t[0] is None:
        return None
    dims = list(t[0].shape)[node.attrs.start:node.attrs.end]
    return make_value(dims, (len(dims),))


@value_rule(OpType.IDENTITY, OpType.DROPOUT)
def _identity(node: Node, t: Types, v: Values) -> Optional[Value]:
    return v[0]


@value_rule(OpType.CAST)
def _cast(node: Node, t: Types, v: Values) -> Optional[Value]:
    x = v[0]
    if x is None or DType(node.attrs.to) not in (DType.INT64, DType.INT32):
        return None
    return x if is_symbolic(x) else x.astype(np.int64)


def _rebuilt(out: np.ndarray) -> Value:
    """``out`` (an object array from a numpy op) as a value: int64 when every entry is known."""
    return make_value(out.reshape(-1).tolist(), out.shape)


@value_rule(OpType.GATHER)
def _gather(node: Node, t: Types, v: Values) -> Optional[Value]:
    data, indices = v[0], v[1]
    idx = value_ints(indices)
    if data is None or indices is None or idx is None:
        return None
    picked = np.take(data.astype(object), np.array(idx, dtype=np.int64).reshape(indices.shape),
                     axis=node.attrs.axis)
    return _rebuilt(np.asarray(picked, dtype=object))


@value_rule(OpType.UNSQUEEZE, OpType.SQUEEZE, OpType.RESHAPE, OpType.FLATTEN)
def _reshape(node: Node, t: Types, v: Values) -> Optional[Value]:
    return v[0]  # re-shaped to the output type by ``propagate``


@value_rule(OpType.TRANSPOSE)
def _transpose(node: Node, t: Types, v: Values) -> Optional[Value]:
    x = v[0]
    if x is None:
        return None
    return _rebuilt(np.transpose(x.astype(object), node.attrs.perm))


@value_rule(OpType.CONCAT)
def _concat(node: Node, t: Types, v: Values) -> Optional[Value]:
    parts = [x for x in v if x is not None]
    if len(parts) != len(v):
        return None
    return _rebuilt(np.concatenate([x.astype(object) for x in parts], axis=node.attrs.axis))


@value_rule(OpType.SLICE)
def _slice(node: Node, t: Types, v: Values) -> Optional[Value]:
    a = node.attrs
    x = v[0]
    if x is None:
        return None
    if a.starts is not None:
        starts, ends, axes, steps = a.starts, a.ends, a.axes, a.steps
    else:
        vals = list(v[1:5]) + [None] * (5 - len(v))
        present = [i + 1 < len(t) and t[i + 1] is not None for i in range(4)]
        params = [value_ints(p) for p in vals[:4]]
        if any(p and q is None for p, q in zip(present, params)):
            return None
        starts, ends, axes, steps = params
    if starts is None or ends is None:
        return None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index: list[slice] = [slice(None)] * x.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        index[ax] = slice(s, e, st)
    return _rebuilt(x[tuple(index)])


def _sub_dims(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    if b == 0:
        return a
    if a == b:
        return 0
    return f"({a}-{b})"


def _div_dims(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return int(np.trunc(a / b)) if b else 0
    q = div_dim(a, b)
    return q if q is not None else f"({a})/({b})"


_ARITH: dict[OpType, Callable[[Dim, Dim], Dim]] = {
    OpType.ADD: add_dims, OpType.SUB: _sub_dims, OpType.MUL: lambda a, b: mul_dims([a, b]),
    OpType.DIV: _div_dims,
}


def _native(x: object) -> Dim:
    """A value entry as a dim: numpy integers and bools as ``int``, symbols as they are."""
    if isinstance(x, (np.integer, bool, np.bool_, int)):
        return int(x)
    if isinstance(x, str):
        return x
    raise TypeError(f"a shape value entry {x!r} is neither an int nor a symbol")


@value_rule(OpType.ADD, OpType.SUB, OpType.MUL, OpType.DIV)
def _arith(node: Node, t: Types, v: Values) -> Optional[Value]:
    x, y, tx, ty = v[0], v[1], t[0], t[1]
    if x is None or y is None or tx is None or ty is None or not (tx.dtype.is_int and ty.dtype.is_int):
        return None
    a, b = np.broadcast_arrays(x.astype(object), y.astype(object))
    fn = _ARITH[node.op]
    out = [fn(_native(p), _native(q)) for p, q in zip(a.reshape(-1), b.reshape(-1))]
    return make_value(out, a.shape)


@value_rule(OpType.EQUAL)
def _equal(node: Node, t: Types, v: Values) -> Optional[Value]:
    x, y = v[0], v[1]
    if x is None or y is None:
        return None
    a, b = np.broadcast_arrays(x.astype(object), y.astype(object))
    out = []
    for p, q in zip(a.reshape(-1), b.reshape(-1)):
        p, q = _native(p), _native(q)
        if isinstance(p, int) and isinstance(q, int) or p == q:
            out.append(bool(p == q))
        else:
            return None  # a symbol against another value: unknown until run time
    return np.array(out, dtype=bool).reshape(a.shape)


@value_rule(OpType.NOT)
def _not(node: Node, t: Types, v: Values) -> Optional[Value]:
    x = v[0]
    return None if x is None or is_symbolic(x) else ~x.astype(bool)


@value_rule(OpType.WHERE)
def _where(node: Node, t: Types, v: Values) -> Optional[Value]:
    cond, x, y = v[0], v[1], v[2]
    if cond is None or x is None or y is None or is_symbolic(cond):
        return None
    return _rebuilt(np.where(cond.astype(bool), x.astype(object), y.astype(object)))


@value_rule(OpType.CONSTANT_OF_SHAPE)
def _constant_of_shape(node: Node, t: Types, v: Values) -> Optional[Value]:
    dims = value_ints(v[0])
    if dims is None:
        return None
    return np.full(dims, node.attrs.value, dtype=DType(node.attrs.dtype).to_numpy())


@value_rule(OpType.RANGE)
def _range(node: Node, t: Types, v: Values) -> Optional[Value]:
    start, limit, delta = (value_ints(x) for x in v[:3])
    if start is None or limit is None or delta is None:
        return None
    return np.arange(start[0], limit[0], delta[0], dtype=np.int64)


@value_rule(OpType.NEG)
def _neg(node: Node, t: Types, v: Values) -> Optional[Value]:
    x = value_ints(v[0])
    return None if x is None or v[0] is None else np.array([-d for d in x], dtype=np.int64).reshape(v[0].shape)


@value_rule(OpType.REDUCE_PROD, OpType.REDUCE_SUM)
def _reduce_1d(node: Node, t: Types, v: Values) -> Optional[Value]:
    """The product / sum of a 1-D value (ONNX's Size is ReduceProd(Shape(x)): the element count)."""
    x = v[0]
    axes = getattr(node.attrs, "axes", None)
    if x is None or x.ndim != 1 or len(node.inputs) > 1 or axes not in (None, (0,), (-1,)):
        return None
    items = [_native(d) for d in x.reshape(-1)]
    total = mul_dims(items) if node.op is OpType.REDUCE_PROD else _sum_dims(items)
    keep = bool(getattr(node.attrs, "keepdims", True))
    return make_value([total], (1,) if keep else ())


def _sum_dims(items: Sequence[Dim]) -> Dim:
    total: Dim = 0
    for d in items:
        total = add_dims(total, d)
    return total


@value_rule(OpType.MAX, OpType.MIN)
def _max_min(node: Node, t: Types, v: Values) -> Optional[Value]:
    x, y = v[0], v[1]
    if x is None or y is None or value_ints(x) is None or value_ints(y) is None:
        return None
    fn = np.maximum if node.op is OpType.MAX else np.minimum
    out: Value = fn(x.astype(np.int64), y.astype(np.int64))
    return out


@value_rule(OpType.EXPAND)
def _expand(node: Node, t: Types, v: Values) -> Optional[Value]:
    x, shape = v[0], value_ints(v[1])
    if x is None or shape is None:
        return None
    out = x.astype(object) * np.ones(shape, dtype=np.int64).astype(object)
    return make_value(np.broadcast_to(x.astype(object), out.shape).reshape(-1).tolist(), out.shape)
