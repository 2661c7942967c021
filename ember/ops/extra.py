"""Ops that exporters emit beyond the core families: shape/type inference.

Unary math and activations (Floor .. ThresholdedRelu), logic and comparisons (Mod, And, Or, Xor,
GreaterOrEqual, LessOrEqual), more reductions (ReduceMin/Prod/L1/L2/SumSquare/LogSum/LogSumExp,
ArgMax/ArgMin), and data movement (CumSum, TopK, Tile, Trilu, DepthToSpace, SpaceToDepth,
GatherElements, GatherND, ScatterND, ScatterElements), InstanceNormalization,
GroupNormalization and Einsum. Semantics follow ONNX; parameters that ONNX passes as inputs are
attrs when they were constant at import (``None``: read at run time, see ``ember.ops.attrs``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ember.errors import ShapeError
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType
from ember.ops.attrs import (
    AlphaAttrs, ArgReduceAttrs, AxisAttrs, CumSumAttrs, DepthSpaceAttrs, EinsumAttrs, EyeLikeAttrs,
    GatherNDAttrs, GridSampleAttrs, GroupNormAttrs, InstanceNormAttrs, IsInfAttrs, ModAttrs, OneHotAttrs,
    ReduceAttrs, ScatterAttrs, SeluAttrs, TileAttrs, TopKAttrs, TriluAttrs,
)
from ember.ops.common import (
    broadcast_shapes, const_ints, div_dim, fresh_dims, mul_dims, need, norm_axis, require, same_dtype,
)
from ember.ops.registry import register_op
from ember.ops.reduce import infer_reduce
from ember.ops.shape_values import value_ints, value_rule

Types = Sequence[Optional[TensorType]]
Consts = Sequence[Optional[np.ndarray]]


def _in(in_types: Types, i: int, what: str) -> TensorType:
    return need(in_types[i] if i < len(in_types) else None, what)


def _opt(in_types: Types, i: int) -> Optional[TensorType]:
    return in_types[i] if i < len(in_types) else None


def _const(consts: Consts, i: int) -> Optional[np.ndarray]:
    return consts[i] if i < len(consts) else None


# ---- unary -----------------------------------------------------------------------------
def _float_unary(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    x = _in(in_types, 0, "X")
    require(x.dtype.is_float, f"{node.op} needs a floating-point input, got {x}")
    return [x]


def _numeric_unary(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    x = _in(in_types, 0, "X")
    require(x.dtype is not DType.BOOL, f"{node.op} needs a numeric input, got {x}")
    return [x]


def _float_predicate(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    return [_float_unary(node, in_types, consts)[0].with_dtype(DType.BOOL)]


for _op in (OpType.FLOOR, OpType.CEIL, OpType.ROUND, OpType.SIN, OpType.COS, OpType.TAN,
            OpType.ASIN, OpType.ACOS, OpType.ATAN, OpType.SINH, OpType.COSH, OpType.ASINH,
            OpType.ACOSH, OpType.ATANH, OpType.SOFTPLUS, OpType.SOFTSIGN, OpType.MISH):
    register_op(_op)(_float_unary)
for _op in (OpType.ELU, OpType.CELU, OpType.THRESHOLDED_RELU):
    register_op(_op, attrs=AlphaAttrs)(_float_unary)
register_op(OpType.SELU, attrs=SeluAttrs)(_float_unary)
register_op(OpType.SIGN)(_numeric_unary)
register_op(OpType.IS_NAN)(_float_predicate)
register_op(OpType.IS_INF, attrs=IsInfAttrs)(_float_predicate)


# ---- binary ----------------------------------------------------------------------------
def _two(node: Node, in_types: Types) -> tuple[TensorType, TensorType]:
    require(len(in_types) == 2, f"{node.op} takes 2 inputs, got {len(in_types)}")
    return _in(in_types, 0, "A"), _in(in_types, 1, "B")


@register_op(OpType.MOD, attrs=ModAttrs)
def infer_mod(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Mod(A, B): broadcast, the inputs' common numeric dtype."""
    a, b = _two(node, in_types)
    dtype = same_dtype([a, b], "Mod inputs")
    require(dtype is not DType.BOOL, "Mod needs numeric inputs, got bool")
    return [TensorType(dtype, broadcast_shapes(a.shape, b.shape))]


def _logical(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    a, b = _two(node, in_types)
    require(a.dtype is DType.BOOL and b.dtype is DType.BOOL,
            f"{node.op} needs bool inputs, got {a} and {b}; insert a Cast to bool")
    return [TensorType(DType.BOOL, broadcast_shapes(a.shape, b.shape))]


def _compare(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    a, b = _two(node, in_types)
    same_dtype([a, b], f"{node.op} inputs")
    return [TensorType(DType.BOOL, broadcast_shapes(a.shape, b.shape))]


for _op in (OpType.AND, OpType.OR, OpType.XOR):
    register_op(_op)(_logical)


def _bitwise(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    present = [_in(in_types, i, "input") for i in range(len(in_types))]
    dtype = same_dtype(present, f"{node.op} inputs")
    require(dtype.is_int, f"{node.op} needs integer inputs, got {dtype.value}")
    return [TensorType(dtype, broadcast_shapes(*(t.shape for t in present)))]


for _op in (OpType.BITWISE_AND, OpType.BITWISE_OR, OpType.BITWISE_XOR, OpType.BITWISE_NOT):
    register_op(_op)(_bitwise)
for _op in (OpType.GREATER_OR_EQUAL, OpType.LESS_OR_EQUAL):
    register_op(_op)(_compare)


# ---- reductions ------------------------------------------------------------------------
for _op in (OpType.REDUCE_MIN, OpType.REDUCE_PROD, OpType.REDUCE_L1, OpType.REDUCE_L2,
            OpType.REDUCE_SUM_SQUARE, OpType.REDUCE_LOG_SUM, OpType.REDUCE_LOG_SUM_EXP):
    # same shape rules as ReduceSum/Mean/Max (axes attr or input, keepdims, noop_with_empty_axes)
    register_op(_op, attrs=ReduceAttrs)(infer_reduce)


def _arg_reduce(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    a: ArgReduceAttrs = node.attrs
    x = _in(in_types, 0, "data")
    require(x.rank >= 1, f"{node.op} needs an input of rank >= 1, got {x}")
    axis = norm_axis(a.axis, x.rank, f"{node.op} axis")
    if a.keepdims:
        shape = tuple(1 if i == axis else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i != axis)
    return [TensorType(DType.INT64, shape)]


for _op in (OpType.ARG_MAX, OpType.ARG_MIN):
    register_op(_op, attrs=ArgReduceAttrs)(_arg_reduce)


# ---- data movement ---------------------------------------------------------------------
@register_op(OpType.CUM_SUM, attrs=CumSumAttrs)
def infer_cumsum(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """CumSum(x, axis): the input's type; the axis (attr or scalar input 1) must be in range."""
    x = _in(in_types, 0, "x")
    axis = node.attrs.axis
    if axis is None:
        axis_t = _in(in_types, 1, "axis")
        require(axis_t.rank == 0 or axis_t.shape == (1,), f"CumSum axis must be a scalar, got {axis_t}")
        value = _const(consts, 1)
        axis = const_ints(value)[0] if value is not None else None
    if axis is not None:
        norm_axis(axis, x.rank, "CumSum axis")
    return [x]


@register_op(OpType.TOP_K, attrs=TopKAttrs)
def infer_topk(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """TopK(x, k) -> (values, int64 indices), the axis dim becoming k."""
    x = _in(in_types, 0, "X")
    axis = norm_axis(node.attrs.axis, x.rank, "TopK axis")
    k: Optional[int] = node.attrs.k
    if k is None and _const(consts, 1) is not None:
        k = const_ints(consts[1])[0]
    dim: Dim = k if k is not None else f"{node.outputs[0]}_d{axis}"
    if k is not None and isinstance(x.shape[axis], int):
        require(0 <= k <= x.shape[axis], f"TopK k={k} is out of range for axis {axis} of {x}")
    shape = tuple(dim if i == axis else d for i, d in enumerate(x.shape))
    return [TensorType(x.dtype, shape), TensorType(DType.INT64, shape)]


@register_op(OpType.TILE, attrs=TileAttrs)
def infer_tile(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Tile(x, repeats): dim i becomes ``x.shape[i] * repeats[i]``."""
    x = _in(in_types, 0, "input")
    repeats = node.attrs.repeats
    if repeats is None and _const(consts, 1) is not None:
        repeats = const_ints(consts[1])
    if repeats is None:
        return [x.with_shape(fresh_dims(node.outputs[0], x.rank))]
    require(len(repeats) == x.rank, f"Tile repeats {tuple(repeats)} must have one entry per dim of {x}")
    require(all(r >= 0 for r in repeats), f"Tile repeats {tuple(repeats)} must not be negative")
    return [x.with_shape(tuple(mul_dims([d, r]) for d, r in zip(x.shape, repeats)))]


@register_op(OpType.TRILU, attrs=TriluAttrs)
def infer_trilu(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    x = _in(in_types, 0, "input")
    require(x.rank >= 2, f"Trilu needs a rank >= 2 input, got {x}")
    return [x]


def _block_dim(dim: Dim, block: int, out: str, i: int) -> Dim:
    got = div_dim(dim, block)
    return got if got is not None else f"{out}_d{i}"


@register_op(OpType.DEPTH_TO_SPACE, attrs=DepthSpaceAttrs)
def infer_depth_to_space(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """[N, C, H, W] -> [N, C / b^2, H * b, W * b]."""
    x = _in(in_types, 0, "input")
    b = node.attrs.blocksize
    require(x.rank == 4, f"DepthToSpace needs a 4-D input, got {x}")
    require(b >= 1 and node.attrs.mode in ("DCR", "CRD"),
            f"DepthToSpace blocksize {b} / mode {node.attrs.mode!r} is invalid (mode DCR or CRD)")
    n, c, h, w = x.shape
    if isinstance(c, int):
        require(c % (b * b) == 0, f"DepthToSpace channels {c} are not divisible by blocksize^2 {b * b}")
    return [x.with_shape((n, _block_dim(c, b * b, node.outputs[0], 1), mul_dims([h, b]), mul_dims([w, b])))]


@register_op(OpType.SPACE_TO_DEPTH, attrs=DepthSpaceAttrs)
def infer_space_to_depth(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """[N, C, H, W] -> [N, C * b^2, H / b, W / b]."""
    x = _in(in_types, 0, "input")
    b = node.attrs.blocksize
    require(x.rank == 4 and b >= 1, f"SpaceToDepth needs a 4-D input and blocksize >= 1, got {x}, {b}")
    n, c, h, w = x.shape
    for d in (h, w):
        if isinstance(d, int):
            require(d % b == 0, f"SpaceToDepth spatial dims of {x} are not divisible by blocksize {b}")
    out = node.outputs[0]
    return [x.with_shape((n, mul_dims([c, b * b]), _block_dim(h, b, out, 2), _block_dim(w, b, out, 3)))]


@register_op(OpType.GATHER_ELEMENTS, attrs=AxisAttrs)
def infer_gather_elements(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """GatherElements(data, indices): indices' shape, data's dtype."""
    data, idx = _in(in_types, 0, "data"), _in(in_types, 1, "indices")
    require(data.rank == idx.rank, f"GatherElements data {data} and indices {idx} must have one rank")
    require(idx.dtype in (DType.INT64, DType.INT32), f"GatherElements indices must be int32/int64, got {idx}")
    norm_axis(node.attrs.axis, data.rank, "GatherElements axis")
    return [TensorType(data.dtype, idx.shape)]


@register_op(OpType.GATHER_ND, attrs=GatherNDAttrs)
def infer_gather_nd(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """GatherND: ``indices.shape[:-1] + data.shape[batch_dims + indices.shape[-1]:]``."""
    data, idx = _in(in_types, 0, "data"), _in(in_types, 1, "indices")
    b = node.attrs.batch_dims
    require(idx.rank >= 1 and isinstance(idx.shape[-1], int),
            f"GatherND indices {idx} need a known last dim")
    last = idx.shape[-1]
    require(b + last <= data.rank, f"GatherND indices {idx} index more dims than data {data} has")
    return [TensorType(data.dtype, tuple(idx.shape[:-1]) + tuple(data.shape[b + last:]))]


def _scatter(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    data = _in(in_types, 0, "data")
    _in(in_types, 1, "indices")
    updates = _in(in_types, 2, "updates")
    same_dtype([data, updates], f"{node.op} data and updates")
    require(node.attrs.reduction in ("none", "add", "mul", "max", "min"),
            f"{node.op} reduction {node.attrs.reduction!r} is not one of none, add, mul, max, min")
    return [data]


for _op in (OpType.SCATTER_ND, OpType.SCATTER_ELEMENTS):
    register_op(_op, attrs=ScatterAttrs)(_scatter)


@register_op(OpType.GRID_SAMPLE, attrs=GridSampleAttrs)
def infer_grid_sample(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """GridSample(X[N, C, *in], grid[N, *out, r]) -> [N, C, *out], with r = len(in)."""
    x, grid = _in(in_types, 0, "X"), _in(in_types, 1, "grid")
    require(x.rank in (4, 5), f"GridSample supports 4-D and 5-D inputs, got {x}")
    last = grid.shape[-1] if grid.rank else None
    require(grid.rank == x.rank and (not isinstance(last, int) or last == x.rank - 2),
            f"GridSample grid {grid} does not fit input {x} (want [N, *out, {x.rank - 2}])")
    return [x.with_shape((x.shape[0], x.shape[1], *grid.shape[1:-1]))]


@register_op(OpType.ONE_HOT, attrs=OneHotAttrs)
def infer_one_hot(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """OneHot(indices, depth, values[off, on]): a ``depth`` axis inserted at ``axis``."""
    idx, values = _in(in_types, 0, "indices"), _in(in_types, 2, "values")
    require(values.rank == 1, f"OneHot values must be 1-D [off, on], got {values}")
    axis = norm_axis(node.attrs.axis, idx.rank + 1, "OneHot axis")
    depth: Optional[int] = node.attrs.depth
    if depth is None and _const(consts, 1) is not None:
        depth = int(np.asarray(consts[1]).reshape(-1)[0])
    dim: Dim = depth if depth is not None else f"{node.outputs[0]}_d{axis}"
    shape = list(idx.shape)
    shape.insert(axis, dim)
    return [TensorType(values.dtype, tuple(shape))]


@register_op(OpType.EYE_LIKE, attrs=EyeLikeAttrs)
def infer_eye_like(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    x = _in(in_types, 0, "input")
    require(x.rank == 2, f"EyeLike needs a 2-D input, got {x}")
    return [x.with_dtype(DType(node.attrs.dtype)) if node.attrs.dtype else x]


# ---- normalization ---------------------------------------------------------------------
@register_op(OpType.INSTANCE_NORM, attrs=InstanceNormAttrs)
def infer_instance_norm(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """InstanceNormalization(x[N, C, ...], scale[C], B[C])."""
    x = _in(in_types, 0, "input")
    require(x.rank >= 3 and x.dtype.is_float, f"InstanceNormalization needs a float rank >= 3 input, got {x}")
    for i, name in ((1, "scale"), (2, "B")):
        t = _in(in_types, i, name)
        require(t.rank == 1, f"InstanceNormalization {name} must be 1-D [C], got {t}")
        broadcast_shapes((x.shape[1],), t.shape)
    return [x]


@register_op(OpType.GROUP_NORM, attrs=GroupNormAttrs)
def infer_group_norm(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """GroupNormalization(x[N, C, ...], scale, bias): scale/bias [C] (opset 21) or [groups] (18)."""
    x = _in(in_types, 0, "X")
    g = node.attrs.num_groups
    require(x.rank >= 3 and x.dtype.is_float, f"GroupNormalization needs a float rank >= 3 input, got {x}")
    c = x.shape[1]
    if isinstance(c, int):
        require(g >= 1 and c % g == 0, f"GroupNormalization channels {c} are not divisible by num_groups {g}")
    want = c if node.attrs.per_channel_affine else g
    for i, name in ((1, "scale"), (2, "bias")):
        t = _in(in_types, i, name)
        require(t.rank == 1, f"GroupNormalization {name} must be 1-D, got {t}")
        broadcast_shapes((want,), t.shape)
    return [x]


# ---- einsum ----------------------------------------------------------------------------
def parse_einsum(equation: str, ranks: Sequence[int]) -> tuple[list[str], str]:
    """Operand subscripts and output subscripts with ``...`` expanded to capital letters.

    The implicit form (no ``->``) outputs the ellipsis dims, then the letters that appear once,
    in alphabetical order, as ONNX and numpy do.
    """
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ShapeError(f"Einsum equation {equation!r} has {len(terms)} operands, the node has {len(ranks)}")
    ell = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks) if "..." in t), default=0)
    fill = "".join(chr(ord("A") + i) for i in range(ell))
    out_terms = []
    for t, r in zip(terms, ranks):
        n = r - len(t.replace("...", ""))
        out_terms.append(t.replace("...", fill[ell - n:] if n else "") if "..." in t else t)
        if len(out_terms[-1]) != r or not out_terms[-1].isalpha():
            raise ShapeError(f"Einsum term {t!r} does not match an operand of rank {r}")
    if arrow:
        out = rhs.replace("...", fill)
    else:
        letters = "".join(out_terms)
        out = fill + "".join(sorted(c for c in set(letters) if c.islower() and letters.count(c) == 1))
    return out_terms, out


@register_op(OpType.EINSUM, attrs=EinsumAttrs)
def infer_einsum(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    types = [need(t, f"Inputs[{i}]") for i, t in enumerate(in_types)]
    require(len(types) >= 1, "Einsum needs at least one input")
    dtype = same_dtype(types, "Einsum inputs")
    terms, out = parse_einsum(node.attrs.equation, [t.rank for t in types])
    sizes: dict[str, Dim] = {}
    for term, t in zip(terms, types):
        for letter, d in zip(term, t.shape):
            sizes[letter] = broadcast_shapes((sizes.get(letter, 1),), (d,))[0]
    missing = [c for c in out if c not in sizes]
    require(not missing, f"Einsum output subscripts {missing} appear in no operand")
    return [TensorType(dtype, tuple(sizes[c] for c in out))]


# ---- build-time values of shape tensors ------------------------------------------------
@value_rule(OpType.MOD)
def _mod_value(node: Node, t, v) -> Optional[np.ndarray]:
    """Mod of known integer shape values (TorchScript's MultiheadAttention computes head dims so)."""
    a, b = value_ints(v[0]), value_ints(v[1])
    if a is None or b is None:
        return None
    x, y = v[0].astype(np.int64), v[1].astype(np.int64)
    return np.fmod(x, y) if node.attrs.fmod else np.mod(x, y)
