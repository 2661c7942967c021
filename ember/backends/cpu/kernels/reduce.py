"""Kernels along axes: the reductions (ReduceMean/Sum/Max/Min/Prod/L1/L2/SumSquare/LogSum/
LogSumExp, axes as attribute or input), ArgMax/ArgMin, and the scan and selection CumSum and TopK."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.common import Inputs, Tensor, int_param, norm_axes, norm_axis, scalar_param
from ember.backends.cpu.registry import register_kernel
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import ArgReduceAttrs, CumSumAttrs, ReduceAttrs, TopKAttrs

Reducer = Callable[[Tensor, tuple[int, ...], bool], Tensor]


def _as(x: Tensor, out: Tensor) -> Tensor:
    """``out`` in ``x``'s dtype (torch sums integers as int64, ONNX keeps the input's type)."""
    return out if out.dtype is x.dtype else out.to(x.dtype)


def _mean(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    if x.is_floating_point():
        return torch.mean(x, dim=dims, keepdim=keep)
    count = 1
    for d in dims:
        count *= x.shape[d]
    return torch.div(torch.sum(x, dim=dims, keepdim=keep), count, rounding_mode="trunc").to(x.dtype)


def _sum(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    return _as(x, torch.sum(x, dim=dims, keepdim=keep))


def _empty_extreme(x: Tensor, dims: tuple[int, ...], keep: bool, largest: bool) -> Tensor:
    """ReduceMax/ReduceMin over an empty set: the identity of the reduction (ONNX 18+): the
    lowest value of the type for a max, the highest for a min (infinities for floats)."""
    shape = [1 if i in dims else n for i, n in enumerate(x.shape)] if keep else \
        [n for i, n in enumerate(x.shape) if i not in dims]
    if x.dtype is torch.bool:
        return torch.full(shape, not largest, dtype=torch.bool, device=x.device)
    info = torch.finfo(x.dtype) if x.is_floating_point() else torch.iinfo(x.dtype)
    value = (-math.inf if largest else math.inf) if x.is_floating_point() else (info.min if largest else info.max)
    return torch.full(shape, value, dtype=x.dtype, device=x.device)


def max_over(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    if x.numel() == 0 and any(x.shape[d] == 0 for d in dims):
        return _empty_extreme(x, tuple(d % x.dim() for d in dims), keep, largest=True)
    return torch.amax(x, dim=dims, keepdim=keep)


def min_over(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    if x.numel() == 0 and any(x.shape[d] == 0 for d in dims):
        return _empty_extreme(x, tuple(d % x.dim() for d in dims), keep, largest=False)
    return torch.amin(x, dim=dims, keepdim=keep)


def _prod(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    out = x
    for d in sorted(dims, reverse=True):  # torch.prod takes one dim at a time
        out = torch.prod(out, dim=d, keepdim=keep)
    return _as(x, out)


def _float_of(x: Tensor) -> torch.dtype:
    """x's dtype when floating point, else float64 (integer L2 norms are computed in float)."""
    return x.dtype if x.is_floating_point() else torch.float64


def _sum_square(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    return _as(x, torch.sum(x * x, dim=dims, keepdim=keep))


#: Every reduction op and its ``fn(x, dims, keepdim)`` (an explicit list, not a scan).
_REDUCERS: dict[OpType, Reducer] = {
    OpType.REDUCE_MEAN: _mean,
    OpType.REDUCE_SUM: _sum,
    OpType.REDUCE_MAX: max_over,
    OpType.REDUCE_MIN: min_over,
    OpType.REDUCE_PROD: _prod,
    OpType.REDUCE_L1: lambda x, d, k: _as(x, torch.sum(torch.abs(x), dim=d, keepdim=k)),
    OpType.REDUCE_L2: lambda x, d, k: _as(x, torch.sqrt(_sum_square(x, d, k).to(_float_of(x)))),
    OpType.REDUCE_SUM_SQUARE: _sum_square,
    OpType.REDUCE_LOG_SUM: lambda x, d, k: torch.log(torch.sum(x, dim=d, keepdim=k)),
    OpType.REDUCE_LOG_SUM_EXP: lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
}


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


def _register_reduce(op: OpType, fn: Reducer) -> None:
    @register_kernel(op)
    def factory(node: Node, ctx: CompileContext) -> Kernel:
        return reduce_kernel(node, ctx, fn)


for _op, _fn in _REDUCERS.items():
    _register_reduce(_op, _fn)


def _arg_kernel(node: Node, fn: Callable[..., Tensor]) -> Kernel:
    a: ArgReduceAttrs = node.attrs or ArgReduceAttrs()

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        axis = norm_axis(a.axis, x.dim())
        if not a.select_last_index:
            return [fn(x, dim=axis, keepdim=a.keepdims)]
        idx = fn(torch.flip(x, (axis,)), dim=axis, keepdim=a.keepdims)
        return [x.shape[axis] - 1 - idx]

    return run


@register_kernel(OpType.ARG_MAX)
def arg_max(node: Node, ctx: CompileContext) -> Kernel:
    """ArgMax; ties give the first index (the last with ``select_last_index``)."""
    return _arg_kernel(node, torch.argmax)


@register_kernel(OpType.ARG_MIN)
def arg_min(node: Node, ctx: CompileContext) -> Kernel:
    return _arg_kernel(node, torch.argmin)


@register_kernel(OpType.CUM_PROD)
@register_kernel(OpType.CUM_SUM)
def cum_sum(node: Node, ctx: CompileContext) -> Kernel:
    """CumSum / CumProd along an axis; ``exclusive`` shifts by one (starting at 0, or 1 for a
    product), ``reverse`` from the end."""
    a = node.attrs or CumSumAttrs()
    axis_of = scalar_param(node, ctx, a.axis, 1)
    prod = node.op is OpType.CUM_PROD

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        axis = norm_axis(axis_of(inputs), x.dim())
        y = torch.flip(x, (axis,)) if a.reverse else x
        out = torch.cumprod(y, dim=axis) if prod else torch.cumsum(y, dim=axis)
        if a.exclusive and x.shape[axis] > 0:
            head = (torch.ones_like if prod else torch.zeros_like)(out.narrow(axis, 0, 1))
            out = torch.cat([head, out.narrow(axis, 0, out.shape[axis] - 1)], axis)
        out = torch.flip(out, (axis,)) if a.reverse else out
        return [_as(x, out)]

    return run


@register_kernel(OpType.TOP_K)
def top_k(node: Node, ctx: CompileContext) -> Kernel:
    """TopK -> (values, int64 indices), always sorted (ONNX leaves the order free when sorted=0).

    A stable sort, so that equal values come lowest index first as ONNX requires (torch.topk
    does not promise an order among ties)."""
    a = node.attrs or TopKAttrs()
    k_of = scalar_param(node, ctx, a.k, 1)

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        axis = norm_axis(a.axis, x.dim())
        values, indices = torch.sort(x, dim=axis, descending=a.largest, stable=True)
        k = k_of(inputs)
        return [values.narrow(axis, 0, k), indices.narrow(axis, 0, k)]

    return run
