"""The layout plan as kernels read it: which memory format a 4-D tensor is to be stored in.

``assign_layout`` (``ember/passes/layout.py``) records a ``LayoutPlan`` (``Records.layout``,
``ember.plan.records``): ``nhwc`` lists the 4-D float activations stored channels-last and
``weights`` the conv weights converted to channels-last once, at compile time; every other 4-D
activation of a planned graph is stored contiguous (NCHW). Both backends read the plan through
these functions, at compile time, so a kernel's output format is fixed before it runs:

- ``planned_format(ctx, tensor)``: ``torch.channels_last`` or ``torch.contiguous_format`` where
  the plan speaks of ``tensor``; ``None`` where there is no plan (a graph built by hand,
  ``optimize=False``) or the tensor is not a 4-D activation. ``None`` means: keep the kernel's own
  behaviour. ``format_in(graph, layout, tensor)`` is the same outside a ``CompileContext``.
- ``planned_weight_format(ctx, weight)``: the same for a conv weight constant.
- ``to_format(t, fmt)``: ``t`` in ``fmt`` (no copy when it already is; ``None`` leaves it).

Tactics that can only write channels-last are registered with ``channels_last_only=True``
(``ember.backends.kernel_registry``): they do not apply where the plan stores the output NCHW.
"""
from __future__ import annotations

from typing import Optional

import torch

from ember.backends.base import CompileContext
from ember.ir.graph import Graph
from ember.plan.records import LayoutPlan

CHANNELS_LAST = torch.channels_last
NCHW = torch.contiguous_format


def _is_4d(graph: Graph, name: str) -> bool:
    t = graph.types.get(name)
    return t is not None and t.rank == 4


def format_in(graph: Graph, layout: Optional[LayoutPlan], tensor: str) -> Optional[torch.memory_format]:
    """The memory format ``layout`` stores 4-D activation ``tensor`` of ``graph`` in (``None``:
    no plan, or not a 4-D activation)."""
    if layout is None or not tensor or tensor in graph.constants or not _is_4d(graph, tensor):
        return None
    return CHANNELS_LAST if layout.is_channels_last(tensor) else NCHW


def planned_format(ctx: CompileContext, tensor: str) -> Optional[torch.memory_format]:
    """The memory format the plan stores 4-D activation ``tensor`` in (``None``: no plan for it)."""
    return format_in(ctx.graph, ctx.records.layout, tensor)


def planned_weight_format(ctx: CompileContext, weight: str) -> Optional[torch.memory_format]:
    """The memory format the plan keeps 4-D conv weight ``weight`` in (``None``: no plan)."""
    layout = ctx.records.layout
    if layout is None or not weight:
        return None
    t = ctx.graph.types.get(weight)
    c = ctx.graph.constants.get(weight)
    rank = t.rank if t is not None else (c.ndim if c is not None else 0)
    if rank != 4:
        return None
    return CHANNELS_LAST if weight in layout.weights else NCHW


def dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill one block of memory exactly once, in some order of its dims:
    packed in any memory format (contiguous, channels-last, any permutation), at any offset; not
    a broadcast, not a slice with gaps. Size-1 dims do not count. Works on meta tensors."""
    if t.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted((st, d) for d, st in zip(t.shape, t.stride()) if d != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def to_format(t: Optional[torch.Tensor], fmt: Optional[torch.memory_format]) -> Optional[torch.Tensor]:
    """``t`` in memory format ``fmt`` when it is 4-D (no copy when it already is; ``None``: as is)."""
    if fmt is None or t is None or t.dim() != 4 or t.is_contiguous(memory_format=fmt):
        return t
    return t.contiguous(memory_format=fmt)


__all__ = ["CHANNELS_LAST", "NCHW", "dense", "format_in", "planned_format", "planned_weight_format",
           "to_format"]
