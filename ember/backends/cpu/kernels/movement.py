"""Data-movement kernels: Concat, Split, Slice, Pad, Tile, Trilu, DepthToSpace/SpaceToDepth, and
the indexed ones: Gather, GatherElements, GatherND, ScatterND, ScatterElements."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into
from ember.backends.cpu.kernels.common import (
    Inputs,
    Tensor,
    arg,
    floats,
    int_param,
    ints,
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
        out = out.index_select(ax, torch.arange(s, e, st, dtype=torch.int64, device=x.device))
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
            out = out.index_select(ax, _pad_index(out.shape[ax], b, e, mode).to(out.device))
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


def _nms_keep(boxes: np.ndarray, order: np.ndarray, center: bool, iou_threshold: float,
              limit: int) -> list[int]:
    """Greedy NMS over ``order`` (best first), ONNX's suppression test in the boxes' precision."""
    if center:
        half_w, half_h = boxes[:, 2] / 2, boxes[:, 3] / 2
        x0, x1 = boxes[:, 0] - half_w, boxes[:, 0] + half_w
        y0, y1 = boxes[:, 1] - half_h, boxes[:, 1] + half_h
    else:
        x0, x1 = np.minimum(boxes[:, 1], boxes[:, 3]), np.maximum(boxes[:, 1], boxes[:, 3])
        y0, y1 = np.minimum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 0], boxes[:, 2])
    area = (x1 - x0) * (y1 - y0)
    kept: list[int] = []
    for i in order:
        if len(kept) >= limit:
            break
        if kept:
            k = np.array(kept)
            ix = np.minimum(x1[k], x1[i]) - np.maximum(x0[k], x0[i])
            iy = np.minimum(y1[k], y1[i]) - np.maximum(y0[k], y0[i])
            inter = ix * iy
            union = area[k] + area[i] - inter
            with np.errstate(divide="ignore", invalid="ignore"):
                overlap = (ix > 0) & (iy > 0) & (inter > 0) & (area[k] > 0) & (area[i] > 0) & (union > 0) \
                    & (inter / union > iou_threshold)
            if overlap.any():
                continue
        kept.append(int(i))
    return kept


@register_kernel(OpType.NON_MAX_SUPPRESSION)
def non_max_suppression(node: Node, ctx: CompileContext) -> Kernel:
    """ONNX NonMaxSuppression per batch and class: boxes over ``score_threshold`` (when given),
    best score first (ties: lower index), dropped when their IoU with a kept box exceeds
    ``iou_threshold``, at most ``max_output_boxes_per_class`` each."""
    center = bool(node.attrs.center_point_box) if node.attrs is not None else False

    def run(inputs: Inputs) -> list:
        boxes_t, scores_t = inputs[0], inputs[1]
        limit_t, iou_t, score_t = arg(inputs, 2), arg(inputs, 3), arg(inputs, 4)
        limit = max(ints(limit_t)[0], 0) if limit_t is not None and limit_t.numel() else 0
        iou = floats(iou_t)[0] if iou_t is not None and iou_t.numel() else 0.0
        threshold = floats(score_t)[0] if score_t is not None and score_t.numel() else None
        boxes, scores = boxes_t.detach().cpu().numpy(), scores_t.detach().cpu().numpy()
        iou_c = boxes.dtype.type(iou)
        rows: list[tuple[int, int, int]] = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                s = scores[b, c]
                idx = np.arange(s.shape[0])
                if threshold is not None:
                    idx = idx[s > s.dtype.type(threshold)]
                order = idx[np.lexsort((idx, -s[idx]))]
                rows += [(b, c, i) for i in _nms_keep(boxes[b], order, center, iou_c, limit)]
        out = torch.tensor(rows, dtype=torch.int64).reshape(-1, 3)
        return [out.to(boxes_t.device)]

    return run


@register_kernel(OpType.NON_ZERO)
def non_zero(node: Node, ctx: CompileContext) -> Kernel:
    return lambda inputs: [torch.nonzero(inputs[0]).T.contiguous()]


@register_kernel(OpType.COMPRESS)
def compress(node: Node, ctx: CompileContext) -> Kernel:
    """Compress: the slices where ``condition`` is true (a shorter condition counts as false
    past its end) along ``axis``, or the elements of the flattened input."""
    axes = node.attrs.axes if node.attrs is not None else None

    def run(inputs: Inputs) -> list:
        x, cond = inputs[0], inputs[1].reshape(-1).bool()
        if axes is None:
            x, axis = x.reshape(-1), 0
        else:
            axis = axes[0] % x.dim()
        n = x.shape[axis]
        if cond.numel() > n:
            raise ValueError(f"Compress condition has {cond.numel()} values for an axis of {n}")
        idx = torch.nonzero(cond).reshape(-1)
        return [x.index_select(axis, idx)]

    return run


@register_kernel(OpType.REVERSE_SEQUENCE)
def reverse_sequence(node: Node, ctx: CompileContext) -> Kernel:
    """ReverseSequence: in batch ``b`` the first ``lens[b]`` time steps reversed, the rest kept."""
    a = node.attrs

    def run(inputs: Inputs) -> list:
        x, lens = inputs[0], ints(inputs[1])
        batch_axis, time_axis = a.batch_axis % x.dim(), a.time_axis % x.dim()
        t = x.shape[time_axis]
        steps = torch.arange(t, device=x.device)
        out = x.clone()
        for b, n in enumerate(lens):
            n = max(0, min(int(n), t))
            src = torch.where(steps < n, n - 1 - steps, steps)
            xb = x.select(batch_axis, b)
            tb = time_axis - (1 if time_axis > batch_axis else 0)
            out.select(batch_axis, b).copy_(xb.index_select(tb, src))
        return [out]

    return run


@register_kernel(OpType.DET)
def det(node: Node, ctx: CompileContext) -> Kernel:
    def run(inputs: Inputs) -> list:
        x = inputs[0]
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        return [torch.linalg.det(work).to(x.dtype)]

    return run


@register_kernel(OpType.UNIQUE)
def unique(node: Node, ctx: CompileContext) -> Kernel:
    """Unique (numpy's, on the host): values, first-occurrence indices, inverse indices and
    counts; ``sorted`` False orders them by first occurrence."""
    a = node.attrs

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        host = x.detach().cpu()
        arr = (host.float() if host.dtype is torch.bfloat16 else host).numpy()
        axis = None if a.axis is None else a.axis % x.dim()
        values, first, inverse, counts = np.unique(arr, return_index=True, return_inverse=True,
                                                   return_counts=True, axis=axis)
        inverse = inverse.reshape(-1)
        if not a.sorted:
            order = np.argsort(first, kind="stable")
            values = np.take(values, order, axis=0 if axis is None else axis)
            first, counts = first[order], counts[order]
            inverse = np.argsort(order)[inverse]
        y = torch.from_numpy(np.ascontiguousarray(values)).to(x.dtype)
        outs = [y] + [torch.from_numpy(np.ascontiguousarray(v).astype(np.int64)) for v in (first, inverse, counts)]
        return [t.to(x.device) for t in outs]

    return run


@register_kernel(OpType.TENSOR_SCATTER)
def tensor_scatter(node: Node, ctx: CompileContext) -> Kernel:
    """TensorScatter: batch ``b``'s update steps written at ``write_indices[b] + s`` along
    ``axis`` (modulo the cache length in circular mode)."""
    a = node.attrs

    def run(inputs: Inputs) -> list:
        past, update, where = inputs[0], inputs[1], arg(inputs, 2)
        axis = a.axis % past.dim()
        batch, steps, length = past.shape[0], update.shape[axis], past.shape[axis]
        start = where.to(torch.int64).reshape(-1) if where is not None else \
            torch.zeros(batch, dtype=torch.int64, device=past.device)
        pos = start.reshape(-1, 1) + torch.arange(steps, device=past.device).reshape(1, -1)
        if a.circular:
            pos = pos.remainder(length)
        elif steps and bool(((pos < 0) | (pos >= length)).any()):
            raise ValueError(f"TensorScatter write_indices {start.tolist()} with {steps} steps run past "
                             f"the cache length {length} (mode linear)")
        shape = [1] * past.dim()
        shape[0], shape[axis] = batch, steps
        index = pos.reshape(shape).expand(update.shape)
        return [past.clone().scatter_(axis, index, update)]

    return run
