"""GPU kernels for ops whose generic kernel would create tensors on the host or lose precision:
Slice (negative steps), ConstantOfShape, Range, Dropout's mask, and the reductions (fp32
accumulation: "large reductions keep fp32")."""
from __future__ import annotations

import math

import torch

from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.common import arg, ints, norm_axes, torch_dtype
from ember.backends.cpu.kernels.movement import slice_indices
from ember.backends.cpu.kernels.reduce import max_over
from ember.backends.cuda.device import cast_float, compute_dtype
from ember.backends.cuda.registry import register_cuda_kernel
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import ConstantOfShapeAttrs, ReduceAttrs, SliceAttrs

Tensor = torch.Tensor


def attr_or_input(value, inputs, i: int) -> list[int] | None:
    """An int-list parameter: the attribute when it was constant at import, else host input ``i``."""
    if value is not None:
        return [int(v) for v in value]
    return ints(arg(inputs, i))


@register_cuda_kernel(OpType.SLICE, "view", rank=0)
def slice_(node: Node, ctx: CompileContext) -> Kernel:
    """ONNX Slice as a strided view; negative steps flip the axis on the device first."""
    a = node.attrs or SliceAttrs()

    def run(inputs) -> list:
        x = inputs[0]
        starts = attr_or_input(a.starts, inputs, 1)
        ends = attr_or_input(a.ends, inputs, 2)
        axes = attr_or_input(a.axes, inputs, 3)
        steps = attr_or_input(a.steps, inputs, 4)
        axes = norm_axes(axes, x.dim()) if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
        for ax, s, e, st in zip(axes, starts, ends, steps):
            s, e = slice_indices(x.shape[ax], s, e, st)
            if st > 0:
                x = x.narrow(ax, s, max(e - s, 0))[(slice(None),) * ax + (slice(None, None, st),)]
            else:
                dim = x.shape[ax]
                # indices s, s+st, ... > e on the flipped axis become (dim-1-s), step -st
                count = max(0, -(-(s - e) // -st))
                x = x.flip(ax).narrow(ax, dim - 1 - s, 0 if count == 0 else (count - 1) * -st + 1)
                x = x[(slice(None),) * ax + (slice(None, None, -st),)]
        return [x]

    return run


@register_cuda_kernel(OpType.CONSTANT_OF_SHAPE, "fill", rank=0)
def constant_of_shape(node: Node, ctx: CompileContext) -> Kernel:
    a = node.attrs or ConstantOfShapeAttrs()
    dtype = torch_dtype(a.dtype)
    if dtype.is_floating_point:
        dtype = compute_dtype(ctx.precision)
    device = ctx.device
    return lambda inputs: [torch.full(ints(inputs[0]), a.value, dtype=dtype, device=device)]


@register_cuda_kernel(OpType.RANGE, "arange", rank=0)
def range_(node: Node, ctx: CompileContext) -> Kernel:
    """Range on the device from host scalars ``start, limit, delta``."""
    device = ctx.device

    def run(inputs) -> list:
        start, limit, delta = (t.reshape(()) for t in inputs[:3])
        dtype = start.dtype
        s, lim, d = start.item(), limit.item(), delta.item()
        if d == 0:
            raise ValueError(f"node {node.name!r}: Range delta is 0")
        n = max(int(math.ceil((lim - s) / d)), 0) if dtype.is_floating_point else max(-(-(lim - s) // d), 0)
        return [torch.arange(n, dtype=dtype, device=device) * d + s]

    return run


@register_cuda_kernel(OpType.DROPOUT, "identity", rank=0)
def dropout(node: Node, ctx: CompileContext) -> Kernel:
    want_mask = len(node.outputs) > 1 and bool(node.outputs[1])

    def run(inputs) -> list:
        x = inputs[0]
        return [x, torch.ones(x.shape, dtype=torch.bool, device=x.device)] if want_mask else [x]

    return run


def _reduce_factory(op: OpType):
    def factory(node: Node, ctx: CompileContext) -> Kernel:
        a = node.attrs or ReduceAttrs()
        dtype = compute_dtype(ctx.precision)

        def run(inputs) -> list:
            x = inputs[0]
            axes = attr_or_input(a.axes, inputs, 1)
            if not axes:
                if a.noop_with_empty_axes:
                    return [cast_float(x, dtype)]
                axes = list(range(x.dim()))
            dims = tuple(norm_axes(axes, x.dim()))
            if op is OpType.REDUCE_MAX:
                y = max_over(x, dims, a.keepdims)  # an empty set gives the type's lowest value
            elif x.is_floating_point():
                xf = x.float()
                y = (xf.mean(dims, keepdim=a.keepdims) if op is OpType.REDUCE_MEAN
                     else xf.sum(dims, keepdim=a.keepdims))
            elif op is OpType.REDUCE_SUM:
                y = x.sum(dims, keepdim=a.keepdims)
            else:
                y = x.float().mean(dims, keepdim=a.keepdims).to(x.dtype)
            return [cast_float(y, dtype)]

        return run

    factory.__name__ = f"reduce_{op.value}"
    factory.__doc__ = f"{op.value} with fp32 accumulation, result in the layer's precision."
    return factory


for _op in (OpType.REDUCE_MEAN, OpType.REDUCE_SUM, OpType.REDUCE_MAX):
    register_cuda_kernel(_op, "fp32_accumulate", rank=0)(_reduce_factory(_op))
