"""Vertical fusion of convolutions: bias, residual Add and activation into one FusedConv.

    conv(x, w, b) + r          => conv_add(x, w, b, r)          (r: same shape, not constant)
    conv(x, w, b) -> relu      => conv_relu(x, w, b)            (and every other activation)
    conv(x, w, b) + r -> relu  => conv_add_relu(x, w, b, r)     (the two rules composed)

FusedConv computes ``act(conv(x, w) + b + r)``. When both operands of the Add are convolutions
(a ResNet block with a projection shortcut) the later one takes the other as its residual.
"""
from __future__ import annotations

from collections.abc import Callable

from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import Activation, ConvAttrs, FusedConvAttrs
from ember.passes.activations import UNARY_ACTIVATIONS, ActOf, activation_patterns
from ember.passes.manager import PassContext, Phase, register_pass
from ember.passes.rewrite import Match, Op, Rule, Var, View, apply_rules

CONV_LIKE = frozenset({OpType.CONV, OpType.FUSED_CONV})


def _open_epilogue(node: Node, view: View) -> bool:
    """A conv whose epilogue has no activation yet (a FusedConv may already have a residual)."""
    return node.op is OpType.CONV or node.attrs.activation is Activation.NONE


def _no_residual(node: Node, view: View) -> bool:
    return _open_epilogue(node, view) and (node.op is OpType.CONV or not node.attrs.has_residual)


def conv_parts(conv: Node) -> tuple[ConvAttrs, list[str], str]:
    """(conv attrs, [x, w, b], residual) of a Conv or FusedConv."""
    if conv.op is OpType.CONV:
        return conv.attrs, [conv.input(0), conv.input(1), conv.input(2)], ""
    return conv.attrs.conv, [conv.input(0), conv.input(1), conv.input(2)], conv.input(3)


def _fuse_activation(act_of: ActOf) -> Callable[[Match], list[Node] | None]:
    def build(m: Match) -> list[Node] | None:
        act = act_of(m)
        if act is None:
            return None
        conv = m.node("lin")
        attrs, ins, residual = conv_parts(conv)
        fused = FusedConvAttrs(attrs, act[0], tuple(act[1]), bool(residual))
        return [m.fuse(OpType.FUSED_CONV, ins + [residual], fused)]

    return build


def _fuse_residual(m: Match) -> list[Node] | None:
    conv, r = m.node("lin"), m["r"]
    out = conv.outputs[0]
    if r == out or r in m.graph.constants or m.type(r) != m.type(out) \
            or m.type(m.root.outputs[0]) != m.type(out):
        return None
    other = m.view.producer(r)
    if other is not None and other.op in CONV_LIKE and _no_residual(other, m.view) \
            and m.view.index[other.name] > m.view.index[conv.name] and len(m.view.readers(r)) == 1:
        return None  # the later conv takes the earlier one's output as its residual
    attrs, ins, _ = conv_parts(conv)
    return [m.fuse(OpType.FUSED_CONV, ins + [r], FusedConvAttrs(attrs, Activation.NONE, (), True))]


def _conv() -> Op:
    return Op(CONV_LIKE, name="lin", where=_open_epilogue)


def _activation_rules() -> list[Rule]:
    rules = []
    for spelling, pattern, act_of in activation_patterns(_conv):
        if spelling == "act":
            for op in sorted(UNARY_ACTIVATIONS, key=lambda o: o.value):
                p = Op(op, pattern.inputs, name="act", extra_inputs=True)
                name = op.value.lower()
                rules.append(Rule(f"conv(x, w, b) -> {name} => conv_{name}(x, w, b)", p,
                                  _fuse_activation(act_of)))
        else:
            rules.append(Rule(f"conv(x, w, b) -> {spelling} => conv_{spelling}(x, w, b)", pattern,
                              _fuse_activation(act_of)))
    return rules


CONV_RESIDUAL = Rule("conv(x, w, b) + r => conv_add(x, w, b, r)",
                     Op(OpType.ADD, (Op(CONV_LIKE, name="lin", where=_no_residual), Var("r"))),
                     _fuse_residual)
CONV_ACTIVATIONS = _activation_rules()


@register_pass("fuse_conv", Phase.FUSE)
def fuse_conv(graph: Graph, ctx: PassContext) -> Graph:
    """Conv + residual Add + activation -> FusedConv."""
    return apply_rules(graph, [CONV_RESIDUAL, *CONV_ACTIVATIONS], ctx)
