"""Running a CUDA engine: one CUDA graph per input shape, replayed; pinned host buffers.

``CudaRunner`` is the per-context state (the runtime's ``ExecutionContext`` delegates to it when
the engine's device is ``cuda``; several runners share one ``CudaProgram`` and its weights):

- its own stream and side streams (for parallel branches inside the graph);
- per input shape: static device input buffers, a captured ``torch.cuda.CUDAGraph`` whose
  intermediates live in the runner's private memory pool (a fixed arena: replays allocate
  nothing), static outputs, and pinned host buffers for the copies in and out;
- a clean fallback: if the engine has a layer that cannot be captured (it moves a run-time value
  between host and GPU) or capture fails, that shape runs eagerly, with one warning naming why.

``infer`` is synchronous and returns outputs of the kind given (numpy in -> numpy out; torch
tensors on the GPU in -> torch tensors on the GPU out, never through the host). ``infer_async``
enqueues on a stream and returns device (or pinned host) tensors valid once the stream is done.
"""
from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np
import torch

from ember.backends.cuda.device import host_tensor
from ember.backends.cuda.program import CudaProgram
from ember.errors import InputError

ShapeKey = tuple[tuple[str, tuple[int, ...], torch.dtype], ...]

#: One capture at a time in this process: capture entry synchronizes the device, which must not
#: happen while another context's thread is in the middle of its own capture.
_CAPTURE_LOCK = threading.Lock()


@dataclass
class _Slot:
    """Everything one input shape needs: static buffers, the graph (or ``None``: eager)."""

    inputs: dict[str, torch.Tensor]
    pinned_in: dict[str, torch.Tensor] = field(default_factory=dict)
    pinned_out: dict[str, torch.Tensor] = field(default_factory=dict)
    graph: Optional[torch.cuda.CUDAGraph] = None
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Timing:
    """The last run's split, in ms (CUDA events): host-to-device, GPU compute, device-to-host."""

    h2d_ms: float = 0.0
    compute_ms: float = 0.0
    d2h_ms: float = 0.0


class CudaRunner:
    """Executes a ``CudaProgram`` (see module docstring)."""

    def __init__(self, program: CudaProgram, use_graphs: bool = True, max_shapes: int = 16) -> None:
        self.program = program
        self.device = program.device
        self.use_graphs = use_graphs
        self.max_shapes = max_shapes
        self.stream = torch.cuda.Stream(self.device)
        self.side = [torch.cuda.Stream(self.device) for _ in range(program.num_streams - 1)]
        self._pool = torch.cuda.graph_pool_handle()
        self._slots: OrderedDict[ShapeKey, _Slot] = OrderedDict()
        self._events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        self._copy_done: Optional[torch.cuda.Event] = None
        self.fallback_reason: dict[ShapeKey, str] = {}
        self.captures = 0

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
        and until the next call with the same input shapes."""
        stream = stream or self.stream
        kind = _kind(feeds)
        slot = self._slot(feeds)
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

    def last_timing(self) -> Timing:
        """The H2D / compute / D2H split of the last run (waits for it to finish)."""
        self._events[3].synchronize()
        e = self._events
        return Timing(e[0].elapsed_time(e[1]), e[1].elapsed_time(e[2]), e[2].elapsed_time(e[3]))

    def input_buffer(self, feeds_like: Mapping[str, Any], name: str) -> torch.Tensor:
        """The static device buffer of input ``name`` for these shapes: write into it and pass it
        back as the feed to run with no copy at all."""
        return self._slot(feeds_like).inputs[name]

    def run_device(self, dev_feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Runs on device tensors already in place (no host copies), ordered after the caller's
        current stream and before its later work; returns the outputs (static when replayed)."""
        slot = self._slot(dev_feeds)
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.stream(self.stream):
            dev_in = self._copy_in(slot, dev_feeds)
            outs = self._run(slot, dev_in, self.stream)
        caller.wait_stream(self.stream)
        return outs

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        """Drops the captured graphs and buffers of this context (their memory returns to the pool)."""
        self.stream.synchronize()
        self._slots.clear()

    # ---- internals --------------------------------------------------------------------------
    def _slot(self, feeds: Mapping[str, Any]) -> _Slot:
        key = self._key(feeds)
        slot = self._slots.get(key)
        if slot is not None:
            self._slots.move_to_end(key)
            return slot
        specs = {name: (shape, dtype) for name, shape, dtype in key}
        inputs = {n: torch.empty(s, dtype=d, device=self.device) for n, (s, d) in specs.items()}
        slot = _Slot(inputs)
        if len(self._slots) >= self.max_shapes:
            self._slots.popitem(last=False)
        self._slots[key] = slot
        if self.use_graphs:
            self._capture(key, slot, feeds)
        return slot

    def _key(self, feeds: Mapping[str, Any]) -> ShapeKey:
        missing = [n for n in self.program.graph.inputs if n not in feeds]
        if missing:
            raise InputError(f"missing input {missing[0]!r}; the engine's inputs are "
                             f"{', '.join(self.program.graph.inputs)}")
        key = []
        for n in self.program.graph.inputs:
            v = feeds[n]
            dtype = v.dtype if isinstance(v, torch.Tensor) else torch.from_numpy(np.empty(0, v.dtype)).dtype
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

    def _capture(self, key: ShapeKey, slot: _Slot, feeds: Mapping[str, Any]) -> None:
        bad = self.program.uncapturable
        if bad:
            why = f"layer {bad[0].node.name!r} cannot be captured ({bad[0].reason})"
            self._fallback(key, why)
            return
        for n, static in slot.inputs.items():  # warm up on real data: lazy init, cuDNN/Triton picks
            v = feeds[n]
            static.copy_(host_tensor(v) if not isinstance(v, torch.Tensor) else v)
        streams = [self.stream, *self.side]
        with _CAPTURE_LOCK:
            try:
                with torch.inference_mode():
                    self.stream.wait_stream(torch.cuda.current_stream(self.device))
                    with torch.cuda.stream(self.stream):
                        for _ in range(2):
                            self.program.forward(slot.inputs, streams)
                    self.stream.synchronize()
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=self._pool, stream=self.stream,
                                          capture_error_mode="thread_local"):
                        outs = self.program.forward(slot.inputs, streams)
                torch.cuda.synchronize(self.device)
            except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager
                torch.cuda.synchronize(self.device)
                self._fallback(key, f"CUDA-graph capture failed: {type(e).__name__}: {str(e)[:300]}")
                return
        slot.graph, slot.outputs = graph, outs
        self.captures += 1

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
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy().copy()


def program_from_plan(plan, backend=None, device: Optional[torch.device] = None) -> CudaProgram:
    """The ``CudaProgram`` of an engine plan (``ember.runtime.plan.Plan``): its graph, each layer's
    tactic and precision, its constants."""
    from ember.backends.cuda.program import LayerSpec

    layers = {layer.name: LayerSpec(layer.tactic, layer.precision) for layer in plan.layers}
    if device is not None and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    program = CudaProgram.build(plan.graph, layers, plan.graph.constants, backend=backend, device=device)
    program.use_graphs = bool(plan.config.cuda_graphs)
    return program
