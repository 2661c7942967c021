"""The generic tactic timer: compile the node with each tactic and take the median wall time.

Backends without a timer of their own (the CPU) hand this one to the builder through
``Backend.make_timer``; the CUDA backend times inside CUDA graphs with events instead
(``ember.backends.cuda.tuning``).
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Mapping

import torch

from ember.backends.base import Backend, CompileContext, TacticTimer
from ember.backends.tensors import random_tensor
from ember.ir.graph import Graph, Node
from ember.plan.config import BuildConfig, Precision
from ember.plan.records import Records


def wall_clock_timer(backend: Backend, constants: Mapping[str, torch.Tensor], device: torch.device,
                     records: Records, config: BuildConfig, warmup: int = 2, reps: int = 5) -> TacticTimer:
    """A ``TacticTimer`` that compiles the node with each tactic and takes the median wall time.

    Nodes with a non-constant input of symbolic shape cannot be timed and report ``inf``;
    a tactic whose compilation or run raises is reported as ``inf`` too (it is never chosen).
    """

    def timer(node: Node, graph: Graph, tactic: str, precision: Precision) -> float:
        types = [graph.types[i] if i else None for i in node.inputs]
        if any(t is not None and not t.is_static for t in types):
            return math.inf
        try:
            ctx = CompileContext(graph, constants, device, tactic, precision, records, config)
            kernel = backend.compile_node(node, ctx)
            args = [constants[i] if i in constants else (random_tensor(t, device) if t else None)
                    for i, t in zip(node.inputs, types)]
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
