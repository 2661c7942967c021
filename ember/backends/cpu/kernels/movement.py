"""Data-movement kernels: Concat, Split, Slice, Pad, Tile, Trilu, DepthToSpace/SpaceToDepth, and
the indexed ones: Gather, GatherElements, GatherND, ScatterND, ScatterElements."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into
from ember.backends.cpu.kernels.common import (
    Inputs,
    Tensor,
    arg,
    floats,
    int_param,
    norm_axes,
    norm_axis,
    scalar_param,
    torch_pad_arg,
)
from ember.backends.cpu.registry import register_kernel
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import (
    AxisAttrs,
    DepthSpaceAttrs,
    PadAttrs,
    ScatterAttrs,
    SliceAttrs,
    SplitAttrs,
    TriluAttrs,
)


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


@register_kernel(OpType.TILE)
def tile(node: Node, ctx: CompileContext) -> Kernel:
    repeats_of = int_param(node, ctx, node.attrs.repeats if node.attrs else None, 1)

    def run(inputs: Inputs) -> list:
        return [inputs[0].repeat(*repeats_of(inputs)) if inputs[0].dim() else inputs[0].clone()]

    return run


@register_kernel(OpType.TRILU)
def trilu(node: Node, ctx: CompileContext) -> Kernel:
    a = node.attrs or TriluAttrs()
    k_of = scalar_param(node, ctx, a.k, 1)
    fn = torch.triu if a.upper else torch.tril

    def run(inputs: Inputs) -> list:
        return [fn(inputs[0], k_of(inputs))]

    return run


@register_kernel(OpType.DEPTH_TO_SPACE)
def depth_to_space(node: Node, ctx: CompileContext) -> Kernel:
    """DCR: channels split as (b, b, C'); CRD: as (C', b, b), which is PixelShuffle."""
    a: DepthSpaceAttrs = node.attrs
    b = a.blocksize

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        if a.mode == "CRD":
            return [F.pixel_shuffle(x, b)]
        n, c, h, w = x.shape
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        return [y.reshape(n, c // (b * b), h * b, w * b)]

    return run


@register_kernel(OpType.SPACE_TO_DEPTH)
def space_to_depth(node: Node, ctx: CompileContext) -> Kernel:
    """The inverse of DepthToSpace: DCR (blocks outermost in the channels), CRD (PixelUnshuffle)."""
    a: DepthSpaceAttrs = node.attrs
    b = a.blocksize

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        if a.mode == "CRD":
            return [F.pixel_unshuffle(x, b)]
        n, c, h, w = x.shape
        y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
        return [y.reshape(n, c * b * b, h // b, w // b)]

    return run


# ---- indexed gathers and scatters ------------------------------------------------------------
def _wrap_index(idx: Tensor, size: int) -> Tensor:
    idx = idx.to(torch.int64)
    return torch.where(idx < 0, idx + size, idx)


@register_kernel(OpType.GATHER_ELEMENTS)
def gather_elements(node: Node, ctx: CompileContext) -> Kernel:
    def run(inputs: Inputs) -> list:
        data, idx = inputs[0], inputs[1]
        axis = norm_axis(node.attrs.axis, data.dim())
        return [torch.gather(data, axis, _wrap_index(idx, data.shape[axis]))]

    return run


def _linear_index(idx: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Row-major linear index of ``idx[..., m]`` into the leading dims ``dims`` (negatives wrap)."""
    lin = torch.zeros(idx.shape[:-1], dtype=torch.int64, device=idx.device)
    for j, size in enumerate(dims):
        lin = lin * size + _wrap_index(idx[..., j], size)
    return lin


@register_kernel(OpType.GATHER_ND)
def gather_nd(node: Node, ctx: CompileContext) -> Kernel:
    bd = node.attrs.batch_dims

    def run(inputs: Inputs) -> list:
        data, idx = inputs[0], inputs[1]
        m = idx.shape[-1]
        batch = int(torch.tensor(data.shape[:bd]).prod()) if bd else 1
        tail = tuple(data.shape[bd + m:])
        flat = data.reshape(batch, -1, *tail)
        lin = _linear_index(idx.reshape(batch, -1, m), tuple(data.shape[bd:bd + m]))
        rows = torch.arange(batch, device=data.device).unsqueeze(1)
        return [flat[rows, lin].reshape(*idx.shape[:-1], *tail)]

    return run


#: ONNX scatter reductions -> ``scatter_reduce``'s names.
_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@register_kernel(OpType.SCATTER_ND)
def scatter_nd(node: Node, ctx: CompileContext) -> Kernel:
    """A copy of data with ``updates`` written (or reduced) at the slices ``indices`` name."""
    reduction = (node.attrs or ScatterAttrs()).reduction

    def run(inputs: Inputs) -> list:
        data, idx, updates = inputs[0], inputs[1], inputs[2]
        m = idx.shape[-1]
        tail = tuple(data.shape[m:])
        out = data.clone()
        flat = out.view(-1, *tail)
        lin = _linear_index(idx, tuple(data.shape[:m])).reshape(-1)
        upd = updates.reshape(-1, *tail)
        if reduction == "none":
            flat[lin] = upd
        else:
            where = lin.view(-1, *([1] * len(tail))).expand_as(upd)
            flat.scatter_reduce_(0, where, upd, _SCATTER_REDUCE[reduction], include_self=True)
        return [out]

    return run


@register_kernel(OpType.SCATTER_ELEMENTS)
def scatter_elements(node: Node, ctx: CompileContext) -> Kernel:
    a = node.attrs or ScatterAttrs()

    def run(inputs: Inputs) -> list:
        data, idx, updates = inputs[0], inputs[1], inputs[2]
        axis = norm_axis(a.axis, data.dim())
        idx = _wrap_index(idx, data.shape[axis])
        if a.reduction == "none":
            return [torch.scatter(data, axis, idx, updates)]
        reduce = _SCATTER_REDUCE[a.reduction]
        return [torch.scatter_reduce(data, axis, idx, updates, reduce, include_self=True)]

    return run
