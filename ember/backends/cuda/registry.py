"""The CUDA kernel registry: kernel factories keyed by ``OpType`` and tactic name.

A family module registers each implementation of an op as a *tactic*::

    @register_cuda_kernel(OpType.FUSED_CONV, "cudnn_fused", rank=0, when=relu_epilogue)
    def conv_cudnn_fused(node: Node, ctx: CompileContext) -> Kernel: ...

``when(node, graph)`` says whether the tactic applies to a node; ``rank`` orders the candidates
(lowest first: the default when no tuning is done). Ops with no CUDA-specific entry run through
``"aten"``: the CPU backend's generic PyTorch kernel placed on the GPU (see ``fallback.py``).
The family modules are imported from an explicit list in ``ember.backends.cuda.kernels``. The
mechanism is the one of every backend (``ember.backends.kernel_registry``).
"""
from __future__ import annotations

from typing import Callable, Optional

from ember.backends.kernel_registry import Applies, KernelEntry, KernelFactory, KernelRegistry
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.plan.records import Records

#: The generic tactic: the CPU backend's device-agnostic PyTorch kernel, run on the GPU.
ATEN = "aten"
#: The same generic kernel offered as the last candidate of an op that has CUDA-specific ones, for
#: the forms they refuse (some CUDA kernels of their own are named "aten": torch's CUDA ops).
GENERIC = "generic"
#: INT8 layers' float fallback on CUDA (``kernels.qlayers``): dequantize, compute in float32, requantize.
DEQUANTIZED = "dequantized_fp32"


def _load() -> None:
    from ember.backends.cuda.kernels import load_kernels

    load_kernels()


def _triton() -> bool:
    from ember.backends.cuda.device import triton_available

    return triton_available()


CUDA_KERNELS = KernelRegistry("CUDA", _load)


def register_cuda_kernel(op: OpType, tactic: str, *, rank: int = 100, when: Optional[Applies] = None,
                         needs_triton: bool = False,
                         channels_last_only: bool = False) -> Callable[[KernelFactory], KernelFactory]:
    """Registers ``factory(node, ctx) -> Kernel`` as tactic ``tactic`` of ``op`` on CUDA."""
    if tactic == GENERIC:
        raise ValueError(f"{GENERIC!r} names the CPU backend's generic kernel on the GPU; register "
                         f"the CUDA kernel of {op} under another name")
    return CUDA_KERNELS.register(op, tactic, rank=rank, when=when, channels_last_only=channels_last_only,
                                 available=_triton if needs_triton else None)


def cuda_candidates(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> list[str]:
    """CUDA-specific tactics that apply to ``node``, default (lowest rank) first."""
    return CUDA_KERNELS.candidates(node, graph, records)


def cuda_entry(node: Node, tactic: str, graph: Optional[Graph],
               records: Optional[Records] = None) -> Optional[KernelEntry]:
    """The CUDA entry for ``tactic`` of ``node``; ``None`` when the op has no such tactic."""
    return CUDA_KERNELS.entry(node, tactic, graph, records)


def cuda_ops() -> list[OpType]:
    """Op types that have at least one CUDA-specific kernel."""
    return CUDA_KERNELS.ops()
