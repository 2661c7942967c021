"""Reduction kernels: ReduceMean, ReduceSum, ReduceMax (axes as attribute or input)."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.common import Inputs, Tensor, int_param, norm_axes
from ember.backends.cpu.registry import register_kernel
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import ReduceAttrs

Reducer = Callable[[Tensor, tuple[int, ...], bool], Tensor]


def _mean(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    if x.is_floating_point():
        return torch.mean(x, dim=dims, keepdim=keep)
    count = 1
    for d in dims:
        count *= x.shape[d]
    return torch.div(torch.sum(x, dim=dims, keepdim=keep), count, rounding_mode="trunc").to(x.dtype)


def _sum(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    out = torch.sum(x, dim=dims, keepdim=keep)
    return out if out.dtype is x.dtype else out.to(x.dtype)


def _max(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    return torch.amax(x, dim=dims, keepdim=keep)


def reduce_axes(a: ReduceAttrs, axes: Optional[list[int]], rank: int) -> Optional[tuple[int, ...]]:
    """The axes to reduce; ``None`` means "leave x unchanged" (noop_with_empty_axes)."""
    if not axes:
        return None if a.noop_with_empty_axes else tuple(range(rank))
    return tuple(sorted(set(norm_axes(axes, rank))))


def reduce_kernel(node: Node, ctx: CompileContext, fn: Reducer) -> Kernel:
    """A kernel for a reduction op: ``fn(x, dims, keepdim)`` over the axes from the attr or
    the run-time axes input (input 1); with no axes it reduces every axis, or returns x unchanged
    when ``noop_with_empty_axes`` is set."""
    a = node.attrs or ReduceAttrs()
    axes_of = int_param(node, ctx, a.axes, 1)

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        dims = reduce_axes(a, axes_of(inputs), x.dim())
        if dims is None:
            return [x]
        if not dims:  # rank-0 input reduced over "all" of its zero axes
            return [x.clone()]
        return [fn(x, dims, a.keepdims)]

    return run


@register_kernel(OpType.REDUCE_MEAN)
def reduce_mean(node: Node, ctx: CompileContext) -> Kernel:
    return reduce_kernel(node, ctx, _mean)


@register_kernel(OpType.REDUCE_SUM)
def reduce_sum(node: Node, ctx: CompileContext) -> Kernel:
    return reduce_kernel(node, ctx, _sum)


@register_kernel(OpType.REDUCE_MAX)
def reduce_max(node: Node, ctx: CompileContext) -> Kernel:
    return reduce_kernel(node, ctx, _max)
