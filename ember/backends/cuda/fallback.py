"""Ops without a CUDA-specific kernel run the CPU backend's generic PyTorch kernel on the GPU.

The CPU backend's ``aten`` kernels are device-agnostic PyTorch code, so they are reused (never
copied) here. This wrapper adds what the GPU needs around them: float inputs and outputs in the
layer's precision, and *host slots*: inputs that a kernel reads as Python numbers (a Reshape's
target shape, Slice bounds, Clip bounds...), which are handed over as host tensors so reading
them never synchronizes the GPU (that would also break CUDA-graph capture).
"""
from __future__ import annotations

from typing import Optional

import torch

from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into, write_into_of
from ember.backends.cuda.device import cast_float, compute_dtype, tf32_scope
from ember.errors import BuildError
from ember.ir.graph import Node
from ember.ir.optype import OpType

#: Inputs read as host values (shape parameters), per op.
HOST_SLOTS: dict[OpType, frozenset[int]] = {
    OpType.RESHAPE: frozenset({1}),
    OpType.EXPAND: frozenset({1}),
    OpType.SLICE: frozenset({1, 2, 3, 4}),
    OpType.SQUEEZE: frozenset({1}),
    OpType.UNSQUEEZE: frozenset({1}),
    OpType.SPLIT: frozenset({1}),
    OpType.PAD: frozenset({1, 2, 3}),
    OpType.CLIP: frozenset({1, 2}),
    OpType.CONSTANT_OF_SHAPE: frozenset({0}),
    OpType.RANGE: frozenset({0, 1, 2}),
    OpType.RESIZE: frozenset({1, 2, 3}),
    OpType.REDUCE_MEAN: frozenset({1}),
    OpType.REDUCE_SUM: frozenset({1}),
    OpType.REDUCE_MAX: frozenset({1}),
    OpType.REDUCE_MIN: frozenset({1}),
    OpType.REDUCE_PROD: frozenset({1}),
    OpType.REDUCE_L1: frozenset({1}),
    OpType.REDUCE_L2: frozenset({1}),
    OpType.REDUCE_SUM_SQUARE: frozenset({1}),
    OpType.REDUCE_LOG_SUM: frozenset({1}),
    OpType.REDUCE_LOG_SUM_EXP: frozenset({1}),
    OpType.CUM_SUM: frozenset({1}),
    OpType.TOP_K: frozenset({1}),
    OpType.TILE: frozenset({1}),
    OpType.TRILU: frozenset({1}),
    OpType.ONE_HOT: frozenset({1}),
    OpType.AFFINE_GRID: frozenset({1}),
    OpType.CENTER_CROP_PAD: frozenset({1}),
    OpType.NON_MAX_SUPPRESSION: frozenset({2, 3, 4}),
    OpType.REVERSE_SEQUENCE: frozenset({1}),
    OpType.COL2IM: frozenset({1, 2}),
    OpType.MAX_UNPOOL: frozenset({2}),
    OpType.HANN_WINDOW: frozenset({0}),
    OpType.HAMMING_WINDOW: frozenset({0}),
    OpType.BLACKMAN_WINDOW: frozenset({0}),
    OpType.DFT: frozenset({1, 2}),
    OpType.STFT: frozenset({1, 3}),
    OpType.MEL_WEIGHT_MATRIX: frozenset({0, 1, 2, 3, 4}),
}

#: Ops whose output is metadata of the input (never reads its data).
METADATA_OPS = frozenset({OpType.SHAPE})

#: Ops that read their inputs' bits as they are (never cast to the layer's precision).
EXACT_OPS = frozenset({OpType.BIT_CAST})


def host_slots(op: OpType) -> frozenset[int]:
    return HOST_SLOTS.get(op, frozenset())


def cpu_aten_kernel(node: Node, ctx: CompileContext) -> Kernel:
    """The CPU backend's generic (``aten``) kernel for ``node``, compiled with ``ctx``."""
    from ember.backends.cpu.registry import ATEN, has_kernel, lookup

    if not has_kernel(node.op):
        raise BuildError(f"node {node.name!r}: op {node.op} has no GPU kernel in Ember; "
                         f"build for --device cpu or remove the op")
    return lookup(node, ATEN, ctx.graph).factory(node, ctx)


def wrap_generic(node: Node, ctx: CompileContext) -> Kernel:
    """The generic kernel on the GPU: floats cast to the layer's precision, outputs on the device."""
    inner = cpu_aten_kernel(node, ctx)
    dtype = compute_dtype(ctx.precision)
    device = ctx.device
    hosts = host_slots(node.op) if node.op not in EXACT_OPS else frozenset(range(len(node.inputs)))
    precision = ctx.precision

    def run(inputs) -> list:
        args = [t if i in hosts else cast_float(t, dtype) for i, t in enumerate(inputs)]
        with tf32_scope(precision):  # cuDNN RNNs would otherwise run fp32 layers in TF32
            outs = inner(args)
        return [_on_device(cast_float(t, dtype), device) for t in outs]

    inner_write = write_into_of(inner)
    if inner_write is not None:  # the generic kernel may write into a Concat's slice here too
        def write(inputs, out) -> bool:
            if out.dtype != dtype and out.is_floating_point():
                return False
            args = [t if i in hosts else cast_float(t, dtype) for i, t in enumerate(inputs)]
            with tf32_scope(precision):
                return inner_write(args, out)

        with_write_into(run, WriteInto(write, inner_write.accepts))
    return run


def _on_device(t: Optional[torch.Tensor], device: torch.device) -> Optional[torch.Tensor]:
    if t is None or t.device == device:
        return t
    return t.to(device)


def host_kernel(node: Node, ctx: CompileContext) -> Kernel:
    """The generic kernel run on the host, for shape computations (exact dtypes, no casts)."""
    return cpu_aten_kernel(node, ctx)
