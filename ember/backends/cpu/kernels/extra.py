"""Kernels for the ops of ``ember.ops.extra`` (math, logic, more reductions, CumSum, TopK, Tile,
Trilu, DepthToSpace/SpaceToDepth, Gather/Scatter variants, InstanceNorm, GroupNorm, Einsum).

All are generic PyTorch code with ONNX semantics, device-agnostic, so the CUDA backend runs them
through its ``aten`` fallback too.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.common import Inputs, Tensor, arg, int_param, norm_axis, torch_dtype
from ember.backends.cpu.kernels.activation import register_unary, unary_kernel
from ember.backends.cpu.kernels.elementwise import register_binary
from ember.backends.cpu.kernels.reduce import reduce_kernel
from ember.backends.cpu.registry import register_kernel
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import (
    AlphaAttrs, ArgReduceAttrs, CumSumAttrs, DepthSpaceAttrs, GridSampleAttrs, GroupNormAttrs,
    InstanceNormAttrs, IsInfAttrs, ModAttrs, OneHotAttrs, ScatterAttrs, SeluAttrs, TopKAttrs, TriluAttrs,
)

Unary = Callable[[Tensor], Tensor]


# ---- unary -----------------------------------------------------------------------------
_UNARY: dict[OpType, Unary] = {
    OpType.FLOOR: torch.floor, OpType.CEIL: torch.ceil,
    OpType.ROUND: torch.round,  # half to even, as ONNX
    OpType.SIGN: torch.sign, OpType.SIN: torch.sin, OpType.COS: torch.cos, OpType.TAN: torch.tan,
    OpType.ASIN: torch.asin, OpType.ACOS: torch.acos, OpType.ATAN: torch.atan,
    OpType.SINH: torch.sinh, OpType.COSH: torch.cosh, OpType.ASINH: torch.asinh,
    OpType.ACOSH: torch.acosh, OpType.ATANH: torch.atanh, OpType.IS_NAN: torch.isnan,
    OpType.SOFTPLUS: F.softplus, OpType.SOFTSIGN: F.softsign, OpType.MISH: F.mish,
    OpType.BITWISE_NOT: torch.bitwise_not,
}


for _op, _fn in _UNARY.items():
    register_unary(_op, _fn)


@register_kernel(OpType.ELU)
def elu(node: Node, ctx: CompileContext) -> Kernel:
    alpha = float((node.attrs or AlphaAttrs()).alpha)
    return unary_kernel(lambda x: F.elu(x, alpha))


@register_kernel(OpType.CELU)
def celu(node: Node, ctx: CompileContext) -> Kernel:
    alpha = float((node.attrs or AlphaAttrs()).alpha)
    return unary_kernel(lambda x: F.celu(x, alpha))


@register_kernel(OpType.SELU)
def selu(node: Node, ctx: CompileContext) -> Kernel:
    """``gamma * (x if x > 0 else alpha * (exp(x) - 1))`` for any alpha and gamma."""
    a = node.attrs or SeluAttrs()
    alpha, gamma = float(a.alpha), float(a.gamma)
    return unary_kernel(lambda x: F.elu(x, alpha) * gamma)


@register_kernel(OpType.THRESHOLDED_RELU)
def thresholded_relu(node: Node, ctx: CompileContext) -> Kernel:
    alpha = float((node.attrs or AlphaAttrs()).alpha)
    return unary_kernel(lambda x: torch.where(x > alpha, x, torch.zeros((), dtype=x.dtype, device=x.device)))


@register_kernel(OpType.IS_INF)
def is_inf(node: Node, ctx: CompileContext) -> Kernel:
    a = node.attrs or IsInfAttrs()
    if a.detect_positive and a.detect_negative:
        return unary_kernel(torch.isinf)
    if a.detect_positive:
        return unary_kernel(torch.isposinf)
    if a.detect_negative:
        return unary_kernel(torch.isneginf)
    return unary_kernel(lambda x: torch.zeros_like(x, dtype=torch.bool))


# ---- binary ----------------------------------------------------------------------------
_BINARY: dict[OpType, Callable[[Tensor, Tensor], Tensor]] = {
    OpType.AND: torch.logical_and, OpType.OR: torch.logical_or, OpType.XOR: torch.logical_xor,
    OpType.GREATER_OR_EQUAL: torch.ge, OpType.LESS_OR_EQUAL: torch.le,
    OpType.BITWISE_AND: torch.bitwise_and, OpType.BITWISE_OR: torch.bitwise_or,
    OpType.BITWISE_XOR: torch.bitwise_xor,
}


for _op, _fn2 in _BINARY.items():
    register_binary(_op, _fn2)


@register_kernel(OpType.MOD)
def mod(node: Node, ctx: CompileContext) -> Kernel:
    """fmod: C's fmod (sign of the dividend); else Python's % (sign of the divisor)."""
    fn = torch.fmod if (node.attrs or ModAttrs()).fmod else torch.remainder

    def run(inputs: Inputs) -> list:
        return [fn(inputs[0], inputs[1])]

    return run


# ---- reductions ------------------------------------------------------------------------
def _as(x: Tensor, out: Tensor) -> Tensor:
    return out if out.dtype is x.dtype else out.to(x.dtype)


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


_REDUCERS: dict[OpType, Callable[[Tensor, tuple[int, ...], bool], Tensor]] = {
    OpType.REDUCE_MIN: lambda x, d, k: torch.amin(x, dim=d, keepdim=k),
    OpType.REDUCE_PROD: _prod,
    OpType.REDUCE_L1: lambda x, d, k: _as(x, torch.sum(torch.abs(x), dim=d, keepdim=k)),
    OpType.REDUCE_L2: lambda x, d, k: _as(x, torch.sqrt(_sum_square(x, d, k).to(_float_of(x)))),
    OpType.REDUCE_SUM_SQUARE: _sum_square,
    OpType.REDUCE_LOG_SUM: lambda x, d, k: torch.log(torch.sum(x, dim=d, keepdim=k)),
    OpType.REDUCE_LOG_SUM_EXP: lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
}


def _register_reduce(op: OpType, fn: Callable[[Tensor, tuple[int, ...], bool], Tensor]) -> None:
    @register_kernel(op)
    def factory(node: Node, ctx: CompileContext) -> Kernel:
        return reduce_kernel(node, ctx, fn)


for _op, _red in _REDUCERS.items():
    _register_reduce(_op, _red)


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


# ---- data movement ---------------------------------------------------------------------
def _scalar_param(node: Node, ctx: CompileContext, value: Optional[int], i: int) -> Callable[[Inputs], int]:
    get = int_param(node, ctx, None if value is None else (value,), i)
    return lambda inputs: get(inputs)[0]


@register_kernel(OpType.CUM_SUM)
def cum_sum(node: Node, ctx: CompileContext) -> Kernel:
    """CumSum along an axis; ``exclusive`` shifts by one (starting at 0), ``reverse`` from the end."""
    a = node.attrs or CumSumAttrs()
    axis_of = _scalar_param(node, ctx, a.axis, 1)

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        axis = norm_axis(axis_of(inputs), x.dim())
        y = torch.flip(x, (axis,)) if a.reverse else x
        out = torch.cumsum(y, dim=axis)
        if a.exclusive:
            out = torch.cat([torch.zeros_like(out.narrow(axis, 0, 1)), out.narrow(axis, 0, out.shape[axis] - 1)], axis)
        out = torch.flip(out, (axis,)) if a.reverse else out
        return [_as(x, out)]

    return run


@register_kernel(OpType.TOP_K)
def top_k(node: Node, ctx: CompileContext) -> Kernel:
    """TopK -> (values, int64 indices), always sorted (ONNX leaves the order free when sorted=0).

    A stable sort, so that equal values come lowest index first as ONNX requires (torch.topk
    does not promise an order among ties)."""
    a = node.attrs or TopKAttrs()
    k_of = _scalar_param(node, ctx, a.k, 1)

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        axis = norm_axis(a.axis, x.dim())
        values, indices = torch.sort(x, dim=axis, descending=a.largest, stable=True)
        k = k_of(inputs)
        return [values.narrow(axis, 0, k), indices.narrow(axis, 0, k)]

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
    k_of = _scalar_param(node, ctx, a.k, 1)
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
    b = node.attrs.blocksize

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        n, c, h, w = x.shape
        y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
        return [y.reshape(n, c * b * b, h // b, w // b)]

    return run


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
        return [torch.scatter_reduce(data, axis, idx, updates, _SCATTER_REDUCE[a.reduction], include_self=True)]

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


@register_kernel(OpType.ONE_HOT)
def one_hot(node: Node, ctx: CompileContext) -> Kernel:
    """Negative indices count from ``depth``; indices out of range give an all-``off`` row."""
    a = node.attrs or OneHotAttrs()
    depth_of = _scalar_param(node, ctx, a.depth, 1)

    def run(inputs: Inputs) -> list:
        idx, values = inputs[0].to(torch.int64), inputs[2].reshape(-1)
        depth = depth_of(inputs)
        idx = torch.where(idx < 0, idx + depth, idx)
        hot = idx.unsqueeze(-1) == torch.arange(depth, device=idx.device)
        hot = torch.movedim(hot, -1, norm_axis(a.axis, idx.dim() + 1))
        return [torch.where(hot, values[1], values[0])]

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


# ---- normalization and einsum ----------------------------------------------------------
@register_kernel(OpType.INSTANCE_NORM)
def instance_norm(node: Node, ctx: CompileContext) -> Kernel:
    eps = float((node.attrs or InstanceNormAttrs()).epsilon)

    def run(inputs: Inputs) -> list:
        x, scale, bias = inputs[0], inputs[1], inputs[2]
        c = x.shape[1]
        return [F.instance_norm(x, weight=scale.expand(c), bias=bias.expand(c), eps=eps)]

    return run


def _per_channel(t: Tensor, c: int, groups: int, per_channel: bool) -> Tensor:
    if not per_channel and t.numel() == groups:
        return t.repeat_interleave(c // groups)
    return t.reshape(-1).expand(c)


@register_kernel(OpType.GROUP_NORM)
def group_norm(node: Node, ctx: CompileContext) -> Kernel:
    """GroupNormalization; opset 18's per-group scale/bias is expanded to the channels."""
    a: GroupNormAttrs = node.attrs

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        c = x.shape[1]
        scale = _per_channel(inputs[1], c, a.num_groups, a.per_channel_affine)
        bias = _per_channel(arg(inputs, 2), c, a.num_groups, a.per_channel_affine)
        return [F.group_norm(x, a.num_groups, scale, bias, float(a.epsilon))]

    return run


@register_kernel(OpType.EINSUM)
def einsum(node: Node, ctx: CompileContext) -> Kernel:
    equation = node.attrs.equation.replace(" ", "")

    def run(inputs: Inputs) -> list:
        return [torch.einsum(equation, *inputs)]

    return run
