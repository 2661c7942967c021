"""Vertical fusion of matrix products: bias, scale and activation into one FusedGemm.

    matmul(x, w) + b           => gemm(x, w, b)        (w 2-D, b along the output features)
    gemm(x, w, c) * s          => gemm(x, w * s, c * s) (s a scalar or per output feature)
    gemm(x, w, c) -> gelu      => gemm_gelu(x, w, c)   (and every other activation)

FusedGemm computes ``act(alpha * op(a) @ op(b) + beta * c)``; ``a`` may have batch dims (an
N-D activation times a 2-D weight, as in every transformer projection).
"""
from __future__ import annotations

from collections.abc import Callable

from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import Activation, FusedGemmAttrs, GemmAttrs
from ember.passes.activations import UNARY_ACTIVATIONS, ActOf, activation_patterns
from ember.passes.fold_weights import MUL_INTO_LINEAR, per_channel
from ember.passes.manager import PassContext, Phase, register_pass
from ember.passes.rewrite import Const, Match, Op, Rule, View, apply_rules

GEMM_LIKE = frozenset({OpType.GEMM, OpType.MATMUL, OpType.FUSED_GEMM})


def _is_gemm(node: Node, view: View) -> bool:
    """A Gemm, a MatMul of an N-D (N >= 2) input by a 2-D matrix, or a FusedGemm without an
    activation yet."""
    if node.op is OpType.MATMUL:
        a, b = view.graph.types.get(node.input(0)), view.graph.types.get(node.input(1))
        return a is not None and b is not None and a.rank >= 2 and b.rank == 2
    if node.op is OpType.FUSED_GEMM:
        return node.attrs.activation is Activation.NONE
    return True


def gemm_parts(node: Node) -> tuple[GemmAttrs, list[str]]:
    """(gemm attrs, [a, b, c]) of a Gemm, 2-D MatMul or FusedGemm."""
    if node.op is OpType.MATMUL:
        return GemmAttrs(), [node.input(0), node.input(1), ""]
    if node.op is OpType.FUSED_GEMM:
        return node.attrs.gemm, [node.input(0), node.input(1), node.input(2)]
    return node.attrs or GemmAttrs(), [node.input(0), node.input(1), node.input(2)]


def _fuse_bias(m: Match) -> list[Node] | None:
    lin = m.node("lin")
    attrs, (a, b, c) = gemm_parts(lin)
    out_t = m.type(lin.outputs[0])
    if c or m.type(m.root.outputs[0]) != out_t or not isinstance(out_t.shape[-1], int):
        return None
    bias = per_channel(m.const("bias"), out_t.rank, out_t.rank - 1, out_t.shape[-1])
    if bias is None:
        return None
    c = m.add_constant(f"{lin.name}_bias", bias.astype(m.const("bias").dtype))
    return [m.fuse(OpType.FUSED_GEMM, [a, b, c], FusedGemmAttrs(attrs))]


def _fuse_activation(act_of: ActOf) -> Callable[[Match], list[Node] | None]:
    def build(m: Match) -> list[Node] | None:
        act = act_of(m)
        if act is None:
            return None
        attrs, ins = gemm_parts(m.node("lin"))
        return [m.fuse(OpType.FUSED_GEMM, ins, FusedGemmAttrs(attrs, act[0], tuple(act[1])))]

    return build


def _gemm() -> Op:
    return Op(GEMM_LIKE, name="lin", where=_is_gemm)


def _activation_rules() -> list[Rule]:
    rules = []
    for spelling, pattern, act_of in activation_patterns(_gemm):
        if spelling == "act":
            for op in sorted(UNARY_ACTIVATIONS, key=lambda o: o.value):
                name = op.value.lower()
                rules.append(Rule(f"gemm(x, w, c) -> {name} => gemm_{name}(x, w, c)",
                                  Op(op, pattern.inputs, name="act", extra_inputs=True),
                                  _fuse_activation(act_of)))
        else:
            rules.append(Rule(f"gemm(x, w, c) -> {spelling} => gemm_{spelling}(x, w, c)", pattern,
                              _fuse_activation(act_of)))
    return rules


GEMM_BIAS = Rule("matmul(x, w) + b => gemm(x, w, b)",
                 Op(OpType.ADD, (Op(frozenset({OpType.MATMUL, OpType.FUSED_GEMM}), name="lin",
                                    where=_is_gemm), Const("bias"))),
                 _fuse_bias)
GEMM_ACTIVATIONS = _activation_rules()


@register_pass("fuse_gemm", Phase.FUSE)
def fuse_gemm(graph: Graph, ctx: PassContext) -> Graph:
    """MatMul/Gemm + bias + per-feature scale + activation -> FusedGemm."""
    return apply_rules(graph, [GEMM_BIAS, MUL_INTO_LINEAR, *GEMM_ACTIVATIONS], ctx)
