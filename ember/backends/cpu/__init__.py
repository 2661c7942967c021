"""Ember's CPU backend: kernels on PyTorch CPU primitives (oneDNN / MKL underneath).

``CPUBackend`` implements the ``Backend`` contract of ``ember.backends.base``; ``evaluate`` runs
one node eagerly on numpy arrays (constant folding uses it)::

    >>> import numpy as np
    >>> from ember.ir.graph import Node
    >>> from ember.ir.optype import OpType
    >>> evaluate(Node("add", OpType.ADD, ("a", "b"), ("y",)), [np.ones(2), np.ones(2)])
    [array([2., 2.])]
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from ember.backends.base import (
    Backend,
    CompileContext,
    Kernel,
    TacticTimer,
    WriteInto,
    with_write_into,
    write_into_of,
)
from ember.backends.cpu.half import half_kernel
from ember.backends.cpu.program import CPUProgram
from ember.backends.cpu.registry import ATEN, candidates, has_kernel, kernel_ops, lookup
from ember.backends.cpu.timing import SWITCH_MARGIN, cpu_timer
from ember.backends.tensors import FLOAT8_TORCH, numpy_to_torch, torch_to_numpy
from ember.errors import BuildError, EmberError, GraphError, IndexRangeError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.plan.config import BuildConfig, Device, Precision
from ember.plan.plan import Plan
from ember.plan.records import Records

__all__ = ["CPUBackend", "evaluate", "kernel_ops"]


def _describe(inputs: Sequence[Optional[torch.Tensor]]) -> str:
    parts = []
    for t in inputs:
        parts.append("-" if t is None else f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}")
    return ", ".join(parts)


#: What PyTorch says when an index tensor holds a value out of range (``IndexRangeError``).
_INDEX_ERRORS = ("index out of range", "out of bounds", "indices out of range", "out of range for dimension")


def _named(node: Node, kernel: Kernel) -> Kernel:
    """Wraps a kernel so a failure names the node, its op and the inputs it was given."""

    def run(inputs: Sequence[Optional[torch.Tensor]]) -> list[Optional[torch.Tensor]]:
        try:
            return kernel(inputs)
        except EmberError:
            raise
        except (RuntimeError, ValueError, IndexError, TypeError, ZeroDivisionError) as e:
            if any(p in str(e).lower() for p in _INDEX_ERRORS):
                raise IndexRangeError(f"node {node.name!r} ({node.op}) read an index out of range in its "
                                      f"inputs ({_describe(inputs)}): {e}. Check the values of the model's "
                                      f"index inputs") from e
            raise GraphError(f"node {node.name!r} ({node.op}) failed on inputs ({_describe(inputs)}): "
                             f"{e}. Check the model's shapes and values for this node") from e

    inner = write_into_of(kernel)
    if inner is not None:  # keep the concat-elimination capability through the wrapper
        def write(inputs: Sequence[Optional[torch.Tensor]], out: torch.Tensor) -> bool:
            try:
                return inner(inputs, out)
            except EmberError:
                raise
            except (RuntimeError, ValueError, IndexError, TypeError) as e:
                raise GraphError(f"node {node.name!r} ({node.op}) failed writing into a view "
                                 f"{list(out.shape)} on inputs ({_describe(inputs)}): {e}") from e

        with_write_into(run, WriteInto(write, inner.accepts))
    link = getattr(kernel, "chain_link", None)
    if link is not None:  # the program may run this layer inside a chain (``chains``)
        run.chain_link = link  # type: ignore[attr-defined]
    return run


def _unsupported_reason(node: Node) -> Optional[str]:
    if not has_kernel(node.op):
        return f"the CPU backend has no kernel for {node.op}"
    if node.op is OpType.RESIZE and node.attrs is not None:
        from ember.backends.cpu.kernels.resize import COORDINATE_MODES, MODES, NEAREST_MODES

        a = node.attrs
        if a.mode not in MODES or a.coordinate_transformation_mode not in COORDINATE_MODES \
                or a.nearest_mode not in NEAREST_MODES:
            return (f"Resize mode={a.mode!r}, coordinate_transformation_mode="
                    f"{a.coordinate_transformation_mode!r}, nearest_mode={a.nearest_mode!r}")
    return None


class CPUBackend(Backend):
    """Compiles IR nodes into CPU kernels (closures over prepacked weights)."""

    device = Device.CPU
    #: GEMMs and attention: their tactics (oneDNN's prepacked linear, MKL's GEMM; fused or written-out
    #: attention) read and write plain row-major tensors, so each is timed as it runs. Which wins
    #: depends on the CPU and the shape: on the AVX2 EPYC, MiniLM at 8x32 tokens ran 64.7 ms with
    #: the defaults and 61.8 ms timed (written-out attention at 32 tokens, 2x SDPA there; another
    #: run 60.9 -> 53.9 ms, with MKL for 7 of 24 GEMMs).
    #: Convolutions are not timed by default: their layouts interact (``BuildConfig.tune_cpu``).
    always_timed = frozenset({OpType.GEMM, OpType.MATMUL, OpType.FUSED_GEMM, OpType.FUSED_ATTENTION})
    switch_margin = SWITCH_MARGIN  # another tactic must be 3% and 20 us faster than the default

    def supports(self, node: Node) -> bool:
        """Whether this backend can run ``node`` (op type and attribute values)."""
        return _unsupported_reason(node) is None

    def tactics(self, node: Node, graph: Graph, records: Optional[Records] = None) -> list[str]:
        """Candidate implementations of ``node`` in ``graph``, default first."""
        return candidates(node, graph, records)

    def make_timer(self, constants: Mapping[str, torch.Tensor], device: torch.device,
                   records: Records, config: BuildConfig) -> TacticTimer:
        """Wall-clock timing of each tactic's kernel on inputs stored as the engine stores them
        (``ember.backends.cpu.timing``)."""
        return cpu_timer(self, constants, device, records, config)

    def make_program(self, plan: Plan, device: torch.device) -> CPUProgram:
        """The engine's executable form: a ``CPUProgram`` (re-entrant, shared by all contexts)."""
        return CPUProgram(plan, self, device)

    def compile_node(self, node: Node, ctx: CompileContext) -> Kernel:
        """The kernel for ``node`` with tactic ``ctx.tactic`` ("" = the default choice)."""
        reason = _unsupported_reason(node)
        if reason is not None:
            raise BuildError(f"node {node.name!r} ({node.op}): {reason}; build for another "
                             f"device or change the model")
        entry = lookup(node, ctx.tactic, ctx.graph, ctx.records)
        try:
            kernel = entry.factory(node, ctx)
            if Precision(ctx.precision).is_half:  # 16-bit activations planned around it (``.half``)
                kernel = half_kernel(node, ctx, entry.tactic, kernel)
        except EmberError:
            raise
        except (RuntimeError, ValueError, TypeError) as e:
            raise BuildError(f"node {node.name!r} ({node.op}): CPU tactic {entry.tactic!r} "
                             f"could not be compiled: {e}") from e
        return _named(node, kernel)


def _to_tensor(a: Optional[np.ndarray]) -> Optional[torch.Tensor]:
    if a is None:
        return None
    arr = np.asarray(a)
    if arr.dtype.name.startswith("float8_") or arr.dtype.name == "bfloat16":  # ml_dtypes': the same bytes
        return numpy_to_torch(arr, torch.device("cpu"))
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr).copy()
    return torch.from_numpy(arr)


def _to_numpy(t: Optional[torch.Tensor], inputs: Sequence[Optional[np.ndarray]]) -> Optional[np.ndarray]:
    if t is None:
        return None
    if t.dtype is torch.bfloat16:  # as ml_dtypes' bfloat16 (what onnx's numpy_helper gives), the same bits
        import ml_dtypes

        out = t.detach().contiguous().view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    else:
        out = torch_to_numpy(t) if t.dtype in FLOAT8_TORCH else t.detach().contiguous().numpy()
    if any(a is not None and np.shares_memory(out, a) for a in inputs):
        out = out.copy()
    return out


def evaluate(node: Node, inputs: Sequence[Optional[np.ndarray]],
             graph: Optional[Graph] = None) -> list[Optional[np.ndarray]]:
    """Runs ``node`` once on numpy ``inputs`` (``None`` for omitted ones) with the generic kernels.

    Returns one numpy array per node output (``None`` for an output the node does not produce).
    Outputs never share memory with the inputs.
    """
    host = graph if graph is not None else Graph(f"evaluate:{node.name}", [node], [], [], {})
    ctx = CompileContext(graph=host, constants={}, device=torch.device("cpu"), tactic=ATEN)
    kernel = CPUBackend().compile_node(node, ctx)
    tensors = [_to_tensor(a) for a in inputs]
    with torch.inference_mode():
        outs = kernel(tensors)
    result = [_to_numpy(t, inputs) for t in outs]
    result += [None] * (len(node.outputs) - len(result))
    return result
