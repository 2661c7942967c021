"""Ember's CUDA backend: cuDNN/cuBLAS/SDPA kernels through PyTorch, Ember's own Triton kernels,
several tactics per layer, and a program replayed as CUDA graphs per execution context.

The package by role:

- ``kernels/``: one module per layer family, each registering its tactics in ``registry``
  (``CUDA_KERNELS``); ``fallback``: the CPU backend's generic kernels placed on the GPU;
- ``libs/``: bindings of the libraries the kernels call beyond PyTorch: the cuDNN frontend
  (``cudnn_graph``) and Ember's Triton code (``triton_ops``, ``triton_conv``,
  ``triton_elementwise``, the ``@triton.jit`` functions in ``triton_jit``);
- ``exec/``: running a whole plan: its static ``schedule`` and ``streams``, the ``program``
  (``CudaProgram``: one eager forward), the per-context ``executor`` (``CudaExecutor``) with its
  device ``arena`` and CUDA ``graphs``;
- ``tuning``: the builder's tactic timer (``CudaTacticTimer``); ``device``: precision -> dtype,
  TF32 scopes, availability checks.

Nothing here needs a GPU to be imported (CI has none); CUDA is touched when a program is built
or a kernel compiled.

>>> from ember.backends.cuda import CUDABackend
>>> CUDABackend().name
'cuda'
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Optional

import torch

from ember.backends.base import Backend, CompileContext, Kernel
from ember.backends.cpu.registry import has_kernel
from ember.backends.cuda.fallback import cpu_aten_kernel, wrap_generic
from ember.backends.cuda.registry import ATEN, CUDA_KERNELS, DEQUANTIZED, GENERIC, cuda_candidates, cuda_entry
from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.plan.config import BuildConfig, Device, Precision
from ember.plan.plan import Plan
from ember.plan.records import Records

if TYPE_CHECKING:
    from ember.backends.cuda.exec.program import CudaProgram
    from ember.backends.cuda.tuning import CudaTacticTimer


#: Ops whose CUDA table ends in a fallback of its own.
_OWN_FALLBACK = frozenset({OpType.QCONV, OpType.QGEMM})


class CUDABackend(Backend):
    """The ``cuda`` backend (see ``ember.backends.base.Backend``)."""

    device = Device.CUDA
    #: timed only where every other candidate failed: the CPU's generic kernel on the GPU, and the
    #: INT8 layers' float fallback (timing it cost the INT8 ResNet-50 b256 build ~0.4 s a layer, of
    #: 80.9 s cold on the H100, for a tactic that never beat a working INT8 kernel there)
    fallback_tactics = frozenset({GENERIC, DEQUANTIZED})

    def supports(self, node: Node) -> bool:
        return bool(CUDA_KERNELS.table(node.op)) or has_kernel(node.op)

    def tactics(self, node: Node, graph: Graph, records: Optional[Records] = None) -> list[str]:
        """CUDA-specific candidates (default first), then ``"generic"`` (the CPU backend's generic
        kernel on the GPU) where the op has one: a fallback (``fallback_tactics``), timed only for
        forms every CUDA kernel refuses (a weight computed at run time, dilated average pooling, 8-bit max
        pooling...). ``["aten"]`` for ops with only the generic kernel."""
        names = cuda_candidates(node, graph, records)
        if not names:
            return [ATEN]
        # INT8 layers have their own float fallback (``dequantized_fp32``), on CUDA's int8 storage
        return names + [GENERIC] if has_kernel(node.op) and node.op not in _OWN_FALLBACK else names

    def compile_node(self, node: Node, ctx: CompileContext) -> Kernel:
        """The kernel of ``node`` for tactic ``ctx.tactic`` ("" = the default candidate)."""
        tactic = ctx.tactic or self.tactics(node, ctx.graph, ctx.records)[0]
        if tactic == GENERIC or (tactic == ATEN and not cuda_candidates(node, ctx.graph, ctx.records)):
            return wrap_generic(node, ctx)
        entry = cuda_entry(node, tactic, ctx.graph, ctx.records)
        if entry is None:
            known = ", ".join(self.tactics(node, ctx.graph, ctx.records))
            raise BuildError(f"node {node.name!r} ({node.op}): unknown CUDA tactic {tactic!r}; "
                             f"known: {known}. Rebuild the engine (or delete the timing cache)")
        return entry.factory(node, ctx)

    def effective_precision(self, node: Node, tactic: str, precision: Precision) -> Precision:
        """An FP8 layer whose chosen tactic is not an FP8 kernel (fp16 was faster, or the layer's
        sizes do not fit FP8's) computes fp16, as every other layer of an FP8 build."""
        from ember.backends.cuda.kernels.conv_fp8 import FP8_CONV_TACTICS
        from ember.backends.cuda.kernels.gemm_fp8 import FP8_TACTICS

        if precision is Precision.FP8 and tactic not in FP8_TACTICS and tactic not in FP8_CONV_TACTICS:
            return Precision.FP16
        return precision

    def make_program(self, plan: Plan, device: torch.device) -> CudaProgram:
        """The engine's executable form: a ``CudaProgram`` (its ``create_executor()`` gives each
        execution context CUDA graphs, streams, pinned buffers and a device arena of its own)."""
        from ember.backends.cuda.exec.program import program_from_plan

        return program_from_plan(plan, self, device)

    def make_timer(self, constants: Mapping[str, torch.Tensor], device: torch.device,
                   records: Records, config: BuildConfig) -> CudaTacticTimer:
        """A tactic timer for the builder: CUDA-event timing plus an accuracy check per tactic,
        compiling with ``records`` and ``config`` (``config.cuda_arena``: timed into the arena)."""
        from ember.backends.cuda.tuning import CudaTacticTimer

        return CudaTacticTimer(self, constants, device, records, config)


__all__ = ["CUDABackend", "cpu_aten_kernel"]
