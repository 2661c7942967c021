"""The pass manager: named passes grouped in phases, run with instruments around each one.

A pass is a plain function ``(graph, ctx) -> graph`` registered under a name and a phase::

    @register_pass("dce", Phase.CLEANUP)
    def dce(graph: Graph, ctx: PassContext) -> Graph: ...

It returns a new graph (or the same one when it changed nothing) and never mutates its input.
``PassContext`` carries the build configuration, the tensors no pass may remove (graph outputs
always, plus ``keep``) and the typed decision records passes hand on to the builder and the
backends (``ctx.records``: layout, concat, precision, quantization; ``ember.plan.records``).
Passes do not print or time themselves: instruments do, around every pass (``StatsInstrument``,
``DumpInstrument``, ``VerifyInstrument``).
"""
from __future__ import annotations

import collections
import enum
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ember.errors import GraphError
from ember.ir.graph import Graph
from ember.plan.config import BuildConfig, Device
from ember.plan.records import Records


class Phase(enum.Enum):
    """Pipeline phases, in the order they run."""

    CLEANUP = "cleanup"
    FOLD = "fold"
    FUSE = "fuse"
    LAYOUT = "layout"
    PRECISION = "precision"

    @property
    def is_optimization(self) -> bool:
        """Phases that ``BuildConfig.optimize=False`` turns off."""
        return self in (Phase.FUSE, Phase.LAYOUT)


@dataclass
class PassContext:
    """What every pass may read: the build configuration and the protected tensors; and the
    decision records, which the layout, concat and precision passes write.

    ``keep``: tensor names that must survive every pass under the same name (for ``compare
    --per-layer``), in addition to the graph outputs. ``fired`` counts rewrites by rule name;
    the manager reports the counts per pass. ``max_fold_bytes``: constant folding leaves a
    node alone when its result is larger than this and larger than its inputs. ``records``: the
    typed decisions so far (a pass replaces the record it owns: ``ctx.records =
    ctx.records.with_(layout=...)``); they name tensors and nodes of the graph the pass returns,
    so a pass that renames or removes nodes runs before the passes that record decisions.
    """

    config: BuildConfig = field(default_factory=BuildConfig)
    keep: frozenset[str] = frozenset()
    fired: collections.Counter[str] = field(default_factory=collections.Counter)
    max_fold_bytes: int = 64 << 20
    records: Records = field(default_factory=Records)

    def protected(self, graph: Graph) -> set[str]:
        """Tensors a pass must keep, under their names: graph outputs and ``keep``."""
        return set(graph.outputs) | set(self.keep)

    def count(self, rule: str, n: int = 1) -> None:
        """Records that ``rule`` rewrote the graph ``n`` times."""
        self.fired[rule] += n

    @property
    def device(self) -> Device:
        return self.config.device


PassFn = Callable[[Graph, PassContext], Graph]


@dataclass(frozen=True)
class Pass:
    """A registered pass: its name, phase and function."""

    name: str
    phase: Phase
    fn: PassFn
    doc: str = ""

    def __call__(self, graph: Graph, ctx: PassContext) -> Graph:
        return self.fn(graph, ctx)


_PASSES: dict[str, Pass] = {}


def register_pass(name: str, phase: Phase) -> Callable[[PassFn], PassFn]:
    """Registers ``fn(graph, ctx) -> graph`` as pass ``name`` of ``phase``."""

    def deco(fn: PassFn) -> PassFn:
        if name in _PASSES:
            raise RuntimeError(f"pass {name!r} registered twice")
        _PASSES[name] = Pass(name, phase, fn, (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def get_pass(name: str) -> Pass:
    """The registered pass called ``name``."""
    from ember.passes import pipeline  # noqa: F401  (imports every pass module)

    try:
        return _PASSES[name]
    except KeyError:
        known = ", ".join(sorted(_PASSES))
        raise KeyError(f"no pass named {name!r}; known passes: {known}") from None


def registered_passes() -> list[Pass]:
    """Every registered pass, sorted by name."""
    from ember.passes import pipeline  # noqa: F401

    return [_PASSES[k] for k in sorted(_PASSES)]


# ---- instruments ------------------------------------------------------------------------------
@dataclass
class PassRecord:
    """What one pass did: time, node counts, whether it changed the graph, rules fired."""

    name: str
    phase: str
    seconds: float
    nodes_before: int
    nodes_after: int
    constants_before: int
    constants_after: int
    changed: bool
    fired: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 6)
        return d


class Instrument:
    """Hooks around every pass. Subclasses override what they need."""

    def before_pass(self, p: Pass, graph: Graph) -> None:
        """Called before ``p`` runs on ``graph``."""

    def after_pass(self, p: Pass, before: Graph, after: Graph, record: PassRecord) -> None:
        """Called after ``p`` turned ``before`` into ``after``."""


class StatsInstrument(Instrument):
    """Collects one ``PassRecord`` per pass."""

    def __init__(self) -> None:
        self.records: list[PassRecord] = []

    def after_pass(self, p: Pass, before: Graph, after: Graph, record: PassRecord) -> None:
        self.records.append(record)


class DumpInstrument(Instrument):
    """Writes the graph text after every pass into ``directory`` (``NN-phase-name.txt``)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.index = 0

    def _write(self, stem: str, graph: Graph, header: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.index:02d}-{_safe(stem)}.txt"
        path.write_text(header + "\n" + str(graph) + "\n")
        self.index += 1

    def before_pass(self, p: Pass, graph: Graph) -> None:
        if self.index == 0:
            self._write("input", graph, "# the graph before the first pass")

    def after_pass(self, p: Pass, before: Graph, after: Graph, record: PassRecord) -> None:
        fired = ", ".join(f"{k} x{v}" for k, v in record.fired.items()) or "-"
        header = (f"# after pass {p.name} ({p.phase.value}): {record.nodes_before} -> "
                  f"{record.nodes_after} nodes, {record.seconds * 1e3:.2f} ms; fired: {fired}")
        self._write(f"{p.phase.value}-{p.name}", after, header)


class VerifyInstrument(Instrument):
    """Runs the IR verifier after every pass; a failure names the pass that broke the graph."""

    def after_pass(self, p: Pass, before: Graph, after: Graph, record: PassRecord) -> None:
        from ember.ops.verify import verify_graph as verify

        try:
            verify(after)
        except GraphError as e:
            raise GraphError(f"pass {p.name!r} ({p.phase.value}) produced an invalid graph: {e}. "
                             f"This is a bug in Ember's optimizer; build with optimize=False "
                             f"to work around it") from e


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _changed(a: Graph, b: Graph) -> bool:
    if a is b:
        return False
    return a.nodes != b.nodes or a.outputs != b.outputs or a.constants.keys() != b.constants.keys()


def run_passes(graph: Graph, passes: Sequence[Pass], ctx: PassContext,
               instruments: Iterable[Instrument] | None = None) -> Graph:
    """Runs ``passes`` in order with ``instruments`` around each; returns the final graph."""
    insts = list(instruments or [])
    for p in passes:
        for inst in insts:
            inst.before_pass(p, graph)
        fired_before = collections.Counter(ctx.fired)
        records_before = ctx.records
        t0 = time.perf_counter()
        after = p(graph, ctx)
        seconds = time.perf_counter() - t0
        if not isinstance(after, Graph):
            raise TypeError(f"pass {p.name!r} returned {type(after).__name__}, not a Graph")
        fired = {k: v - fired_before.get(k, 0) for k, v in ctx.fired.items()
                 if v - fired_before.get(k, 0)}
        record = PassRecord(p.name, p.phase.value, seconds, len(graph.nodes), len(after.nodes),
                            len(graph.constants), len(after.constants),
                            _changed(graph, after) or ctx.records != records_before, fired)
        for inst in insts:
            inst.after_pass(p, graph, after, record)
        graph = after
    return graph
