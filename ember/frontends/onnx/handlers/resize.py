"""Resize (opset 11+; nearest, linear and cubic modes, every coordinate transformation,
antialias, keep_aspect_ratio_policy, axes; scales/sizes/roi constant at import become attrs)
GridSample, AffineGrid and CenterCropPad: resampling."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence, TypeVar

from ember.errors import ShapeError
from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import HandlerFn, choice, ints, reject, strip_trailing_empty
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import (
    AffineGridAttrs,
    AxesAttrs,
    CoordinateTransform,
    GridSampleAttrs,
    GridSampleMode,
    GridSamplePadding,
    KeepAspectRatioPolicy,
    NearestMode,
    ResizeAttrs,
    ResizeMode,
)
from ember.ops.common import norm_axes
from ember.ops.shape_gen import resize_full

T = TypeVar("T")

#: What Ember's kernels implement of ONNX's Resize modes.
_MODES = (ResizeMode.NEAREST, ResizeMode.LINEAR, ResizeMode.CUBIC)
_COORD_MODES = (CoordinateTransform.HALF_PIXEL, CoordinateTransform.HALF_PIXEL_SYMMETRIC,
                CoordinateTransform.PYTORCH_HALF_PIXEL, CoordinateTransform.ALIGN_CORNERS,
                CoordinateTransform.ASYMMETRIC, CoordinateTransform.TF_CROP_AND_RESIZE,
                CoordinateTransform.TF_HALF_PIXEL_FOR_NN)


def _checked_attrs(ctx: ImportContext, n: OnnxNode) -> ResizeAttrs:
    mode = choice(n, "mode", ResizeMode.NEAREST, supported=_MODES)
    coord = choice(n, "coordinate_transformation_mode", CoordinateTransform.HALF_PIXEL,
                   supported=_COORD_MODES)
    nearest = choice(n, "nearest_mode", NearestMode.ROUND_PREFER_FLOOR)
    antialias = bool(int(n.attr("antialias", 0)))
    if antialias and mode is ResizeMode.NEAREST:
        raise reject("antialias=1 with mode='nearest' (antialiasing applies to linear and cubic only)")
    policy = choice(n, "keep_aspect_ratio_policy", KeepAspectRatioPolicy.STRETCH)
    given = ints(n, "axes")
    axes = norm_axes(given, ctx.type(n.input(0)).rank, "Resize axes") if given is not None else None
    return ResizeAttrs(mode=mode, coordinate_transformation_mode=coord, nearest_mode=nearest,
                       cubic_coeff_a=float(n.attr("cubic_coeff_a", -0.75)),
                       exclude_outside=bool(int(n.attr("exclude_outside", 0))),
                       extrapolation_value=float(n.attr("extrapolation_value", 0.0)),
                       antialias=antialias, keep_aspect_ratio_policy=policy, axes=axes)


def _full(ctx: ImportContext, n: OnnxNode, values: Sequence[T], axes: Optional[Sequence[int]],
          others: Sequence[T]) -> tuple[T, ...]:
    try:
        return resize_full(values, axes, ctx.type(n.input(0)).rank, others)
    except ShapeError as e:
        raise reject(str(e)) from None


def _full_sizes(ctx: ImportContext, n: OnnxNode, sizes: tuple[int, ...],
                axes: Optional[Sequence[int]]) -> tuple[int, ...]:
    """Per-``axes`` sizes as one per input dim (the others keep their static size)."""
    shape = ctx.type(n.input(0)).shape
    if axes is not None:
        for i, d in enumerate(shape):
            if i not in axes and not isinstance(d, int):
                raise reject(f"sizes are given for axes {tuple(axes)} only and dim {i} is symbolic ({d})")
    return _full(ctx, n, sizes, axes, [d if isinstance(d, int) else 0 for d in shape])


def _full_roi(ctx: ImportContext, n: OnnxNode, roi: tuple[float, ...],
              axes: Optional[Sequence[int]]) -> tuple[float, ...]:
    """tf_crop_and_resize's roi ``(starts, ends)`` per ``axes`` as one start and end per dim."""
    rank = ctx.type(n.input(0)).rank
    k = len(roi) // 2
    return (_full(ctx, n, roi[:k], axes, [0.0] * rank) + _full(ctx, n, roi[k:], axes, [1.0] * rank))


@onnx_op("Resize", since=11)
def import_resize(ctx: ImportContext, n: OnnxNode) -> None:
    attrs = _checked_attrs(ctx, n)
    roi_name, scales_name, sizes_name = n.input(1), n.input(2), n.input(3)
    crop = attrs.coordinate_transformation_mode is CoordinateTransform.TF_CROP_AND_RESIZE
    if crop and not roi_name:
        raise reject("coordinate_transformation_mode='tf_crop_and_resize' without a roi input")
    consts = (scales_name, sizes_name) + ((roi_name,) if crop else ())
    if not ctx.all_const(consts):
        ctx.emit(n, OpType.RESIZE, strip_trailing_empty(n.inputs[:4]), n.outputs[:1], attrs)
        return
    scales: Optional[tuple[float, ...]] = ctx.const_floats(scales_name) if scales_name else None
    sizes: Optional[tuple[int, ...]] = ctx.const_ints(sizes_name) if sizes_name else None
    if sizes:
        attrs = replace(attrs, sizes=_full_sizes(ctx, n, sizes, attrs.axes))
    elif scales:
        attrs = replace(attrs, scales=_full(ctx, n, scales, attrs.axes, [1.0] * ctx.type(n.input(0)).rank))
    else:
        raise reject("neither scales nor sizes is given")
    if crop:
        roi = ctx.const_floats(roi_name)
        if roi is None:
            raise reject("tf_crop_and_resize's roi is not a constant")
        attrs = replace(attrs, roi=_full_roi(ctx, n, roi, attrs.axes))
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


@onnx_op("AffineGrid", since=20)
def import_affine_grid(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.AFFINE_GRID, n.inputs[:2], n.outputs[:1],
             AffineGridAttrs(align_corners=bool(int(n.attr("align_corners", 0)))))


@onnx_op("CenterCropPad", since=18)
def import_center_crop_pad(ctx: ImportContext, n: OnnxNode) -> None:
    given = ints(n, "axes")
    axes = norm_axes(given, ctx.type(n.input(0)).rank, "CenterCropPad axes") if given is not None else None
    ctx.emit(n, OpType.CENTER_CROP_PAD, n.inputs[:2], n.outputs[:1], AxesAttrs(axes=axes))


def _upsample(from_input: bool) -> HandlerFn:
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """Upsample 7 (scales attribute) and 9 (scales input): Resize with the asymmetric
        coordinate transformation; nearest takes the floor (scales are at least 1)."""
        raw = str(n.attr("mode", "nearest")).lower()
        if raw not in ("nearest", "linear", "bilinear"):
            raise reject(f"mode={raw!r} (Upsample has nearest and linear)")
        attrs = ResizeAttrs(mode=ResizeMode.NEAREST if raw == "nearest" else ResizeMode.LINEAR,
                            coordinate_transformation_mode=CoordinateTransform.ASYMMETRIC,
                            nearest_mode=NearestMode.FLOOR)
        if not from_input:
            scales = tuple(float(v) for v in n.attr("scales", ()))
            ctx.emit(n, OpType.RESIZE, n.inputs[:1], n.outputs[:1], replace(attrs, scales=scales))
        elif ctx.all_const((n.input(1),)):
            ctx.emit(n, OpType.RESIZE, n.inputs[:1], n.outputs[:1],
                     replace(attrs, scales=ctx.const_floats(n.input(1))))
        else:
            ctx.emit(n, OpType.RESIZE, (n.input(0), "", n.input(1)), n.outputs[:1], attrs)

    handler.__name__ = f"import_upsample{9 if from_input else 7}"
    return handler


onnx_op("Upsample", since=7)(_upsample(from_input=False))
onnx_op("Upsample", since=9)(_upsample(from_input=True))
