"""Horizontal fusion: sibling layers that read the same input become one wider layer + Split.

- Convolutions with constant weights reading the same tensor with the same kernel, stride,
  padding, dilation, group 1 and epilogue (the 1x1 branches of an Inception block) -> one conv
  whose output channels are the branches' concatenated, then a Split on the channel axis.
- Matrix products of the same input by constant 2-D weights with the same epilogue (the Q, K, V
  projections of attention) -> one FusedGemm over the concatenated weights, then a Split on the
  last axis.

The Split writes the branches' original tensor names, so every reader is untouched; the wide
layer sits where the first branch was, which is before every branch's readers.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import Activation, FusedConvAttrs, FusedGemmAttrs, GemmAttrs, SplitAttrs
from ember.passes.edit import dead_code
from ember.passes.fold_weights import per_channel
from ember.passes.manager import PassContext, Phase, register_pass


@dataclass(frozen=True)
class Branch:
    """One sibling: its node, weight, bias (as a vector, zeros when absent) and output width."""

    node: Node
    weight: np.ndarray
    bias: np.ndarray
    width: int


def _conv_branch(node: Node, g: Graph) -> tuple[Hashable, Branch] | None:
    if node.op not in (OpType.CONV, OpType.FUSED_CONV):
        return None
    if node.op is OpType.FUSED_CONV:
        a = node.attrs
        if a.has_residual:
            return None
        conv, act, params = a.conv, a.activation, a.act_params
    else:
        conv, act, params = node.attrs, Activation.NONE, ()
    w = g.constant(node.input(1))
    b = g.constant(node.input(2)) if node.input(2) else np.zeros(0, np.float32)
    if w is None or b is None or conv.group != 1:
        return None
    bias = b.astype(w.dtype) if node.input(2) else np.zeros(w.shape[0], w.dtype)
    key = ("conv", node.input(0), conv, act, params, w.shape[1:], w.dtype.str)
    return key, Branch(node, w, bias, int(w.shape[0]))


def _gemm_branch(node: Node, g: Graph) -> tuple[Hashable, Branch] | None:
    if node.op is OpType.MATMUL:
        attrs, act, params = GemmAttrs(), Activation.NONE, ()
    elif node.op is OpType.FUSED_GEMM:
        attrs, act, params = node.attrs.gemm, node.attrs.activation, node.attrs.act_params
    elif node.op is OpType.GEMM:
        attrs, act, params = node.attrs or GemmAttrs(), Activation.NONE, ()
    else:
        return None
    w = g.constant(node.input(1))
    out_t = g.types.get(node.outputs[0])
    a_t = g.types.get(node.input(0))
    if w is None or w.ndim != 2 or attrs.trans_a or out_t is None or a_t is None or a_t.rank < 2 \
            or not isinstance(out_t.shape[-1], int):
        return None
    width = int(w.shape[0] if attrs.trans_b else w.shape[1])
    if node.input(2):
        c = g.constant(node.input(2))
        bias = per_channel(c, out_t.rank, out_t.rank - 1, width) if c is not None else None
        if bias is None:
            return None
        bias = (attrs.beta * bias).astype(w.dtype)
    else:
        bias = np.zeros(width, w.dtype)
    key = ("gemm", node.input(0), attrs.alpha, attrs.trans_b, act, params, w.shape[1 if attrs.trans_b else 0],
           w.dtype.str, g.types[node.input(0)].rank)
    return key, Branch(node, w, bias, width)


def _wide_conv(group: list[Branch], g: Graph, name: str, out: str) -> Node:
    first = group[0].node
    w = g.add_constant(f"{name}_w", np.concatenate([b.weight for b in group], axis=0))
    b = g.add_constant(f"{name}_b", np.concatenate([b.bias for b in group]))
    a = first.attrs if first.op is OpType.FUSED_CONV else FusedConvAttrs(first.attrs)
    return Node(name, OpType.FUSED_CONV, (first.inputs[0], w, b), (out,), a, _origin(group), _RULE_CONV)


def _wide_gemm(group: list[Branch], g: Graph, name: str, out: str) -> Node:
    first = group[0].node
    if first.op is OpType.FUSED_GEMM:
        attrs, act, params = first.attrs.gemm, first.attrs.activation, first.attrs.act_params
    else:
        attrs = (first.attrs if first.op is OpType.GEMM else None) or GemmAttrs()
        act, params = Activation.NONE, ()
    axis = 0 if attrs.trans_b else 1
    w = g.add_constant(f"{name}_w", np.concatenate([b.weight for b in group], axis=axis))
    c = g.add_constant(f"{name}_bias", np.concatenate([b.bias for b in group]))
    fused = FusedGemmAttrs(GemmAttrs(attrs.alpha, 1.0, False, attrs.trans_b), act, params)
    return Node(name, OpType.FUSED_GEMM, (first.inputs[0], w, c), (out,), fused, _origin(group), _RULE_GEMM)


def _origin(group: list[Branch]) -> tuple[str, ...]:
    origin: list[str] = []
    for b in group:
        origin.extend(o for o in b.node.origin if o not in origin)
    return tuple(origin)


_RULE_CONV = "convs(x) with one kernel => wide_conv(x) + split"
_RULE_GEMM = "matmuls(x, w_i) + b_i => gemm(x, [w_i], [b_i]) + split"

Classify = Callable[[Node, Graph], tuple[Hashable, Branch] | None]
#: (group, graph, node name, output tensor) -> the wide node computing every branch at once
MakeWide = Callable[[list[Branch], Graph, str, str], Node]


def _merge(graph: Graph, ctx: PassContext, classify: Classify, make: MakeWide,
           axis_of: Callable[[int], int], rule: str) -> Graph:
    groups: dict[Hashable, list[Branch]] = {}
    for node in graph.nodes:
        found = classify(node, graph)
        if found is not None:
            groups.setdefault(found[0], []).append(found[1])
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if not groups:
        return graph
    g = graph.copy()
    replace: dict[str, list[Node]] = {}
    drop: set[str] = set()
    for group in groups.values():
        first = group[0].node
        out_t = g.types[first.outputs[0]]
        axis = axis_of(out_t.rank)
        wide = out_t.with_shape(out_t.shape[:axis] + (sum(b.width for b in group),) + out_t.shape[axis + 1:])
        name = g.fresh_name(f"{first.name}_wide")
        out = g.fresh_name(f"{first.outputs[0]}_wide")
        g.types[out] = wide
        wide_node = make(group, g, name, out)
        split = Node(g.fresh_name(f"{name}_split"), OpType.SPLIT, (out,),
                     tuple(b.node.outputs[0] for b in group),
                     SplitAttrs(axis=axis, split=tuple(b.width for b in group)), wide_node.origin, rule)
        replace[first.name] = [wide_node, split]
        drop.update(b.node.name for b in group[1:])
        ctx.count(rule)
    nodes: list[Node] = []
    for n in g.nodes:
        if n.name in replace:
            nodes.extend(replace[n.name])
        elif n.name not in drop:
            nodes.append(n)
    g.nodes = nodes
    return dead_code(g, ctx.protected(g) | set(g.inputs))


@register_pass("fuse_horizontal_conv", Phase.FUSE)
def fuse_horizontal_conv(graph: Graph, ctx: PassContext) -> Graph:
    """Sibling convolutions with one kernel on one input -> one wide conv + Split."""
    return _merge(graph, ctx, _conv_branch, _wide_conv, lambda rank: 1, _RULE_CONV)


@register_pass("fuse_horizontal_gemm", Phase.FUSE)
def fuse_horizontal_gemm(graph: Graph, ctx: PassContext) -> Graph:
    """Sibling matrix products of one input by constant weights -> one FusedGemm + Split."""
    return _merge(graph, ctx, _gemm_branch, _wide_gemm, lambda rank: rank - 1, _RULE_GEMM)
