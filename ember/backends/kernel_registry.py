"""The one kernel-registry mechanism of every backend: kernel factories by ``OpType`` and tactic.

A backend owns one ``KernelRegistry``; its family modules register each implementation of an op
as a *tactic* with an explicit decorator::

    CPU_KERNELS = KernelRegistry("CPU", load=load_cpu_kernels)

    @CPU_KERNELS.register(OpType.CONV, "mkldnn_prepacked", rank=10, when=weights_are_constant)
    def conv_prepacked(node: Node, ctx: CompileContext) -> Kernel: ...

``when(node, graph, records)`` says whether the tactic applies to a node (records: the plan's
decisions, e.g. whether its output is a Concat slice written in place); ``rank`` orders the candidates
(lowest first: the default when no tuning is done); ``channels_last_only``: the kernel can only
write its output channels-last, so it does not apply where the layout plan stores that output
NCHW; ``available()`` is checked once per question (a tactic that needs Triton, say);
``offered(node, graph, records)``: whether a build on this machine offers a tactic that applies
(one that would only run another tactic's kernel here is not offered, so the plan names what
runs; an engine that recorded it still compiles it). The family
modules are imported from an explicit list by ``load`` on first use; nothing is discovered by
scanning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ember.backends.base import CompileContext, Kernel
from ember.backends.layout import NCHW, format_in
from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.plan.records import Records

KernelFactory = Callable[[Node, CompileContext], Kernel]
Applies = Callable[[Node, Optional[Graph], Optional[Records]], bool]


@dataclass(frozen=True)
class KernelEntry:
    """One registered implementation (tactic) of an op."""

    op: OpType
    tactic: str
    factory: KernelFactory
    rank: int
    when: Optional[Applies]
    channels_last_only: bool = False
    available: Optional[Callable[[], bool]] = None
    offered: Optional[Applies] = None

    def applies(self, node: Node, graph: Optional[Graph], records: Optional[Records]) -> bool:
        if self.available is not None and not self.available():
            return False
        if self.channels_last_only and records is not None and _stored_nchw(node, graph, records):
            return False
        return self.when is None or bool(self.when(node, graph, records))


def _stored_nchw(node: Node, graph: Optional[Graph], records: Records) -> bool:
    """Whether the layout plan stores ``node``'s first output as an NCHW 4-D activation."""
    if graph is None or not node.outputs:
        return False
    return format_in(graph, records.layout, node.outputs[0]) is NCHW


class KernelRegistry:
    """The kernels of one backend (see the module docstring)."""

    def __init__(self, backend: str, load: Callable[[], None]) -> None:
        self.backend = backend
        self._load = load
        self._kernels: dict[OpType, dict[str, KernelEntry]] = {}

    def register(self, op: OpType, tactic: str, *, rank: int = 100, when: Optional[Applies] = None,
                 channels_last_only: bool = False,
                 available: Optional[Callable[[], bool]] = None,
                 offered: Optional[Applies] = None) -> Callable[[KernelFactory], KernelFactory]:
        """Registers ``factory(node, ctx) -> Kernel`` as tactic ``tactic`` of ``op``."""

        def deco(factory: KernelFactory) -> KernelFactory:
            table = self._kernels.setdefault(op, {})
            if tactic in table:
                raise RuntimeError(f"{self.backend} kernel for {op} tactic {tactic!r} registered twice")
            table[tactic] = KernelEntry(op, tactic, factory, rank, when, channels_last_only, available, offered)
            return factory

        return deco

    def table(self, op: OpType) -> dict[str, KernelEntry]:
        """Every registered tactic of ``op`` (the family modules are loaded on first use)."""
        self._load()
        return self._kernels.get(op, {})

    def ops(self) -> list[OpType]:
        """Op types with at least one registered kernel."""
        self._load()
        return sorted((op for op, t in self._kernels.items() if t), key=lambda o: o.value)

    def has(self, op: OpType, tactic: str) -> bool:
        return tactic in self.table(op)

    def candidates(self, node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> list[str]:
        """Tactics that apply to ``node`` and a build here offers, default (lowest rank) first."""
        entries = [e for e in self.table(node.op).values()
                   if e.applies(node, graph, records) and (e.offered is None or e.offered(node, graph, records))]
        entries.sort(key=lambda e: (e.rank, e.tactic))
        return [e.tactic for e in entries]

    def entry(self, node: Node, tactic: str, graph: Optional[Graph],
              records: Optional[Records] = None) -> Optional[KernelEntry]:
        """The entry for ``tactic`` of ``node``: ``None`` when the op has no such tactic; a
        ``BuildError`` naming the applicable ones when it has it but it does not apply here."""
        found = self.table(node.op).get(tactic)
        if found is not None and not found.applies(node, graph, records):
            raise BuildError(f"node {node.name!r} ({node.op}): {self.backend} tactic {tactic!r} does not "
                             f"apply to this node; choose one of "
                             f"{', '.join(self.candidates(node, graph, records)) or '(none)'} "
                             f"(or rebuild the engine / clear the timing cache)")
        return found
