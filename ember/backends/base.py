"""The execution contract between the builder/runtime and a device backend.

Three abstract classes, implemented in full by every backend (nothing is probed with
``getattr``):

- ``Backend``: which nodes it runs (``supports``), the candidate implementations of a node
  (``tactics``), one node compiled into a ``Kernel`` (``compile_node``), the timer the builder
  times tactics with (``make_timer``) and the executable form of a whole plan (``make_program``);
- ``Program``: a compiled plan, immutable, shared by every execution context of an engine:
  ``run(feeds)`` on device tensors, and ``create_executor()``;
- ``Executor``: one execution context's state (CUDA: captured graphs, streams, pinned buffers, the
  device arena): ``infer(inputs)`` with numpy or torch inputs already validated against the
  engine's specs, outputs of the same kind; ``infer_async``, ``memory``, ``close``.

Backends are registered by device in ``ember.backends.devices`` (``get_backend``).

A backend turns one IR node into a ``Kernel``: a closure over prepared weights that maps the
node's input tensors to its output tensors. Kernels are made once per engine load (that is
where weights are prepacked / moved to the device) and called many times.

A kernel receives ``inputs`` in the node's input order, with ``None`` for omitted optional
inputs; inputs that are graph constants are passed too (already as torch tensors on the
device), so a kernel that prepacked a weight at compile time may simply ignore that slot.
It returns a list with one tensor per node output (``None`` for an unused optional output).

Optional kernel capability (concat elimination, ``Records.concat``): a kernel of a
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

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import torch

from ember.errors import EmberError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.plan.config import BuildConfig, Device, Precision
from ember.plan.plan import Plan
from ember.plan.records import Records

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
    result = kernel(inputs)[0]
    assert result is not None  # the kernel has one output, and it computes it
    out.copy_(result)
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
    ``precision`` the layer's compute precision; ``records`` the plan's decision records (the
    layout plan a kernel's memory formats follow, the concat plan, quantization); ``config``
    the build's configuration.
    """

    graph: Graph
    constants: Mapping[str, torch.Tensor]
    device: torch.device
    tactic: str = ""
    precision: Precision = Precision.FP32
    records: Records = field(default_factory=Records)
    config: BuildConfig = field(default_factory=BuildConfig)

    def const(self, name: str) -> Optional[torch.Tensor]:
        return self.constants.get(name) if name else None


#: ``timer(node, graph, tactic, precision) -> milliseconds`` (``math.inf``: cannot run, or
#: not accurate enough; never chosen).
TacticTimer = Callable[[Node, Graph, str, Precision], float]


class Executor(abc.ABC):
    """One execution context's state of a program (``Program.create_executor``).

    ``ExecutionContext`` validates the user's inputs against the engine's specs and serializes
    calls on one context; the executor runs them.
    """

    @abc.abstractmethod
    def infer(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Runs on validated inputs (numpy arrays or torch tensors); outputs of the same kind."""

    def infer_direct(self, inputs: Mapping[str, Any]) -> Optional[dict[str, Any]]:
        """The run of validated ``inputs`` by a path that needs neither PyTorch's inference mode nor
        the generic layer loop, where this executor has one for them (the CPU's programs that are
        one chain of native layers, on a finite float32 array), else ``None``: ``infer`` runs."""
        return None

    def infer_async(self, inputs: Mapping[str, Any], stream: Any = None) -> dict[str, Any]:
        """Enqueues a run on ``stream`` and returns at once (devices with streams only)."""
        raise EmberError(f"infer_async needs an engine built for cuda; this one runs on "
                         f"{self.device_type}: call infer() instead")

    @property
    @abc.abstractmethod
    def device_type(self) -> str:
        """``"cpu"`` or ``"cuda"``."""

    def memory(self) -> dict[str, int]:
        """Bytes this context holds on its device, by kind (empty where nothing is held)."""
        return {}

    def close(self) -> None:  # noqa: B027 - a no-op by design: an executor that holds nothing need not close
        """Releases the context's state."""


class Program(abc.ABC):
    """A compiled plan (one kernel per layer), shared by every context of an engine."""

    device: torch.device

    @abc.abstractmethod
    def run(self, feeds: Mapping[str, torch.Tensor],
            stats: Optional[dict[str, int]] = None) -> dict[str, torch.Tensor]:
        """Runs every layer on ``feeds`` (checked tensors on ``device``); returns the outputs.
        ``stats`` receives the run's concat-elimination counts where the program keeps them."""

    @abc.abstractmethod
    def create_executor(self) -> Executor:
        """A new executor: the per-context state an ``ExecutionContext`` runs through."""

    def tune(self, feeds: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
        """Choices above the layers' tactics, timed at build on ``feeds()`` (random inputs, made
        only if needed) before any context exists; returns what to record in the plan's
        ``build_info`` (which later programs of the plan follow). None by default."""
        return {}


class Backend(abc.ABC):
    """A device backend (see the module docstring)."""

    device: ClassVar[Device]
    #: Tactics that are last resorts: the tactic selector times them only when every other
    #: candidate of a layer failed (e.g. CUDA's ``generic``: the CPU kernel placed on the GPU), so a
    #: fallback never wins a layer on timing noise against the kernels written for it.
    fallback_tactics: ClassVar[frozenset[str]] = frozenset()
    #: Op types whose tactics the build times even where this backend's layers are not tuned by
    #: default (the CPU without ``tune_cpu``): ops whose candidates read and write the same formats,
    #: so a layer timed on its own is timed as it runs in the engine.
    always_timed: ClassVar[frozenset[OpType]] = frozenset()
    #: (fraction, ms) by which a timed candidate must beat the default tactic to replace it
    #: (``TacticSelector``): where timings are noisy, a near tie keeps the default, so two builds of
    #: one model choose alike.
    switch_margin: ClassVar[tuple[float, float]] = (0.0, 0.0)

    @property
    def name(self) -> str:
        return self.device.value

    @abc.abstractmethod
    def supports(self, node: Node) -> bool:
        """Whether this backend can run ``node`` (op type and attribute values)."""

    @abc.abstractmethod
    def tactics(self, node: Node, graph: Graph, records: Optional[Records] = None) -> list[str]:
        """Candidate implementations of ``node``, best guess (the default) first; ``records``:
        the plan's decisions where there are some (no records: kernels keep their own formats)."""

    @abc.abstractmethod
    def compile_node(self, node: Node, ctx: CompileContext) -> Kernel:
        """The kernel of ``node`` with tactic ``ctx.tactic`` ("" = the default)."""

    def effective_precision(self, node: Node, tactic: str, precision: Precision) -> Precision:
        """The precision ``node`` computes in with ``tactic`` when the plan asked for
        ``precision``: the same, unless the tactic chosen computes another (CUDA: an FP8 layer
        whose fp16 tactic was faster is an fp16 layer), so that the plan, ``ember inspect`` and
        the build's summary say what runs."""
        return precision

    @abc.abstractmethod
    def make_timer(self, constants: Mapping[str, torch.Tensor], device: torch.device,
                   records: Records, config: BuildConfig) -> TacticTimer:
        """The timer the builder times this backend's tactics with."""

    @abc.abstractmethod
    def make_program(self, plan: Plan, device: torch.device) -> Program:
        """The executable form of ``plan`` on ``device``."""
