"""The CPU kernel registry: kernel factories keyed by ``OpType`` and tactic name.

A kernel family module registers each factory with an explicit decorator::

    @register_kernel(OpType.RELU)
    def relu(node: Node, ctx: CompileContext) -> Kernel: ...

    @register_kernel(OpType.CONV, tactic="mkldnn_prepacked", rank=0, when=weights_are_constant)
    def conv_prepacked(node, ctx): ...

Every op has an ``"aten"`` tactic: the generic implementation that works for any input (it is
what ``evaluate`` and constant folding use). Other tactics are faster special cases; ``when``
says whether a tactic applies to a node of a given graph, and ``rank`` orders the candidates
(lowest first: the default choice). The family modules are imported from an explicit list in
``ember.backends.cpu.kernels``; nothing is discovered by scanning.
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

#: The generic tactic every op has.
ATEN = "aten"


@dataclass(frozen=True)
class KernelEntry:
    op: OpType
    tactic: str
    factory: KernelFactory
    rank: int
    when: Optional[Applies]

    def applies(self, node: Node, graph: Optional[Graph]) -> bool:
        return self.when is None or bool(self.when(node, graph))


_KERNELS: dict[OpType, dict[str, KernelEntry]] = {}


def register_kernel(op: OpType, tactic: str = ATEN, *, rank: int = 100,
                    when: Optional[Applies] = None) -> Callable[[KernelFactory], KernelFactory]:
    """Registers ``factory(node, ctx) -> Kernel`` as tactic ``tactic`` of ``op``."""

    def deco(factory: KernelFactory) -> KernelFactory:
        table = _KERNELS.setdefault(op, {})
        if tactic in table:
            raise RuntimeError(f"CPU kernel for {op} tactic {tactic!r} registered twice")
        table[tactic] = KernelEntry(op, tactic, factory, rank, when)
        return factory

    return deco


def _table(op: OpType) -> dict[str, KernelEntry]:
    from ember.backends.cpu.kernels import load_kernels

    load_kernels()
    return _KERNELS.get(op, {})


def has_kernel(op: OpType) -> bool:
    return ATEN in _table(op)


def kernel_ops() -> list[OpType]:
    """Every op type that has a CPU kernel."""
    _table(OpType.IDENTITY)
    return sorted((op for op, t in _KERNELS.items() if ATEN in t), key=lambda o: o.value)


def candidates(node: Node, graph: Optional[Graph]) -> list[str]:
    """Tactic names that apply to ``node``, default (lowest rank) first."""
    entries = [e for e in _table(node.op).values() if e.applies(node, graph)]
    entries.sort(key=lambda e: (e.rank, e.tactic))
    return [e.tactic for e in entries]


def lookup(node: Node, tactic: str, graph: Optional[Graph]) -> KernelEntry:
    """The entry for ``tactic`` ("" = default) of ``node``; a clear error when there is none."""
    table = _table(node.op)
    if not table:
        raise BuildError(f"node {node.name!r}: the CPU backend has no kernel for op {node.op}; "
                         f"build for another device or remove the op from the model")
    if not tactic:
        names = candidates(node, graph)
        tactic = names[0] if names else ATEN
    entry = table.get(tactic)
    if entry is None:
        known = ", ".join(sorted(table))
        raise BuildError(f"node {node.name!r} ({node.op}): unknown CPU tactic {tactic!r}; "
                         f"known tactics: {known}. Rebuild the engine (or clear the timing cache)")
    if not entry.applies(node, graph):
        raise BuildError(f"node {node.name!r} ({node.op}): CPU tactic {tactic!r} does not apply "
                         f"to this node; choose one of {', '.join(candidates(node, graph))}")
    return entry
