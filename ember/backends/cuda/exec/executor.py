"""Running a CUDA engine: one CUDA graph per input shape, replayed; pinned host buffers.

``CudaExecutor`` is the per-context state (the runtime's ``ExecutionContext`` delegates to it when
the engine's device is ``cuda``; several executors share one ``CudaProgram`` and its weights):

- its own stream and side streams (for parallel branches inside the graph);
- one device arena (``arena``): before capturing a shape, the executor traces one eager run
  (``CudaProgram.trace``), plans every intermediate's offset (stream-aware lifetimes, best fit)
  and captures the layers writing there (``graphs.capture_graph``); all shapes share the arena
  (sized for the largest seen; when a larger shape grows it, the other shapes are captured again
  into the new one on their next run). Library scratch and the outputs come from the graph's
  private pool;
- per input shape: static device input buffers, a captured ``torch.cuda.CUDAGraph`` (replays
  allocate nothing), static outputs, and pinned host buffers for the copies in and out;
- a clean fallback: if the engine has a layer that cannot be captured (it moves a run-time value
  between host and GPU) or capture fails, that shape runs eagerly, with one warning naming why.

``infer`` is synchronous and returns outputs of the kind given (numpy in -> numpy out; torch
tensors on the GPU in -> torch tensors on the GPU out, never through the host). ``infer_async``
enqueues on a stream and returns device (or pinned host) tensors valid once the stream is done.

GPU inputs without a copy: a captured graph reads its inputs from fixed addresses. When the
same GPU tensor objects (same addresses, shapes, dtypes; contiguous) come back a second time, the
executor captures a graph *bound* to them and keeps a reference to them (so their memory cannot
be freed or reused under the graph); from then on a run with those tensors reads them where
they are, with no copy into the static buffers. A caller that refills one input buffer per
request gets this on its second call; fresh tensors every call take the copy path (one
device-to-device copy per input). At most ``max_bound`` such bindings are kept per shape.
"""
from __future__ import annotations

import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np
import torch

from ember.backends.base import Executor
from ember.backends.cuda.device import host_tensor
from ember.backends.cuda.exec.arena import ArenaPlan, ArenaStats, plan_arena, round_arena
from ember.backends.cuda.exec.graphs import CAPTURE_LOCK, capture_graph
from ember.backends.cuda.exec.program import CudaProgram
from ember.backends.tensors import FLOAT8_TORCH, numpy_to_torch, torch_to_numpy
from ember.errors import InputError

ShapeKey = tuple[tuple[str, tuple[int, ...], torch.dtype], ...]
_CPU = torch.device("cpu")


@dataclass
class _Slot:
    """Everything one input shape needs: static buffers, the graph (or ``None``: eager)."""

    inputs: dict[str, torch.Tensor]
    pinned_in: dict[str, torch.Tensor] = field(default_factory=dict)
    pinned_out: dict[str, torch.Tensor] = field(default_factory=dict)
    graph: Optional[torch.cuda.CUDAGraph] = None
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    pool_bytes: int = 0  # growth of the graph pool's reserved memory at this slot's capture
    bound: bool = False  # ``inputs`` are the caller's own tensors (zero-copy)
    arena: Optional[torch.Tensor] = None  # the arena its graph writes into
    plan: Optional[ArenaPlan] = None
    stats: Optional[ArenaStats] = None


@dataclass
class RunTiming:
    """The last run's split, in ms (CUDA events): host-to-device, GPU compute, device-to-host."""

    h2d_ms: float = 0.0
    compute_ms: float = 0.0
    d2h_ms: float = 0.0


class CudaExecutor(Executor):
    """Executes a ``CudaProgram`` (see module docstring)."""

    device_type = "cuda"

    def __init__(self, program: CudaProgram, use_graphs: bool = True, max_shapes: int = 16,
                 max_bound: int = 2) -> None:
        self.program = program
        self.device = program.device
        self.use_graphs = use_graphs
        self.max_shapes = max_shapes
        self.max_bound = max_bound
        self._bound: OrderedDict[tuple, _Slot] = OrderedDict()
        self._seen: OrderedDict[tuple, list] = OrderedDict()
        self.zero_copy_runs = 0
        self.stream = torch.cuda.Stream(self.device)
        self.side = [torch.cuda.Stream(self.device) for _ in range(program.num_streams - 1)]
        self._pool = torch.cuda.graph_pool_handle()
        self._slots: OrderedDict[ShapeKey, _Slot] = OrderedDict()
        self._events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        self._copy_done: Optional[torch.cuda.Event] = None
        self.fallback_reason: dict[ShapeKey, str] = {}
        self.captures = 0
        self.recaptures = 0  # shapes captured again into a grown arena
        self.use_arena = program.use_arena
        self._arena: Optional[torch.Tensor] = None

    # ---- public -----------------------------------------------------------------------------
    def infer(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Runs the engine on ``feeds`` and waits; outputs in the kind of the inputs given."""
        kind = _kind(feeds)
        outs = self.infer_async(feeds, self.stream)
        self.stream.synchronize()
        if kind == "cuda":
            return outs
        if kind == "torch":
            return {k: v.clone() for k, v in outs.items()}
        return {k: _to_numpy(v) for k, v in outs.items()}

    def infer_async(self, feeds: Mapping[str, Any], stream: Optional[torch.cuda.Stream] = None
                    ) -> dict[str, torch.Tensor]:
        """Enqueues copy-in, the engine and copy-out on ``stream``; returns the outputs (GPU tensors
        if the inputs were GPU tensors, else pinned host tensors), valid once ``stream`` is done
        and until the next call with the same input shapes. Inputs in page-locked host memory
        are read by the GPU from where they are, asynchronously: leave them unchanged until
        ``stream`` is done."""
        stream = stream or self.stream
        kind = _kind(feeds)
        slot = (self._bound_slot(feeds) if kind == "cuda" else None) or self._slot(feeds)
        ev = self._events
        if self._copy_done is not None:
            self._copy_done.synchronize()  # the pinned buffers may still be read by the last copy
        if kind == "cuda":  # the inputs were produced on the caller's stream
            stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            ev[0].record(stream)
            dev_in = self._copy_in(slot, feeds)
            ev[1].record(stream)
            outs = self._run(slot, dev_in, stream)
            ev[2].record(stream)
            if kind == "cuda":
                result = {k: v.clone() for k, v in outs.items()} if slot.graph is not None else outs
            else:
                result = {}
                for k, v in outs.items():
                    pinned = slot.pinned_out.get(k)
                    if pinned is None or pinned.shape != v.shape or pinned.dtype != v.dtype:
                        pinned = slot.pinned_out[k] = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                    pinned.copy_(v, non_blocking=True)
                    result[k] = pinned
            ev[3].record(stream)
        self._copy_done = ev[3]
        return result

    def last_timing(self) -> RunTiming:
        """The H2D / compute / D2H split of the last run (waits for it to finish)."""
        self._events[3].synchronize()
        e = self._events
        return RunTiming(e[0].elapsed_time(e[1]), e[1].elapsed_time(e[2]), e[2].elapsed_time(e[3]))

    def input_buffer(self, feeds_like: Mapping[str, Any], name: str) -> torch.Tensor:
        """The static device buffer of input ``name`` for these shapes: write into it and pass it
        back as the feed to run with no copy at all."""
        return self._slot(feeds_like).inputs[name]

    def run_device(self, dev_feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Runs on device tensors already in place (no host copies), ordered after the caller's
        current stream and before its later work; returns the outputs (static when replayed)."""
        slot = self._bound_slot(dev_feeds) or self._slot(dev_feeds)
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.stream(self.stream):
            dev_in = self._copy_in(slot, dev_feeds)
            outs = self._run(slot, dev_in, self.stream)
        caller.wait_stream(self.stream)
        return outs

    def synchronize(self) -> None:
        self.stream.synchronize()

    def memory(self) -> dict[str, int]:
        """Device bytes: the engine's weights (shared by all contexts), this context's captured
        graphs' pool (activations, measured as reserved-memory growth at each capture), its
        static input and output buffers."""
        slots = [*self._slots.values(), *self._bound.values()]
        static = sum(t.numel() * t.element_size() for s in slots if not s.bound for t in s.inputs.values())
        static += sum(t.numel() * t.element_size() for s in slots for t in s.outputs.values())
        arenas = {s.arena.data_ptr(): s.arena.numel() for s in slots if s.arena is not None}
        if self._arena is not None:
            arenas[self._arena.data_ptr()] = self._arena.numel()
        planned = [s for s in slots if s.plan is not None and s.graph is not None]
        return {"weights": self.program.weight_bytes, "arena": sum(arenas.values()),
                "arena_planned": max((s.plan.arena_bytes for s in planned), default=0),  # type: ignore[union-attr]
                "arena_unshared": max((s.plan.memory.sum_bytes for s in planned), default=0),  # type: ignore[union-attr]
                "arena_copies": max((s.stats.copied for s in planned if s.stats), default=0),
                "graph_pool": sum(s.pool_bytes for s in slots),
                "static_buffers": static, "graphs": sum(s.graph is not None for s in slots)}

    def arena_report(self) -> Optional[dict]:
        """The arena plan of the most recently used shape: bytes, tensors placed, views, and
        which layers could not write in place (their outputs are copied there)."""
        slots = [s for s in [*self._slots.values(), *self._bound.values()] if s.plan is not None]
        if not slots:
            return None
        s = slots[-1]
        return {**s.plan.summary(), **(s.stats.to_json() if s.stats else {})}  # type: ignore[union-attr]

    def close(self) -> None:
        """Drops the captured graphs and buffers of this context (their memory returns to the pool)."""
        self.stream.synchronize()
        self._slots.clear()
        self._bound.clear()
        self._seen.clear()
        self._arena = None

    # ---- internals --------------------------------------------------------------------------
    def _slot(self, feeds: Mapping[str, Any]) -> _Slot:
        key = self._key(feeds)
        slot = self._slots.get(key)
        if slot is not None:
            self._slots.move_to_end(key)
            self._refresh(key, slot)
            return slot
        specs = {name: (shape, dtype) for name, shape, dtype in key}
        with torch.inference_mode(False):  # ordinary tensors: callers write into them (``input_buffer``)
            inputs = {n: torch.empty(s, dtype=d, device=self.device) for n, (s, d) in specs.items()}
        slot = _Slot(inputs)
        if len(self._slots) >= self.max_shapes:
            self._slots.popitem(last=False)
        self._slots[key] = slot
        if self.use_graphs:
            self._capture(key, slot, feeds)
        return slot

    def _bound_slot(self, feeds: Mapping[str, Any]) -> Optional[_Slot]:
        """The graph bound to these very GPU tensors (see module docstring), capturing it on the
        second sighting; ``None``: use the shape's slot (and copy)."""
        if not self.use_graphs or self.max_bound <= 0 or self.program.uncapturable:
            return None
        vals = [feeds.get(n) for n in self.program.graph.inputs]
        if not all(isinstance(v, torch.Tensor) and v.is_cuda and v.is_contiguous() and v.numel()
                   for v in vals):
            return None
        shape_key = self._key(feeds)
        if shape_key in self.fallback_reason:
            return None
        own = self._slots.get(shape_key)
        if own is not None and all(v.data_ptr() == own.inputs[n].data_ptr()  # type: ignore[union-attr]
                                   for n, v in zip(self.program.graph.inputs, vals)):
            self._refresh(shape_key, own)
            return own  # the shape's own input buffers, filled by the caller (``input_buffer``)
        key = (shape_key, tuple(v.data_ptr() for v in vals))  # type: ignore[union-attr]
        slot = self._bound.get(key)
        if slot is not None:
            self._bound.move_to_end(key)
            self._refresh(shape_key, slot)
            if slot.graph is None:
                self._bound.pop(key)
                return None
            self.zero_copy_runs += 1
            return slot
        # the same tensor objects a second time (a fresh tensor that the caching allocator put at
        # a freed tensor's address is another object: it takes the copy path, never a capture)
        prev = self._seen.pop(key, None)
        self._seen[key] = [weakref.ref(v) for v in vals]
        if len(self._seen) > 64:
            self._seen.popitem(last=False)
        if prev is None or any(r() is not v for r, v in zip(prev, vals)):
            return None
        per_shape = [k for k in self._bound if k[0] == shape_key]
        if len(per_shape) >= self.max_bound:
            self._bound.pop(per_shape[0])
        slot = _Slot({n: v for n, v in zip(self.program.graph.inputs, vals)}, bound=True)  # type: ignore[misc]
        self._capture(shape_key, slot, None)
        if slot.graph is None:
            return None
        self._bound[key] = slot
        self.zero_copy_runs += 1
        return slot

    def _key(self, feeds: Mapping[str, Any]) -> ShapeKey:
        missing = [n for n in self.program.graph.inputs if n not in feeds]
        if missing:
            raise InputError(f"missing input {missing[0]!r}; the engine's inputs are "
                             f"{', '.join(self.program.graph.inputs)}")
        key = []
        for n in self.program.graph.inputs:
            v = feeds[n]
            dtype = v.dtype if isinstance(v, torch.Tensor) else numpy_to_torch(np.empty(0, v.dtype), _CPU).dtype
            key.append((n, tuple(int(d) for d in v.shape), dtype))
        return tuple(key)

    def _copy_in(self, slot: _Slot, feeds: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Inputs on the device: GPU tensors are used as they are when running eagerly (no copy)
        and copied into the static buffers when replaying a graph (unless already there)."""
        out = {}
        for n, static in slot.inputs.items():
            v = feeds[n]
            if isinstance(v, torch.Tensor) and v.is_cuda:
                if slot.graph is None:
                    out[n] = v
                    continue
                if v.data_ptr() != static.data_ptr():
                    static.copy_(v, non_blocking=True)
            elif (isinstance(v, torch.Tensor) and v.dtype == static.dtype and v.is_contiguous()
                  and v.is_pinned()):  # page-locked already (e.g. registered shared memory)
                static.copy_(v, non_blocking=True)
            else:
                pinned = slot.pinned_in.get(n)
                if pinned is None:
                    pinned = slot.pinned_in[n] = torch.empty(static.shape, dtype=static.dtype, pin_memory=True)
                pinned.copy_(host_tensor(v))
                static.copy_(pinned, non_blocking=True)
            out[n] = static
        return out

    def _run(self, slot: _Slot, dev_in: Mapping[str, torch.Tensor], stream) -> dict[str, torch.Tensor]:
        if slot.graph is not None:
            slot.graph.replay()
            return slot.outputs
        with torch.inference_mode():
            return self.program.forward(dev_in, [stream, *self.side])

    def _capture(self, key: ShapeKey, slot: _Slot, feeds: Optional[Mapping[str, Any]],
                 again: bool = False) -> None:
        bad = self.program.uncapturable
        if bad:
            why = f"layer {bad[0].node.name!r} cannot be captured ({bad[0].reason})"
            self._fallback(key, why)
            return
        if feeds is not None:  # warm up on real data: lazy init, cuDNN/Triton picks
            for n, static in slot.inputs.items():
                v = feeds[n]
                static.copy_(host_tensor(v) if not isinstance(v, torch.Tensor) else v)
        streams = [self.stream, *self.side]
        with CAPTURE_LOCK:
            try:
                with torch.inference_mode():
                    self.stream.wait_stream(torch.cuda.current_stream(self.device))
                    with torch.cuda.stream(self.stream):
                        views = self._plan_arena(slot, streams) if self.use_arena else None
                        for _ in range(1 if views is not None else 2):
                            self.program.forward(slot.inputs, streams, arena=views)
                    self.stream.synchronize()
                    reserved = torch.cuda.memory_reserved(self.device)
                    stats = ArenaStats() if views is not None else None
                    graph, outs = capture_graph(
                        lambda: self.program.forward(slot.inputs, streams, arena=views, stats=stats),
                        stream=self.stream, pool=self._pool)
                torch.cuda.synchronize(self.device)
            except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager
                torch.cuda.synchronize(self.device)
                slot.graph, slot.arena, slot.plan = None, None, None
                self._fallback(key, f"CUDA-graph capture failed: {type(e).__name__}: {str(e)[:300]}")
                return
            slot.pool_bytes = max(0, torch.cuda.memory_reserved(self.device) - reserved)
        slot.graph, slot.outputs, slot.stats = graph, outs, stats
        if again:
            self.recaptures += 1
        else:
            self.captures += 1

    def _plan_arena(self, slot: _Slot, streams: list) -> dict[str, torch.Tensor]:
        """Traces one eager run, plans the arena for this shape and returns its views (growing
        the context's arena if this shape needs more; see module docstring)."""
        steps = self.program.steps
        trace = self.program.trace(slot.inputs, streams)
        plan = plan_arena(trace, [s.stream % len(streams) for s in steps], [s.waits for s in steps],
                          [not s.on_host for s in steps], self.program.graph.outputs)
        if self._arena is None or self._arena.numel() < plan.arena_bytes:
            self._arena = None  # the old one lives on while a shape's graph still writes into it
            self._arena = torch.empty(round_arena(plan.arena_bytes), dtype=torch.uint8, device=self.device)
        slot.arena, slot.plan = self._arena, plan
        return plan.views(self._arena)

    def _refresh(self, key: ShapeKey, slot: _Slot) -> None:
        """Captures ``slot`` again if its graph writes into an arena the context has outgrown."""
        if slot.graph is not None and slot.arena is not None and slot.arena is not self._arena:
            slot.graph = None
            self._capture(key, slot, None, again=True)

    def _fallback(self, key: ShapeKey, why: str) -> None:
        if key not in self.fallback_reason:
            shapes = ", ".join(f"{n}{list(s)}" for n, s, _ in key)
            warnings.warn(f"Ember runs this CUDA engine without CUDA graphs for inputs {shapes}: "
                          f"{why}. It is correct but slower at small batches.", stacklevel=4)
        self.fallback_reason[key] = why


def _kind(feeds: Mapping[str, Any]) -> str:
    vals = list(feeds.values())
    if vals and all(isinstance(v, torch.Tensor) and v.is_cuda for v in vals):
        return "cuda"
    if any(isinstance(v, torch.Tensor) for v in vals):
        return "torch"
    return "numpy"


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype in FLOAT8_TORCH:
        return torch_to_numpy(t)  # ml_dtypes' 8-bit floats, a copy
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy().copy()
