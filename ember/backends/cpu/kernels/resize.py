"""Resampling: Resize (nearest, linear and cubic) with every ONNX coordinate transformation and
nearest mode, antialias, exclude_outside, keep_aspect_ratio_policy and axes, and GridSample.

Resize is separable: each axis whose size changes is resampled on its own with an index
gather (nearest) or a two-tap blend (linear), so the kernel works for any rank. Cubic,
antialiased and tf_crop_and_resize axes multiply by an ``[out, in]`` interpolation matrix built
the way ONNX's reference picks taps and weights.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.common import Inputs, Tensor, arg, floats, ints
from ember.backends.cpu.registry import register_kernel
from ember.errors import UnsupportedOpError
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import AffineGridAttrs, GridSampleAttrs, ResizeAttrs
from ember.ops.shape_gen import keep_aspect_sizes, resize_full

COORDINATE_MODES = ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel",
                    "tf_half_pixel_for_nn", "half_pixel_symmetric", "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
MODES = ("nearest", "linear", "cubic")


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
    c = source_coords(n_out, n_in, inv_scale, a.coordinate_transformation_mode).to(y.device)
    if a.mode == "nearest":
        return y.index_select(axis, nearest_index(c, a.nearest_mode, n_in))
    c = c.clamp(0, n_in - 1)
    lo = torch.floor(c).to(torch.int64)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = _along(c - lo, axis, y.dim(), y.dtype)
    return y.index_select(axis, lo) * (1 - frac) + y.index_select(axis, hi) * frac


def _f32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float32))


# --- the general path: one interpolation matrix per axis (cubic, antialias, tf_crop_and_resize) ---

def _nearest_coeffs(r: np.ndarray, mode: str) -> np.ndarray:
    whole = r == 1.0  # ONNX's ratio is in (0, 1]: 1 marks an exact input coordinate
    if mode == "round_prefer_floor":
        right = r > 0.5
    elif mode == "round_prefer_ceil":
        right = r >= 0.5
    elif mode == "floor":
        right = np.zeros_like(r, dtype=bool)
    elif mode == "ceil":
        right = np.ones_like(r, dtype=bool)
    else:
        raise ValueError(f"Resize nearest_mode {mode!r}; use one of {', '.join(NEAREST_MODES)}")
    right = right | whole
    return np.stack([~right, right], axis=1).astype(np.float64)


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _coeffs(r: np.ndarray, scale: float, a: ResizeAttrs) -> np.ndarray:
    """The taps' weights for each output position (``r``: the ratios, ONNX's reference's
    ``x_ori - floor(x_ori)`` with 1 for whole coordinates), ``[n_out, taps]``."""
    if a.mode == "nearest":
        return _nearest_coeffs(r, a.nearest_mode)
    if not a.antialias:
        offsets = np.array([-1.0, 0.0, 1.0, 2.0]) if a.mode == "cubic" else np.array([0.0, 1.0])
        d = offsets[None, :] - r[:, None]
        if a.mode == "cubic":
            return _cubic(d, a.cubic_coeff_a)
        return np.clip(1 - np.abs(d), 0, 1)
    s = min(scale, 1.0)  # the filter is stretched by 1/scale when downscaling
    support = 2 if a.mode == "cubic" else 1
    start = int(np.floor(-support / s) + 1)
    d = (np.arange(start, 2 - start)[None, :] - r[:, None]) * s
    w = _cubic(d, a.cubic_coeff_a) if a.mode == "cubic" else np.clip(1 - np.abs(d), 0, 1)
    return w / w.sum(axis=1, keepdims=True)


def _onnx_coords(n_out: int, n_in: int, scale: float, mode: str,
                 roi: Optional[tuple[float, float]]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Input coordinates (float64) and, for tf_crop_and_resize, the outputs outside the input."""
    y = np.arange(n_out, dtype=np.float64)
    width = scale * n_in  # fractional when a scale gave it
    if mode == "tf_crop_and_resize":
        start, end = roi if roi is not None else (0.0, 1.0)
        if n_out == 1:
            x = np.full(n_out, (end - start) * (n_in - 1) / 2)
        else:
            x = y * (end - start) * (n_in - 1) / (n_out - 1)
        x = x + start * (n_in - 1)
        return x, (x < 0) | (x > n_in - 1)
    if mode == "align_corners":
        return (np.zeros(n_out) if n_out == 1 else y * (n_in - 1) / (n_out - 1)), None
    if mode == "asymmetric":
        return y / scale, None
    if mode == "pytorch_half_pixel":
        return (np.full(n_out, -0.5) if n_out == 1 else (y + 0.5) / scale - 0.5), None
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5, None
    if mode == "tf_half_pixel_for_nn":
        return (y + 0.5) / scale, None
    if mode == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - n_out / width)
        return offset + (y + 0.5) / scale - 0.5, None
    raise ValueError(f"Resize coordinate_transformation_mode {mode!r} is not supported; "
                     f"use one of {', '.join(COORDINATE_MODES)}")


def interpolation_matrix(n_in: int, n_out: int, scale: float, a: ResizeAttrs,
                         roi: Optional[tuple[float, float]] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``[n_out, n_in]`` weights resampling one axis as ONNX's Resize does (edge-clamped taps,
    ``exclude_outside`` renormalizing the taps inside), and the extrapolated outputs' mask."""
    x, outside = _onnx_coords(n_out, n_in, scale, a.coordinate_transformation_mode, roi)
    base = np.floor(x)
    r = np.where(x == base, 1.0, x - base)
    w = _coeffs(r, scale, a)
    taps = w.shape[1]
    # the taps nearest x (ties to the left), as the reference picks neighbours
    pad = -(-taps // 2)
    xp = x + pad
    p = np.floor(xp)
    frac = xp - p
    if taps % 2 == 0:
        first = np.where(frac == 0, -(taps // 2), -(taps // 2) + 1)
    else:
        first = np.where(frac <= 0.5, -((taps - 1) // 2), -((taps - 1) // 2) + 1)
    idx = (p + first).astype(np.int64)[:, None] + np.arange(taps)[None, :] - pad
    if a.exclude_outside:
        w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.repeat(np.arange(n_out), taps), np.clip(idx, 0, n_in - 1).reshape(-1)), w.reshape(-1))
    return m, outside


def _resample_matrix(y: Tensor, axis: int, n_out: int, scale: float, a: ResizeAttrs,
                     roi: Optional[tuple[float, float]]) -> Tensor:
    m, outside = interpolation_matrix(y.shape[axis], n_out, scale, a, roi)
    w = torch.from_numpy(m).to(device=y.device, dtype=y.dtype)
    out = torch.movedim(torch.matmul(torch.movedim(y, axis, -1), w.T), -1, axis)
    if outside is not None and outside.any():
        mask = torch.from_numpy(outside).to(y.device).reshape([-1 if i == axis else 1 for i in range(y.dim())])
        out = out.masked_fill(mask, a.extrapolation_value)
    return out


def _general(a: ResizeAttrs) -> bool:
    return (a.mode == "cubic" or a.antialias
            or a.coordinate_transformation_mode == "tf_crop_and_resize")


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


def _check_whole_lengths(a: ResizeAttrs, in_shape: Sequence[int], outs: Sequence[int],
                         scales: Optional[list[float]]) -> None:
    """align_corners and tf_crop_and_resize divide by the output length less one. With a scale
    whose output length ``in * scale`` is not whole (4 x 0.6 = 2.4), the spec's formula (and ONNX
    Runtime and PyTorch) divide by the integer length (2 - 1), ONNX's reference implementation by
    the fractional one (2.4 - 1): the two disagree, so Ember refuses that form rather than pick."""
    mode = a.coordinate_transformation_mode
    if scales is None or mode not in ("align_corners", "tf_crop_and_resize"):
        return
    for axis, (n_in, n_out, s) in enumerate(zip(in_shape, outs, scales)):
        if n_out > 1 and abs(float(np.float32(s)) * n_in - n_out) > 1e-5 * n_out:
            raise UnsupportedOpError(
                f"Resize with coordinate_transformation_mode={mode!r} and scale {s:g} on axis "
                f"{axis} (input length {n_in}, fractional output length {n_in * s:g}) is not "
                f"supported: ONNX's reference divides by the fractional length, ONNX Runtime by "
                f"the integer one. Give the output sizes instead of scales")


def resize(x: Tensor, a: ResizeAttrs, scales: Optional[list[float]], sizes: Optional[list[int]],
           roi: Optional[Sequence[float]] = None) -> Tensor:
    """ONNX Resize of ``x`` to ``sizes`` (or ``floor(shape * scales)``); scales/sizes/roi one per
    input dim."""
    if a.mode not in MODES:
        raise ValueError(f"Resize mode {a.mode!r} is not supported on the CPU backend; "
                         f"use one of {', '.join(MODES)}")
    in_shape = tuple(x.shape)
    aspect: Optional[float] = None
    if sizes:
        sizes, aspect = keep_aspect_sizes(in_shape, sizes, a.axes, a.keep_aspect_ratio_policy)
        sizes = list(sizes)
    outs, inv = output_plan(in_shape, scales, sizes)
    if aspect is not None:  # the kept aspect ratio's one scale maps coordinates on the axes
        inv = [_f32(1 / aspect) if a.axes is None or i in a.axes else r for i, r in enumerate(inv)]
    _check_whole_lengths(a, in_shape, outs, scales if not sizes else None)
    rank = x.dim()
    if roi is not None and len(roi) != 2 * rank:
        raise ValueError(f"Resize roi {list(roi)} must have 2 x {rank} entries")
    general = _general(a)
    if general:  # matrices in float32/float64; integers through float64 and back
        work = x if x.dtype in (torch.float32, torch.float64) else \
            x.float() if x.is_floating_point() else x.double()
    else:
        work = x if x.is_floating_point() or a.mode == "nearest" else x.double()
    # an axis that keeps its size at scale 1 (and the whole roi) is left alone whatever the mode
    order = list(a.axes) + [i for i in range(rank) if i not in a.axes] if a.axes else range(rank)
    for axis in order:
        n_in, n_out, r = in_shape[axis], outs[axis], inv[axis]
        axis_roi = (float(roi[axis]), float(roi[axis + rank])) if roi is not None else None
        if n_in == n_out and r == 1.0 and axis_roi in (None, (0.0, 1.0)):
            continue
        if general:
            if aspect is not None and (a.axes is None or axis in a.axes):
                scale = aspect
            elif scales:
                scale = float(np.float32(scales[axis]))
            else:
                scale = n_out / n_in
            work = _resample_matrix(work, axis, n_out, scale, a, axis_roi)
        else:
            work = _resample_axis(work, axis, n_out, r, a)
    if work.dtype is x.dtype:
        return work
    if x.is_floating_point():
        return work.to(x.dtype)
    info = torch.iinfo(x.dtype)
    return work.round().clamp(info.min, info.max).to(x.dtype)


def _runtime_params(a: ResizeAttrs, inputs: Inputs, rank: int
                    ) -> tuple[Optional[list[float]], Optional[list[int]]]:
    """Scales or sizes, one per input dim (run-time ones are per ``axes`` when it is given)."""
    if a.sizes is not None:
        return None, list(a.sizes)
    if a.scales is not None:
        return list(a.scales), None
    sizes_t, scales_t = arg(inputs, 3), arg(inputs, 2)
    x = inputs[0]
    if sizes_t is not None and sizes_t.numel():
        return None, list(resize_full(ints(sizes_t), a.axes, rank, list(x.shape)))
    if scales_t is not None and scales_t.numel():
        return list(resize_full(floats(scales_t), a.axes, rank, [1.0] * rank)), None
    if len(inputs) == 2 and inputs[1] is not None:  # opset 10: (X, scales)
        return floats(inputs[1]), None
    return None, None


def _runtime_roi(a: ResizeAttrs, inputs: Inputs, rank: int) -> Optional[list[float]]:
    if a.coordinate_transformation_mode != "tf_crop_and_resize":
        return None
    if a.roi is not None:
        return list(a.roi)
    roi_t = arg(inputs, 1)
    if roi_t is None or not roi_t.numel():
        return None
    roi = floats(roi_t)
    k = len(roi) // 2
    return list(resize_full(roi[:k], a.axes, rank, [0.0] * rank)) + \
        list(resize_full(roi[k:], a.axes, rank, [1.0] * rank))


@register_kernel(OpType.RESIZE)
def resize_kernel(node: Node, ctx: CompileContext) -> Kernel:
    a: ResizeAttrs = node.attrs or ResizeAttrs()

    def run(inputs: Inputs) -> list:
        rank = inputs[0].dim()
        scales, sizes = _runtime_params(a, inputs, rank)
        return [resize(inputs[0], a, scales, sizes, _runtime_roi(a, inputs, rank))]

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


@register_kernel(OpType.AFFINE_GRID)
def affine_grid(node: Node, ctx: CompileContext) -> Kernel:
    """ONNX AffineGrid is torch's affine_grid (same normalized coordinates, align_corners)."""
    a: AffineGridAttrs = node.attrs or AffineGridAttrs()

    def run(inputs: Inputs) -> list:
        theta, size = inputs[0], ints(inputs[1])
        work = theta if theta.dtype in (torch.float32, torch.float64) else theta.float()
        return [F.affine_grid(work, list(size), align_corners=a.align_corners).to(theta.dtype)]

    return run


@register_kernel(OpType.CENTER_CROP_PAD)
def center_crop_pad(node: Node, ctx: CompileContext) -> Kernel:
    """CenterCropPad: each axis cropped (start ``(in - out) // 2``) or zero-padded (the input
    placed at ``(out - in) // 2``) to the given size."""
    axes_attr = node.attrs.axes if node.attrs is not None else None

    def run(inputs: Inputs) -> list:
        x, sizes = inputs[0], ints(inputs[1])
        axes = [a % x.dim() for a in axes_attr] if axes_attr is not None else list(range(x.dim()))
        if len(sizes) != len(axes):
            raise ValueError(f"CenterCropPad shape {sizes} has {len(sizes)} values for axes {axes}")
        out_shape, src, dst = list(x.shape), [slice(None)] * x.dim(), [slice(None)] * x.dim()
        for axis, size in zip(axes, sizes):
            dim = x.shape[axis]
            out_shape[axis] = size
            if size < dim:
                start = (dim - size) // 2
                src[axis] = slice(start, start + size)
            elif size > dim:
                start = (size - dim) // 2
                dst[axis] = slice(start, start + dim)
        out = x.new_zeros(out_shape)
        out[tuple(dst)] = x[tuple(src)]
        return [out]

    return run
