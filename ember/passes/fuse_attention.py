"""Attention: ``softmax(q @ k^T * scale + mask) @ v`` into one FusedAttention.

    MatMul(q, kt) -> Mul/Div by a scalar -> [Add mask] -> Softmax(last axis) -> MatMul(., v)
        => FusedAttention(q, kt, v, mask; scale, k_transposed=True)

Exporters also scale q and k separately (``q * s^0.5 @ (k * s^0.5)^T``); those scalar Muls fold
into ``scale``. The normalizer must be a Softmax over the last axis: a Sigmoid, ReLU or a
Softmax over another axis is not attention as FusedAttention computes it, and stays.
"""
from __future__ import annotations

from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import FusedAttentionAttrs
from ember.passes.edit import scalar_value
from ember.passes.manager import PassContext, Phase, register_pass
from ember.passes.rewrite import Const, Match, Op, Rule, Var, View, alt, apply_rules


def _scalar(name: str) -> Const:
    return Const(name, lambda v: v.size == 1)


def _last_axis_softmax(node: Node, view: View) -> bool:
    rank = view.type(node.inputs[0]).rank
    axis = node.attrs.axis if node.attrs is not None else -1
    return (axis + rank if axis < 0 else axis) == rank - 1


def _scale(m: Match) -> float | None:
    scale = 1.0
    for name in ("sq", "sk"):
        if m.has(name):
            scale *= scalar_value(m.const(name)) or 0.0
    if m.has("s"):
        s = scalar_value(m.const("s"))
        if not s:
            return None
        scale *= 1.0 / s if m.node("scale").op is OpType.DIV else s
    return scale if scale else None


def _attention(m: Match) -> list[Node] | None:
    q, k, v = m["q"], m["k"], m["v"]
    qt, kt, vt = m.type(q), m.type(k), m.type(v)
    if min(qt.rank, kt.rank, vt.rank) < 2 or not qt.dtype.is_float:
        return None
    scale = _scale(m)
    if scale is None:
        return None
    mask = m.get("mask")
    if mask and (mask in (q, k, v) or m.type(mask).dtype != qt.dtype):
        return None  # (a mask may broadcast the scores: FusedAttention broadcasts the same way)
    return [m.fuse(OpType.FUSED_ATTENTION, [q, k, v, mask], FusedAttentionAttrs(scale, True),
                   name=m.node("qk").name)]


def _attention_pattern() -> Op:
    q = alt(Op(OpType.MUL, (Var("q"), _scalar("sq")), name="q_scale"), Var("q"))
    k = alt(Op(OpType.MUL, (Var("k"), _scalar("sk")), name="k_scale"), Var("k"))
    qk = Op(OpType.MATMUL, (q, k), name="qk")
    scaled = alt(Op(frozenset({OpType.MUL, OpType.DIV}), (qk, _scalar("s")), name="scale"), qk)
    masked = alt(Op(OpType.ADD, (scaled, Var("mask")), name="mask_add"), scaled)
    probs = Op(OpType.SOFTMAX, (masked,), name="softmax", where=_last_axis_softmax)
    return Op(OpType.MATMUL, (probs, Var("v")))


ATTENTION = Rule("softmax(q @ k^T * s + mask) @ v => attention(q, k, v, mask)",
                 _attention_pattern(), _attention)


@register_pass("fuse_attention", Phase.FUSE)
def fuse_attention(graph: Graph, ctx: PassContext) -> Graph:
    """MatMul-scale-mask-Softmax-MatMul -> FusedAttention."""
    return apply_rules(graph, [ATTENTION], ctx)
