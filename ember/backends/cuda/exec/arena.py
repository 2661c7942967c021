"""The device arena of a CUDA execution context: every intermediate at its planned offset.

A context captures one CUDA graph per input shape (``executor.CudaExecutor``). Before capturing a
shape it runs the engine once eagerly and *traces* what each layer produced: shape, strides and
dtype of every output, and which outputs are views of another tensor (a Reshape, a Slice, a
Concat input written into the Concat's buffer). From the trace and the schedule it plans the
arena (``plan_arena``):

- every tensor that a kernel writes (not a view, not on the host) is *placed*: it gets
  ``[offset, offset + bytes)`` in one buffer, by the same best-fit offset allocator as the
  builder's memory plan (``ember.plan.memory.allocate``);
- a view is not placed; it keeps its base alive until the view's last reader;
- lifetimes are stream-aware. A tensor's bytes may be reused by a tensor written at step ``q``
  only once every reader of the first tensor *happens before* ``q`` (same stream earlier, or
  through the events the schedule waits on), so two branches running at the same time on two
  streams never share bytes, even when their layer indices alone would allow it.

The capture then runs every layer with its output given (``CudaProgram.forward(arena=...)``): a
kernel with the ``WriteInto`` capability writes straight into its place; any other kernel
computes its output and it is copied there (``ArenaStats.copied`` counts those, and tactic timing
charges the copy, so the builder prefers kernels that write in place). What a library allocates
inside a call (cuBLAS/cuDNN workspaces, temporary casts) and the engine's outputs (cloned out of
the arena at the end, so another shape's replay cannot overwrite them) come from the graph's
private pool; ``CudaExecutor.memory()`` reports both.

Names: a ``ViewSpec`` is a placed tensor's shape, strides and dtype (not a memory format of
``ember.backends.layout``); a ``Trace`` is one eager run's observations (not the plan's decision
``Records``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ember.backends.layout import dense
from ember.plan.memory import ALIGNMENT, MemoryPlan, allocate

#: The arena is allocated in multiples of this (the caching allocator's large-segment unit).
ARENA_GRANULE = 2 << 20


@dataclass(frozen=True)
class ViewSpec:
    """How one placed tensor sits in the arena: its view's shape, strides and dtype."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        """Bytes its view spans (strides may skip elements; empty tensors span nothing)."""
        if any(d == 0 for d in self.shape):
            return 0
        return (1 + sum((d - 1) * s for d, s in zip(self.shape, self.stride))) * self.dtype.itemsize

    @staticmethod
    def of(t: torch.Tensor) -> ViewSpec:
        return ViewSpec(tuple(t.shape), tuple(t.stride()), t.dtype)


@dataclass
class Trace:
    """What one eager run produced (``CudaProgram.trace``): per placed tensor its view spec and
    the step that writes it; per view its base; per tensor the steps that read it."""

    specs: dict[str, ViewSpec] = field(default_factory=dict)
    producer: dict[str, int] = field(default_factory=dict)
    base: dict[str, str] = field(default_factory=dict)       # view -> the placed tensor it views
    readers: dict[str, set[int]] = field(default_factory=dict)
    unplaced: dict[str, str] = field(default_factory=dict)   # tensor -> why it stays outside

    def root(self, name: str) -> str:
        while name in self.base:
            name = self.base[name]
        return name


@dataclass
class ArenaPlan:
    """Offsets of the placed tensors (``memory``) and their view specs."""

    memory: MemoryPlan
    specs: dict[str, ViewSpec]
    views_of: dict[str, str] = field(default_factory=dict)
    unplaced: dict[str, str] = field(default_factory=dict)

    @property
    def arena_bytes(self) -> int:
        return self.memory.arena_bytes

    def views(self, arena: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each placed tensor as a view of ``arena`` (a ``uint8`` CUDA tensor) at its offset."""
        if arena.numel() < self.arena_bytes:
            raise ValueError(f"arena of {arena.numel()} bytes is smaller than the plan's {self.arena_bytes}")
        out = {}
        for name, spec in self.specs.items():
            a = self.memory.tensors[name]
            n = spec.nbytes
            if n == 0:
                out[name] = torch.empty_strided(spec.shape, spec.stride, dtype=spec.dtype,
                                                device=arena.device)
                continue
            flat = arena.narrow(0, int(a.offset or 0), n).view(spec.dtype)
            out[name] = flat.as_strided(spec.shape, spec.stride)
        return out

    def summary(self) -> dict[str, int]:
        return {"arena_bytes": self.arena_bytes, "placed": len(self.specs),
                "sum_bytes": self.memory.sum_bytes, "views": len(self.views_of),
                "unplaced": len(self.unplaced)}


def happens_before(streams: Sequence[int], waits: Sequence[Sequence[int]],
                   device: Sequence[bool]) -> list[int]:
    """For every step, the set (a bit mask over step indices) of device steps that finish before
    it starts: earlier steps on its stream, the steps whose events it waits for, and transitively
    everything before those. Steps with ``device[i]`` false (host steps) take part in nothing."""
    before: list[int] = [0] * len(streams)
    last_on: dict[int, int] = {}
    for i, (s, w) in enumerate(zip(streams, waits)):
        if not device[i]:
            continue
        mask = 0
        preds = list(w) + ([last_on[s]] if s in last_on else [])
        for p in preds:
            mask |= before[p] | (1 << p)
        before[i] = mask
        last_on[s] = i
    return before


def release_step(users: int, first: int, before: Sequence[int], device: Sequence[bool]) -> int:
    """The last step index at which a tensor written at ``first`` and used by the steps in the
    mask ``users`` may still be in use: every device step after it happens after all ``users``."""
    last = max(first, users.bit_length() - 1)
    for k in range(len(before) - 1, last, -1):
        if device[k] and (before[k] & users) != users:
            return k
    return last


def plan_arena(trace: Trace, streams: Sequence[int], waits: Sequence[Sequence[int]],
               device: Sequence[bool], keep: Sequence[str], alignment: int = ALIGNMENT) -> ArenaPlan:
    """Offsets for every placed tensor of ``trace`` (see module docstring). ``keep``: tensors
    read after the last step (the engine's outputs)."""
    n = len(streams)
    before = happens_before(streams, waits, device)
    users: dict[str, int] = {name: 1 << p for name, p in trace.producer.items()}
    for name, steps in trace.readers.items():
        root = trace.root(name)
        if root in users:
            for r in steps:
                users[root] |= 1 << r
    requests: dict[str, tuple[Optional[int], int, int]] = {}
    kept = {trace.root(k) for k in keep}
    for name, mask in users.items():
        first = trace.producer[name]
        last = n if name in kept else release_step(mask, first, before, device)
        requests[name] = (trace.specs[name].nbytes, first, last)
    memory = allocate(requests, alignment, num_layers=n)
    return ArenaPlan(memory, dict(trace.specs), dict(trace.base), dict(trace.unplaced))


def placeable(t: torch.Tensor) -> Optional[str]:
    """Why a kernel's output cannot be given a place in the arena, or ``None`` if it can: it must
    be a CUDA tensor whose elements are distinct memory locations (no broadcast strides)."""
    if not t.is_cuda:
        return "on the host"
    if not dense(t):
        return "strides that overlap or skip memory"
    return None


def storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def round_arena(nbytes: int) -> int:
    return max(ARENA_GRANULE, -(-nbytes // ARENA_GRANULE) * ARENA_GRANULE)


@dataclass
class ArenaStats:
    """How the last arena run placed outputs: ``written`` straight by the kernel, ``copied``
    (computed, then copied into place), and the copied layers' names."""

    written: int = 0
    copied_layers: list[str] = field(default_factory=list)

    @property
    def copied(self) -> int:
        return len(self.copied_layers)

    def to_json(self) -> dict:
        return {"written": self.written, "copied": self.copied, "copied_layers": list(self.copied_layers)}
