"""Ops that make, resize or resample tensors from shape values: Expand, Shape,
ConstantOfShape, EyeLike, Range, Pad, Resize, GridSample."""
from __future__ import annotations

import math
from typing import Optional, Sequence, TypeVar

import numpy as np

from ember.errors import ShapeError
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType
from ember.ops.attrs import (
    AffineGridAttrs,
    AxesAttrs,
    ConstantOfShapeAttrs,
    EyeLikeAttrs,
    GridSampleAttrs,
    KeepAspectRatioPolicy,
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

T = TypeVar("T")


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
        # a shape dim must be 1 or equal an input dim that is not 1, so such input dims stay
        fresh = fresh_dims(node.outputs[0], rank)
        kept = (None,) * (rank - x.rank) + tuple(x.shape)
        return [x.with_shape(tuple(k if isinstance(k, int) and k != 1 else f
                                   for k, f in zip(kept, fresh)))]
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


def resize_full(values: Sequence[T], axes: Optional[Sequence[int]], rank: int,
                others: Sequence[T]) -> tuple[T, ...]:
    """Resize's per-``axes`` scales/sizes as one per input dim (``others[i]`` for dims not in
    ``axes``); values one per dim already (no ``axes``) come back as they are."""
    if axes is None:
        return tuple(values)
    require(len(values) == len(axes),
            f"Resize axes {tuple(axes)} and scales/sizes {tuple(values)} differ in length")
    return tuple(values[list(axes).index(i)] if i in axes else others[i] for i in range(rank))


def keep_aspect_sizes(in_shape: Sequence[int], sizes: Sequence[int], axes: Optional[Sequence[int]],
                      policy: KeepAspectRatioPolicy) -> tuple[tuple[int, ...], Optional[float]]:
    """Resize's ``keep_aspect_ratio_policy`` applied to full-rank ``sizes``: (output sizes, the
    one scale of the resized axes, None for ``stretch``). ``not_larger`` takes the smallest
    ``sizes[d] / in[d]`` over ``axes``, ``not_smaller`` the largest; the output is
    ``round_half_up(scale * in[d])`` on ``axes`` and the input's size elsewhere."""
    if policy is KeepAspectRatioPolicy.STRETCH:
        return tuple(sizes), None
    chosen = range(len(in_shape)) if axes is None else axes
    ratios = [sizes[d] / in_shape[d] for d in chosen]
    scale = min(ratios) if policy is KeepAspectRatioPolicy.NOT_LARGER else max(ratios)
    return tuple(int(scale * d + 0.5) if i in chosen else d for i, d in enumerate(in_shape)), scale


@register_op(OpType.RESIZE, attrs=ResizeAttrs)
def infer_resize(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Resize(x, roi?, scales?, sizes?): sizes win (after keep_aspect_ratio_policy); else
    floor(dim * scale) per axis. Run-time scales/sizes are per ``axes`` when it is given."""
    x = need(input_at(in_types, 0), "X")
    a: ResizeAttrs = node.attrs
    sizes_v, scales_v = const_at(consts, 3), const_at(consts, 2)
    sizes = a.sizes if a.sizes is not None else (
        resize_full(const_ints(sizes_v), a.axes, x.rank, x.shape)
        if sizes_v is not None and sizes_v.size else None)
    scales = a.scales if a.scales is not None else (
        resize_full(const_floats(scales_v), a.axes, x.rank, [1.0] * x.rank)
        if scales_v is not None and scales_v.size else None)
    if sizes is not None:
        require(len(sizes) == x.rank, f"Resize sizes {sizes} must have {x.rank} entries for {x}")
        if a.keep_aspect_ratio_policy is not KeepAspectRatioPolicy.STRETCH:
            if not x.is_static:
                return [x.with_shape(fresh_dims(node.outputs[0], x.rank))]
            sizes = keep_aspect_sizes([int(d) for d in x.shape], [int(s) for s in sizes], a.axes,
                                      a.keep_aspect_ratio_policy)[0]
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


@register_op(OpType.AFFINE_GRID, attrs=AffineGridAttrs)
def infer_affine_grid(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """AffineGrid(theta[N, r, r + 1], size[r + 2]) -> [N, *size[2:], r] (r = 2 or 3)."""
    theta, size = need_input(in_types, 0, "theta"), need_input(in_types, 1, "size")
    require(theta.rank == 3 and theta.dtype.is_float, f"AffineGrid theta must be float [N, r, r+1], got {theta}")
    require(size.rank == 1 and isinstance(size.shape[0], int) and size.shape[0] in (4, 5),
            f"AffineGrid size must be a 1-D tensor of 4 or 5 values, got {size}")
    r = int(size.shape[0]) - 2
    v = const_at(consts, 1)
    spatial: tuple[Dim, ...] = tuple(const_ints(v)[2:]) if v is not None else \
        fresh_dims(node.outputs[0], r)
    return [TensorType(theta.dtype, (theta.shape[0], *spatial, r))]


@register_op(OpType.CENTER_CROP_PAD, attrs=AxesAttrs)
def infer_center_crop_pad(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """CenterCropPad(x, shape): each of ``axes`` (all: None) cropped or zero-padded around the
    centre to ``shape``."""
    x, shape = need_input(in_types, 0, "input_data"), need_input(in_types, 1, "shape")
    axes = norm_axes(node.attrs.axes, x.rank) if node.attrs.axes is not None else tuple(range(x.rank))
    require(shape.rank == 1 and shape.shape[0] in (len(axes),) or not isinstance(shape.shape[0], int),
            f"CenterCropPad shape {shape} must have one value per axis {tuple(axes)}")
    v = const_at(consts, 1)
    sizes: Sequence[Dim] = const_ints(v) if v is not None else fresh_dims(node.outputs[0], len(axes))
    out = list(x.shape)
    for a, d in zip(axes, sizes):
        out[a] = d
    return [x.with_shape(tuple(out))]
