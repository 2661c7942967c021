"""Layers that move data: Concat, Slice, Flatten, Reshape, Permute, Crop, Tile; and Softmax and
Eltwise (SUM with coefficients, PROD, MAX)."""
from __future__ import annotations

from typing import Sequence

from ember.frontends.caffe import caffe_pb2
from ember.frontends.caffe.context import CaffeContext, CaffeLayer, reject
from ember.frontends.caffe.layers.common import axis_of, static_dims
from ember.frontends.caffe.registry import caffe_layer
from ember.ir.optype import OpType
from ember.ir.types import Dim
from ember.ops.attrs import AxisAttrs, ReshapeAttrs, SliceAttrs, SoftmaxAttrs, SplitAttrs, TileAttrs, TransposeAttrs

_ELTWISE = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["eltwise_param"].message_type
PROD = _ELTWISE.enum_types_by_name["EltwiseOp"].values_by_name["PROD"].number
SUM = _ELTWISE.enum_types_by_name["EltwiseOp"].values_by_name["SUM"].number


def _copy(ctx: CaffeContext, layer: CaffeLayer) -> None:
    ctx.emit(layer, OpType.IDENTITY, (layer.bottom(),), (layer.top(),))


@caffe_layer("Concat")
def concat(ctx: CaffeContext, layer: CaffeLayer) -> None:
    layer.count(tops=1)
    axis = axis_of(layer.param.concat_param, "axis", "concat_dim", ctx.type(layer.bottom()).rank)
    if len(layer.bottoms) == 1:
        _copy(ctx, layer)
        return
    ctx.emit(layer, OpType.CONCAT, layer.bottoms, (layer.top(),), AxisAttrs(axis=axis))


@caffe_layer("Slice")
def slice_layer(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """Cuts the bottom along ``axis`` at ``slice_point``s (or into equal parts, one per top)."""
    layer.count(bottoms=1)
    p = layer.param.slice_param
    t = ctx.type(layer.bottom())
    axis = axis_of(p, "axis", "slice_dim", t.rank)
    (size,) = static_dims(ctx, layer.bottom(), t.shape[axis:axis + 1], "the sliced axis")
    points = [int(v) for v in p.slice_point]
    tops = len(layer.tops)
    if points:
        if len(points) != tops - 1:
            raise reject(f"{len(points)} slice_point(s) make {len(points) + 1} parts, but it has {tops} tops")
        bounds = [0, *points, size]
        if any(b >= e for b, e in zip(bounds, bounds[1:])):
            raise reject(f"slice_point {points} must increase strictly inside the axis' size {size}")
        sizes = tuple(e - b for b, e in zip(bounds, bounds[1:]))
    else:
        if size % tops:
            raise reject(f"axis {axis} of size {size} does not split into {tops} equal parts; give slice_point")
        sizes = (size // tops,) * tops
    if tops == 1:
        _copy(ctx, layer)
        return
    ctx.emit(layer, OpType.SPLIT, (layer.bottom(),), layer.tops, SplitAttrs(axis=axis, split=sizes))


def _reshape(ctx: CaffeContext, layer: CaffeLayer, target: Sequence[Dim]) -> None:
    shape = ctx.ints(layer, "shape", [int(d) for d in target])
    ctx.emit(layer, OpType.RESHAPE, (layer.bottom(), shape), (layer.top(),), ReshapeAttrs())


def _tail(ctx: CaffeContext, layer: CaffeLayer, dims: Sequence[Dim], aligned: bool) -> list[int]:
    """Dims kept after the reshaped range: 0 (copy) where they keep their index, else values."""
    if aligned:
        return [0] * len(dims)
    return list(static_dims(ctx, layer.bottom(), dims, "the dims after the reshaped axes"))


@caffe_layer("Flatten")
def flatten(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """Axes ``axis`` to ``end_axis`` merged into one."""
    layer.count(bottoms=1, tops=1)
    p = layer.param.flatten_param
    t = ctx.type(layer.bottom())
    start = axis_of(p, "axis", None, t.rank)
    end = axis_of(p, "end_axis", None, t.rank, default=-1)
    if end < start:
        raise reject(f"end_axis {p.end_axis} comes before axis {p.axis}")
    if start == 1 and end == t.rank - 1:
        ctx.emit(layer, OpType.FLATTEN, (layer.bottom(),), (layer.top(),), AxisAttrs(axis=1))
        return
    tail = _tail(ctx, layer, t.shape[end + 1:], aligned=end == start)
    _reshape(ctx, layer, [0] * start + [-1] + tail)


@caffe_layer("Reshape")
def reshape(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """The axes ``[axis, axis + num_axes)`` replaced by ``shape`` (0 copies a dim, -1 infers one)."""
    layer.count(bottoms=1, tops=1)
    p = layer.param.reshape_param
    t = ctx.type(layer.bottom())
    axis = int(p.axis)
    start = axis + t.rank + 1 if axis < 0 else axis
    if not 0 <= start <= t.rank:
        raise reject(f"axis {axis} is out of range for a rank-{t.rank} bottom")
    num = int(p.num_axes)
    if num < -1:
        raise reject(f"num_axes {num} must be -1 (all remaining axes) or more")
    end = t.rank if num == -1 else start + num
    if end > t.rank:
        raise reject(f"axis {axis} with num_axes {num} runs past the bottom's {t.rank} axes")
    spec = [int(d) for d in p.shape.dim]
    if spec.count(-1) > 1 or any(d < -1 for d in spec):
        raise reject(f"shape {spec} may hold one -1 and no other negative dim")
    if any(d == 0 and start + i >= t.rank for i, d in enumerate(spec)):
        raise reject(f"shape {spec} copies (0) a dim past the bottom's {t.rank} axes")
    tail = _tail(ctx, layer, t.shape[end:], aligned=len(spec) == end - start)
    _reshape(ctx, layer, [0] * start + spec + tail)


@caffe_layer("Permute")
def permute(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """The SSD fork's Permute: axes in ``order``, the axes it leaves out after them in order."""
    layer.count(bottoms=1, tops=1)
    rank = ctx.type(layer.bottom()).rank
    order = [int(o) for o in layer.param.permute_param.order]
    if any(not 0 <= o < rank for o in order) or len(set(order)) != len(order):
        raise reject(f"order {order} must name distinct axes of a rank-{rank} bottom")
    perm = order + [a for a in range(rank) if a not in order]
    if perm == list(range(rank)):
        _copy(ctx, layer)
        return
    ctx.emit(layer, OpType.TRANSPOSE, (layer.bottom(),), (layer.top(),), TransposeAttrs(perm=tuple(perm)))


@caffe_layer("Crop")
def crop(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """The first bottom cut to the second's shape from ``axis`` on, starting at ``offset``."""
    layer.count(bottoms=2, tops=1)
    p = layer.param.crop_param
    x, ref = ctx.type(layer.bottom(0)), ctx.type(layer.bottom(1))
    if x.rank != ref.rank:
        raise reject(f"its bottoms {x} and {ref} must have the same rank")
    axis = axis_of(p, "axis", None, x.rank, default=2)
    axes = tuple(range(axis, x.rank))
    offsets = [int(o) for o in p.offset]
    if len(offsets) not in (0, 1, len(axes)):
        raise reject(f"{len(offsets)} offsets for {len(axes)} cropped axes; give 0, 1 or {len(axes)}")
    offsets = offsets * len(axes) if len(offsets) == 1 else offsets or [0] * len(axes)
    want = static_dims(ctx, layer.bottom(1), ref.shape[axis:], "the reference bottom's shape")
    have = x.shape[axis:]
    for a, o, w, h in zip(axes, offsets, want, have):
        if isinstance(h, int) and o + w > h:
            raise reject(f"axis {a}: offset {o} + size {w} runs past the bottom's size {h}")
    ctx.emit(layer, OpType.SLICE, (layer.bottom(0),), (layer.top(),),
             SliceAttrs(starts=tuple(offsets), ends=tuple(o + w for o, w in zip(offsets, want)), axes=axes,
                        steps=(1,) * len(axes)))


@caffe_layer("Tile")
def tile(ctx: CaffeContext, layer: CaffeLayer) -> None:
    layer.count(bottoms=1, tops=1)
    p = layer.param.tile_param
    rank = ctx.type(layer.bottom()).rank
    axis = axis_of(p, "axis", None, rank)
    if not p.HasField("tiles") or p.tiles < 1:
        raise reject("tiles must be given and positive")
    repeats = tuple(int(p.tiles) if a == axis else 1 for a in range(rank))
    ctx.emit(layer, OpType.TILE, (layer.bottom(),), (layer.top(),), TileAttrs(repeats=repeats))


@caffe_layer("Softmax")
def softmax(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """Softmax along ``axis`` (the channels by default), each position of the others apart."""
    layer.count(bottoms=1, tops=1)
    axis = axis_of(layer.param.softmax_param, "axis", None, ctx.type(layer.bottom()).rank)
    ctx.emit(layer, OpType.SOFTMAX, (layer.bottom(),), (layer.top(),), SoftmaxAttrs(axis=axis))


@caffe_layer("Eltwise")
def eltwise(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """SUM (sum of coeff_i * x_i), PROD or MAX of bottoms of one shape."""
    layer.count(tops=1, min_bottoms=2)
    p = layer.param.eltwise_param
    shapes = {ctx.type(b).shape for b in layer.bottoms}
    if len(shapes) > 1:
        raise reject(f"its bottoms have different shapes {sorted(map(str, shapes))}; Eltwise takes one shape")
    coeffs = [float(c) for c in p.coeff]
    if coeffs and (p.operation != SUM or len(coeffs) != len(layer.bottoms)):
        raise reject(f"coeff ({len(coeffs)} values) is for SUM, with one value per bottom ({len(layer.bottoms)})")
    terms = list(layer.bottoms)
    if p.operation == SUM and any(c != 1.0 for c in coeffs):
        terms = [_times(ctx, layer, b, c, i) for i, (b, c) in enumerate(zip(terms, coeffs))]
    op = {SUM: OpType.ADD, PROD: OpType.MUL}.get(p.operation, OpType.MAX)
    acc = terms[0]
    for i, term in enumerate(terms[1:], start=1):
        last = i == len(terms) - 1
        out = layer.top() if last else ctx.temp(layer, f"partial{i}")
        ctx.emit(layer, op, (acc, term), (out,), suffix="" if last else f"partial{i}")
        acc = out


def _times(ctx: CaffeContext, layer: CaffeLayer, x: str, c: float, i: int) -> str:
    if c == 1.0:
        return x
    out = ctx.temp(layer, f"coeff{i}")
    ctx.emit(layer, OpType.MUL, (x, ctx.scalar(layer, f"coeff{i}", c)), (out,), suffix=f"coeff{i}")
    return out
