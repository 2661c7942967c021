"""Concat elimination: producers of a Concat write straight into their slice of its output.

The pass does not change the nodes; it records, for every Concat whose inputs can be written
in place, where each input lives inside the output (a ``ConcatPlan`` in ``ctx.records.concat``,
``ember.plan.records``). A runtime that honours it allocates the Concat's output once, hands each
producer a view of its slice as the output buffer, and skips the Concat (no copy), as TensorRT
does for Inception blocks.

An input is written in place (``in_place``) when it is written by a node (not a graph input or
constant) whose kernel makes a fresh tensor (not a view op), is read by this Concat alone, is
not protected (graph output, kept tensor); the other inputs are copied into their slices as
before. A Concat is listed when its inputs are distinct, shapes static, and at least one input
is in place.
"""
from __future__ import annotations

from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.passes.manager import PassContext, Phase, register_pass
from ember.plan.records import ConcatEntry, ConcatPlan, ConcatSlice

#: Ops whose CPU/CUDA kernels may return views of their inputs: their output cannot be
#: redirected into another buffer.
VIEW_OPS = frozenset({OpType.RESHAPE, OpType.FLATTEN, OpType.SQUEEZE, OpType.UNSQUEEZE,
                      OpType.TRANSPOSE, OpType.SLICE, OpType.SPLIT, OpType.EXPAND,
                      OpType.IDENTITY, OpType.DROPOUT, OpType.GATHER})


def _axis(node: Node, rank: int) -> int:
    axis = node.attrs.axis if node.attrs is not None else 0
    return axis + rank if axis < 0 else axis


def _slices(node: Node, g: Graph, producers: dict[str, Node], readers: dict[str, list[Node]],
            protected: set[str]) -> ConcatEntry | None:
    out_t = g.types.get(node.outputs[0])
    ins = [i for i in node.inputs if i]
    if out_t is None or not out_t.is_static or len(ins) < 2 or len(set(ins)) != len(ins):
        return None
    axis = _axis(node, out_t.rank)
    slices: list[ConcatSlice] = []
    start = 0
    for t in ins:
        p = producers.get(t)
        tt = g.types.get(t)
        if tt is None or not tt.is_static:
            return None
        in_place = not (p is None or p.op in VIEW_OPS or t in protected
                        or [r.name for r in readers.get(t, [])] != [node.name]
                        or len([o for o in p.outputs if o]) != 1)
        size = int(tt.shape[axis])
        slices.append(ConcatSlice(t, start, start + size, in_place))
        start += size
    if not any(s.in_place for s in slices):
        return None
    contiguous = all(d == 1 for d in out_t.shape[:axis])
    return ConcatEntry(node.outputs[0], axis, tuple(slices), contiguous)


@register_pass("plan_concat_slices", Phase.LAYOUT)
def plan_concat_slices(graph: Graph, ctx: PassContext) -> Graph:
    """Marks Concats whose inputs can be written into slices of the output buffer."""
    producers, readers = graph.producers(), graph.consumers()
    protected = ctx.protected(graph)
    found: dict[str, ConcatEntry] = {}
    for node in graph.nodes:
        if node.op is OpType.CONCAT:
            entry = _slices(node, graph, producers, readers, protected)
            if entry is not None:
                found[node.name] = entry
    plan = ConcatPlan(found)
    if ctx.records.concat == plan:
        return graph
    ctx.count("concat(a, b) => a, b written into slices of one buffer", len(plan))
    ctx.records = ctx.records.with_(concat=plan)
    return graph
