"""Measurement loops and latency statistics shared by ``ember bench`` and ``ember profile``.

GPU work is timed with CUDA events around each call (each iteration waits for its own end), CPU
work with ``time.perf_counter``; warm-up runs first; a time budget caps slow peers (ONNX Runtime
on the CPU at batch 128) while keeping at least ``min_iterations`` samples.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles in ms over ``count`` timed runs."""

    count: int
    min: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    max: float

    @staticmethod
    def of(samples_ms: Sequence[float]) -> LatencyStats:
        if not samples_ms:
            raise ValueError("no timing samples")
        a = np.asarray(samples_ms, dtype=np.float64)
        p = np.percentile(a, [50, 90, 95, 99])
        return LatencyStats(len(a), float(a.min()), float(a.mean()), float(p[0]), float(p[1]),
                            float(p[2]), float(p[3]), float(a.max()))

    def to_json(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def measure(fn: Callable[[], object], device: str, iterations: int, warmup: int,
            budget_s: Optional[float] = None, min_iterations: int = 3) -> list[float]:
    """Per-call times in ms of ``fn`` after ``warmup`` calls (CUDA events on ``cuda``)."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    samples: list[float] = []
    start_wall = time.perf_counter()
    for i in range(iterations):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        if budget_s is not None and i + 1 >= min_iterations and time.perf_counter() - start_wall > budget_s:
            break
    return samples


def wall_clock(fn: Callable[[], object], iterations: int, warmup: int,
               budget_s: Optional[float] = None, min_iterations: int = 3) -> list[float]:
    """Host wall-clock ms per call (the call must wait for its own results, like ``infer``)."""
    return measure(fn, "cpu", iterations, warmup, budget_s, min_iterations)
