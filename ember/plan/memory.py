"""Static memory planning: liveness over the execution order, then offsets into one arena.

Every intermediate tensor (a node output that is neither a graph input nor a constant) gets a
lifetime ``[first, last]`` in layer indices: ``first`` is the layer that writes it, ``last`` the
last layer that reads it. Graph outputs live to the end (``last = len(layers)``). Two tensors
whose lifetimes intersect must not share bytes; the allocator places the largest tensors first,
each into the smallest gap (best fit) left by the already-placed tensors it is alive with.
Offsets and sizes are rounded up to ``ALIGNMENT`` bytes.

Sizes come from static types. A tensor whose size is unknown at build time (a symbolic dim with
no profile bound) is *dynamic*: it has no offset, is left out of the arena, and is allocated at
run time; its liveness is still recorded so the runtime frees it after its last use.

>>> plan = allocate({"a": (100, 0, 1), "b": (100, 1, 2), "c": (100, 2, 3)})
>>> plan.arena_bytes, plan.sum_bytes
(256, 384)
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ember.errors import BuildError
from ember.ir.graph import Graph
from ember.ir.types import TensorType

ALIGNMENT = 64


@dataclass(frozen=True)
class TensorAlloc:
    """Where one intermediate tensor lives: ``[offset, offset + size)`` during layers ``first..last``.

    ``offset`` and ``size`` are ``None`` for a dynamic tensor (size unknown at build time).
    """

    name: str
    offset: int | None
    size: int | None
    first: int
    last: int

    @property
    def dynamic(self) -> bool:
        return self.size is None

    def alive_with(self, other: TensorAlloc) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class MemoryPlan:
    """The arena layout of one engine.

    ``arena_bytes`` is the planned peak (the arena's size); ``sum_bytes`` the sum of all planned
    intermediate tensors, i.e. what an engine that never reuses memory would need.
    """

    arena_bytes: int
    sum_bytes: int
    tensors: dict[str, TensorAlloc] = field(default_factory=dict)
    alignment: int = ALIGNMENT
    num_layers: int = 0

    @property
    def dynamic(self) -> list[str]:
        return [t.name for t in self.tensors.values() if t.dynamic]

    def frees_after(self) -> dict[int, list[str]]:
        """Layer index -> tensors whose last reader is that layer (graph outputs never appear)."""
        out: dict[int, list[str]] = {}
        for t in self.tensors.values():
            if t.last < self.num_layers:
                out.setdefault(t.last, []).append(t.name)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"arena_bytes": self.arena_bytes, "sum_bytes": self.sum_bytes,
                "alignment": self.alignment, "num_layers": self.num_layers,
                "tensors": [asdict(t) for t in self.tensors.values()]}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> MemoryPlan:
        tensors = {t["name"]: TensorAlloc(**t) for t in data["tensors"]}
        return MemoryPlan(int(data["arena_bytes"]), int(data["sum_bytes"]), tensors,
                          int(data.get("alignment", ALIGNMENT)), int(data.get("num_layers", 0)))


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def liveness(graph: Graph) -> dict[str, tuple[int, int]]:
    """Lifetime ``(first, last)`` of every intermediate tensor over ``graph.nodes``' order.

    Graph inputs and constants are not intermediates. An output nobody reads lives only during
    the layer that writes it; a graph output lives to ``len(graph.nodes)``.
    """
    external = set(graph.inputs) | set(graph.constants)
    live: dict[str, list[int]] = {}
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name in live:
                live[name][1] = i
        for name in node.outputs:
            if name and name not in external:
                live[name] = [i, i]
    end = len(graph.nodes)
    for name in graph.outputs:
        if name in live:
            live[name][1] = end
    return {k: (v[0], v[1]) for k, v in live.items()}


def tensor_bytes(t: TensorType) -> int | None:
    """Bytes of a tensor of static type ``t``; ``None`` when a dim is symbolic."""
    return t.nbytes() if t.is_static else None


def allocate(requests: Mapping[str, tuple[int | None, int, int]], alignment: int = ALIGNMENT,
             num_layers: int = 0) -> MemoryPlan:
    """Places tensors ``name -> (size or None, first, last)`` into one arena (greedy best fit)."""
    allocs: dict[str, TensorAlloc] = {}
    placed: list[TensorAlloc] = []  # with their padded sizes
    arena = 0
    order = sorted(requests.items(), key=lambda kv: (-(kv[1][0] or 0), kv[1][1], kv[0]))
    for name, (size, first, last) in order:
        if first > last:
            raise BuildError(f"tensor {name!r} has lifetime [{first}, {last}] that ends before it starts")
        if size is None or size == 0:
            allocs[name] = TensorAlloc(name, None if size is None else 0, size, first, last)
            continue
        padded = _round_up(size, alignment)
        probe = TensorAlloc(name, 0, padded, first, last)
        offset = _best_fit(probe, [p for p in placed if p.alive_with(probe)], alignment)
        alloc = TensorAlloc(name, offset, size, first, last)
        placed.append(TensorAlloc(name, offset, padded, first, last))
        arena = max(arena, offset + padded)
        allocs[name] = alloc
    total = sum(_round_up(a.size, alignment) for a in allocs.values() if a.size)
    ordered = {name: allocs[name] for name in requests}
    return MemoryPlan(arena, total, ordered, alignment, num_layers)


def _best_fit(probe: TensorAlloc, conflicts: list[TensorAlloc], alignment: int) -> int:
    """Smallest gap between the conflicting tensors' byte ranges that holds ``probe``."""
    need = probe.size or 0
    best: tuple[int, int] | None = None  # (gap size, offset)
    cursor = 0
    for c in sorted(conflicts, key=lambda c: c.offset or 0):
        start, end = c.offset or 0, (c.offset or 0) + (c.size or 0)
        gap = start - cursor
        if gap >= need and (best is None or gap < best[0]):
            best = (gap, cursor)
        cursor = max(cursor, _round_up(end, alignment))
    return best[1] if best is not None else cursor


def plan_memory(graph: Graph, types: Mapping[str, TensorType] | None = None,
                alignment: int = ALIGNMENT) -> MemoryPlan:
    """The memory plan of ``graph``; sizes from ``types`` (default ``graph.types``).

    Pass the types inferred at the profiles' max shapes to plan a dynamic-shape engine for
    its largest inputs.
    """
    types = types if types is not None else graph.types
    requests = {}
    for name, (first, last) in liveness(graph).items():
        t = types.get(name) or graph.types.get(name)
        requests[name] = (tensor_bytes(t) if t is not None else None, first, last)
    return allocate(requests, alignment, num_layers=len(graph.nodes))


def check_no_overlap(plan: MemoryPlan) -> None:
    """Raises ``BuildError`` if two tensors alive at the same time share a byte, if an offset is
    misaligned, or if a tensor runs past the arena."""
    spans: list[tuple[TensorAlloc, int, int]] = []  # (tensor, first byte, end byte) of sized ones
    for t in plan.tensors.values():
        if not t.size:
            continue
        if t.offset is None:
            raise BuildError(f"tensor {t.name!r} has {t.size} bytes but no offset in the memory plan")
        if t.offset % plan.alignment:
            raise BuildError(f"tensor {t.name!r} offset {t.offset} is not {plan.alignment}-byte aligned")
        start, end = t.offset, t.offset + t.size
        if end > plan.arena_bytes:
            raise BuildError(f"tensor {t.name!r} [{start}, {end}) runs past the "
                             f"arena of {plan.arena_bytes} bytes")
        spans.append((t, start, end))
    by_first = sorted(spans, key=lambda span: span[0].first)
    for i, (a, a_start, a_end) in enumerate(by_first):
        for b, b_start, b_end in by_first[i + 1:]:
            if b.first > a.last:
                break
            if a_start < b_end and b_start < a_end:
                raise BuildError(
                    f"tensors {a.name!r} (layers {a.first}..{a.last}, bytes {a_start}..{a_end}) "
                    f"and {b.name!r} (layers {b.first}..{b.last}, bytes {b_start}..{b_end}) "
                    f"are alive together and overlap in the arena")
