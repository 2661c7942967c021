"""Resampling: Resize (nearest and linear) with every ONNX coordinate transformation and nearest
mode, and GridSample.

Resize is separable: each axis whose size changes is resampled on its own with an index
gather (nearest) or a two-tap blend (linear), so the kernel works for any rank.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.common import Inputs, Tensor, arg, floats, ints
from ember.backends.cpu.registry import register_kernel
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import GridSampleAttrs, ResizeAttrs

COORDINATE_MODES = ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel",
                    "tf_half_pixel_for_nn", "half_pixel_symmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
MODES = ("nearest", "linear")


def source_coords(n_out: int, n_in: int, inv_scale: float, mode: str) -> Tensor:
    """The input coordinate each output position samples along one axis.

    ``inv_scale`` is ``1 / scale`` (``n_in / n_out`` when sizes were given). Computed in float32
    as ONNX Runtime does, so that exact ties in nearest rounding fall the same way as in the
    runtime everyone compares against. align_corners divides by the integer output length
    ``n_out - 1``, as the spec's formula, ONNX Runtime and PyTorch do; ONNX's reference
    implementation (and so the backend suite's expected outputs) divides by the fractional
    ``n_in * scale - 1`` instead when scales give a non-integral length.
    """
    x = torch.arange(n_out, dtype=torch.float32)
    inv = torch.tensor(inv_scale, dtype=torch.float32)
    if mode == "half_pixel":
        return (x + 0.5) * inv - 0.5
    if mode == "asymmetric":
        return x * inv
    if mode == "align_corners":
        return x * (n_in - 1) / (n_out - 1) if n_out > 1 else torch.zeros_like(x)
    if mode == "pytorch_half_pixel":
        return (x + 0.5) * inv - 0.5 if n_out > 1 else torch.zeros_like(x)
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) * inv
    if mode == "half_pixel_symmetric":
        adjustment = n_out * inv / n_in
        center = n_in / 2
        offset = center * (1 - adjustment)
        return offset + (x + 0.5) * inv - 0.5
    raise ValueError(f"Resize coordinate_transformation_mode {mode!r} is not supported; "
                     f"use one of {', '.join(COORDINATE_MODES)}")


def nearest_index(c: Tensor, mode: str, n_in: int) -> Tensor:
    if mode == "round_prefer_floor":
        idx = torch.ceil(c - 0.5)
    elif mode == "round_prefer_ceil":
        idx = torch.floor(c + 0.5)
    elif mode == "floor":
        idx = torch.floor(c)
    elif mode == "ceil":
        idx = torch.ceil(c)
    else:
        raise ValueError(f"Resize nearest_mode {mode!r}; use one of {', '.join(NEAREST_MODES)}")
    return idx.clamp(0, n_in - 1).to(torch.int64)


def _along(w: Tensor, axis: int, rank: int, dtype: torch.dtype) -> Tensor:
    shape = [1] * rank
    shape[axis] = -1
    return w.to(dtype).reshape(shape)


def _resample_axis(y: Tensor, axis: int, n_out: int, inv_scale: float, a: ResizeAttrs) -> Tensor:
    n_in = y.shape[axis]
    c = source_coords(n_out, n_in, inv_scale, a.coordinate_transformation_mode)
    if a.mode == "nearest":
        return y.index_select(axis, nearest_index(c, a.nearest_mode, n_in))
    c = c.clamp(0, n_in - 1)
    lo = torch.floor(c).to(torch.int64)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = _along(c - lo, axis, y.dim(), y.dtype)
    return y.index_select(axis, lo) * (1 - frac) + y.index_select(axis, hi) * frac


def _f32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float32))


def output_plan(in_shape: Sequence[int], scales: Optional[list[float]],
                sizes: Optional[list[int]]) -> tuple[list[int], list[float]]:
    """(output sizes, per-axis inverse scales) from whichever of scales / sizes was given."""
    if sizes:
        if len(sizes) != len(in_shape):
            raise ValueError(f"Resize sizes {sizes} do not match input rank {len(in_shape)}")
        return list(sizes), [_f32(i / o) if o else 1.0 for o, i in zip(sizes, in_shape)]
    if not scales or len(scales) != len(in_shape):
        raise ValueError(f"Resize needs scales or sizes with one entry per input dim "
                         f"({len(in_shape)}); got scales={scales}, sizes={sizes}")
    outs = [int(math.floor(i * _f32(s))) for i, s in zip(in_shape, scales)]
    return outs, [_f32(1 / _f32(s)) for s in scales]


def resize(x: Tensor, a: ResizeAttrs, scales: Optional[list[float]], sizes: Optional[list[int]]) -> Tensor:
    """ONNX Resize of ``x`` to ``sizes`` (or ``floor(shape * scales)``)."""
    # an axis that keeps its size at scale 1 is left alone whatever the mode (as ONNX Runtime does)
    if a.mode not in MODES:
        raise ValueError(f"Resize mode {a.mode!r} is not supported on the CPU backend; "
                         f"use nearest or linear")
    outs, inv = output_plan(tuple(x.shape), scales, sizes)
    work = x if x.is_floating_point() or a.mode == "nearest" else x.double()
    for axis, (n_in, n_out, r) in enumerate(zip(x.shape, outs, inv)):
        if n_in == n_out and r == 1.0:
            continue
        work = _resample_axis(work, axis, n_out, r, a)
    return work if work.dtype is x.dtype else work.round().to(x.dtype)


def _runtime_params(a: ResizeAttrs, inputs: Inputs) -> tuple[Optional[list[float]], Optional[list[int]]]:
    if a.sizes is not None:
        return None, list(a.sizes)
    if a.scales is not None:
        return list(a.scales), None
    sizes_t, scales_t = arg(inputs, 3), arg(inputs, 2)
    if sizes_t is not None and sizes_t.numel():
        return None, ints(sizes_t)
    if scales_t is not None and scales_t.numel():
        return floats(scales_t), None
    if len(inputs) == 2 and inputs[1] is not None:  # opset 10: (X, scales)
        return floats(inputs[1]), None
    return None, None


@register_kernel(OpType.RESIZE)
def resize_kernel(node: Node, ctx: CompileContext) -> Kernel:
    a: ResizeAttrs = node.attrs or ResizeAttrs()

    def run(inputs: Inputs) -> list:
        scales, sizes = _runtime_params(a, inputs)
        return [resize(inputs[0], a, scales, sizes)]

    return run


@register_kernel(OpType.GRID_SAMPLE)
def grid_sample(node: Node, ctx: CompileContext) -> Kernel:
    """ONNX GridSample is torch's grid_sample (same modes, padding modes and align_corners)."""
    a = node.attrs or GridSampleAttrs()

    def run(inputs: Inputs) -> list:
        x, grid = inputs[0], inputs[1]
        return [F.grid_sample(x, grid.to(x.dtype), mode=a.mode, padding_mode=a.padding_mode,
                              align_corners=a.align_corners)]

    return run
