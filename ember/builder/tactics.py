"""Tactic selection: time each candidate implementation of a layer, keep the fastest.

A *tactic* is one implementation of a layer that a backend offers (``Backend.tactics``). The
``TacticSelector`` asks a timer function for each candidate's time, keeps the fastest, and
remembers the timings in an optional ``TimingCache`` keyed by the device fingerprint and the
layer's signature (op, attributes, input types, precision), so that the second build of a
model on the same device times nothing.

>>> sel = TacticSelector(timer=lambda node, graph, tactic, precision: {"a": 2.0, "b": 1.0}[tactic])
>>> sel.select(node, graph, ["a", "b"], Precision.FP32).tactic          # doctest: +SKIP
'b'

Timers come from the backend (``Backend.make_timer``): the CPU times kernels by wall clock, CUDA
inside CUDA graphs with events and an accuracy check.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ember.backends.base import TacticTimer
from ember.backends.concat_exec import planned_slice
from ember.backends.layout import NCHW, format_in
from ember.backends.timing import fastest
from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.plan.config import Layout, Precision
from ember.plan.records import Records
from ember.runtime.serialize import encode_value

CACHE_FORMAT = 1


def layer_signature(node: Node, graph: Graph, records: Records, precision: Precision,
                    producers: Mapping[str, Node] | None = None) -> str:
    """A stable key for 'this layer on these input types at this precision' (and, where the
    records make it run differently, in its Concat slice or in NCHW). ``producers``:
    ``graph.producers()``, computed here when not given."""
    if producers is None:
        producers = graph.producers()
    parts: dict[str, Any] = {
        "op": node.op.value,
        "attrs": encode_value(node.attrs),
        "inputs": [str(graph.types[i]) if i else "-" for i in node.inputs],
        "const": [i in graph.constants for i in node.inputs],
        "precision": str(precision),
        # 2: timed as the engine runs it, writing into (or copied into) its place in the arena;
        # 3: on inputs stored as the engine stores them (their producers' precisions, the layout)
        "timing": 3,
        "from": [_producer_precision(records, producers, i) if i and i not in graph.constants else "-"
                 for i in node.inputs],
    }
    into = planned_slice(graph, records, node.outputs[0]) if len(node.outputs) == 1 else None
    if into is not None:  # timed writing (or copying) into its Concat slice: entries of their own
        parts["into_slice"] = into.key()

    layout = records.layout  # an NCHW build times its 4-D layers in NCHW: entries of their own
    if layout is not None and layout.preferred is Layout.NCHW and any(
            format_in(graph, layout, o) is NCHW for o in node.outputs):
        parts["nchw"] = True
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _producer_precision(records: Records, producers: Mapping[str, Node], tensor: str) -> str:
    """The precision of the layer that writes ``tensor`` ("-": a graph input, or no record)."""
    p = producers.get(tensor)
    return str(records.precision.layers.get(p.name, "-")) if p is not None else "-"


@dataclass
class TimingCache:
    """Tactic timings of one device, persisted as JSON.

    ``entries[signature] = {tactic: ms}``. A cache file written for another device (its
    ``device_key`` differs) is ignored on load rather than trusted.
    """

    device_key: str
    entries: dict[str, dict[str, float]] = field(default_factory=dict)
    path: Path | None = None
    hits: int = 0
    misses: int = 0

    @staticmethod
    def open(path: str | os.PathLike[str], device_key: str) -> TimingCache:
        """Loads ``path`` if it exists and is for ``device_key``; else an empty cache bound to it."""
        p = Path(path)
        cache = TimingCache(device_key, {}, p)
        if not p.exists():
            return cache
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise BuildError(f"timing cache {p} cannot be read ({e}); delete it and build again") from None
        if data.get("format") == CACHE_FORMAT and data.get("device_key") == device_key:
            cache.entries = {k: dict(v) for k, v in data.get("entries", {}).items()}
        elif data.get("device_key") != device_key:
            warnings.warn(f"timing cache {p} was written on another device "
                          f"({data.get('device_key')!r}, this is {device_key!r}); its timings are "
                          f"ignored, re-measured here, and the file is rewritten for this device",
                          stacklevel=2)
        return cache

    def get(self, signature: str) -> dict[str, float] | None:
        got = self.entries.get(signature)
        if got is None:
            self.misses += 1
        else:
            self.hits += 1
        return got

    def put(self, signature: str, timings: Mapping[str, float]) -> None:
        self.entries[signature] = dict(timings)

    def save(self) -> None:
        """Writes the cache atomically (a crash never leaves half a file)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": CACHE_FORMAT, "device_key": self.device_key, "entries": self.entries}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=0, allow_nan=True)
        os.replace(tmp, self.path)


@dataclass(frozen=True)
class Choice:
    tactic: str
    timings: dict[str, float]
    cached: bool = False


class TacticSelector:
    """Chooses a tactic per layer: the only candidate, or the fastest by ``timer``.

    Without a timer (tuning disabled) the backend's first candidate (its default) is kept; with
    ``only``, so is every layer whose op type is not in it.
    """

    def __init__(self, timer: TacticTimer | None = None, cache: TimingCache | None = None,
                 records: Records | None = None, only: Collection[OpType] | None = None,
                 margin: tuple[float, float] = (0.0, 0.0)) -> None:
        self.timer = timer
        self.cache = cache
        self.records = records if records is not None else Records()
        self.only = frozenset(only) if only is not None else None
        #: (relative, ms): how much faster than the default another candidate must be to win
        self.margin = margin
        #: (graph, {tensor: the layer that writes it}) for ``layer_signature``, made once per graph
        self._producers: tuple[Graph, dict[str, Node]] | None = None

    def select(self, node: Node, graph: Graph, candidates: Sequence[str], precision: Precision,
               fallbacks: Collection[str] = ()) -> Choice:
        """The tactic of ``node`` among ``candidates``; those in ``fallbacks`` are timed only when
        every other candidate failed (infinite time), and win only then."""
        if not candidates:
            return Choice("", {})
        if len(candidates) == 1 or not self._times(node):
            return Choice(candidates[0], {})
        timer = self.timer
        assert timer is not None
        primary, sig, timings = self._known(node, graph, candidates, precision, fallbacks)
        fresh = {c: timer(node, graph, c, precision) for c in primary if c not in timings}
        if not any(math.isfinite(t) for t in (timings | fresh).values()):
            fresh |= {c: timer(node, graph, c, precision) for c in candidates
                      if c not in primary and c not in timings}
        timings |= fresh
        if fresh and self.cache is not None:
            self.cache.put(sig, timings)
        return Choice(fastest(candidates, timings, self.margin), timings, cached=not fresh)

    def _times(self, node: Node) -> bool:
        """Whether ``node``'s candidates are timed."""
        return self.timer is not None and (self.only is None or node.op in self.only)

    def _known(self, node: Node, graph: Graph, candidates: Sequence[str], precision: Precision,
               fallbacks: Collection[str]) -> tuple[list[str], str, dict[str, float]]:
        """(the candidates timed first, the layer's timing-cache key, the timings the cache already
        holds: all of them, or none when a first-timed candidate is missing)."""
        primary = [c for c in candidates if c not in fallbacks] or list(candidates)
        if self.cache is None:
            return primary, "", {}
        if self._producers is None or self._producers[0] is not graph:
            self._producers = (graph, graph.producers())
        sig = layer_signature(node, graph, self.records, precision, self._producers[1])
        cached = self.cache.get(sig)
        if cached is None or not all(c in cached for c in primary):
            return primary, sig, {}
        return primary, sig, {c: cached[c] for c in candidates if c in cached}

    @property
    def preparer(self) -> Callable[[Graph, list[tuple[Node, Precision, list[str]]]], None] | None:
        """The timer's ``precompile(graph, jobs)``, where it has one."""
        return getattr(self.timer, "precompile", None)

    def precompile(self, graph: Graph,
                   layers: Iterable[tuple[Node, Sequence[str], Precision, Collection[str]]]) -> None:
        """Before any layer is timed: hands the timer, at once, every (layer, precision, candidates
        that ``select`` will time) of ``layers`` (node, candidates, precision, fallbacks), so it can
        prepare them together. The CUDA timer compiles their Triton kernels in parallel (one at a
        time, compiling took half of a cold INT8 ResNet-50 build). A timer without a
        ``precompile(graph, jobs)`` method skips this."""
        prepare = self.preparer
        if prepare is None:
            return
        jobs = []
        for node, candidates, precision, fallbacks in layers:
            if len(candidates) < 2 or not self._times(node):
                continue
            primary, _, timings = self._known(node, graph, candidates, precision, fallbacks)
            todo = [c for c in primary if c not in timings]
            if todo:
                jobs.append((node, precision, todo))
        if jobs:
            prepare(graph, jobs)
