"""Pooling on the GPU: MaxPool, AveragePool (any pads, ceil mode), GlobalAveragePool.

PyTorch's pooling takes only symmetric pads of at most half the kernel; other ONNX pads are
applied explicitly first (-inf for max; zeros plus a per-position divisor for average pools
that exclude the padding).

Layout: where ``graph.meta["layout"]`` plans a pooling output's memory format
(``ember.backends.layout``), the input is put in that format first (PyTorch's pooling then writes
it); without a plan the output follows the input. The Triton max pooling writes channels-last
only, so it does not apply where the plan stores the output NCHW.

``write_into`` (``ember.backends.base``): the Triton max pooling stores into a packed
channels-last ``out``; the 2-D AveragePool writes through ``aten::avg_pool2d.out`` and
GlobalAveragePool through ``aten::mean.out`` (real structured kernels, what the functional calls
run). ``avg_pool2d``'s CUDA kernel writes its output packed in its input's
``suggest_memory_format()`` whatever ``out``'s strides (it even restrides a channels-last
``out``), so ``out`` must have exactly the strides of a fresh output in that format; ``mean``
is a TensorIterator reduction, whose work split follows the output's layout, so ``out`` must be
laid out as the normal (contiguous) output. The ``aten`` MaxPool has none: PyTorch's CUDA max
pooling is ``max_pool2d_with_indices``, whose out= variant also wants an indices tensor.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F

from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into
from ember.backends.cpu.kernels.common import auto_pads, split_pads, torch_pad_arg
from ember.backends.cuda.device import cast_float, compute_dtype
from ember.backends.cuda.registry import register_cuda_kernel
from ember.backends.layout import planned_format, to_format
from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import PoolAttrs
from ember.plan.records import Records

Tensor = torch.Tensor
_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
def _avg_pool1d(x: Tensor, kernel: Sequence[int], strides: Sequence[int], pad: int | Sequence[int],
                ceil_mode: bool, include: bool, divisor_override: Optional[int] = None) -> Tensor:
    """1-D average pooling as 2-D pooling over a height of 1: ``F.avg_pool1d`` has no
    ``divisor_override``, which the asymmetric-padding path needs."""
    p = pad if isinstance(pad, int) else int(pad[0])
    y = F.avg_pool2d(x.unsqueeze(-2), (1, int(kernel[0])), (1, int(strides[0])), (0, p), ceil_mode, include,
                     divisor_override=divisor_override)
    return y.squeeze(-2)


_AVG = {1: _avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _geometry(a: PoolAttrs, x: Tensor) -> tuple[tuple[int, ...], tuple[int, ...], list[int], list[int]]:
    n = len(a.kernel_shape)
    strides = tuple(a.strides) or (1,) * n
    dil = tuple(a.dilations) or (1,) * n
    pads = auto_pads(a.auto_pad, a.pads, tuple(x.shape[2:]), a.kernel_shape, strides, dil)
    begins, ends = split_pads(pads)
    return strides, dil, begins, ends


def _native(a: PoolAttrs, begins: list[int], ends: list[int]) -> bool:
    return begins == ends and all(p <= k // 2 for p, k in zip(begins, a.kernel_shape))


def _check(node: Node, a: PoolAttrs) -> int:
    n = len(a.kernel_shape)
    if n not in _MAX:
        raise BuildError(f"node {node.name!r}: {n}-D pooling is not supported on CUDA")
    return n


def _float_input(node: Node, graph: Graph | None) -> bool:
    t = graph.types.get(node.inputs[0]) if graph is not None else None
    return t is None or t.dtype.is_float


def _torch_max_pool(node: Node, graph: Graph | None, records: Optional[Records] = None) -> bool:
    """Float input, 1-3 spatial dims and no Indices output (8-bit or integer pooling and the
    Indices output go to the generic kernel)."""
    a = node.attrs
    single_output = len(node.outputs) < 2 or not node.outputs[1]
    return isinstance(a, PoolAttrs) and len(a.kernel_shape) in _MAX and single_output and _float_input(node, graph)


def _torch_average_pool(node: Node, graph: Graph | None, records: Optional[Records] = None) -> bool:
    """Float input, 1-3 spatial dims, no dilations (dilated average pooling goes to the generic
    kernel)."""
    a = node.attrs
    return (isinstance(a, PoolAttrs) and len(a.kernel_shape) in _AVG and all(d == 1 for d in a.dilations)
            and _float_input(node, graph))


@register_cuda_kernel(OpType.MAX_POOL, "aten", rank=0, when=_torch_max_pool)
def max_pool(node: Node, ctx: CompileContext) -> Kernel:
    a: PoolAttrs = node.attrs
    n = _check(node, a)
    dtype = compute_dtype(ctx.precision)
    if len(node.outputs) > 1 and node.outputs[1]:
        raise BuildError(f"node {node.name!r}: MaxPool's Indices output is not supported on CUDA; "
                         f"remove it from the model")
    fmt = planned_format(ctx, node.outputs[0])

    def run(inputs) -> list:
        x = to_format(cast_float(inputs[0], dtype), fmt)
        strides, dil, begins, ends = _geometry(a, x)
        if _native(a, begins, ends):
            return [to_format(_MAX[n](x, a.kernel_shape, strides, begins, dil, ceil_mode=a.ceil_mode), fmt)]
        xp = F.pad(x, torch_pad_arg(begins, ends), value=float("-inf"))
        return [to_format(_MAX[n](xp, a.kernel_shape, strides, 0, dil, ceil_mode=a.ceil_mode), fmt)]

    return run


def _max_pool_2d(node: Node, graph: Graph | None, records: Optional[Records] = None) -> bool:
    """2-D, float, single output, and an output the layout plan does not store NCHW."""
    return _torch_max_pool(node, graph) and len(node.attrs.kernel_shape) == 2


@register_cuda_kernel(OpType.MAX_POOL, "triton_nhwc", rank=10, when=_max_pool_2d, channels_last_only=True,
                      needs_triton=True)
def max_pool_triton(node: Node, ctx: CompileContext) -> Kernel:
    """Ember's Triton max pooling on channels-last activations (one read of each window row)."""
    from ember.backends.cuda.libs.triton_ops import max_pool2d_nhwc, max_pool2d_shape

    a: PoolAttrs = node.attrs
    dtype = compute_dtype(ctx.precision)

    def run(inputs) -> list:
        x = cast_float(inputs[0], dtype)
        strides, dil, begins, ends = _geometry(a, x)
        return [max_pool2d_nhwc(x, a.kernel_shape, strides, begins, ends, dil, a.ceil_mode)]

    def accepts(out: Tensor) -> bool:
        return out.dim() == 4 and out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)

    def write(inputs, out: Tensor) -> bool:
        x = cast_float(inputs[0], dtype)
        if x is None or x.dim() != 4 or x.dtype != out.dtype or out.device != x.device or not accepts(out):
            return False
        strides, dil, begins, ends = _geometry(a, x)
        if tuple(out.shape) != max_pool2d_shape(x.shape, a.kernel_shape, strides, begins, ends, dil, a.ceil_mode):
            return False
        max_pool2d_nhwc(x, a.kernel_shape, strides, begins, ends, dil, a.ceil_mode, out=out)
        return True

    return with_write_into(run, WriteInto(write, accepts))


@register_cuda_kernel(OpType.AVERAGE_POOL, "aten", rank=0, when=_torch_average_pool)
def average_pool(node: Node, ctx: CompileContext) -> Kernel:
    a: PoolAttrs = node.attrs
    n = _check(node, a)
    if any(d != 1 for d in a.dilations):
        raise BuildError(f"node {node.name!r}: AveragePool with dilations {a.dilations} is not "
                         f"supported on CUDA")
    dtype = compute_dtype(ctx.precision)
    divisors: dict[tuple, Tensor] = {}
    fmt = planned_format(ctx, node.outputs[0])

    def divisor(x: Tensor, strides, pad_arg) -> Tensor:
        key = tuple(x.shape[2:])
        if key not in divisors:  # computed once per shape, before any graph capture replays it
            ones = torch.ones((1, 1) + key, dtype=torch.float32, device=x.device)
            ones = F.pad(ones, pad_arg)
            divisors[key] = _AVG[n](ones, a.kernel_shape, strides, 0, a.ceil_mode, True,
                                    divisor_override=1).to(x.dtype)
        return divisors[key]

    def pool(x: Tensor, out: Optional[Tensor] = None) -> Optional[Tensor]:
        """The pooling of ``x``; into ``out`` (2-D only) when given: ``None``, nothing written,
        when ``out`` is not exactly what ``avg_pool2d`` would allocate (``_avg_pool2d_layout``)."""
        strides, _, begins, ends = _geometry(a, x)
        if _native(a, begins, ends):
            src, pad, include, override, div = x, list(begins), a.count_include_pad, None, None
        else:
            pad_arg = torch_pad_arg(begins, ends)
            src, pad, include = F.pad(x, pad_arg), [0] * n, True
            override, div = (None, None) if a.count_include_pad else (1, divisor(x, strides, pad_arg))
        if out is None:
            extra = {} if override is None else {"divisor_override": override}
            y = _AVG[n](src, a.kernel_shape, strides, pad, a.ceil_mode, include, **extra)
            return y if div is None else y / div
        args = (tuple(a.kernel_shape), tuple(strides), tuple(pad), a.ceil_mode, include, override)
        if _avg_pool2d_layout(tuple(src.shape), src.stride(), args) != (tuple(out.shape), out.stride()):
            return None
        torch.ops.aten.avg_pool2d.out(src, *args, out=out)
        return out if div is None else out.div_(div)  # the same division, in place

    def run(inputs) -> list:
        return [to_format(pool(to_format(cast_float(inputs[0], dtype), fmt)), fmt)]

    if n != 2:
        return run

    def accepts(out: Tensor) -> bool:
        """The layer's dtype, in the planned format, with exactly the strides of a fresh tensor
        in one of the two formats (which one ``avg_pool2d`` writes depends on its input)."""
        return out.dim() == 4 and out.dtype == dtype and (fmt is None or out.is_contiguous(memory_format=fmt)) \
            and any(out.stride() == _fresh_strides(tuple(out.shape), f) for f in _FORMATS)

    def write(inputs, out: Tensor) -> bool:
        x = to_format(cast_float(inputs[0], dtype), fmt)
        if x is None or x.dim() != 4 or x.dtype != out.dtype or out.device != x.device or not accepts(out):
            return False
        return pool(x, out) is not None

    return with_write_into(run, WriteInto(write, accepts))


_FORMATS = (torch.channels_last, torch.contiguous_format)


@functools.lru_cache(maxsize=256)
def _fresh_strides(shape: tuple[int, ...], fmt: torch.memory_format) -> tuple[int, ...]:
    """The strides of a fresh tensor of ``shape`` in ``fmt`` (what a kernel allocating its output
    in that format gives)."""
    return torch.empty(shape, device="meta", memory_format=fmt).stride()


@functools.lru_cache(maxsize=256)
def _avg_pool2d_layout(shape: tuple[int, ...], stride: tuple[int, ...], args: tuple) -> tuple[tuple, tuple]:
    """Shape and strides of ``aten::avg_pool2d(input, *args)``'s output on an input of ``shape``
    and ``stride``: what its meta function allocates (packed in the input's
    ``suggest_memory_format()``), the layout its CUDA kernel writes whatever ``out`` is."""
    y = torch.ops.aten.avg_pool2d(torch.empty_strided(shape, stride, device="meta"), *args)
    return tuple(y.shape), y.stride()


@register_cuda_kernel(OpType.GLOBAL_AVERAGE_POOL, "aten", rank=0)
def global_average_pool(node: Node, ctx: CompileContext) -> Kernel:
    """Mean over all spatial dims (fp32 accumulation inside PyTorch's reduction)."""
    dtype = compute_dtype(ctx.precision)

    def run(inputs) -> list:
        x = cast_float(inputs[0], dtype)
        return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]

    def accepts(out: Tensor) -> bool:
        """The layer's dtype, laid out as the (contiguous) output ``mean`` allocates; strides of
        size-1 dims do not matter (TensorIterator drops those dims)."""
        fresh = _fresh_strides(tuple(out.shape), torch.contiguous_format)
        return out.dim() >= 3 and out.dtype == dtype and all(
            s == f for s, f, d in zip(out.stride(), fresh, out.shape) if d != 1)

    def write(inputs, out: Tensor) -> bool:
        x = cast_float(inputs[0], dtype)
        if x is None or x.dim() < 3 or x.dtype != out.dtype or out.device != x.device or not accepts(out) \
                or tuple(out.shape) != (*x.shape[:2], *(1,) * (x.dim() - 2)):
            return False
        torch.mean(x, dim=tuple(range(2, x.dim())), keepdim=True, out=out)
        return True

    return with_write_into(run, WriteInto(write, accepts))
