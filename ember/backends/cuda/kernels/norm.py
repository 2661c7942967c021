"""Normalizations and softmax on the GPU, statistics always in fp32.

LayerNormalization (and SkipLayerNormalization, the LayerNorm of a residual sum) and Softmax
have PyTorch's kernel (``aten``: it accumulates in fp32 for half inputs) and Ember's Triton kernel
(``triton``: one pass per row, fp32 math, for the last-axis case); the LayerNorms also have
``triton_rows4`` (four rows per program, for rows of up to 2048). LRN and LogSoftmax upcast to
fp32 explicitly.

LRN writes the memory format the layout plan gives its output (``ember.backends.layout``;
without a plan, its input's); the Triton LRN writes channels-last only, so it does not apply
where the plan stores the output NCHW.

``write_into`` (``ember.backends.base``): the Triton LayerNorm and softmax store straight into a
contiguous ``out``; the ``aten`` softmax (and LogSoftmax in fp32) write one through
``aten::_softmax.out`` / ``_log_softmax.out``, real structured kernels (what ``torch.softmax``
itself runs) that write their output as packed row-major, so ``out`` must be contiguous. The
``aten`` LayerNorm has none: ``native_layer_norm.out`` is an ``autogen`` out= variant (compute,
then copy). LogSoftmax in fp16/bf16 has none either: it computes in fp32 and casts, and the
half-input kernel rounds differently.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into
from ember.backends.cpu.kernels.common import arg, norm_axis
from ember.backends.cuda.device import cast_float, compute_dtype
from ember.backends.cuda.registry import register_cuda_kernel
from ember.backends.kernel_registry import Applies
from ember.backends.layout import planned_format
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import LayerNormAttrs, LRNAttrs, SoftmaxAttrs
from ember.plan.records import Records

Tensor = torch.Tensor


def _ln_params(node: Node, ctx: CompileContext, dtype: torch.dtype) -> tuple[Optional[Tensor], Optional[Tensor]]:
    w, b = ctx.const(node.input(1)), ctx.const(node.input(2))
    return (None if w is None else w.to(dtype).contiguous(),
            None if b is None else b.to(dtype).contiguous())


@register_cuda_kernel(OpType.LAYER_NORM, "aten", rank=0)
def layer_norm_aten(node: Node, ctx: CompileContext) -> Kernel:
    """``F.layer_norm`` over dims ``axis..`` (scale/bias may be run-time inputs too)."""
    a = node.attrs or LayerNormAttrs()
    dtype = compute_dtype(ctx.precision)
    w0, b0 = _ln_params(node, ctx, dtype)

    def run(inputs) -> list:
        x = cast_float(inputs[0], dtype)
        ax = norm_axis(a.axis, x.dim())
        w = w0 if w0 is not None else cast_float(arg(inputs, 1), dtype)
        b = b0 if b0 is not None else cast_float(arg(inputs, 2), dtype)
        shape = tuple(x.shape[ax:])
        if w is not None and tuple(w.shape) != shape:
            w = w.expand(shape)
        if b is not None and tuple(b.shape) != shape:
            b = b.expand(shape)
        return [F.layer_norm(x, shape, w, b, a.epsilon)]

    return run


def _last_axis_ln(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    if graph is None:
        return False
    a = node.attrs or LayerNormAttrs()
    t = graph.types.get(node.inputs[0])
    if t is None or a.axis not in (-1, t.rank - 1) or not isinstance(t.shape[-1], int):
        return False
    consts_ok = all(not n or n in graph.constants for n in node.inputs[1:3])
    return consts_ok and t.shape[-1] <= 16384


@register_cuda_kernel(OpType.SKIP_LAYER_NORM, "aten", rank=0)
def skip_layer_norm_aten(node: Node, ctx: CompileContext) -> Kernel:
    """The ``aten`` LayerNorm of ``x + skip`` (the sum stored in the compute dtype first)."""
    dtype = compute_dtype(ctx.precision)
    ln = layer_norm_aten(_without_skip(node), ctx)
    return lambda inputs: ln([cast_float(inputs[0], dtype) + cast_float(inputs[1], dtype), *inputs[2:]])


def _last_axis_skip_ln(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    return _last_axis_ln(_without_skip(node), graph)


def _without_skip(node: Node) -> Node:
    """The LayerNormalization of a SkipLayerNormalization's first input (its inputs: x, scale, bias)."""
    return node.with_(op=OpType.LAYER_NORM, inputs=(node.inputs[0], *node.inputs[2:]))


def _make_triton_ln(rows_per_program: int):
    """Ember's Triton LayerNorm over the last axis, ``rows_per_program`` rows per program, fp32
    statistics; for SkipLayerNormalization it reads both addends (the residual sum is formed in
    fp32 in registers and never stored: one read of each input, one write)."""

    def factory(node: Node, ctx: CompileContext) -> Kernel:
        from ember.backends.cuda.libs.triton_ops import layer_norm

        a = node.attrs or LayerNormAttrs()
        skip = node.op is OpType.SKIP_LAYER_NORM
        dtype = compute_dtype(ctx.precision)
        w, b = _ln_params(_without_skip(node) if skip else node, ctx, dtype)
        n = int(ctx.graph.types[node.inputs[0]].shape[-1])
        w = w.expand(n).contiguous() if w is not None else None
        b = b.expand(n).contiguous() if b is not None else None

        def residual(inputs) -> Optional[Tensor]:
            return cast_float(inputs[1], dtype) if skip else None

        def run(inputs) -> list:
            return [layer_norm(cast_float(inputs[0], dtype), w, b, a.epsilon, residual=residual(inputs),
                               rows_per_program=rows_per_program)]

        def write(x: Tensor, out: Tensor, inputs) -> None:
            layer_norm(x, w, b, a.epsilon, out=out, residual=residual(inputs), rows_per_program=rows_per_program)

        return with_write_into(run, _rowwise_write_into(write, dtype))

    factory.__doc__ = _make_triton_ln.__doc__
    return factory


def _short_rows(applies: Applies) -> Applies:
    def when(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
        return applies(node, graph, records) and int(graph.types[node.inputs[0]].shape[-1]) <= 2048

    return when


for _op, _applies in ((OpType.LAYER_NORM, _last_axis_ln), (OpType.SKIP_LAYER_NORM, _last_axis_skip_ln)):
    register_cuda_kernel(_op, "triton", rank=10, when=_applies, needs_triton=True)(_make_triton_ln(1))
    register_cuda_kernel(_op, "triton_rows4", rank=11, when=_short_rows(_applies),
                         needs_triton=True)(_make_triton_ln(4))


def _rowwise_write_into(write: Callable[[Tensor, Tensor, list], object], dtype: torch.dtype,
                        prepare: Optional[Callable[[Tensor], Tensor]] = None) -> WriteInto:
    """The ``WriteInto`` of a kernel whose output has its input's shape and is stored packed
    row-major: ``write(x, out, inputs)`` with ``x = prepare(inputs[0])``, the cast ``run`` does
    (default: ``cast_float`` to ``dtype``). ``accepts``: ``dtype`` and contiguous (at any offset)."""
    prepare = prepare or (lambda t: cast_float(t, dtype))

    def accepts(out: Tensor) -> bool:
        return out.dtype == dtype and out.is_contiguous()

    def write_into(inputs, out: Tensor) -> bool:
        x = inputs[0]
        if x is None or not accepts(out) or out.device != x.device or tuple(out.shape) != tuple(x.shape):
            return False
        x = prepare(x)
        if x.dtype != out.dtype:
            return False
        write(x, out, inputs)
        return True

    return WriteInto(write_into, accepts)


def _softmax_2d(x: Tensor, a: SoftmaxAttrs) -> tuple[Tensor, int]:
    ax = norm_axis(a.axis, x.dim())
    if a.legacy_flatten:
        return x.reshape(math.prod(x.shape[:ax]), -1), 1
    return x, ax


@register_cuda_kernel(OpType.SOFTMAX, "aten", rank=0)
def softmax_aten(node: Node, ctx: CompileContext) -> Kernel:
    """``torch.softmax`` (fp32 accumulation for half inputs); opset<13 2-D coercion honoured."""
    a = node.attrs or SoftmaxAttrs()
    dtype = compute_dtype(ctx.precision)

    def run(inputs) -> list:
        x = cast_float(inputs[0], dtype)
        y, ax = _softmax_2d(x, a)
        return [torch.softmax(y, ax).reshape(x.shape)]

    return with_write_into(run, _rowwise_write_into(
        _aten_softmax_into(torch.ops.aten._softmax.out, a), dtype))


def _aten_softmax_into(op, a: SoftmaxAttrs) -> Callable[[Tensor, Tensor, list], None]:
    """``op`` (``aten::_softmax.out`` or ``_log_softmax.out``: what ``torch.softmax`` /
    ``log_softmax`` run, ``half_to_float=False``) from ``x`` into a contiguous ``out`` of its
    shape, through the opset<13 2-D view where ``run`` takes one."""

    def write(x: Tensor, out: Tensor, _inputs: list) -> None:
        y, ax = _softmax_2d(x, a)
        op(y, ax, False, out=out.view(y.shape))

    return write


def _last_axis_softmax(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    if graph is None:
        return False
    a = node.attrs or SoftmaxAttrs()
    t = graph.types.get(node.inputs[0])
    return (t is not None and isinstance(t.shape[-1], int) and t.shape[-1] <= 16384
            and (a.axis in (-1, t.rank - 1) or (a.legacy_flatten and a.axis in (-1, t.rank - 1))))


@register_cuda_kernel(OpType.SOFTMAX, "triton", rank=10, when=_last_axis_softmax, needs_triton=True)
def softmax_triton(node: Node, ctx: CompileContext) -> Kernel:
    """Ember's Triton softmax over the last axis (one row per program, fp32 math)."""
    from ember.backends.cuda.libs.triton_ops import softmax_lastdim

    dtype = compute_dtype(ctx.precision)

    def run(inputs) -> list:
        return [softmax_lastdim(cast_float(inputs[0], dtype))]

    return with_write_into(run, _rowwise_write_into(
        lambda x, out, _inputs: softmax_lastdim(x, out=out), dtype))


@register_cuda_kernel(OpType.LOG_SOFTMAX, "aten", rank=0)
def log_softmax(node: Node, ctx: CompileContext) -> Kernel:
    a = node.attrs or SoftmaxAttrs()
    dtype = compute_dtype(ctx.precision)

    def run(inputs) -> list:
        x = inputs[0]
        y, ax = _softmax_2d(x.float(), a)
        return [torch.log_softmax(y, ax).reshape(x.shape).to(dtype)]

    if dtype != torch.float32:  # fp32 result cast to half: no out= kernel writes that
        return run
    return with_write_into(run, _rowwise_write_into(
        _aten_softmax_into(torch.ops.aten._log_softmax.out, a), dtype, lambda t: t.float()))


@register_cuda_kernel(OpType.LRN, "aten", rank=0)
def lrn(node: Node, ctx: CompileContext) -> Kernel:
    """ONNX LRN: ``x / (bias + alpha/size * sum_{window} x^2)^beta`` over channels, in fp32.

    The window spans ``floor((size-1)/2)`` channels before and ``ceil((size-1)/2)`` after, as
    ONNX defines it; summed with a channel-axis average pool over the squares.
    """
    a: LRNAttrs = node.attrs
    dtype = compute_dtype(ctx.precision)
    before, after = (a.size - 1) // 2, a.size - 1 - (a.size - 1) // 2
    fmt = planned_format(ctx, node.outputs[0])

    def run(inputs) -> list:
        x = inputs[0].float()
        n, c = x.shape[0], x.shape[1]
        sq = (x * x).reshape(n, 1, c, -1)
        sq = F.pad(sq, (0, 0, before, after))
        s = F.avg_pool2d(sq, (a.size, 1), stride=1, divisor_override=1).reshape(x.shape)
        y = x / (a.bias + (a.alpha / a.size) * s).pow(a.beta)
        return [y.to(dtype).contiguous(memory_format=fmt if fmt is not None else _fmt(inputs[0]))]

    return run


def _fmt(t: Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _lrn_4d(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """4-D, at most 2048 channels, and an output the layout plan does not store NCHW."""
    t = graph.types.get(node.inputs[0]) if graph is not None else None
    return t is not None and t.rank == 4 and isinstance(t.shape[1], int) and t.shape[1] <= 2048


@register_cuda_kernel(OpType.LRN, "triton", rank=10, when=_lrn_4d, channels_last_only=True, needs_triton=True)
def lrn_triton(node: Node, ctx: CompileContext) -> Kernel:
    """Ember's one-pass Triton LRN (channels-last, fp32 window sums)."""
    from ember.backends.cuda.libs.triton_ops import fits
    from ember.backends.cuda.libs.triton_ops import lrn as lrn_op

    a: LRNAttrs = node.attrs
    dtype = compute_dtype(ctx.precision)

    def write(inputs, out: Tensor) -> bool:
        x = cast_float(inputs[0], dtype)
        if tuple(out.shape) != tuple(x.shape) or not accepts(out):
            return False
        lrn_op(x, a.size, a.alpha, a.beta, a.bias, out=out)
        return True

    def accepts(out: Tensor) -> bool:
        return out.dim() == 4 and fits(out, out.shape, dtype, torch.channels_last)

    run = lambda inputs: [lrn_op(cast_float(inputs[0], dtype), a.size, a.alpha, a.beta, a.bias)]  # noqa: E731
    return with_write_into(run, WriteInto(write, accepts))
