"""CUDA-graph capture, one at a time in this process.

Entering a capture synchronizes the device, which must not happen while another thread is in
the middle of its own capture. So every capture Ember makes (an execution context's graph per
input shape, ``executor.CudaExecutor``; tactic timing inside a graph, ``tuning.graph_measure``)
holds ``CAPTURE_LOCK`` from its warm-up to its end, and captures with ``capture_graph`` in
``thread_local`` error mode (other threads' CUDA calls outside any capture stay legal).
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional, TypeVar

import torch

T = TypeVar("T")

#: Held around every capture in this process (see module docstring).
CAPTURE_LOCK = threading.Lock()


def capture_graph(fn: Callable[[], T], *, stream: Optional[torch.cuda.Stream] = None,
                  pool: Any = None) -> tuple[torch.cuda.CUDAGraph, T]:
    """Captures ``fn()`` into a new CUDA graph on ``stream`` (default: PyTorch's capture stream),
    its allocations from ``pool`` (a ``torch.cuda.graph_pool_handle()``; default: a private pool
    of its own); returns the graph and what ``fn`` returned (tensors that each replay refills in
    place). The caller holds ``CAPTURE_LOCK``; a failure raises what the capture raised."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
        result = fn()
    return graph, result
