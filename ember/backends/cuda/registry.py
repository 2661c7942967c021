"""The CUDA kernel registry: kernel factories keyed by ``OpType`` and tactic name.

A family module registers each implementation of an op as a *tactic*::

    @register_cuda_kernel(OpType.FUSED_CONV, "cudnn_fused", rank=0, when=relu_epilogue)
    def conv_cudnn_fused(node: Node, ctx: CompileContext) -> Kernel: ...

``when(node, graph)`` says whether the tactic applies to a node; ``rank`` orders the candidates
(lowest first: the default when no tuning is done). Ops with no CUDA-specific entry run through
``"aten"``: the CPU backend's generic PyTorch kernel placed on the GPU (see ``fallback.py``).
The family modules are imported from an explicit list in ``ember.backends.cuda.kernels``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ember.backends.base import CompileContext, Kernel
from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType

KernelFactory = Callable[[Node, CompileContext], Kernel]
Applies = Callable[[Node, Optional[Graph]], bool]

#: The generic tactic: the CPU backend's device-agnostic PyTorch kernel, run on the GPU.
ATEN = "aten"


@dataclass(frozen=True)
class CudaKernelEntry:
    op: OpType
    tactic: str
    factory: KernelFactory
    rank: int
    when: Optional[Applies]
    needs_triton: bool = False

    def applies(self, node: Node, graph: Optional[Graph]) -> bool:
        if self.needs_triton:
            from ember.backends.cuda.device import triton_available

            if not triton_available():
                return False
        return self.when is None or bool(self.when(node, graph))


_KERNELS: dict[OpType, dict[str, CudaKernelEntry]] = {}


def register_cuda_kernel(op: OpType, tactic: str, *, rank: int = 100, when: Optional[Applies] = None,
                         needs_triton: bool = False) -> Callable[[KernelFactory], KernelFactory]:
    """Registers ``factory(node, ctx) -> Kernel`` as tactic ``tactic`` of ``op`` on CUDA."""

    def deco(factory: KernelFactory) -> KernelFactory:
        table = _KERNELS.setdefault(op, {})
        if tactic in table:
            raise RuntimeError(f"CUDA kernel for {op} tactic {tactic!r} registered twice")
        table[tactic] = CudaKernelEntry(op, tactic, factory, rank, when, needs_triton)
        return factory

    return deco


def _table(op: OpType) -> dict[str, CudaKernelEntry]:
    from ember.backends.cuda.kernels import load_kernels

    load_kernels()
    return _KERNELS.get(op, {})


def cuda_candidates(node: Node, graph: Optional[Graph]) -> list[str]:
    """CUDA-specific tactics that apply to ``node``, default (lowest rank) first."""
    entries = [e for e in _table(node.op).values() if e.applies(node, graph)]
    entries.sort(key=lambda e: (e.rank, e.tactic))
    return [e.tactic for e in entries]


def cuda_entry(node: Node, tactic: str, graph: Optional[Graph]) -> Optional[CudaKernelEntry]:
    """The CUDA entry for ``tactic`` of ``node``; ``None`` when the op has no such tactic."""
    entry = _table(node.op).get(tactic)
    if entry is not None and not entry.applies(node, graph):
        raise BuildError(f"node {node.name!r} ({node.op}): CUDA tactic {tactic!r} does not apply "
                         f"to this node; choose one of {', '.join(cuda_candidates(node, graph))} "
                         f"(or rebuild the engine / clear the timing cache)")
    return entry


def cuda_ops() -> list[OpType]:
    """Op types that have at least one CUDA-specific kernel."""
    _table(OpType.IDENTITY)
    return sorted((op for op, t in _KERNELS.items() if t), key=lambda o: o.value)
