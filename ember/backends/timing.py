"""The generic tactic timer: compile the node with each tactic and take the median wall time.

Backends without a timer of their own (the CPU) hand this one to the builder through
``Backend.make_timer``; the CUDA backend times inside CUDA graphs with events instead
(``ember.backends.cuda.tuning``).
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Mapping, Optional, Sequence

import torch

from ember.backends.base import Backend, CompileContext, TacticTimer
from ember.backends.tensors import random_tensor
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.plan.config import BuildConfig, Precision
from ember.plan.records import Records


def fastest(candidates: Sequence[str], timings: Mapping[str, float], margin: tuple[float, float] = (0.0, 0.0)) -> str:
    """The candidate with the fastest finite timing; ties and all-failed go to the earlier
    (preferred) candidate, and another candidate beats a first (default) one that ran only if it
    is faster by both parts of ``margin``: a fraction of the default's time, and milliseconds
    (``Backend.switch_margin``: a near tie on a noisy machine keeps the default)."""
    best = min(candidates, key=lambda c: (timings.get(c, math.inf), candidates.index(c)))
    t_best, t_default = timings.get(best, math.inf), timings.get(candidates[0], math.inf)
    if not math.isfinite(t_best):
        return candidates[0]
    if best != candidates[0] and math.isfinite(t_default):
        rel, ms = margin
        if t_default - t_best <= max(rel * t_default, ms):
            return candidates[0]
    return best


def wall_clock_timer(backend: Backend, constants: Mapping[str, torch.Tensor], device: torch.device,
                     records: Records, config: BuildConfig, warmup: int = 2, reps: int = 5,
                     stored_dtype: Optional[Callable[[Precision], Optional[torch.dtype]]] = None) -> TacticTimer:
    """A ``TacticTimer`` that compiles the node with each tactic and takes the median wall time.

    Nodes with a non-constant input of symbolic shape cannot be timed and report ``inf``;
    a tactic whose compilation or run raises is reported as ``inf`` too (it is never chosen).
    ``stored_dtype(precision)``: the dtype a layer of that precision reads its float32 activations
    in, where the engine stores them otherwise (the CPU's half layers: 16 bits), so tactics are
    timed on what they will be given; None: as the graph types them.
    """

    def timer(node: Node, graph: Graph, tactic: str, precision: Precision) -> float:
        types = [graph.types[i] if i else None for i in node.inputs]
        if any(t is not None and not t.is_static for t in types):
            return math.inf
        try:
            ctx = CompileContext(graph, constants, device, tactic, precision, records, config)
            kernel = backend.compile_node(node, ctx)
            cast = stored_dtype(precision) if stored_dtype is not None else None
            args = [constants[i] if i in constants else (random_tensor(t, device) if t else None)
                    for i, t in zip(node.inputs, types)]
            if cast is not None:
                args = [a.to(cast) if a is not None and name not in constants and t is not None
                        and t.dtype is DType.FLOAT32 else a for a, name, t in zip(args, node.inputs, types)]
            with torch.inference_mode():
                samples = []
                for k in range(warmup + reps):
                    _sync(device)
                    t0 = time.perf_counter()
                    kernel(args)
                    _sync(device)
                    if k >= warmup:
                        samples.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(samples)
        except Exception:  # noqa: BLE001 - a tactic that cannot run is simply not chosen
            return math.inf

    return timer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
