"""Ember's CUDA backend: cuDNN/cuBLAS/SDPA kernels through PyTorch, Ember's own Triton kernels,
several tactics per layer, and a CUDA-graph executor (``executor.CudaProgram``).

>>> from ember.backends.cuda import CUDABackend
>>> CUDABackend().name
'cuda'
"""
from __future__ import annotations

from typing import Mapping

import torch

from ember.backends.base import CompileContext, Kernel
from ember.backends.cuda.fallback import cpu_aten_kernel, wrap_generic
from ember.backends.cuda.registry import ATEN, cuda_candidates, cuda_entry
from ember.errors import BuildError
from ember.ir.graph import Graph, Node


class CUDABackend:
    """The ``cuda`` backend (see ``ember.backends.base.Backend``)."""

    name = "cuda"

    def supports(self, node: Node) -> bool:
        if cuda_candidates(node, None) or _has_any_cuda_entry(node):
            return True
        from ember.backends.cpu.registry import has_kernel

        return has_kernel(node.op)

    def tactics(self, node: Node, graph: Graph) -> list[str]:
        """CUDA-specific candidates (default first); ``["aten"]`` for ops with only the generic one."""
        names = cuda_candidates(node, graph)
        return names if names else [ATEN]

    def compile_node(self, node: Node, ctx: CompileContext) -> Kernel:
        """The kernel of ``node`` for tactic ``ctx.tactic`` ("" = the default candidate)."""
        tactic = ctx.tactic or self.tactics(node, ctx.graph)[0]
        if tactic == ATEN and not cuda_candidates(node, ctx.graph):
            return wrap_generic(node, ctx)
        entry = cuda_entry(node, tactic, ctx.graph)
        if entry is None:
            known = ", ".join(self.tactics(node, ctx.graph))
            raise BuildError(f"node {node.name!r} ({node.op}): unknown CUDA tactic {tactic!r}; "
                             f"known: {known}. Rebuild the engine (or delete the timing cache)")
        return entry.factory(node, ctx)

    def make_program(self, plan, device: torch.device):
        """The engine's executable form: a ``CudaProgram`` (its ``create_runner()`` gives each
        execution context CUDA graphs, streams and pinned buffers of its own)."""
        from ember.backends.cuda.executor import program_from_plan

        return program_from_plan(plan, self, device)

    def make_timer(self, constants: Mapping[str, torch.Tensor], device: torch.device, **kw):
        """A tactic timer for the builder: CUDA-event timing plus an accuracy check per tactic."""
        from ember.backends.cuda.tuning import CudaTacticTimer

        return CudaTacticTimer(self, constants, device, **kw)


def _has_any_cuda_entry(node: Node) -> bool:
    from ember.backends.cuda.registry import _table

    return bool(_table(node.op))


__all__ = ["CUDABackend", "cpu_aten_kernel"]
