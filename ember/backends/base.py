"""The contract between the builder/runtime and a device backend.

A backend turns one IR node into a ``Kernel``: a closure over prepared weights that maps the
node's input tensors to its output tensors. Kernels are made once per engine load (that is
where weights are prepacked / moved to the device) and called many times.

A kernel receives ``inputs`` in the node's input order, with ``None`` for omitted optional
inputs; inputs that are graph constants are passed too (already as torch tensors on the
device), so a kernel that prepacked a weight at compile time may simply ignore that slot.
It returns a list with one tensor per node output (``None`` for an unused optional output).

Optional capability (concat elimination, ``graph.meta["concat_slices"]``): a kernel of a
single-output node may carry an attribute ``write_into`` (a ``WriteInto``). Calling
``kernel.write_into(inputs, out)`` computes the output straight into ``out`` (a tensor of the
output's shape and dtype, usually a strided view of a Concat's buffer) and returns ``True``; or
returns ``False`` having written nothing, when its primitive cannot write into that particular
view without a temporary (the runtime then calls the kernel and copies the result into the
view). ``write_into.accepts(out)`` answers the same question before any run, on a tensor that
may be on the ``meta`` device (it is a promise only where it returns ``False``). A kernel without
the attribute is simply called; nothing else changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Protocol, Sequence

import torch

from ember.ir.graph import Graph, Node

Kernel = Callable[[Sequence[Optional[torch.Tensor]]], list[Optional[torch.Tensor]]]


@dataclass(frozen=True)
class WriteInto:
    """A kernel's ability to write its (single) output into a given tensor (see module docstring).

    ``write(inputs, out) -> bool`` does it (``False``: it could not, nothing written);
    ``accepts(out) -> bool`` says beforehand whether it can for a view of ``out``'s shape,
    strides and dtype (``out`` may be a meta tensor).
    """

    write: Callable[[Sequence[Optional[torch.Tensor]], torch.Tensor], bool]
    accepts: Callable[[torch.Tensor], bool] = lambda out: True

    def __call__(self, inputs: Sequence[Optional[torch.Tensor]], out: torch.Tensor) -> bool:
        return self.write(inputs, out)


def write_into_of(kernel: object) -> Optional[WriteInto]:
    """The kernel's ``WriteInto`` capability, or ``None`` (kernels without it are plain)."""
    w = getattr(kernel, "write_into", None)
    return w if isinstance(w, WriteInto) else None


def write_or_copy(kernel: Kernel, inputs: Sequence[Optional[torch.Tensor]], out: torch.Tensor,
                  write: Optional[WriteInto] = None) -> bool:
    """Puts the kernel's (single) output into ``out``: written there by ``write`` (default: the
    kernel's ``write_into``) where it accepts ``out``, else computed and copied. ``True``: it was
    written in place."""
    w = write if write is not None else write_into_of(kernel)
    if w is not None and w.accepts(out) and w(inputs, out):
        return True
    out.copy_(kernel(inputs)[0])  # type: ignore[index]
    return False


def with_write_into(kernel: Kernel, write_into: Optional[WriteInto]) -> Kernel:
    """``kernel`` carrying ``write_into`` (a wrapper kernel passes its inner one's on with this)."""
    if write_into is not None:
        kernel.write_into = write_into  # type: ignore[attr-defined]
    return kernel


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
