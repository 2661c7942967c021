"""The layout plan as kernels read it: which memory format a 4-D tensor is to be stored in.

``assign_layout`` (``ember/passes/layout.py``) writes ``graph.meta["layout"]`` (contract in
docs/CONTRACTS.md): ``"nhwc"`` lists the 4-D float activations stored channels-last and
``"weights"`` the conv weights converted to channels-last once, at compile time; every other
4-D activation of a planned graph is stored contiguous (NCHW). Both backends read the plan
through these functions, at compile time, so a kernel's output format is fixed before it runs:

- ``planned_format(ctx_or_graph, tensor)``: ``torch.channels_last`` or
  ``torch.contiguous_format`` where the plan speaks of ``tensor``; ``None`` where there is no
  plan (a graph built by hand, an engine file from before the plan, ``optimize=False``) or the
  tensor is not a 4-D activation. ``None`` means: keep the kernel's own behaviour.
- ``planned_weight_format(ctx_or_graph, weight)``: the same for a conv weight constant.
- ``allows_channels_last(graph, tensor)``: for tactic ``when`` predicates of kernels that can only
  write channels-last: False exactly where the plan stores the tensor NCHW.
- ``to_format(t, fmt)``: ``t`` in ``fmt`` (no copy when it already is; ``None`` leaves it).
"""
from __future__ import annotations

from typing import Mapping, Optional, Union

import torch

from ember.backends.base import CompileContext
from ember.errors import BuildError
from ember.ir.graph import Graph

CHANNELS_LAST = torch.channels_last
NCHW = torch.contiguous_format

Where = Union[CompileContext, Graph, None]


def _graph(where: Where) -> Optional[Graph]:
    return where.graph if isinstance(where, CompileContext) else where


#: checked plans with their name sets, by ``id``: every kernel of a build asks about one plan,
#: which must not cost a scan of the whole plan per question (quadratic on large graphs)
_CHECKED: dict[int, tuple[Mapping, frozenset, frozenset]] = {}


def layout_plan(where: Where) -> Optional[Mapping]:
    """``graph.meta["layout"]`` checked for shape, or ``None`` when the graph has none."""
    found = _checked(where)
    return None if found is None else found[0]


def _checked(where: Where) -> Optional[tuple[Mapping, frozenset, frozenset]]:
    """The plan, its channels-last activations and its converted weights (checked once)."""
    graph = _graph(where)
    if graph is None:
        return None
    plan = graph.meta.get("layout")
    if plan is None:
        return None
    hit = _CHECKED.get(id(plan))
    if hit is not None and hit[0] is plan:
        return hit
    if not isinstance(plan, Mapping) or plan.get("preferred") not in ("nchw", "nhwc") or not all(
            isinstance(plan.get(k, []), (list, tuple)) and all(isinstance(n, str) for n in plan.get(k, []))
            for k in ("nhwc", "weights")):
        raise BuildError(f"graph {graph.name!r}: meta['layout'] is malformed ({str(plan)[:200]}); it "
                         f"needs 'preferred' ('nchw' or 'nhwc') and lists of tensor names 'nhwc' and "
                         f"'weights'. Rebuild the engine")
    if len(_CHECKED) >= 16:
        _CHECKED.clear()
    hit = _CHECKED[id(plan)] = (plan, frozenset(plan.get("nhwc", ())), frozenset(plan.get("weights", ())))
    return hit


def _is_4d(graph: Graph, name: str) -> bool:
    t = graph.types.get(name)
    return t is not None and t.rank == 4


def planned_format(where: Where, tensor: str) -> Optional[torch.memory_format]:
    """The memory format the plan stores 4-D activation ``tensor`` in (``None``: no plan for it)."""
    found = _checked(where)
    if found is None or not tensor:
        return None
    graph = _graph(where)
    if tensor in graph.constants or not _is_4d(graph, tensor):  # type: ignore[union-attr]
        return None
    return CHANNELS_LAST if tensor in found[1] else NCHW


def planned_weight_format(where: Where, weight: str) -> Optional[torch.memory_format]:
    """The memory format the plan keeps 4-D conv weight ``weight`` in (``None``: no plan)."""
    found = _checked(where)
    if found is None or not weight:
        return None
    graph = _graph(where)
    t = graph.types.get(weight)  # type: ignore[union-attr]
    c = graph.constants.get(weight)  # type: ignore[union-attr]
    rank = t.rank if t is not None else (c.ndim if c is not None else 0)
    if rank != 4:
        return None
    return CHANNELS_LAST if weight in found[2] else NCHW


def allows_channels_last(graph: Optional[Graph], tensor: str) -> bool:
    """False exactly where the plan stores ``tensor`` NCHW (a channels-last-only tactic's ``when``)."""
    return planned_format(graph, tensor) is not NCHW


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


__all__ = ["CHANNELS_LAST", "NCHW", "allows_channels_last", "dense", "layout_plan", "planned_format",
           "planned_weight_format", "to_format"]
