"""The graph IR: ``Value``, ``Node`` and ``Graph``.

Nodes are immutable; a pass builds new nodes and a new graph (``Graph.replace_nodes`` and
friends return copies), so a graph another pass still holds is never corrupted. Tensors are
referred to by name; constants (initializers) live in ``Graph.constants`` as numpy arrays.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ember.ir.dtype import DType
from ember.ir.optype import OpType
from ember.ir.types import TensorType


@dataclass(frozen=True)
class Node:
    """One operation. ``inputs`` may contain ``""`` for an omitted optional input.

    ``origin`` lists the names of the source-model nodes this node stands for (a fused
    layer keeps all of them, joined by `` + `` in its display name); ``rule`` names the
    rewrite that made it, if any.
    """

    name: str
    op: OpType
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Any = None
    origin: tuple[str, ...] = ()
    rule: str = ""

    def __post_init__(self) -> None:
        if not self.origin:
            object.__setattr__(self, "origin", (self.name,))

    def with_(self, **changes: Any) -> Node:
        return dataclasses.replace(self, **changes)

    @property
    def display_name(self) -> str:
        return " + ".join(self.origin)

    def input(self, i: int) -> str:
        """The i-th input name, or "" when absent."""
        return self.inputs[i] if i < len(self.inputs) else ""


@dataclass(frozen=True)
class SourceInfo:
    """Where a graph came from, as its frontend read it: the ``format`` (``"onnx"``, ``"ir"``
    for a graph built in code), the ``producer`` (exporter name and version), the ``nodes`` of the
    source model (before any pass), the ``opsets`` by domain and the format's ``ir_version``."""

    format: str = "ir"
    producer: str = ""
    nodes: int = 0
    opsets: Mapping[str, int] = field(default_factory=dict)
    ir_version: int = 0


@dataclass
class Graph:
    """A computation graph in topological order.

    ``types`` maps every tensor name (inputs, constants, node outputs) to its ``TensorType``.
    ``opset`` and ``source`` remember where the graph came from, for error messages;
    ``source_info`` what the frontend knew of it. Decisions of the optimizer are not kept here:
    passes hand them on as typed records (``ember.plan.records``).
    """

    name: str
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    types: dict[str, TensorType]
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    opset: int = 0
    source: str = ""
    source_info: SourceInfo = field(default_factory=SourceInfo)

    # ---- copies -------------------------------------------------------------------------
    def copy(self, **changes: Any) -> Graph:
        base: dict[str, Any] = dict(
            name=self.name, nodes=list(self.nodes), inputs=list(self.inputs),
            outputs=list(self.outputs), types=dict(self.types), constants=dict(self.constants),
            opset=self.opset, source=self.source, source_info=self.source_info,
        )
        base.update(changes)
        return Graph(**base)

    def replace_nodes(self, nodes: Iterable[Node]) -> Graph:
        return self.copy(nodes=list(nodes))

    # ---- queries ------------------------------------------------------------------------
    def producers(self) -> dict[str, Node]:
        return {out: n for n in self.nodes for out in n.outputs if out}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    users.setdefault(i, []).append(n)
        return users

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def constant(self, name: str) -> np.ndarray | None:
        return self.constants.get(name)

    def type_of(self, name: str) -> TensorType:
        try:
            return self.types[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} has no type in graph {self.name!r}") from None

    def node_by_name(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r} in graph {self.name!r}")

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op.value] = counts.get(n.op.value, 0) + 1
        return counts

    # ---- naming -------------------------------------------------------------------------
    def fresh_name(self, base: str) -> str:
        taken = set(self.types) | {n.name for n in self.nodes}
        if base not in taken:
            return base
        for k in itertools.count(1):
            cand = f"{base}_{k}"
            if cand not in taken:
                return cand
        raise AssertionError("unreachable")

    def add_constant(self, base: str, value: np.ndarray) -> str:
        """Adds a constant under a fresh name (mutates this graph; use on a copy)."""
        name = self.fresh_name(base)
        value = np.asarray(value, order="C")  # not ascontiguousarray: it turns 0-d into 1-d
        self.constants[name] = value
        self.types[name] = TensorType(DType.from_numpy(value.dtype), tuple(value.shape))
        return name

    def __str__(self) -> str:
        from ember.ir.printer import format_graph

        return format_graph(self)


def constants_view(graph: Graph) -> Mapping[str, np.ndarray]:
    return graph.constants
