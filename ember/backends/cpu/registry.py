"""The CPU kernel registry: kernel factories keyed by ``OpType`` and tactic name.

A kernel family module registers each factory with an explicit decorator::

    @register_kernel(OpType.RELU)
    def relu(node: Node, ctx: CompileContext) -> Kernel: ...

    @register_kernel(OpType.CONV, tactic="mkldnn_prepacked", rank=0, when=weights_are_constant)
    def conv_prepacked(node, ctx): ...

The mechanism is the one of every backend (``ember.backends.kernel_registry``); this module
holds the CPU's instance. Every op has an ``"aten"`` tactic: the generic implementation that works for any input (it is
what ``evaluate`` and constant folding use). Other tactics are faster special cases; ``when``
says whether a tactic applies to a node of a given graph, and ``rank`` orders the candidates
(lowest first: the default choice). The family modules are imported from an explicit list in
``ember.backends.cpu.kernels``; nothing is discovered by scanning.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable, Optional

from ember.backends.base import CompileContext, Kernel, with_write_into, write_into_of
from ember.backends.kernel_registry import Applies, KernelEntry, KernelFactory, KernelRegistry
from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.plan.records import Records

log = logging.getLogger("ember.build")
#: tactics whose fallback was logged (once each)
_FELL_BACK: set[str] = set()

#: The generic tactic every op has.
ATEN = "aten"


def _load() -> None:
    from ember.backends.cpu.kernels import load_kernels

    load_kernels()


CPU_KERNELS = KernelRegistry("CPU", _load)


def register_kernel(op: OpType, tactic: str = ATEN, *, rank: int = 100, when: Optional[Applies] = None,
                    channels_last_only: bool = False,
                    available: Optional[Callable[[], bool]] = None,
                    offered: Optional[Applies] = None) -> Callable[[KernelFactory], KernelFactory]:
    """Registers ``factory(node, ctx) -> Kernel`` as tactic ``tactic`` of ``op`` on the CPU.
    ``available()``: whether this machine can run the tactic at all (a compiled extension); an
    engine that recorded it runs the default candidate on a machine where it cannot.
    ``offered(node, graph, records)``: whether a build here offers it for ``node``
    (``KernelRegistry``)."""
    return CPU_KERNELS.register(op, tactic, rank=rank, when=when, channels_last_only=channels_last_only,
                                available=available, offered=offered)


def has_kernel(op: OpType) -> bool:
    return CPU_KERNELS.has(op, ATEN)


def kernel_ops() -> list[OpType]:
    """Every op type that has a CPU kernel."""
    return [op for op in CPU_KERNELS.ops() if CPU_KERNELS.has(op, ATEN)]


def candidates(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> list[str]:
    """Tactic names that apply to ``node``, default (lowest rank) first."""
    return CPU_KERNELS.candidates(node, graph, records)


def lookup(node: Node, tactic: str, graph: Optional[Graph], records: Optional[Records] = None) -> KernelEntry:
    """The entry for ``tactic`` ("" = default) of ``node``; a clear error when there is none."""
    table = CPU_KERNELS.table(node.op)
    if not table:
        raise BuildError(f"node {node.name!r}: the CPU backend has no kernel for op {node.op}; "
                         f"build for another device or remove the op from the model")
    if not tactic:
        names = candidates(node, graph, records)
        tactic = names[0] if names else ATEN
    recorded = table.get(tactic)
    if recorded is not None and recorded.available is not None and not recorded.available():
        # an engine built where this tactic ran (a compiled extension), loaded where it cannot:
        # the same layer on the default kernel, same results, with a word in the log
        names = candidates(node, graph, records)
        fallback = names[0] if names else ATEN
        if tactic not in _FELL_BACK:
            _FELL_BACK.add(tactic)
            log.warning("CPU tactic %r recorded in the engine cannot run on this machine; its layers run %r "
                        "(same results; rebuild the engine here to choose again)", tactic, fallback)
        tactic = fallback
    entry = CPU_KERNELS.entry(node, tactic, graph, records)
    if entry is None:
        known = ", ".join(sorted(table))
        raise BuildError(f"node {node.name!r} ({node.op}): unknown CPU tactic {tactic!r}; "
                         f"known tactics: {known}. Rebuild the engine (or clear the timing cache)")
    return replace(entry, factory=_unsigned_aware(entry.factory))


def _unsigned_aware(factory: KernelFactory) -> KernelFactory:
    """``factory`` whose kernels also run on uint16/uint32/uint64 inputs where the node may get
    them (``ember.backends.cpu.unsigned``); other nodes get the kernel as it is."""
    from ember.backends.cpu.unsigned import may_see_unsigned, unsigned_kernel

    def make(node: Node, ctx: CompileContext) -> Kernel:
        kernel = factory(node, ctx)
        if not may_see_unsigned(node, ctx):
            return kernel
        wrapped = unsigned_kernel(node, kernel)
        inner = write_into_of(kernel)
        return with_write_into(wrapped, inner) if inner is not None else wrapped

    return make
