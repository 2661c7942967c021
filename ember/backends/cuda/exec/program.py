"""A compiled CUDA engine: kernels in execution order, their streams, and one eager forward.

``CudaProgram`` is built once per engine and shared by all its execution contexts: it holds the
weights on the device (prepared by each kernel at compile time) and the static schedule:

- *placement*: shape computations (``Shape`` and the small integer arithmetic that follows it)
  run on the host, so reading a target shape never synchronizes the GPU; every other layer runs
  on the GPU;
- *streams*: independent branches go to separate streams (``streams.assign_streams``);
- *lifetimes*: each intermediate is released after its last reader, so the caching allocator
  (inside graph capture: the graph's private pool) reuses its memory, like an arena laid out by
  the memory plan's liveness;
- *concat elimination* (``ember.backends.concat_exec``): producers whose kernel can write into a
  Concat's buffer get the view of their slice; the buffer is allocated on the main stream before
  the side streams fork (inside capture: from the graph's pool) and recorded on every stream
  that touches it.

``forward(feeds, streams)`` runs the whole engine once, eagerly; ``executor.CudaExecutor`` captures
it into a CUDA graph per input shape and replays it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from ember.backends.base import CompileContext, Kernel, Program, write_or_copy
from ember.backends.concat_exec import ConcatExec, finish, plan_concat_exec, produce_into
from ember.backends.cuda.arena import ArenaStats, Layout, Record, placeable, storage_key
from ember.backends.cuda.device import compute_dtype, host_tensor, require_cuda
from ember.backends.cuda.fallback import METADATA_OPS, host_kernel, host_slots
from ember.backends.cuda.streams import StreamPlan, assign_streams
from ember.backends.tensors import torch_dtype
from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.plan.config import BuildConfig, Device, Precision
from ember.plan.records import Records

if TYPE_CHECKING:
    from ember.backends.cuda.executor import CudaExecutor

#: A host value is a tensor of at most this many elements (shapes, indices, scalars).
HOST_MAX_ELEMENTS = 64

# how a step fetches one input
NONE, CONST, VALUE, VALUE_TO_HOST, VALUE_TO_DEVICE = range(5)


@dataclass
class Arg:
    kind: int
    name: str = ""
    tensor: Optional[torch.Tensor] = None


@dataclass
class Step:
    """One layer as executed: its kernel, where it runs, and what it waits for and releases."""

    index: int
    node: Node
    kernel: Optional[Kernel]
    on_host: bool
    args: list[Arg]
    stream: int = 0
    waits: tuple[int, ...] = ()
    record: bool = False
    frees: tuple[str, ...] = ()
    cross_stream: frozenset[str] = frozenset()
    capturable: bool = True
    reason: str = ""


@dataclass
class LayerSpec:
    tactic: str = ""
    precision: Precision = Precision.FP32


@dataclass
class CudaProgram(Program):
    """The executable form of a CUDA engine (see module docstring)."""

    graph: Graph
    steps: list[Step]
    streams: StreamPlan
    device: torch.device
    output_dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    device_consts: dict[str, torch.Tensor] = field(default_factory=dict)
    use_graphs: bool = True
    #: captured graphs write every intermediate into the context's planned arena
    #: (``ember.backends.cuda.arena``); ``BuildConfig.cuda_arena=False`` turns it off (graph pool only)
    use_arena: bool = True
    concat: ConcatExec = field(default_factory=ConcatExec)
    #: per eliminated Concat output: the streams (indices) that write, finish or read its buffer
    concat_streams: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: device bytes the compiled engine holds (weights as the layers prepared them), measured
    weight_bytes: int = 0

    @property
    def num_streams(self) -> int:
        return self.streams.num_streams

    @property
    def uncapturable(self) -> list[Step]:
        return [s for s in self.steps if not s.capturable]

    # ---- building ---------------------------------------------------------------------------
    @staticmethod
    def build(graph: Graph, layers: Mapping[str, LayerSpec], constants: Mapping[str, object], *,
              records: Optional[Records] = None, config: Optional[BuildConfig] = None,
              backend=None, device: Optional[torch.device] = None, max_streams: int = 4) -> "CudaProgram":
        """Compiles every node of ``graph`` with its layer's tactic and precision.

        ``constants`` maps constant names to numpy arrays or torch tensors (any device).
        """
        from ember.backends.cuda import CUDABackend

        device = device or require_cuda()
        backend = backend or CUDABackend()
        records = records if records is not None else Records()
        config = config if config is not None else BuildConfig(device=Device.CUDA)
        resident_before = torch.cuda.memory_allocated(device)
        dev_consts = {k: _to_torch(v).to(device) for k, v in constants.items()}
        host_consts = {k: _to_torch(v).cpu() for k, v in constants.items()}
        steps = plan_steps(graph, layers, host_consts, dev_consts, max_streams)
        for step in steps:
            node, spec = step.node, layers.get(step.node.name, LayerSpec())
            if step.on_host:
                ctx = CompileContext(graph, host_consts, torch.device("cpu"), "", Precision.FP32,
                                     records, config)
                step.kernel = host_kernel(node, ctx)
            else:
                ctx = CompileContext(graph, dev_consts, device, spec.tactic, spec.precision,
                                     records, config)
                step.kernel = backend.compile_node(node, ctx)
        streams = _stream_plan(steps)
        out_dtypes = {o: torch_dtype(graph.types[o].dtype) for o in graph.outputs if o in graph.types}
        concat = plan_concat_exec(graph, records, [s.kernel for s in steps], static_layout=True,
                                  skip=[s.on_host for s in steps],
                                  float_dtype={n.name: compute_dtype(layers.get(n.name, LayerSpec()).precision)
                                               for n in graph.nodes if n.op is OpType.CONCAT})
        # fp32 device copies that no step kept (the layers hold their own cast/reordered weights)
        # are released; a constant that is a graph output stays for ``_output``
        dev_consts = {k: v for k, v in dev_consts.items() if k in set(graph.outputs)}
        program = CudaProgram(graph, steps, streams, device, out_dtypes, dev_consts,
                              use_graphs=config.cuda_graphs, use_arena=config.cuda_arena, concat=concat)
        program.concat_streams = concat_streams(graph, steps, concat)
        program.weight_bytes = max(0, torch.cuda.memory_allocated(device) - resident_before)
        return program

    # ---- running ----------------------------------------------------------------------------
    def create_executor(self) -> "CudaExecutor":
        """Per-context state (``executor.CudaExecutor``): CUDA graphs, streams, pinned buffers."""
        from ember.backends.cuda.executor import CudaExecutor

        return CudaExecutor(self, use_graphs=self.use_graphs)

    def run(self, feeds: Mapping[str, torch.Tensor], stats: Optional[dict[str, int]] = None) -> dict[str, torch.Tensor]:
        """One eager run on device tensors, on the current stream (no graphs)."""
        with torch.inference_mode():
            return self.forward(feeds, [torch.cuda.current_stream(self.device)])

    def forward(self, feeds: Mapping[str, torch.Tensor], streams: Sequence[torch.cuda.Stream],
                hook: Optional[Callable[[Step, str], None]] = None, *,
                arena: Optional[Mapping[str, torch.Tensor]] = None,
                stats: Optional[ArenaStats] = None,
                observe: Optional[Callable[[Step, list, list, dict], None]] = None) -> dict[str, torch.Tensor]:
        """Runs every layer once on ``streams`` (``streams[0]`` is the caller's current stream;
        with fewer streams than planned, layers share them round-robin).

        Side streams first wait for the main stream and the main stream joins them at the end,
        so this is capturable as one CUDA graph. ``hook(step, "start" | "end")`` is called on the
        step's stream around each layer (the profiler records CUDA events there).

        ``arena`` (tensor name -> its view in the context's arena, ``ember.backends.cuda.arena``):
        each such tensor is written into its view (by the kernel's ``write_into``, else computed
        and copied), and the engine's outputs are cloned out of the arena at the end.
        ``observe(step, args, outputs, env)`` sees every device layer's run (``record``).
        """
        main = streams[0]
        env: dict[str, torch.Tensor] = dict(feeds)
        self._allocate_concats(env, streams, arena)
        for s in streams[1:]:
            s.wait_stream(main)
        events: dict[int, torch.cuda.Event] = {}
        for step in self.steps:
            stream = streams[step.stream % len(streams)] if not step.on_host else main
            with torch.cuda.stream(stream):
                for w in step.waits:
                    stream.wait_event(events[w])
                args = [self._fetch(a, env, stream, step) for a in step.args]
                if hook is not None:
                    hook(step, "start")
                if step.index in self.concat.targets:
                    outs = [produce_into(self.concat.targets[step.index], step.kernel, args, env, None)]
                elif step.index in self.concat.finishes:
                    outs = [finish(self.concat.finishes[step.index], env, None)]
                elif arena is not None and not step.on_host:
                    outs = _into_arena(step, args, arena, stats)
                else:
                    outs = step.kernel(args)  # type: ignore[misc]
                if hook is not None:
                    hook(step, "end")
                if observe is not None and not step.on_host:
                    observe(step, args, outs, env)
                for name, t in zip(step.node.outputs, outs):
                    if name:
                        env[name] = t
                if step.record:
                    ev = torch.cuda.Event()
                    ev.record(stream)
                    events[step.index] = ev
            for name in step.frees:
                env.pop(name, None)
        for s in streams[1:]:
            main.wait_stream(s)
        outs = {o: self._output(o, env) for o in self.graph.outputs}
        if arena is not None:  # out of the arena: they must outlive another shape's replay
            outs = {o: t.clone() if t is env.get(o) and t.is_cuda else t for o, t in outs.items()}
        return outs

    def record(self, feeds: Mapping[str, torch.Tensor], streams: Sequence[torch.cuda.Stream]) -> Record:
        """Runs the engine once eagerly and records what the arena plan needs (``arena.Record``):
        the layout of every tensor a device layer writes, which outputs are views of their
        inputs (or slices of an eliminated Concat's buffer), and who reads what."""
        rec = Record()
        args_of = {s.index: s.args for s in self.steps}
        concat_first = {buf.output: i for i, bufs in self.concat.allocs.items() for buf in bufs}
        # a Concat input its producer cannot write in place is copied into the Concat's buffer
        # anyway: it stays where its kernel put it (a copy into the arena first would be a second)
        to_concat = {name for f in self.concat.finishes.values() for name, _, _ in f.copies}

        def observe(step: Step, args: list, outs: list, env: dict) -> None:
            for name, i in list(concat_first.items()):  # the buffers exist from the first step on
                if name in env and name not in rec.producer:
                    rec.producer[name], rec.layouts[name] = i, Layout.of(env[name])
            for a in args_of[step.index]:
                if a.kind in (VALUE, VALUE_TO_HOST):
                    rec.readers.setdefault(a.name, set()).add(step.index)
            sources = {storage_key(t): a.name for a, t in zip(args_of[step.index], args)
                       if a.kind == VALUE and isinstance(t, torch.Tensor) and t.is_cuda}
            consts = {storage_key(t) for a, t in zip(args_of[step.index], args)
                      if a.kind == CONST and isinstance(t, torch.Tensor) and t.is_cuda}
            target = self.concat.targets.get(step.index)
            for name, t in zip(step.node.outputs, outs):
                if not name or t is None or name in rec.producer:
                    continue
                if target is not None:  # a slice of the Concat's buffer, written here
                    rec.base[name] = target.output
                    rec.readers.setdefault(name, set()).add(step.index)
                    continue
                key = storage_key(t) if t.is_cuda else None
                if key is not None and key in sources:
                    rec.base[name] = sources[key]
                elif name in to_concat:
                    rec.unplaced[name] = "copied into its Concat's buffer"
                elif key is not None and key in consts:
                    rec.unplaced[name] = "a constant"
                elif (why := placeable(t)) is not None:
                    rec.unplaced[name] = why
                else:
                    rec.producer[name], rec.layouts[name] = step.index, Layout.of(t)

        with torch.inference_mode():
            self.forward(feeds, streams, observe=observe)
        return rec

    def _allocate_concats(self, env: dict, streams: Sequence[torch.cuda.Stream],
                          arena: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        """Allocates every eliminated Concat's buffer on the main stream, before the side streams
        fork from it (so no stream can write into memory another stream still uses), and marks it
        used by every other stream that writes, finishes or reads it (``record_stream``: the
        caching allocator, or the graph's pool, then keeps it until those streams are done)."""
        main = streams[0]
        for bufs in self.concat.allocs.values():
            for buf in bufs:
                if arena is not None and buf.output in arena:
                    env[buf.output] = arena[buf.output]  # planned with every stream's use in mind
                    continue
                t = buf.allocate(self.device, None)
                for k in {streams[i % len(streams)] for i in self.concat_streams.get(buf.output, ())}:
                    if k != main:
                        t.record_stream(k)
                env[buf.output] = t

    def _fetch(self, a: Arg, env: dict, stream, step: Step) -> Optional[torch.Tensor]:
        if a.kind == NONE:
            return None
        if a.kind == CONST:
            return a.tensor
        t = env[a.name]
        if a.kind == VALUE_TO_HOST and t.device.type != "cpu":
            return t.cpu()
        if a.kind == VALUE_TO_DEVICE and t.device.type == "cpu":
            return t.to(self.device, non_blocking=False)
        if a.name in step.cross_stream and t.device.type == "cuda":
            t.record_stream(stream)
        return t

    def _output(self, name: str, env: dict) -> torch.Tensor:
        t = env[name] if name in env else self.device_consts[name]
        t = t.to(self.device) if t.device.type == "cpu" else t
        want = self.output_dtypes.get(name)
        return t.to(want) if want is not None and t.dtype != want else t


def _into_arena(step: Step, args: list, arena: Mapping[str, torch.Tensor],
                stats: Optional[ArenaStats]) -> list:
    """Runs ``step`` with its outputs in their arena views: written there by the kernel where it
    can (``write_into``), else computed and copied there."""
    dests = [arena.get(o) if o else None for o in step.node.outputs]
    if all(d is None for d in dests):
        return step.kernel(args)  # type: ignore[misc]
    if len(dests) == 1:
        written = write_or_copy(step.kernel, args, dests[0])  # type: ignore[arg-type]
        outs = [dests[0]]
    else:
        written, outs = False, list(step.kernel(args))  # type: ignore[misc]
        for i, (d, t) in enumerate(zip(dests, outs)):
            if d is not None and t is not None:
                d.copy_(t)
                outs[i] = d
    if stats is not None:
        stats.written += written
        if not written:
            stats.copied_layers.append(step.node.name)
    return outs


def concat_streams(graph: Graph, steps: Sequence[Step], concat: ConcatExec) -> dict[str, tuple[int, ...]]:
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


def plan_steps(graph: Graph, layers: Mapping[str, LayerSpec], host_consts: Mapping[str, torch.Tensor],
               dev_consts: Mapping[str, torch.Tensor], max_streams: int = 4) -> list[Step]:
    """The schedule without kernels: placement, argument sources, streams, lifetimes and
    capturability of every step (pure logic; kernels are compiled by ``CudaProgram.build``)."""
    on_host = place(graph, host_consts)
    steps = []
    for i, node in enumerate(graph.nodes):
        spec = layers.get(node.name, LayerSpec())
        args = _args(node, on_host, host_consts, dev_consts, spec.precision)
        steps.append(Step(i, node, None, on_host[node.name], args))
    _schedule(graph, steps, max_streams)
    _lifetimes(graph, steps)
    _capturability(graph, steps)
    return steps


def _stream_plan(steps: list[Step]) -> StreamPlan:
    return StreamPlan([s.stream for s in steps], [s.waits for s in steps],
                      frozenset(s.index for s in steps if s.record))


def _to_torch(v: object) -> torch.Tensor:
    return host_tensor(v)


def place(graph: Graph, host_consts: Mapping[str, torch.Tensor]) -> dict[str, bool]:
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


def _small_outputs(node: Node, graph: Graph) -> bool:
    for o in node.outputs:
        t = graph.types.get(o) if o else None
        if t is None:
            continue
        if t.is_static and math.prod(t.shape) > HOST_MAX_ELEMENTS:  # type: ignore[arg-type]
            return False
        if not t.is_static and t.rank > 1:
            return False
    return True


def _args(node: Node, on_host: Mapping[str, bool], host_consts, dev_consts, precision: str) -> list[Arg]:
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


def _schedule(graph: Graph, steps: list[Step], max_streams: int) -> StreamPlan:
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
        s.record = s.index in plan.records
    host_of = {s.index: s.on_host for s in steps}
    for s in steps:  # values read on a stream other than their producer's need record_stream
        s.cross_stream = frozenset(a.name for a in s.args if a.kind == VALUE and a.name in producer
                                   and not host_of[producer[a.name]]
                                   and steps[producer[a.name]].stream != s.stream)
    return plan


def _lifetimes(graph: Graph, steps: list[Step]) -> None:
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


def _capturability(graph: Graph, steps: list[Step]) -> None:
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


def check_supported(graph: Graph, backend) -> None:
    """Raises one ``BuildError`` listing every node the CUDA backend cannot run."""
    bad = [n for n in graph.nodes if not backend.supports(n)]
    if bad:
        names = ", ".join(f"{n.name!r} ({n.op})" for n in bad)
        raise BuildError(f"the CUDA backend has no kernel for {names}; build for --device cpu")
