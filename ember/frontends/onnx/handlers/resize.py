"""Resize (opset 11+): nearest and linear modes; scales/sizes constant at import become attrs."""
from __future__ import annotations

from typing import Optional

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import ints, reject, strip_trailing_empty
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import ResizeAttrs
from ember.ops.common import norm_axes

_MODES = ("nearest", "linear")
_COORD_MODES = ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel",
                "half_pixel_symmetric")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _checked_attrs(n: OnnxNode) -> ResizeAttrs:
    mode = n.attr("mode", "nearest")
    coord = n.attr("coordinate_transformation_mode", "half_pixel")
    nearest = n.attr("nearest_mode", "round_prefer_floor")
    for name, value, allowed in (("mode", mode, _MODES),
                                 ("coordinate_transformation_mode", coord, _COORD_MODES),
                                 ("nearest_mode", nearest, _NEAREST_MODES)):
        if value not in allowed:
            raise reject(f"{name}={value!r} is not supported (supported: {', '.join(allowed)})")
    if int(n.attr("antialias", 0)):
        raise reject("antialias=1 is not supported")
    policy = n.attr("keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        raise reject(f"keep_aspect_ratio_policy={policy!r} is not supported (only 'stretch')")
    return ResizeAttrs(mode=mode, coordinate_transformation_mode=coord, nearest_mode=nearest)


def _full_rank(ctx: ImportContext, n: OnnxNode, values: tuple, fill_scale: bool) -> tuple:
    """Expands per-``axes`` scales/sizes (opset 18) to one entry per input dim."""
    axes = ints(n, "axes")
    shape = ctx.type(n.input(0)).shape
    if axes is None:
        return values
    axes = norm_axes(axes, len(shape), "Resize axes")
    if len(axes) != len(values):
        raise reject(f"axes {axes} and scales/sizes {values} differ in length")
    full = []
    for i, d in enumerate(shape):
        if i in axes:
            full.append(values[axes.index(i)])
        elif fill_scale:
            full.append(1.0)
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
    scales: Optional[tuple] = ctx.const_floats(scales_name) if scales_name else None
    sizes: Optional[tuple] = ctx.const_ints(sizes_name) if sizes_name else None
    if sizes:
        attrs = ResizeAttrs(**{**attrs.__dict__, "sizes": _full_rank(ctx, n, sizes, False)})
    elif scales:
        attrs = ResizeAttrs(**{**attrs.__dict__, "scales": _full_rank(ctx, n, scales, True)})
    else:
        raise reject("neither scales nor sizes is given")
    ctx.emit(n, OpType.RESIZE, n.inputs[:1], n.outputs[:1], attrs)
