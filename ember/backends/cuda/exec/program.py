"""A compiled CUDA engine: kernels in execution order on their streams, and one eager forward.

``CudaProgram`` is built once per engine and shared by all its execution contexts: it holds the
weights on the device (prepared by each kernel at compile time) and the static schedule
(``schedule.plan_steps``: host or device per layer, streams, waits, lifetimes, capturability),
plus the *concat elimination* (``ember.backends.concat_exec``): producers whose kernel can write
into a Concat's buffer get the view of their slice; the buffer is allocated on the main stream
before the side streams fork (inside capture: from the graph's pool) and recorded on every
stream that touches it.

``forward(feeds, streams)`` runs the whole engine once, eagerly; ``executor.CudaExecutor`` captures
it into a CUDA graph per input shape and replays it, every intermediate in its place in the
context's arena (``arena``; ``trace`` records the eager run that plan is made from).
``program_from_plan`` is the program of an engine's ``Plan`` (``CUDABackend.make_program``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import torch

from ember.backends.base import Backend, CompileContext, Program, write_or_copy
from ember.backends.concat_exec import ConcatExec, finish, plan_concat_exec, produce_into
from ember.backends.cuda.device import compute_dtype, forward_scope, host_tensor, require_cuda
from ember.backends.cuda.exec.arena import ArenaStats, Trace, ViewSpec, placeable, storage_key
from ember.backends.cuda.exec.schedule import (
    CONST,
    NONE,
    VALUE,
    VALUE_TO_DEVICE,
    VALUE_TO_HOST,
    Arg,
    CudaStep,
    LayerSpec,
    concat_streams,
    plan_steps,
    stream_plan_of,
)
from ember.backends.cuda.exec.streams import StreamPlan
from ember.backends.cuda.fallback import host_kernel
from ember.backends.tensors import torch_dtype
from ember.ir.dtype import DType
from ember.ir.graph import Graph
from ember.ir.optype import OpType
from ember.plan.config import BuildConfig, Device, Precision
from ember.plan.plan import Plan
from ember.plan.records import Records

if TYPE_CHECKING:
    from ember.backends.cuda.exec.executor import CudaExecutor

__all__ = ["CudaProgram", "CudaStep", "LayerSpec", "program_from_plan"]


@dataclass
class CudaProgram(Program):
    """The executable form of a CUDA engine (see module docstring)."""

    graph: Graph
    steps: list[CudaStep]
    #: the schedule's streams and waits (``forward`` takes the CUDA streams they run on)
    stream_plan: StreamPlan
    device: torch.device
    output_dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    device_consts: dict[str, torch.Tensor] = field(default_factory=dict)
    use_graphs: bool = True
    #: captured graphs write every intermediate into the context's planned arena
    #: (``arena``); ``BuildConfig.cuda_arena=False`` turns it off (graph pool only)
    use_arena: bool = True
    concat: ConcatExec = field(default_factory=ConcatExec)
    #: per eliminated Concat output: the streams (indices) that write, finish or read its buffer
    concat_streams: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: device bytes the compiled engine holds (weights as the layers prepared them), measured
    weight_bytes: int = 0

    @property
    def num_streams(self) -> int:
        return self.stream_plan.num_streams

    @property
    def uncapturable(self) -> list[CudaStep]:
        return [s for s in self.steps if not s.capturable]

    # ---- building ---------------------------------------------------------------------------
    @staticmethod
    def build(graph: Graph, layers: Mapping[str, LayerSpec], constants: Mapping[str, object], *,
              records: Optional[Records] = None, config: Optional[BuildConfig] = None,
              backend: Optional[Backend] = None, device: Optional[torch.device] = None,
              max_streams: int = 4) -> CudaProgram:
        """Compiles every node of ``graph`` with its layer's tactic and precision.

        ``constants`` maps constant names to numpy arrays or torch tensors (any device). Every
        kernel is compiled with the plan's ``records`` and ``config`` (default: none, and a CUDA
        build's defaults); ``config.cuda_graphs`` / ``config.cuda_arena`` become the program's
        ``use_graphs`` / ``use_arena``. ``device`` defaults to the current CUDA device.
        """
        if backend is None:
            from ember.backends.cuda import CUDABackend

            backend = CUDABackend()
        device = device or require_cuda()
        records = records if records is not None else Records()
        config = config if config is not None else BuildConfig(device=Device.CUDA)
        resident_before = _allocated(device)
        dev_consts = {k: host_tensor(v).to(device) for k, v in constants.items()}
        host_consts = {k: host_tensor(v).cpu() for k, v in constants.items()}
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
        _warn_float64(graph, steps)
        out_dtypes = {o: torch_dtype(graph.types[o].dtype) for o in graph.outputs if o in graph.types}
        concat = plan_concat_exec(graph, records, [s.kernel for s in steps], static_layout=True,
                                  skip=[s.on_host for s in steps],
                                  float_dtype={n.name: compute_dtype(layers.get(n.name, LayerSpec()).precision)
                                               for n in graph.nodes if n.op is OpType.CONCAT})
        # fp32 device copies that no step kept (the layers hold their own cast/reordered weights)
        # are released; a constant that is a graph output stays for ``_output``
        dev_consts = {k: v for k, v in dev_consts.items() if k in set(graph.outputs)}
        program = CudaProgram(graph, steps, stream_plan_of(steps), device, out_dtypes, dev_consts,
                              use_graphs=config.cuda_graphs, use_arena=config.cuda_arena, concat=concat)
        program.concat_streams = concat_streams(steps, concat)
        program.weight_bytes = max(0, _allocated(device) - resident_before)
        return program

    # ---- running ----------------------------------------------------------------------------
    def create_executor(self) -> CudaExecutor:
        """Per-context state (``executor.CudaExecutor``): CUDA graphs, streams, pinned buffers."""
        from ember.backends.cuda.exec.executor import CudaExecutor

        return CudaExecutor(self, use_graphs=self.use_graphs)

    def run(self, feeds: Mapping[str, torch.Tensor], stats: Optional[dict[str, int]] = None) -> dict[str, torch.Tensor]:
        """One eager run on device tensors, on the current stream (no graphs)."""
        with torch.inference_mode():
            return self.forward(feeds, [torch.cuda.current_stream(self.device)])

    def forward(self, feeds: Mapping[str, torch.Tensor], streams: Sequence[torch.cuda.Stream],
                hook: Optional[Callable[[CudaStep, str], None]] = None, *,
                arena: Optional[Mapping[str, torch.Tensor]] = None,
                stats: Optional[ArenaStats] = None,
                observe: Optional[Callable[[CudaStep, list, list, dict], None]] = None) -> dict[str, torch.Tensor]:
        """Runs every layer once on ``streams`` (``streams[0]`` is the caller's current stream;
        with fewer streams than planned, layers share them round-robin).

        Side streams first wait for the main stream and the main stream joins them at the end,
        so this is capturable as one CUDA graph. ``hook(step, "start" | "end")`` is called on the
        step's stream around each layer (the profiler records CUDA events there).

        ``arena`` (tensor name -> its view in the context's arena, ``arena.ArenaPlan.views``):
        each such tensor is written into its view (by the kernel's ``write_into``, else computed
        and copied), and the engine's outputs are cloned out of the arena at the end.
        ``observe(step, args, outputs, env)`` sees every device layer's run (``trace``).
        """
        with forward_scope(per_stream=len(streams) > 1):  # per-forward preparations (an attention mask) once
            return self._forward(feeds, streams, hook, arena, stats, observe)

    def _forward(self, feeds: Mapping[str, torch.Tensor], streams: Sequence[torch.cuda.Stream],
                 hook: Optional[Callable[[CudaStep, str], None]], arena: Optional[Mapping[str, torch.Tensor]],
                 stats: Optional[ArenaStats],
                 observe: Optional[Callable[[CudaStep, list, list, dict], None]]) -> dict[str, torch.Tensor]:
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
                kernel = step.kernel
                assert kernel is not None, "steps are compiled by CudaProgram.build"
                outs: list[Optional[torch.Tensor]]
                if step.index in self.concat.targets:
                    outs = [produce_into(self.concat.targets[step.index], kernel, args, env, None)]
                elif step.index in self.concat.finishes:
                    outs = [finish(self.concat.finishes[step.index], env, None)]
                elif arena is not None and not step.on_host:
                    outs = _into_arena(step, args, arena, stats)
                else:
                    outs = kernel(args)
                if hook is not None:
                    hook(step, "end")
                if observe is not None and not step.on_host:
                    observe(step, args, outs, env)
                for name, t in zip(step.node.outputs, outs):
                    if name:
                        env[name] = t  # type: ignore[assignment]  # None: an unused optional output
                if step.records_event:
                    ev = torch.cuda.Event()
                    ev.record(stream)
                    events[step.index] = ev
            for name in step.frees:
                env.pop(name, None)
        for s in streams[1:]:
            main.wait_stream(s)
        result = {o: self._output(o, env) for o in self.graph.outputs}
        if arena is not None:  # out of the arena: they must outlive another shape's replay
            result = {o: t.clone() if t is env.get(o) and t.is_cuda else t for o, t in result.items()}
        return result

    def trace(self, feeds: Mapping[str, torch.Tensor], streams: Sequence[torch.cuda.Stream]) -> Trace:
        """Runs the engine once eagerly and traces what the arena plan needs (``arena.Trace``):
        the view spec of every tensor a device layer writes, which outputs are views of their
        inputs (or slices of an eliminated Concat's buffer), and who reads what."""
        rec = Trace()
        args_of = {s.index: s.args for s in self.steps}
        concat_first = {buf.output: i for i, bufs in self.concat.allocs.items() for buf in bufs}
        # a Concat input its producer cannot write in place is copied into the Concat's buffer
        # anyway: it stays where its kernel put it (a copy into the arena first would be a second)
        to_concat = {name for f in self.concat.finishes.values() for name, _, _ in f.copies}

        def observe(step: CudaStep, args: list, outs: list, env: dict) -> None:
            for name, i in list(concat_first.items()):  # the buffers exist from the first step on
                if name in env and name not in rec.producer:
                    rec.producer[name], rec.specs[name] = i, ViewSpec.of(env[name])
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
                    rec.producer[name], rec.specs[name] = step.index, ViewSpec.of(t)

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

    def _fetch(self, a: Arg, env: dict, stream, step: CudaStep) -> Optional[torch.Tensor]:
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


def _into_arena(step: CudaStep, args: list, arena: Mapping[str, torch.Tensor],
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


def _allocated(device: torch.device) -> int:
    """Bytes the caching allocator holds on ``device`` (0 off CUDA: a program built on host
    tensors, as the CPU tests do, measures no weights)."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def program_from_plan(plan: Plan, backend: Optional[Backend] = None,
                      device: Optional[torch.device] = None) -> CudaProgram:
    """The ``CudaProgram`` of an engine plan: its graph and records, each layer's tactic and
    precision, its constants, and the configuration (``cuda_graphs`` / ``cuda_arena``)."""
    layers = {layer.name: LayerSpec(layer.tactic, layer.precision) for layer in plan.layers}
    if device is not None and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return CudaProgram.build(plan.graph, layers, plan.graph.constants, records=plan.records,
                             config=plan.config, backend=backend, device=device)


def _warn_float64(graph: Graph, steps: Sequence[Any]) -> None:
    """A warning when the GPU computes float64 tensors: CUDA layers compute floats in their
    precision's type (float32 for fp32), so a float64 model's values beyond float32's range or
    precision do not survive; the CPU backend keeps float64."""
    names = [o for s in steps if not s.on_host for o in s.node.outputs
             if o and o in graph.types and graph.types[o].dtype is DType.FLOAT64]
    if names:
        warnings.warn(f"{len(names)} float64 tensor(s) of this model ({', '.join(names[:3])}"
                      f"{', ...' if len(names) > 3 else ''}) are computed in float32 on CUDA: values beyond "
                      f"float32's range (3.4e38) become inf and precision drops to float32's; build for "
                      f"--device cpu to compute in float64", stacklevel=3)
