"""The contract between the builder/runtime and a device backend.

A backend turns one IR node into a ``Kernel``: a closure over prepared weights that maps the
node's input tensors to its output tensors. Kernels are made once per engine load (that is
where weights are prepacked / moved to the device) and called many times.

A kernel receives ``inputs`` in the node's input order, with ``None`` for omitted optional
inputs; inputs that are graph constants are passed too (already as torch tensors on the
device), so a kernel that prepacked a weight at compile time may simply ignore that slot.
It returns a list with one tensor per node output (``None`` for an unused optional output).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Protocol, Sequence

import torch

from ember.ir.graph import Graph, Node

Kernel = Callable[[Sequence[Optional[torch.Tensor]]], list[Optional[torch.Tensor]]]


@dataclass
class CompileContext:
    """What a backend needs to compile one node.

    ``constants`` are the graph's constants as torch tensors on the target device;
    ``tactic`` is the implementation the builder chose for this node ("" = backend default);
    ``precision`` the layer's compute precision (``fp32``/``tf32``/``fp16``/``bf16``).
    """

    graph: Graph
    constants: Mapping[str, torch.Tensor]
    device: torch.device
    tactic: str = ""
    precision: str = "fp32"
    options: dict = field(default_factory=dict)

    def const(self, name: str) -> Optional[torch.Tensor]:
        return self.constants.get(name) if name else None


class Backend(Protocol):
    name: str

    def supports(self, node: Node) -> bool: ...

    def tactics(self, node: Node, graph: Graph) -> list[str]:
        """Candidate implementations of this node, best guess first."""
        ...

    def compile_node(self, node: Node, ctx: CompileContext) -> Kernel: ...


def get_backend(device: str) -> Backend:
    if device == "cpu":
        from ember.backends.cpu import CPUBackend

        return CPUBackend()
    if device == "cuda":
        from ember.backends.cuda import CUDABackend

        return CUDABackend()
    raise ValueError(f"unknown device {device!r}")
