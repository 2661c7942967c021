"""Resize (opset 11+; nearest and linear modes; scales/sizes constant at import become attrs)
and GridSample: resampling."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import choice, ints, reject, strip_trailing_empty
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import (
    CoordinateTransform,
    GridSampleAttrs,
    GridSampleMode,
    GridSamplePadding,
    NearestMode,
    ResizeAttrs,
    ResizeMode,
)
from ember.ops.common import norm_axes

#: What Ember's kernels implement of ONNX's Resize modes.
_MODES = (ResizeMode.NEAREST, ResizeMode.LINEAR)
_COORD_MODES = (CoordinateTransform.HALF_PIXEL, CoordinateTransform.HALF_PIXEL_SYMMETRIC,
                CoordinateTransform.PYTORCH_HALF_PIXEL, CoordinateTransform.ALIGN_CORNERS,
                CoordinateTransform.ASYMMETRIC)


def _checked_attrs(n: OnnxNode) -> ResizeAttrs:
    mode = choice(n, "mode", ResizeMode.NEAREST, supported=_MODES)
    coord = choice(n, "coordinate_transformation_mode", CoordinateTransform.HALF_PIXEL,
                   supported=_COORD_MODES)
    nearest = choice(n, "nearest_mode", NearestMode.ROUND_PREFER_FLOOR)
    if int(n.attr("antialias", 0)):
        raise reject("antialias=1 is not supported")
    policy = n.attr("keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        raise reject(f"keep_aspect_ratio_policy={policy!r} is not supported (only 'stretch')")
    return ResizeAttrs(mode=mode, coordinate_transformation_mode=coord, nearest_mode=nearest)


def _axes(ctx: ImportContext, n: OnnxNode, values: Sequence[float]) -> Optional[tuple[int, ...]]:
    """The normalized ``axes`` attribute (opset 18) that scales/sizes are given for, or None."""
    given = ints(n, "axes")
    if given is None:
        return None
    axes = norm_axes(given, ctx.type(n.input(0)).rank, "Resize axes")
    if len(axes) != len(values):
        raise reject(f"axes {axes} and scales/sizes {tuple(values)} differ in length")
    return axes


def _full_scales(ctx: ImportContext, n: OnnxNode, scales: tuple[float, ...]) -> tuple[float, ...]:
    """Per-``axes`` scales as one per input dim (1.0 for the others)."""
    axes = _axes(ctx, n, scales)
    if axes is None:
        return scales
    return tuple(scales[axes.index(i)] if i in axes else 1.0 for i in range(ctx.type(n.input(0)).rank))


def _full_sizes(ctx: ImportContext, n: OnnxNode, sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Per-``axes`` sizes as one per input dim (the others keep their static size)."""
    axes = _axes(ctx, n, sizes)
    if axes is None:
        return sizes
    full = []
    for i, d in enumerate(ctx.type(n.input(0)).shape):
        if i in axes:
            full.append(sizes[axes.index(i)])
        elif isinstance(d, int):
            full.append(d)
        else:
            raise reject(f"sizes are given for axes {axes} only and dim {i} is symbolic ({d})")
    return tuple(full)


@onnx_op("Resize", since=11)
def import_resize(ctx: ImportContext, n: OnnxNode) -> None:
    attrs = _checked_attrs(n)
    scales_name, sizes_name = n.input(2), n.input(3)
    if not ctx.all_const((scales_name, sizes_name)):
        ctx.emit(n, OpType.RESIZE, strip_trailing_empty(n.inputs[:4]), n.outputs[:1], attrs)
        return
    scales: Optional[tuple[float, ...]] = ctx.const_floats(scales_name) if scales_name else None
    sizes: Optional[tuple[int, ...]] = ctx.const_ints(sizes_name) if sizes_name else None
    if sizes:
        attrs = replace(attrs, sizes=_full_sizes(ctx, n, sizes))
    elif scales:
        attrs = replace(attrs, scales=_full_scales(ctx, n, scales))
    else:
        raise reject("neither scales nor sizes is given")
    ctx.emit(n, OpType.RESIZE, n.inputs[:1], n.outputs[:1], attrs)


#: Opset 20 renamed GridSample's modes; both spellings are accepted at every opset.
_GRID_ALIASES = {"linear": GridSampleMode.BILINEAR, "cubic": GridSampleMode.BICUBIC}


@onnx_op("GridSample", since=16)
def import_grid_sample(ctx: ImportContext, n: OnnxNode) -> None:
    """Opset 16: modes bilinear/nearest/bicubic on 4-D input; opset 20: linear/nearest/cubic, N-D."""
    mode = choice(n, "mode", GridSampleMode.BILINEAR, aliases=_GRID_ALIASES)
    padding = choice(n, "padding_mode", GridSamplePadding.ZEROS)
    rank = ctx.type(n.input(0)).rank
    if mode is GridSampleMode.BICUBIC and rank != 4:
        raise reject(f"cubic mode on a {rank}-D input; Ember supports cubic GridSample on 4-D inputs only")
    ctx.emit(n, OpType.GRID_SAMPLE, n.inputs[:2], n.outputs[:1],
             GridSampleAttrs(mode, padding, bool(n.attr("align_corners", 0))))
