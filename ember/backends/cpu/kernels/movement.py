"""Data-movement kernels: Concat, Split, Slice, Gather, Pad."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into
from ember.backends.cpu.kernels.common import (
    Inputs, Tensor, arg, floats, int_param, norm_axes, norm_axis, torch_pad_arg,
)
from ember.backends.cpu.registry import register_kernel
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import AxisAttrs, PadAttrs, SliceAttrs, SplitAttrs


@register_kernel(OpType.CONCAT)
def concat(node: Node, ctx: CompileContext) -> Kernel:
    axis = (node.attrs or AxisAttrs()).axis

    def run(inputs: Inputs) -> list:
        xs = [t for t in inputs if t is not None]
        return [torch.cat(xs, dim=norm_axis(axis, xs[0].dim()))]

    return run


def split_sizes(dim: int, n_out: int, sizes: list[int] | None, num_outputs: int | None) -> list[int]:
    """Split sizes: given ones, else ``n`` parts of ``ceil(dim / n)`` with a smaller last part."""
    if sizes is not None:
        if sum(sizes) != dim:
            raise ValueError(f"Split sizes {sizes} do not add up to the axis length {dim}")
        return sizes
    n = num_outputs or n_out
    chunk = -(-dim // n)
    out = [min(chunk, max(dim - i * chunk, 0)) for i in range(n)]
    if sum(out) != dim or (out and out[-1] <= 0 and dim > 0):
        raise ValueError(f"axis of length {dim} cannot be split into {n} parts")
    return out


@register_kernel(OpType.SPLIT)
def split(node: Node, ctx: CompileContext) -> Kernel:
    a = node.attrs or SplitAttrs()
    n_out = len(node.outputs)
    given = int_param(node, ctx, a.split, 1)

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        axis = norm_axis(a.axis, x.dim())
        sizes = split_sizes(x.shape[axis], n_out, given(inputs), a.num_outputs)
        return list(torch.split(x, sizes, dim=axis))

    return run


def slice_indices(dim: int, start: int, end: int, step: int) -> tuple[int, int]:
    """ONNX Slice clamping: (start, end) for ``range(start, end, step)`` on an axis of ``dim``."""
    if step == 0:
        raise ValueError("Slice step is 0")
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    return min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)


def slice_tensor(x: Tensor, starts: list[int], ends: list[int], axes: list[int] | None,
                 steps: list[int] | None) -> Tensor:
    """ONNX Slice on ``x``: a view for positive steps, a gather for negative ones."""
    axes = norm_axes(axes, x.dim()) if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    index: list = [slice(None)] * x.dim()
    negative: list[tuple[int, int, int, int]] = []
    for ax, s, e, st in zip(axes, starts, ends, steps):
        s, e = slice_indices(x.shape[ax], s, e, st)
        if st > 0:
            index[ax] = slice(s, max(e, s), st)
        else:
            negative.append((ax, s, e, st))
    out = x[tuple(index)]
    for ax, s, e, st in negative:
        out = out.index_select(ax, torch.arange(s, e, st, dtype=torch.int64))
    return out


@register_kernel(OpType.SLICE)
def slice_(node: Node, ctx: CompileContext) -> Kernel:
    a = node.attrs or SliceAttrs()
    params = [int_param(node, ctx, v, i) for i, v in enumerate((a.starts, a.ends, a.axes, a.steps), 1)]

    def run(inputs: Inputs) -> list:
        starts, ends, axes, steps = (p(inputs) for p in params)
        return [slice_tensor(inputs[0], starts, ends, axes, steps)]

    return run


@register_kernel(OpType.GATHER)
def gather(node: Node, ctx: CompileContext) -> Kernel:
    """Gather along ``axis``; negative indices count from the end; scalar indices drop the axis.

    ``write_into``: the same ``index_select`` straight into a contiguous output (its ``out=`` form,
    a real kernel on both devices), e.g. an embedding lookup into its place in the CUDA arena."""
    axis_attr = (node.attrs or AxisAttrs()).axis

    def select(inputs: Inputs) -> tuple[Tensor, int, Tensor, tuple[int, ...]]:
        x, idx = inputs[0], inputs[1]
        axis = norm_axis(axis_attr, x.dim())
        dim = x.shape[axis]
        flat = idx.reshape(-1).to(torch.int64)
        flat = torch.where(flat < 0, flat + dim, flat)
        return x, axis, flat, tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:])

    def run(inputs: Inputs) -> list:
        x, axis, flat, shape = select(inputs)
        return [x.index_select(axis, flat).reshape(shape)]

    def write(inputs: Inputs, out: Tensor) -> bool:
        x, axis, flat, shape = select(inputs)
        if tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device or not out.is_contiguous():
            return False
        torch.index_select(x, axis, flat, out=out.view(tuple(x.shape[:axis]) + (flat.numel(),)
                                                        + tuple(x.shape[axis + 1:])))
        return True

    return with_write_into(run, WriteInto(write, lambda out: out.is_contiguous()))


def _pad_index(dim: int, before: int, after: int, mode: str) -> Tensor:
    """Source index of each output position along one axis for reflect / edge / wrap padding."""
    pos = torch.arange(-before, dim + after, dtype=torch.int64)
    if mode == "edge":
        return pos.clamp(0, dim - 1)
    if mode == "wrap":
        return pos.remainder(dim)
    if dim == 1:
        return torch.zeros_like(pos)
    period = 2 * (dim - 1)
    r = pos.remainder(period)
    return torch.where(r >= dim, period - r, r)


def pad_tensor(x: Tensor, pads: list[int], mode: str, value: float | int | bool,
               axes: list[int] | None) -> Tensor:
    """ONNX Pad: ``pads`` = begins then ends over ``axes`` (all by default); negative crops."""
    rank = x.dim()
    axes = norm_axes(axes, rank) if axes is not None else list(range(rank))
    if len(pads) != 2 * len(axes):
        raise ValueError(f"Pad got {len(pads)} pads for {len(axes)} axes; expected {2 * len(axes)}")
    begins, ends = [0] * rank, [0] * rank
    for i, ax in enumerate(axes):
        begins[ax], ends[ax] = pads[i], pads[i + len(axes)]
    if mode == "constant":
        return F.pad(x, torch_pad_arg(begins, ends), value=value)
    if mode not in ("reflect", "edge", "wrap"):
        raise ValueError(f"Pad mode {mode!r}; expected constant, reflect, edge or wrap")
    crop = [slice(max(-b, 0), x.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(zip(begins, ends))]
    out = x[tuple(crop)]
    for ax in range(rank):
        b, e = max(begins[ax], 0), max(ends[ax], 0)
        if b or e:
            if out.shape[ax] == 0:
                raise ValueError(f"Pad mode {mode!r} cannot pad an empty axis {ax}")
            out = out.index_select(ax, _pad_index(out.shape[ax], b, e, mode))
    return out


@register_kernel(OpType.PAD)
def pad(node: Node, ctx: CompileContext) -> Kernel:
    a = node.attrs or PadAttrs()
    pads_of, axes_of = int_param(node, ctx, a.pads, 1), int_param(node, ctx, a.axes, 3)

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        pads = pads_of(inputs)
        if pads is None:
            raise ValueError("Pad needs pads (attribute or input 1)")
        value_t = arg(inputs, 2)
        value: float | int | bool = a.value
        if value_t is not None and value_t.numel():
            value = floats(value_t)[0]
        if not x.is_floating_point():
            value = bool(value) if x.dtype is torch.bool else int(value)
        return [pad_tensor(x, pads, a.mode, value, axes_of(inputs))]

    return run
