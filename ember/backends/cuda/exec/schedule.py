"""The static schedule of a CUDA program: one ``CudaStep`` per layer, decided before any kernel
is compiled (pure logic: it runs on the CPU, with no GPU).

- *host or device*: shape computations (``Shape`` and the small integer arithmetic that follows
  it) run on the host, so reading a target shape never synchronizes the GPU; every other layer
  runs on the GPU (``runs_on_host``);
- *arguments*: where each input of a step comes from (a constant, pre-cast to the layer's dtype
  once; a value of the run; a value moved between host and device);
- *streams*: independent branches go to separate streams (``streams.assign_streams``); a step
  waits for the events of its producers on other streams;
- *lifetimes*: each intermediate is released after its last reader, so the caching allocator
  (inside graph capture: the graph's private pool) reuses its memory;
- *capturability*: a step that moves a run-time value between host and GPU cannot be captured
  into a CUDA graph (the context then runs that shape eagerly).

>>> from ember.ir import DType, Graph, Node, OpType, TensorType
>>> g = Graph("g", [Node("r", OpType.RELU, ("x",), ("y",))], ["x"], ["y"],
...           {"x": TensorType(DType.FLOAT32, (2,)), "y": TensorType(DType.FLOAT32, (2,))}, {})
>>> [(s.node.name, s.on_host, s.stream) for s in plan_steps(g, {}, {}, {})]
[('r', False, 0)]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch

from ember.backends.base import Kernel
from ember.backends.concat_exec import ConcatExec
from ember.backends.cuda.device import compute_dtype
from ember.backends.cuda.exec.streams import StreamPlan, assign_streams
from ember.backends.cuda.fallback import METADATA_OPS, host_slots
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.plan.config import Precision

#: A host value is a tensor of at most this many elements (shapes, indices, scalars).
HOST_MAX_ELEMENTS = 64

# how a step fetches one input
NONE, CONST, VALUE, VALUE_TO_HOST, VALUE_TO_DEVICE = range(5)


@dataclass
class Arg:
    """One input of a step: its kind (``NONE`` .. ``VALUE_TO_DEVICE``), the tensor's name, and
    the tensor itself for a constant."""

    kind: int
    name: str = ""
    tensor: Optional[torch.Tensor] = None


@dataclass
class LayerSpec:
    """What the plan chose for one layer: its tactic ("" = the backend's default) and precision."""

    tactic: str = ""
    precision: Precision = Precision.FP32


@dataclass
class CudaStep:
    """One layer as the CUDA program executes it: its kernel, where it runs (host or a stream),
    what it waits for, whether it records an event other streams wait for, and what it releases
    (the CPU program's counterpart is ``ember.backends.cpu.program.CPUStep``)."""

    index: int
    node: Node
    kernel: Optional[Kernel]
    on_host: bool
    args: list[Arg]
    stream: int = 0
    waits: tuple[int, ...] = ()
    records_event: bool = False
    frees: tuple[str, ...] = ()
    cross_stream: frozenset[str] = frozenset()
    capturable: bool = True
    reason: str = ""


def plan_steps(graph: Graph, layers: Mapping[str, LayerSpec], host_consts: Mapping[str, torch.Tensor],
               dev_consts: Mapping[str, torch.Tensor], max_streams: int = 4) -> list[CudaStep]:
    """The schedule without kernels: placement, argument sources, streams, lifetimes and
    capturability of every step (kernels are compiled by ``CudaProgram.build``)."""
    on_host = runs_on_host(graph, host_consts)
    steps = []
    for i, node in enumerate(graph.nodes):
        spec = layers.get(node.name, LayerSpec())
        args = _args(node, on_host, host_consts, dev_consts, spec.precision)
        steps.append(CudaStep(i, node, None, on_host[node.name], args))
    _schedule(steps, max_streams)
    _lifetimes(graph, steps)
    _capturability(graph, steps)
    return steps


def stream_plan_of(steps: Sequence[CudaStep]) -> StreamPlan:
    """The streams, waits and event-recording steps of a planned schedule."""
    return StreamPlan([s.stream for s in steps], [s.waits for s in steps],
                      frozenset(s.index for s in steps if s.records_event))


def runs_on_host(graph: Graph, host_consts: Mapping[str, torch.Tensor]) -> dict[str, bool]:
    """Which nodes run on the host: ``Shape``, and nodes whose every non-constant input is a host
    value and whose outputs are small (shape arithmetic). Everything else runs on the GPU."""
    host_values: set[str] = set()
    on_host: dict[str, bool] = {}
    for node in graph.nodes:
        runtime_inputs = [i for i in node.inputs if i and i not in host_consts]
        if node.op in METADATA_OPS:
            host = True
        elif node.op in (OpType.CONSTANT_OF_SHAPE, OpType.RANGE):
            host = all(i in host_values for i in runtime_inputs) and _small_outputs(node, graph)
        else:
            host = (bool(runtime_inputs) and all(i in host_values for i in runtime_inputs)
                    and _small_outputs(node, graph))
        on_host[node.name] = host
        if host:
            host_values.update(o for o in node.outputs if o)
    return on_host


def concat_streams(steps: Sequence[CudaStep], concat: ConcatExec) -> dict[str, tuple[int, ...]]:
    """For each eliminated Concat's output: the streams of its writers, its Concat step and its
    readers."""
    result: dict[str, set[int]] = {}
    for i, t in concat.targets.items():
        result.setdefault(t.output, set()).add(steps[i].stream)
    for i, f in concat.finishes.items():
        result.setdefault(f.output, set()).add(steps[i].stream)
    for s in steps:
        for a in s.args:
            if a.name in result and a.kind != CONST:
                result[a.name].add(s.stream)
    return {k: tuple(sorted(v)) for k, v in result.items()}


def _small_outputs(node: Node, graph: Graph) -> bool:
    for o in node.outputs:
        t = graph.types.get(o) if o else None
        if t is None:
            continue
        if t.is_static and math.prod(int(d) for d in t.shape) > HOST_MAX_ELEMENTS:
            return False
        if not t.is_static and t.rank > 1:
            return False
    return True


def _args(node: Node, on_host: Mapping[str, bool], host_consts: Mapping[str, torch.Tensor],
          dev_consts: Mapping[str, torch.Tensor], precision: Precision) -> list[Arg]:
    """How each input of ``node`` is fetched; constants pre-cast to the layer's dtype once."""
    hosts = host_slots(node.op)
    dtype = compute_dtype(precision)
    args = []
    for slot, name in enumerate(node.inputs):
        if not name:
            args.append(Arg(NONE))
        elif name in host_consts:
            if on_host[node.name] or slot in hosts:
                args.append(Arg(CONST, name, host_consts[name]))
            else:
                t = dev_consts[name]
                args.append(Arg(CONST, name, t.to(dtype) if t.is_floating_point() else t))
        else:
            args.append(Arg(VALUE, name))
    return args


def _schedule(steps: list[CudaStep], max_streams: int) -> None:
    producer: dict[str, int] = {}
    for s in steps:
        for o in s.node.outputs:
            if o:
                producer[o] = s.index
    preds = [[producer[a.name] for a in s.args if a.kind == VALUE and a.name in producer
              and not steps[producer[a.name]].on_host] if not s.on_host else [] for s in steps]
    plan = assign_streams(preds, max_streams)
    for s in steps:
        s.stream = 0 if s.on_host else plan.stream[s.index]
        s.waits = plan.waits[s.index]
        s.records_event = s.index in plan.event_steps
    host_of = {s.index: s.on_host for s in steps}
    for s in steps:  # values read on a stream other than their producer's need record_stream
        s.cross_stream = frozenset(a.name for a in s.args if a.kind == VALUE and a.name in producer
                                   and not host_of[producer[a.name]]
                                   and steps[producer[a.name]].stream != s.stream)


def _lifetimes(graph: Graph, steps: list[CudaStep]) -> None:
    last: dict[str, int] = {}
    for s in steps:
        for a in s.args:
            if a.kind != NONE and a.kind != CONST:
                last[a.name] = s.index
    keep = set(graph.outputs) | set(graph.inputs)
    frees: dict[int, list[str]] = {}
    for name, i in last.items():
        if name not in keep:
            frees.setdefault(i, []).append(name)
    for s in steps:
        for o in s.node.outputs:  # outputs nobody reads are released at once
            if o and o not in last and o not in keep:
                frees.setdefault(s.index, []).append(o)
        s.frees = tuple(frees.get(s.index, ()))


def _capturability(graph: Graph, steps: list[CudaStep]) -> None:
    """Marks steps that move a run-time value between host and device (not capturable)."""
    host_of: dict[str, bool] = {name: False for name in graph.inputs}
    for s in steps:
        hosts = host_slots(s.node.op)
        for slot, a in enumerate(s.args):
            if a.kind != VALUE or a.name not in host_of:
                continue
            produced_on_host = host_of[a.name]
            wants_host = s.on_host or slot in hosts
            if produced_on_host and not wants_host:
                a.kind = VALUE_TO_DEVICE
                s.capturable = False
                s.reason = f"input {a.name!r} is computed on the host and copied to the GPU"
            elif not produced_on_host and wants_host and s.node.op not in METADATA_OPS:
                a.kind = VALUE_TO_HOST
                s.capturable = False
                s.reason = f"input {a.name!r} is a GPU value read on the host"
        for o in s.node.outputs:
            if o:
                host_of[o] = s.on_host
