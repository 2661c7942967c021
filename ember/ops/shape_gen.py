"""Ops that make, resize or resample tensors from shape values: Expand, Shape,
ConstantOfShape, EyeLike, Range, Pad, Resize, GridSample."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ember.errors import ShapeError
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType
from ember.ops.attrs import (
    ConstantOfShapeAttrs,
    EyeLikeAttrs,
    GridSampleAttrs,
    PadAttrs,
    ResizeAttrs,
    ShapeAttrs,
)
from ember.ops.common import (
    Consts,
    Types,
    add_dims,
    broadcast_shapes,
    const_at,
    const_dims,
    const_floats,
    const_ints,
    fresh_dims,
    input_at,
    mul_dims,
    need,
    need_input,
    norm_axes,
    require,
)
from ember.ops.registry import register_op


def _shape_len(t: TensorType, what: str) -> int:
    n = t.shape[0] if t.rank == 1 else None
    if not isinstance(n, int):
        raise ShapeError(f"{what} must be a 1-D tensor of known length, got {t}")
    return n


@register_op(OpType.EXPAND)
def infer_expand(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Expand(x, shape): bidirectional broadcast of x with the shape value."""
    x, s = need(input_at(in_types, 0), "input"), need(input_at(in_types, 1), "shape")
    value = const_at(consts, 1)
    if value is None:
        rank = max(x.rank, _shape_len(s, "Expand shape"))
        return [x.with_shape(fresh_dims(node.outputs[0], rank))]
    return [x.with_shape(broadcast_shapes(x.shape, const_dims(value)))]


@register_op(OpType.SHAPE, attrs=ShapeAttrs)
def infer_shape(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Shape(x) -> int64[len]; ``start``/``end`` clamp like Python slicing (opset 15)."""
    x = need(input_at(in_types, 0), "data")
    a: ShapeAttrs = node.attrs
    n = len(range(x.rank)[a.start:a.end])
    return [TensorType(DType.INT64, (n,))]


@register_op(OpType.CONSTANT_OF_SHAPE, attrs=ConstantOfShapeAttrs)
def infer_constant_of_shape(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    s = need(input_at(in_types, 0), "input")
    dtype: DType = node.attrs.dtype
    value = const_at(consts, 0)
    if value is None:
        return [TensorType(dtype, fresh_dims(node.outputs[0], _shape_len(s, "ConstantOfShape input")))]
    dims = const_dims(value)
    require(all(isinstance(d, str) or d >= 0 for d in dims),
            f"ConstantOfShape shape {dims} has a negative dim")
    return [TensorType(dtype, dims)]


@register_op(OpType.EYE_LIKE, attrs=EyeLikeAttrs)
def infer_eye_like(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """EyeLike(x[r, c]): x's shape, the attr's dtype (or x's)."""
    x = need_input(in_types, 0, "input")
    require(x.rank == 2, f"EyeLike needs a 2-D input, got {x}")
    dtype: Optional[DType] = node.attrs.dtype
    return [x.with_dtype(dtype) if dtype is not None else x]


@register_op(OpType.RANGE)
def infer_range(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Range(start, limit, delta) -> 1-D of max(ceil((limit - start) / delta), 0)."""
    ts = [need(input_at(in_types, i), n) for i, n in enumerate(("start", "limit", "delta"))]
    dtype = ts[0].dtype
    require(all(t.dtype is dtype for t in ts), "Range inputs must have one dtype, got "
            + ", ".join(str(t) for t in ts))
    require(all(t.rank == 0 or t.shape == (1,) for t in ts), "Range inputs must be scalars")
    vals = [const_at(consts, i) for i in range(3)]
    if any(v is None for v in vals):
        return [TensorType(dtype, (f"{node.outputs[0]}_d0",))]
    start, limit, delta = (np.asarray(v).reshape(()).item() for v in vals)
    if any(isinstance(v, str) for v in (start, limit, delta)):
        return [TensorType(dtype, (_symbolic_range_len(start, limit, delta, node.outputs[0]),))]
    require(delta != 0, "Range delta is 0")
    return [TensorType(dtype, (max(math.ceil((limit - start) / delta), 0),))]


def _symbolic_range_len(start: Dim, limit: Dim, delta: Dim, out: str) -> Dim:
    """The length of a Range with a symbolic bound, when it is a simple difference."""
    if delta == 1 and start == 0:
        return limit
    if delta == 1 and isinstance(start, int) and isinstance(limit, str):
        return f"({limit}-{start})"
    return f"{out}_d0"


def pad_amounts(a: PadAttrs, consts: Consts, rank: int) -> Optional[tuple[int, ...]]:
    """Full-rank ``(begins..., ends...)`` pads, or None when only the run time knows them."""
    pads_value = const_at(consts, 1)
    pads = a.pads if a.pads is not None else (const_ints(pads_value) if pads_value is not None else None)
    if pads is None:
        return None
    axes_v = const_at(consts, 3)
    axes = a.axes if a.axes is not None else (const_ints(axes_v) if axes_v is not None else None)
    if axes is None:
        require(len(pads) == 2 * rank, f"Pad pads {pads} must have {2 * rank} entries (2 x rank)")
        return tuple(pads)
    axes = norm_axes(axes, rank, "Pad axes")
    require(len(pads) == 2 * len(axes), f"Pad pads {pads} must have 2 x {len(axes)} entries for axes {axes}")
    full = [0] * (2 * rank)
    for i, ax in enumerate(axes):
        full[ax], full[ax + rank] = pads[i], pads[i + len(axes)]
    return tuple(full)


@register_op(OpType.PAD, attrs=PadAttrs)
def infer_pad(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    x = need(input_at(in_types, 0), "data")
    pads = pad_amounts(node.attrs, consts, x.rank)
    if pads is None:
        axes_known = node.attrs.axes is not None or input_at(in_types, 3) is None
        axes = norm_axes(node.attrs.axes, x.rank) if node.attrs.axes is not None else range(x.rank)
        fresh = fresh_dims(node.outputs[0], x.rank)
        if not axes_known:
            return [x.with_shape(fresh)]
        return [x.with_shape(tuple(fresh[i] if i in axes else d for i, d in enumerate(x.shape)))]
    shape = []
    for i, d in enumerate(x.shape):
        shape.append(add_dims(add_dims(d, pads[i]), pads[i + x.rank]))
        require(not isinstance(shape[-1], int) or shape[-1] >= 0,
                f"Pad pads {pads} make axis {i} of {x} negative")
    return [x.with_shape(tuple(shape))]


def resize_dim(dim: Dim, scale: float) -> Dim:
    """``floor(dim * scale)``, symbolic for integral scales on symbolic dims."""
    if isinstance(dim, int):  # float32 product, as ONNX Runtime computes it
        return int(np.floor(np.float32(dim) * np.float32(scale)))
    if scale == 1.0:
        return dim
    if float(scale).is_integer():
        return mul_dims([dim, int(scale)])
    return f"floor({dim}*{scale:g})"


@register_op(OpType.RESIZE, attrs=ResizeAttrs)
def infer_resize(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Resize(x, roi?, scales?, sizes?): sizes win; else floor(dim * scale) per axis."""
    x = need(input_at(in_types, 0), "X")
    a: ResizeAttrs = node.attrs
    sizes_v, scales_v = const_at(consts, 3), const_at(consts, 2)
    sizes = a.sizes if a.sizes is not None else (
        const_ints(sizes_v) if sizes_v is not None and sizes_v.size else None)
    scales = a.scales if a.scales is not None else (
        const_floats(scales_v) if scales_v is not None and scales_v.size else None)
    if sizes is not None:
        require(len(sizes) == x.rank, f"Resize sizes {sizes} must have {x.rank} entries for {x}")
        return [x.with_shape(tuple(sizes))]
    if scales is not None:
        require(len(scales) == x.rank, f"Resize scales {scales} must have {x.rank} entries for {x}")
        require(all(s > 0 for s in scales), f"Resize scales {scales} must be positive")
        return [x.with_shape(tuple(resize_dim(d, s) for d, s in zip(x.shape, scales)))]
    return [x.with_shape(fresh_dims(node.outputs[0], x.rank))]


@register_op(OpType.GRID_SAMPLE, attrs=GridSampleAttrs)
def infer_grid_sample(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """GridSample(X[N, C, *in], grid[N, *out, r]) -> [N, C, *out], with r = len(in)."""
    x, grid = need_input(in_types, 0, "X"), need_input(in_types, 1, "grid")
    require(x.rank in (4, 5), f"GridSample supports 4-D and 5-D inputs, got {x}")
    last = grid.shape[-1] if grid.rank else None
    require(grid.rank == x.rank and (not isinstance(last, int) or last == x.rank - 2),
            f"GridSample grid {grid} does not fit input {x} (want [N, *out, {x.rank - 2}])")
    return [x.with_shape((x.shape[0], x.shape[1], *grid.shape[1:-1]))]
