"""How a squeeze-excite block's pooling and scale join a chain of persistent convolutions.

MobileNetV3's (and EfficientNet's, SE-ResNet's) squeeze-excite block is ``x -> GlobalAveragePool ->
1x1 conv -> ReLU -> 1x1 conv -> HardSigmoid -> Mul(x, gate)``: two convolutions a chain runs already,
between a pooling and a broadcast multiply that it did not, so each block cut the network's chain in
three and paid Python's per-layer cost four times (about 20 us a step against ONNX Runtime's 1-2 us
a node: BENCHMARKS.md, nineteenth session). The extension runs both as chain steps on oneDNN's own
primitives (``GlobalPool``: average pooling to [N, C, 1, 1]; ``ChannelScale``: a binary multiply by
[N, C, 1, 1] factors, in place over its input where nothing after reads that) in channels-last or in a
blocked chain's layout, and ``ChainLink`` says how: ``kind`` "pool" or "scale", the scale's factors
passed as a residual is.

A layer may join a chain only as a float32 layer of a float32 build or a bf16 layer whose inputs and
output are stored bf16 (its primitives then compute in bf16), on a static 4-D input whose output
stays channels-last (the layout plan), and for Mul only where one input has the output's shape and
the other is its [N, C, 1, 1] (both computed: a constant factor is not a chain's tensor). Elsewhere, and
in runs a chain does not take (NaN or infinity in the inputs, an observer), the layers run alone as
before.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch

from ember.backends.base import CompileContext
from ember.backends.cpu.chains import ChainLink, switched_on
from ember.backends.layout import NCHW, planned_format
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.plan.config import Precision

#: ``EMBER_CHAIN_SE=0`` (or off / false / no): poolings and scales never join a chain (for measuring).
SWITCH_ENV = "EMBER_CHAIN_SE"


def _static_float(ctx: CompileContext, name: str) -> Optional[tuple[int, ...]]:
    """The static 4-D shape of float32 tensor ``name`` (no zero dimension), or None."""
    t = ctx.graph.types.get(name) if ctx.graph is not None and name else None
    if t is None or t.dtype is not DType.FLOAT32 or len(t.shape) != 4:
        return None
    if not all(isinstance(d, int) and d > 0 for d in t.shape):
        return None
    return tuple(int(d) for d in t.shape)


def _step_dtype(node: Node, ctx: CompileContext) -> Optional[torch.dtype]:
    """The type a chain step of ``node`` computes and stores in, where it may join a chain (its
    only output kept channels-last by the plan): float32 for a float32 layer of a float32 build,
    or of a bf16 / fp16 build whose inputs and output are all stored float32; bfloat16 for a bf16
    layer whose inputs and output are all stored bf16 (``half.storage_dtype``: not a graph input
    or output, not from a float32 layer); else None."""
    if not switched_on(SWITCH_ENV) or ctx.graph is None:
        return None
    if len(node.outputs) != 1 or not node.outputs[0] or planned_format(ctx, node.outputs[0]) is NCHW:
        return None
    from ember.backends.cpu import native

    ext = native.extension()
    if ext is None or not hasattr(ext, "ChannelScale"):
        return None
    precision = Precision(ctx.precision)
    if precision is Precision.FP32 and ctx.config.precision is Precision.FP32:
        return torch.float32
    if precision is not Precision.BF16 and not (precision is Precision.FP32 and ctx.config.precision.is_half):
        return None
    from ember.backends.cpu.half import storage_dtype

    # a bf16 layer between bf16 tensors, or a float32 layer of a bf16 / fp16 build between float32
    # tensors (all of them, where the CPU has no native bf16 and the build kept fp32; INT8 builds'
    # float layers stay out: they sit between 8-bit layers)
    want = DType.BFLOAT16 if precision is Precision.BF16 else DType.FLOAT32
    layers = ctx.records.precision.layers
    producers = ctx.graph.producers()
    for name in [n for n in node.inputs if n] + [node.outputs[0]]:
        producer = producers.get(name)
        if producer is not None:
            stored = storage_dtype(ctx.graph, layers, producer.name, name)
        else:  # a graph input or constant: as the graph types it
            t = ctx.graph.types.get(name)
            stored = t.dtype if t is not None else None
        if stored is not want:
            return None
    return torch.bfloat16 if precision is Precision.BF16 else torch.float32


_DTYPE_NAMES = {torch.float32: "f32", torch.bfloat16: "bf16"}


def _maker(make: Callable[[list[int], str, str], Any], shape: tuple[int, ...]) -> Callable[[str, str], Any]:
    """``ChainLink.relayout`` for a step of ``shape``: the extension's step made on first use for
    each pair of layouts (raises ValueError for a pair the step has no form for)."""
    made: dict[tuple[str, str], Any] = {}

    def relayout(src_layout: str, dst_layout: str) -> Any:
        key = (src_layout, dst_layout)
        if key not in made:
            made[key] = make(list(shape), src_layout, dst_layout)
        return made[key]

    return relayout


def pool_link(node: Node, ctx: CompileContext) -> Optional[ChainLink]:
    """The ``ChainLink`` of a GlobalAveragePool that a chain may run, or None."""
    shape = _static_float(ctx, node.inputs[0]) if len(node.inputs) == 1 else None
    dtype = _step_dtype(node, ctx) if shape is not None else None  # after the cheap checks: it may scan the graph
    if dtype is None:
        return None
    from ember.backends.cpu import native

    make = functools.partial(_pool_with, native.extension(), _DTYPE_NAMES[dtype])
    return ChainLink(None, False, False, dtype=dtype, relayout=_maker(make, shape), shape=shape, kind="pool")


def _pool_with(ext: Any, dtype: str, shape: list[int], src: str, dst: str) -> Any:
    """The extension's ``GlobalPool`` for ``shape`` in these layouts and type."""
    return ext.GlobalPool(shape, src, dst, dtype)


def fused_scale_link(node: Node, ctx: CompileContext) -> Optional[ChainLink]:
    """The ``ChainLink`` of a FusedElementwise that is a channel scale, then optionally the addition
    of a residual of the output's shape, then optionally a ReLU (SE-ResNet's ``relu(x * gate +
    identity)``), that a chain may run, or None."""
    from ember.ir.optype import OpType

    a = node.attrs
    n = len(node.inputs)
    if a is None or not a.steps:
        return None
    # the program's steps, each reading the one before (operand n + k is step k's result)
    mul, *rest = a.steps
    if mul.op is not OpType.MUL or len(mul.operands) != 2 or max(mul.operands) >= n:
        return None
    residual, act, previous = None, "none", n
    if rest and rest[0].op is OpType.ADD and len(rest[0].operands) == 2 and max(rest[0].operands) == previous:
        other = min(rest[0].operands)
        if other >= n:
            return None
        residual, previous, rest = other, previous + 1, rest[1:]
    if rest and rest[0].op is OpType.RELU and rest[0].operands == (previous,):
        act, rest = "relu", rest[1:]
    if rest or (residual is None and act == "none"):  # more ops; or a plain Mul (``scale_link``'s)
        return None
    from ember.backends.cpu.half import finite_safe

    if act != "none" and not finite_safe(node, ctx.graph):  # the ReLU is fused: finite values only
        return None
    return _scale_link(node, ctx, tuple(mul.operands), residual, act)


def scale_link(node: Node, ctx: CompileContext) -> Optional[ChainLink]:
    """The ``ChainLink`` of a Mul of an [N, C, H, W] tensor by an [N, C, 1, 1] one (either order,
    both computed) that a chain may run, or None."""
    return _scale_link(node, ctx, (0, 1), None, "none") if len(node.inputs) == 2 else None


def _scale_link(node: Node, ctx: CompileContext, operands: tuple[int, ...], residual: Optional[int],
                act: str) -> Optional[ChainLink]:
    """The ``ChainLink`` of ``node`` as a channel scale of its inputs ``operands`` (one of the
    output's shape, the other its [N, C, 1, 1] gate, either order), with input ``residual`` (of the
    output's shape) summed in and ``act`` after, or None: every input computed (a constant is no
    chain's tensor), every shape static."""
    if not all(node.inputs) or any(ctx.const(name) is not None for name in node.inputs):
        return None
    out = _static_float(ctx, node.outputs[0])
    if out is None or (residual is not None and _static_float(ctx, node.inputs[residual]) != out):
        return None
    dtype = _step_dtype(node, ctx)  # after the cheap checks (BERT's Muls are 3-D): it may scan the graph
    if dtype is None:
        return None
    gate = (out[0], out[1], 1, 1)
    for big, small in (operands, tuple(reversed(operands))):
        if _static_float(ctx, node.inputs[big]) == out and _static_float(ctx, node.inputs[small]) == gate:
            from ember.backends.cpu import native

            make = functools.partial(_scale_with, native.extension(), residual is not None, act, _DTYPE_NAMES[dtype])
            return ChainLink(None, True, act != "none", sum=residual is not None, dtype=dtype,
                             relayout=_maker(make, out), shape=out, kind="scale", src_input=big, res_input=small,
                             sum_input=residual if residual is not None else 3)
    return None


def _scale_with(ext: Any, summed: bool, act: str, dtype: str, shape: list[int], src: str, dst: str) -> Any:
    """The extension's ``ChannelScale`` for ``shape`` in these layouts and type, with a residual
    summed in (``summed``) and ``act`` after."""
    return ext.ChannelScale(shape, src, dst, summed, act, dtype)


__all__ = ["SWITCH_ENV", "fused_scale_link", "pool_link", "scale_link"]
