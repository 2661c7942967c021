"""Shape kernels: Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Expand, Shape, Cast, Identity,
Dropout, and the tensors made from shapes and indices: ConstantOfShape, Range, EyeLike, OneHot.

Several of these return views of their input (no copy), as PyTorch does; ``VIEW_OPS`` lists them
so a runtime that reuses buffers knows which outputs alias an input.
"""
from __future__ import annotations

import math

import torch

from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.common import (
    Inputs,
    Tensor,
    broadcast_shape,
    int_param,
    ints,
    norm_axes,
    norm_axis,
    scalar_param,
    torch_dtype,
)
from ember.backends.cpu.registry import register_kernel
from ember.backends.tensors import FLOAT8_TORCH
from ember.ir.dtype import FLOAT8_MAX, DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import (
    AxesAttrs,
    AxisAttrs,
    CastAttrs,
    ConstantOfShapeAttrs,
    OneHotAttrs,
    ReshapeAttrs,
    ShapeAttrs,
    TransposeAttrs,
)

#: Ops whose CPU kernel may return a view sharing memory with input 0.
VIEW_OPS = frozenset({
    OpType.RESHAPE, OpType.FLATTEN, OpType.TRANSPOSE, OpType.SQUEEZE, OpType.UNSQUEEZE,
    OpType.EXPAND, OpType.IDENTITY, OpType.DROPOUT, OpType.SLICE, OpType.SPLIT,
})


def reshape_target(in_shape: tuple[int, ...], spec: list[int], allowzero: bool) -> list[int]:
    """ONNX Reshape's output shape: 0 copies the input dim (unless allowzero), -1 is inferred."""
    out = list(spec)
    if not allowzero:
        for i, d in enumerate(spec):
            if d == 0:
                if i >= len(in_shape):
                    raise ValueError(f"Reshape target {spec} copies dim {i} of a "
                                     f"rank-{len(in_shape)} input")
                out[i] = in_shape[i]
    if out.count(-1) > 1:
        raise ValueError(f"Reshape target {spec} has more than one -1")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        total = math.prod(in_shape)
        if known == 0 or total % known:
            raise ValueError(f"cannot reshape {list(in_shape)} to {spec}")
        out[out.index(-1)] = total // known
    if math.prod(out) != math.prod(in_shape):
        raise ValueError(f"cannot reshape {list(in_shape)} ({math.prod(in_shape)} elements) to {spec}")
    return out


@register_kernel(OpType.RESHAPE)
def reshape(node: Node, ctx: CompileContext) -> Kernel:
    allowzero = (node.attrs or ReshapeAttrs()).allowzero
    spec = int_param(node, ctx, None, 1)
    targets: dict[tuple, list[int]] = {}
    fixed_spec = ctx.const(node.input(1)) is not None

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        shape = tuple(x.shape)
        target = targets.get(shape) if fixed_spec else None
        if target is None:
            target = reshape_target(shape, spec(inputs), allowzero)
            if fixed_spec:
                targets[shape] = target
        return [x.reshape(target)]

    return run


@register_kernel(OpType.FLATTEN)
def flatten(node: Node, ctx: CompileContext) -> Kernel:
    axis = (node.attrs or AxisAttrs(axis=1)).axis

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        a = axis + x.dim() if axis < 0 else axis
        if not 0 <= a <= x.dim():
            raise ValueError(f"Flatten axis {axis} is out of range for rank {x.dim()}")
        outer = math.prod(x.shape[:a])
        return [x.reshape(outer, math.prod(x.shape[a:]))]

    return run


@register_kernel(OpType.TRANSPOSE)
def transpose(node: Node, ctx: CompileContext) -> Kernel:
    perm = (node.attrs or TransposeAttrs()).perm

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        p = list(perm) if perm is not None else list(range(x.dim() - 1, -1, -1))
        return [x.permute(norm_axes(p, x.dim()))]

    return run


@register_kernel(OpType.SQUEEZE)
def squeeze(node: Node, ctx: CompileContext) -> Kernel:
    axes_of = int_param(node, ctx, (node.attrs or AxesAttrs()).axes, 1)

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        axes = axes_of(inputs)
        if axes is None:
            return [x.reshape([d for d in x.shape if d != 1])]
        drop = set(norm_axes(axes, x.dim()))
        for a in drop:
            if x.shape[a] != 1:
                raise ValueError(f"Squeeze axis {a} has size {x.shape[a]}, not 1")
        return [x.reshape([d for i, d in enumerate(x.shape) if i not in drop])]

    return run


@register_kernel(OpType.UNSQUEEZE)
def unsqueeze(node: Node, ctx: CompileContext) -> Kernel:
    axes_of = int_param(node, ctx, (node.attrs or AxesAttrs()).axes, 1)

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        axes = axes_of(inputs)
        if axes is None:
            raise ValueError("Unsqueeze needs axes (attribute or input 1)")
        rank = x.dim() + len(axes)
        new = set(norm_axes(axes, rank))
        dims = iter(x.shape)
        return [x.reshape([1 if i in new else next(dims) for i in range(rank)])]

    return run


@register_kernel(OpType.EXPAND)
def expand(node: Node, ctx: CompileContext) -> Kernel:
    """Expand broadcasts both ways: a target dim of 1 keeps the input's dim."""

    target = int_param(node, ctx, None, 1)

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        shape = broadcast_shape(tuple(x.shape), tuple(target(inputs)))
        return [x.expand(shape)]

    return run


@register_kernel(OpType.SHAPE)
def shape(node: Node, ctx: CompileContext) -> Kernel:
    a = node.attrs or ShapeAttrs()

    def run(inputs: Inputs) -> list:
        dims = list(inputs[0].shape)
        r = len(dims)
        start = min(max(a.start + r if a.start < 0 else a.start, 0), r)
        end = r if a.end is None else a.end
        end = min(max(end + r if end < 0 else end, 0), r)
        return [torch.tensor(dims[start:end], dtype=torch.int64)]

    return run


@register_kernel(OpType.CONSTANT_OF_SHAPE)
def constant_of_shape(node: Node, ctx: CompileContext) -> Kernel:
    a = node.attrs or ConstantOfShapeAttrs()
    dtype = torch_dtype(a.dtype)

    def run(inputs: Inputs) -> list:
        return [torch.full(ints(inputs[0]), a.value, dtype=dtype)]

    return run


@register_kernel(OpType.BIT_CAST)
def bit_cast(node: Node, ctx: CompileContext) -> Kernel:
    """BitCast: the same bytes viewed as the target type (same width)."""
    dtype = torch_dtype(node.attrs.to)

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        if x.dtype is dtype:
            return [x]
        src = x.contiguous()
        if x.dtype is torch.bool:
            src = src.view(torch.uint8)
        out = src.view(torch.uint8 if dtype is torch.bool else dtype)
        return [out != 0 if dtype is torch.bool else out]

    return run


@register_kernel(OpType.CAST)
def cast(node: Node, ctx: CompileContext) -> Kernel:
    """Cast; float -> int truncates toward zero and any nonzero -> True, as numpy's astype; to an
    8-bit float rounds to nearest even, saturating as ``CastAttrs.saturate`` says."""
    attrs = node.attrs if isinstance(node.attrs, CastAttrs) else CastAttrs(node.attrs)
    dtype = torch_dtype(attrs.to)
    if attrs.to.is_float8:
        def run_f8(inputs: Inputs) -> list:
            return [to_float8(inputs[0], attrs.to, attrs.saturate)]

        return run_f8

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        if x.dtype is dtype:
            return [x]
        if x.dtype in FLOAT8_TORCH:  # widened exactly first: torch converts 8-bit floats to floats
            x = x.to(torch.float32)
        return [x.to(dtype)]

    return run


def to_float8(x: Tensor, to: DType, saturate: bool) -> Tensor:
    """``x`` converted to the 8-bit float ``to``, rounding to nearest even, as ONNX's Cast does:
    ``saturate`` clamps everything beyond the type's range, infinities included, to its largest
    finite value (NaN stays NaN); without it, a value that rounds beyond the range becomes NaN, or
    infinity in float8e5m2 (torch's conversion does that, except for float8e4m3fn, which it
    saturates: that case is made NaN here)."""
    dtype = torch_dtype(to)
    if x.dtype is dtype:
        return x
    v = x.to(torch.float32) if x.dtype is not torch.float64 else x
    big = FLOAT8_MAX[to]
    if saturate:
        return torch.clamp(v, -big, big).to(dtype)  # clamp keeps NaN
    y = v.to(dtype)
    if to is DType.FLOAT8E4M3FN:  # beyond 464 (halfway to 480, which would be odd) rounds out of range
        y = torch.where(v.abs() > _E4M3FN_OVERFLOW, torch.full_like(y, float("nan")), y)
    return y


#: float8e4m3fn's 448 is 1.75 * 2**8; values above 464 round past it (ties go to 448, the even one).
_E4M3FN_OVERFLOW = 464.0


@register_kernel(OpType.RANGE)
def range_(node: Node, ctx: CompileContext) -> Kernel:
    """Range: ``start + i * delta`` for ``i < max(ceil((limit - start) / delta), 0)``."""

    def run(inputs: Inputs) -> list:
        start, limit, delta = (t.reshape(()) for t in inputs[:3])
        dtype = start.dtype
        s, lim, d = start.item(), limit.item(), delta.item()
        if d == 0:
            raise ValueError("Range delta is 0")
        if dtype.is_floating_point:
            # 16-bit floats accumulate in float32 (opset 27's stash_type=1, its default)
            wide = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
            n = max(int(math.ceil((lim - s) / d)), 0)
            out = start.to(wide) + torch.arange(n, dtype=wide) * delta.to(wide)
            return [out.to(dtype)]
        n = max(-(-(lim - s) // d), 0)
        return [torch.arange(n, dtype=dtype) * d + s]

    return run


@register_kernel(OpType.IDENTITY)
def identity(node: Node, ctx: CompileContext) -> Kernel:
    return lambda inputs: [inputs[0]]


@register_kernel(OpType.DROPOUT)
def dropout(node: Node, ctx: CompileContext) -> Kernel:
    """Inference Dropout: the input unchanged, and an all-true mask when one is asked for."""
    want_mask = len(node.outputs) > 1 and bool(node.outputs[1])

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        if want_mask:
            return [x, torch.ones(x.shape, dtype=torch.bool)]
        return [x]

    return run


@register_kernel(OpType.EYE_LIKE)
def eye_like(node: Node, ctx: CompileContext) -> Kernel:
    k = node.attrs.k if node.attrs else 0
    dtype = torch_dtype(node.attrs.dtype) if node.attrs and node.attrs.dtype else None

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
        cols = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        return [(cols - rows == k).to(dtype or x.dtype)]

    return run


@register_kernel(OpType.ONE_HOT)
def one_hot(node: Node, ctx: CompileContext) -> Kernel:
    """Negative indices count from ``depth``; indices out of range give an all-``off`` row."""
    a = node.attrs or OneHotAttrs()
    depth_of = scalar_param(node, ctx, a.depth, 1)

    def run(inputs: Inputs) -> list:
        idx, values = inputs[0].to(torch.int64), inputs[2].reshape(-1)
        depth = depth_of(inputs)
        idx = torch.where(idx < 0, idx + depth, idx)
        hot = idx.unsqueeze(-1) == torch.arange(depth, device=idx.device)
        hot = torch.movedim(hot, -1, norm_axis(a.axis, idx.dim() + 1))
        return [torch.where(hot, values[1], values[0])]

    return run
