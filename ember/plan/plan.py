"""The plan: everything an engine is, as plain data (what the engine file stores).

A ``Plan`` holds the optimized graph, one ``Layer`` per graph node (same order: the execution
order) with the tactic and precision the builder chose, the input/output specs with their
allowed shape ranges, the static memory plan, the typed decision records of the passes
(``ember.plan.records``), the build configuration and build facts.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ember.ir.dtype import DType
from ember.ir.graph import Graph
from ember.ir.types import Dim, format_shape
from ember.plan.config import BuildConfig, Precision
from ember.plan.memory import MemoryPlan
from ember.plan.records import Records


@dataclass(frozen=True)
class Layer:
    """One executable step: a graph node and how it runs."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    tactic: str = ""
    precision: Precision = Precision.FP32
    origin: tuple[str, ...] = ()
    rule: str = ""
    timings: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", Precision(self.precision))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "tactic": self.tactic, "precision": self.precision.value,
                "origin": list(self.origin), "rule": self.rule, "timings": dict(self.timings)}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Layer:
        return Layer(d["name"], d["kind"], tuple(d["inputs"]), tuple(d["outputs"]), d["tactic"],
                     Precision(d["precision"]), tuple(d["origin"]), d.get("rule", ""),
                     dict(d.get("timings", {})))


@dataclass(frozen=True)
class TensorSpec:
    """An engine input or output: name, dtype, shape, and the range each dim may take.

    ``shape`` has ints for static dims and symbols for dynamic ones. ``min``/``max`` give the
    allowed range per dim (equal to the dim when static); ``max`` is ``None`` for a dim with no
    upper bound (a dynamic dim built without a profile).
    """

    name: str
    dtype: DType
    shape: tuple[Dim, ...]
    min: tuple[int, ...] = ()
    max: tuple[int | None, ...] = ()

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def range_text(self) -> str:
        """``[1..8, 3, 224, 224]``: each dim's allowed range (``n..`` when unbounded)."""
        parts = []
        for d, lo, hi in zip(self.shape, self.min, self.max):
            if isinstance(d, int):
                parts.append(str(d))
            else:
                parts.append(f"{lo}..{'' if hi is None else hi}")
        return "[" + ", ".join(parts) + "]"

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype.value}{format_shape(self.shape)}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype.value, "shape": list(self.shape),
                "min": list(self.min), "max": list(self.max)}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> TensorSpec:
        return TensorSpec(d["name"], DType(d["dtype"]), tuple(d["shape"]), tuple(d["min"]),
                          tuple(d["max"]))


@dataclass
class Plan:
    """An engine as data. ``layers[i]`` runs ``graph.nodes[i]``."""

    graph: Graph
    layers: list[Layer]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    memory: MemoryPlan
    config: BuildConfig
    records: Records = field(default_factory=Records)
    device: dict[str, Any] = field(default_factory=dict)
    build_info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.graph.nodes):
            raise ValueError(f"plan has {len(self.layers)} layers for {len(self.graph.nodes)} nodes")
