"""Data-movement ops: Concat, Split, Slice, Gather, Reshape, Flatten, Transpose, Squeeze,
Unsqueeze. The generators and resizers (Expand, Shape, ConstantOfShape, Range, Pad, Resize)
live in ``ember.ops.shape_gen``; Tile and DepthToSpace/SpaceToDepth in ``ember.ops.movement``.

Inputs whose *values* decide the output shape (Reshape's shape, Slice's parameters, Squeeze's
axes, ...) are used when they are constants; otherwise the affected dims become fresh symbols
(``"<output>_d<i>"``). Slice bounds that are constants on a symbolic dim are taken to be within
that dim (a valid model never relies on clamping a constant bound to a dim it does not know).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ember.errors import ShapeError
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType, format_shape
from ember.ops.attrs import AxesAttrs, AxisAttrs, ReshapeAttrs, SliceAttrs, SplitAttrs, TransposeAttrs
from ember.ops.common import (
    Consts,
    Types,
    add_dims,
    const_at,
    const_dims,
    const_ints,
    div_dim,
    fresh_dims,
    input_at,
    mul_dims,
    need,
    norm_axes,
    norm_axis,
    require,
)
from ember.ops.registry import register_op

#: Slice ends at or beyond this mean "to the end" (exporters write INT64_MAX or INT32_MAX).
HUGE = 2 ** 31 - 1


@register_op(OpType.CONCAT, attrs=AxisAttrs)
def infer_concat(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    present = [need(t, f"input {i}") for i, t in enumerate(in_types)]
    require(len(present) >= 1, "Concat needs at least one input")
    rank = present[0].rank
    require(all(t.rank == rank for t in present),
            "Concat inputs must have one rank, got " + ", ".join(str(t) for t in present))
    axis = norm_axis(node.attrs.axis, rank, "Concat axis")
    dtype = present[0].dtype
    require(all(t.dtype is dtype for t in present),
            "Concat inputs must have one dtype, got " + ", ".join(str(t) for t in present))
    shape = list(present[0].shape)
    shape[axis] = 0
    for t in present:
        for i, d in enumerate(t.shape):
            if i == axis:
                shape[i] = add_dims(shape[i], d)
            elif isinstance(d, int) and isinstance(shape[i], int) and d != shape[i]:
                raise ShapeError(f"Concat inputs differ on axis {i} (not the concat axis {axis}): "
                                 + ", ".join(str(x) for x in present))
            elif isinstance(shape[i], str) and isinstance(d, int):
                shape[i] = d
    return [TensorType(dtype, tuple(shape))]


def split_sizes(dim: Dim, n: int) -> list[Dim]:
    """Sizes of ``n`` near-equal parts of ``dim`` (ONNX: the last part may be smaller)."""
    if isinstance(dim, int):
        chunk = -(-dim // n)
        sizes: list[Dim] = [chunk] * (n - 1)
        return sizes + [dim - chunk * (n - 1)]
    part = div_dim(dim, n)
    return [part if part is not None else f"({dim})/{n}"] * n


@register_op(OpType.SPLIT, attrs=SplitAttrs)
def infer_split(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    a: SplitAttrs = node.attrs
    x = need(input_at(in_types, 0), "input")
    axis = norm_axis(a.axis, x.rank, "Split axis")
    n = len(node.outputs)
    sizes: list[Dim]
    split_value = const_at(consts, 1)
    given = a.split if a.split is not None else (
        const_ints(split_value) if split_value is not None else None)
    if given is not None:
        require(len(given) == n, f"Split has {n} outputs but split sizes {tuple(given)}")
        if isinstance(x.shape[axis], int):
            require(sum(given) == x.shape[axis],
                    f"Split sizes {tuple(given)} do not add up to dim {x.shape[axis]} of {x}")
        sizes = list(given)
    elif input_at(in_types, 1) is not None:
        sizes = [f"{o}_d{axis}" for o in node.outputs]
    else:
        require(a.num_outputs is None or a.num_outputs == n,
                f"Split num_outputs={a.num_outputs} but the node has {n} outputs")
        sizes = split_sizes(x.shape[axis], n)
    return [x.with_shape(x.shape[:axis] + (s,) + x.shape[axis + 1:]) for s in sizes]


SliceParams = tuple[tuple[int, ...], tuple[Dim, ...], tuple[int, ...], tuple[int, ...]]


def slice_params(a: SliceAttrs, consts: Consts, rank: int) -> Optional[SliceParams]:
    """(starts, ends, axes, steps) normalized to full length, or None when not constant.

    ``ends`` may hold symbolic dims (a run-time size such as ``x[:, :seq]``)."""
    starts: tuple[int, ...]
    ends: tuple[Dim, ...]
    axes: Optional[tuple[int, ...]]
    steps: Optional[tuple[int, ...]]
    if a.starts is not None and a.ends is not None:
        starts, ends, axes, steps = a.starts, a.ends, a.axes, a.steps
    else:
        vals = [const_at(consts, i) for i in range(1, 5)]
        if vals[0] is None or vals[1] is None:
            return None
        starts, ends = const_ints(vals[0]), const_dims(vals[1])
        axes = const_ints(vals[2]) if vals[2] is not None else None
        steps = const_ints(vals[3]) if vals[3] is not None else None
    axes = tuple(range(len(starts))) if axes is None else axes
    steps = (1,) * len(starts) if steps is None else steps
    require(len(starts) == len(ends) == len(axes) == len(steps),
            f"Slice starts {starts}, ends {ends}, axes {axes}, steps {steps} differ in length")
    require(all(s != 0 for s in steps), f"Slice steps {steps} contain 0")
    return tuple(starts), tuple(ends), norm_axes(axes, rank, "Slice axes"), tuple(steps)


def slice_len(dim: Dim, start: int, end: Dim, step: int) -> Optional[Dim]:
    """Length of ``range(dim)[start:end:step]`` (ONNX clamping), or None when unknowable.

    A symbolic ``end`` (a run-time size such as ``x[:, :seq]``) is taken to be within the dim.
    """
    if isinstance(end, str):
        if step != 1 or start < 0:
            return None
        return end if start == 0 else f"({end}-{start})"
    if isinstance(dim, int):
        return _static_slice_len(dim, start, end, step)
    if step != 1:
        return None
    to_end = end >= HUGE
    if start >= 0 and to_end:
        return dim if start == 0 else f"({dim}-{start})"
    if start < 0 and to_end:
        return -start
    if start < 0 and end < 0:
        return max(0, end - start)
    if start >= 0 and end < 0:
        return f"({dim}{end - start:+d})"
    if start >= 0 and 0 <= end:
        return max(0, end - start)
    return None


def _static_slice_len(dim: int, start: int, end: int, step: int) -> int:
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        return max(0, -(-(end - start) // step))
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return max(0, -(-(start - end) // -step))


@register_op(OpType.SLICE, attrs=SliceAttrs)
def infer_slice(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    x = need(input_at(in_types, 0), "data")
    params = slice_params(node.attrs, consts, x.rank)
    if params is None:
        axes_v = const_at(consts, 3)
        if axes_v is None and input_at(in_types, 3) is not None:
            return [x.with_shape(fresh_dims(node.outputs[0], x.rank))]
        axes = norm_axes(const_ints(axes_v), x.rank) if axes_v is not None else tuple(range(
            _len1d(input_at(in_types, 1), x.rank)))
        fresh = fresh_dims(node.outputs[0], x.rank)
        return [x.with_shape(tuple(fresh[i] if i in axes else d for i, d in enumerate(x.shape)))]
    shape = list(x.shape)
    for start, end, axis, step in zip(*params):
        length = slice_len(x.shape[axis], start, end, step)
        shape[axis] = length if length is not None else f"{node.outputs[0]}_d{axis}"
    return [x.with_shape(tuple(shape))]


def _len1d(t: Optional[TensorType], rank: int) -> int:
    if t is None or t.rank != 1 or not isinstance(t.shape[0], int):
        return rank
    return t.shape[0]


@register_op(OpType.GATHER, attrs=AxisAttrs)
def infer_gather(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Gather(data, indices): data.shape[:axis] + indices.shape + data.shape[axis+1:]."""
    x, idx = need(input_at(in_types, 0), "data"), need(input_at(in_types, 1), "indices")
    require(idx.dtype in (DType.INT32, DType.INT64), f"Gather indices must be int32/int64, got {idx}")
    axis = norm_axis(node.attrs.axis, x.rank, "Gather axis")
    values = const_at(consts, 1)
    size = x.shape[axis]
    if values is not None and isinstance(size, int):
        bad = [int(v) for v in np.asarray(values).reshape(-1) if not -size <= int(v) < size]
        require(not bad, f"Gather indices {bad[:4]} are out of range for axis {axis} of size {size}")
    return [x.with_shape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])]


def reshape_shape(in_shape: tuple[Dim, ...], target: Sequence[Dim], allowzero: bool,
                  out_name: str) -> tuple[Dim, ...]:
    """Resolves 0 (copy the input dim) and -1 (infer) in a Reshape target, symbolically.

    Target entries may be symbolic dims (a target built at run time from known dims).
    """
    require(list(target).count(-1) <= 1, f"Reshape target {tuple(target)} has more than one -1")
    dims: list[Dim] = []
    for i, t in enumerate(target):
        if isinstance(t, str):
            dims.append(t)
        elif t == 0 and not allowzero:
            require(i < len(in_shape), f"Reshape target {tuple(target)} copies dim {i} (a 0) "
                    f"but the input {format_shape(in_shape)} has rank {len(in_shape)}")
            dims.append(in_shape[i])
        else:
            require(t >= -1, f"Reshape target {tuple(target)} has a negative dim {t}")
            dims.append(t)
    total = mul_dims(in_shape)
    if -1 in dims:
        i = dims.index(-1)
        known = mul_dims(d for j, d in enumerate(dims) if j != i)
        part = div_dim(total, known)
        if part is None and isinstance(total, int) and isinstance(known, int):
            raise ShapeError(f"cannot reshape {format_shape(in_shape)} ({total} elements) to "
                             f"{tuple(target)}: {total} is not divisible by {known}")
        dims[i] = part if part is not None else f"{out_name}_d{i}"
    else:
        out_total = mul_dims(dims)
        if isinstance(total, int) and isinstance(out_total, int) and total != out_total:
            raise ShapeError(f"cannot reshape {format_shape(in_shape)} ({total} elements) to "
                             f"{tuple(target)} ({out_total} elements)")
    return tuple(dims)


@register_op(OpType.RESHAPE, attrs=ReshapeAttrs)
def infer_reshape(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    x, s = need(input_at(in_types, 0), "data"), need(input_at(in_types, 1), "shape")
    require(s.rank == 1, f"Reshape shape input must be 1-D, got {s}")
    value = const_at(consts, 1)
    if value is None:
        require(isinstance(s.shape[0], int), f"Reshape shape input {s} has an unknown length")
        return [x.with_shape(fresh_dims(node.outputs[0], s.shape[0]))]  # type: ignore[arg-type]
    return [x.with_shape(reshape_shape(x.shape, const_dims(value), node.attrs.allowzero,
                                       node.outputs[0]))]


@register_op(OpType.FLATTEN, attrs=AxisAttrs)
def infer_flatten(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    x = need(input_at(in_types, 0), "input")
    axis = node.attrs.axis
    require(-x.rank <= axis <= x.rank, f"Flatten axis {axis} is out of range for {x}")
    axis = axis + x.rank if axis < 0 else axis
    return [x.with_shape((mul_dims(x.shape[:axis]), mul_dims(x.shape[axis:])))]


@register_op(OpType.TRANSPOSE, attrs=TransposeAttrs)
def infer_transpose(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    x = need(input_at(in_types, 0), "data")
    perm = node.attrs.perm if node.attrs.perm is not None else tuple(reversed(range(x.rank)))
    require(sorted(norm_axes(perm, x.rank, "Transpose perm")) == list(range(x.rank)),
            f"Transpose perm {perm} is not a permutation of {x.rank} axes")
    perm = norm_axes(perm, x.rank)
    return [x.with_shape(tuple(x.shape[p] for p in perm))]


def _axes(node: Node, in_types: Types, consts: Consts) -> Optional[tuple[int, ...]]:
    if node.attrs.axes is not None:
        return tuple(node.attrs.axes)
    value = const_at(consts, 1)
    return const_ints(value) if value is not None else None


@register_op(OpType.SQUEEZE, attrs=AxesAttrs)
def infer_squeeze(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    x = need(input_at(in_types, 0), "data")
    axes = _axes(node, in_types, consts)
    if axes is None and input_at(in_types, 1) is not None:
        n = _len1d(input_at(in_types, 1), -1)
        require(n >= 0, "Squeeze axes input has an unknown length; make it a constant")
        return [x.with_shape(fresh_dims(node.outputs[0], x.rank - n))]
    if axes is None:
        return [x.with_shape(tuple(d for d in x.shape if d != 1))]
    norm = norm_axes(axes, x.rank, "Squeeze axes")
    for a in norm:
        require(not isinstance(x.shape[a], int) or x.shape[a] == 1,
                f"Squeeze axis {a} of {x} has size {x.shape[a]}, not 1")
    return [x.with_shape(tuple(d for i, d in enumerate(x.shape) if i not in norm))]


@register_op(OpType.UNSQUEEZE, attrs=AxesAttrs)
def infer_unsqueeze(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    x = need(input_at(in_types, 0), "data")
    axes = _axes(node, in_types, consts)
    if axes is None:
        n = _len1d(input_at(in_types, 1), -1)
        require(n >= 0, "Unsqueeze needs its axes (attribute or a constant / 1-D input)")
        return [x.with_shape(fresh_dims(node.outputs[0], x.rank + n))]
    out_rank = x.rank + len(axes)
    norm = set(norm_axes(axes, out_rank, "Unsqueeze axes"))
    it = iter(x.shape)
    return [x.with_shape(tuple(1 if i in norm else next(it) for i in range(out_rank)))]

