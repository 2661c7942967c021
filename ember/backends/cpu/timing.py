"""The CPU's tactic timer: the generic wall-clock timer (``ember.backends.timing``), with each
layer's activation inputs in the dtype the engine stores them in.

A half-precision layer reads 16-bit activations (``ember.backends.cpu.half.storage_dtype``; the
build planned the conversions), so its tactics are timed on 16-bit inputs: a 16-bit oneDNN
kernel and the fp32 alternative (which converts its input) are then compared as they would run.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Mapping

import torch

from ember.backends.base import Backend, CompileContext, TacticTimer
from ember.backends.tensors import compute_dtype, random_tensor
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.plan.config import BuildConfig, Precision
from ember.plan.records import Records


def cpu_timer(backend: Backend, constants: Mapping[str, torch.Tensor], device: torch.device,
              records: Records, config: BuildConfig, warmup: int = 2, reps: int = 5) -> TacticTimer:
    """``timer(node, graph, tactic, precision) -> ms``: the median wall time of the tactic's
    kernel; ``inf`` for a node with a symbolic input shape or a tactic that cannot run."""

    def timer(node: Node, graph: Graph, tactic: str, precision: Precision) -> float:
        types = [graph.types[i] if i else None for i in node.inputs]
        if any(t is not None and not t.is_static for t in types):
            return math.inf
        half = compute_dtype(precision) if Precision(precision).is_half else None
        try:
            kernel = backend.compile_node(node, CompileContext(graph, constants, device, tactic, precision,
                                                               records, config))
            args = []
            for name, t in zip(node.inputs, types):
                if name in constants or t is None:
                    args.append(constants.get(name))
                    continue
                x = random_tensor(t, device)
                args.append(x.to(half) if half is not None and t.dtype is DType.FLOAT32 else x)
            with torch.inference_mode():
                samples = []
                for k in range(warmup + reps):
                    t0 = time.perf_counter()
                    kernel(args)
                    if k >= warmup:
                        samples.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(samples)
        except Exception:  # noqa: BLE001 - a tactic that cannot run is simply not chosen
            return math.inf

    return timer


__all__ = ["cpu_timer"]
