"""Vertical fusion of elementwise chains: connected elementwise ops -> one FusedElementwise.

    sub(x, m) -> mul(., s) -> add(., b) -> relu   => fused_elementwise(x, m, s, b)

After the library fusions (conv/GEMM epilogues, GELU, LayerNorm, attention) took what they
can, the elementwise ops left over are grouped into maximal connected groups that compute one
tensor: every member's output except the group's last is read by members alone and is not
protected (graph outputs, ``PassContext.keep``), so the group is convex and nothing outside
sees an intermediate. A group of two or more ops becomes one ``FusedElementwise`` node whose
steps are the members in graph order (``ember.ops.attrs.FusedStep``); its inputs are the
distinct tensors the group reads from outside, its output keeps the last member's tensor name.
Diamonds inside a group are fine (a step may read an earlier step's result twice).

Members are unary activations and math ops, binary arithmetic and comparisons with numpy
broadcasting, logical ops, PRelu, Where, Cast, variadic Max/Min, and Clip whose bounds are
attributes or constant scalars (folded into the step's attributes). Every dtype is kept exactly:
each step computes what the op computes alone (the CPU kernel runs each step's own kernel; the
CUDA Triton kernel types each step the same way).
"""
from __future__ import annotations

from ember.errors import ShapeError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import ClipAttrs, FusedElementwiseAttrs, FusedStep
from ember.ops.common import broadcast_shapes
from ember.passes.edit import dead_code, scalar_value
from ember.passes.manager import PassContext, Phase, register_pass

RULE = "elementwise chain => fused_elementwise"

UNARY = frozenset({
    OpType.RELU, OpType.LEAKY_RELU, OpType.SIGMOID, OpType.TANH, OpType.HARD_SIGMOID,
    OpType.HARD_SWISH, OpType.GELU, OpType.ERF, OpType.SQRT, OpType.EXP, OpType.LOG, OpType.NEG,
    OpType.ABS, OpType.RECIPROCAL, OpType.NOT, OpType.FLOOR, OpType.CEIL, OpType.ROUND,
    OpType.SIGN, OpType.SIN, OpType.COS, OpType.TAN, OpType.ASIN, OpType.ACOS, OpType.ATAN,
    OpType.SINH, OpType.COSH, OpType.ASINH, OpType.ACOSH, OpType.ATANH, OpType.IS_NAN,
    OpType.IS_INF, OpType.SOFTPLUS, OpType.SOFTSIGN, OpType.MISH, OpType.ELU, OpType.CELU,
    OpType.SELU, OpType.THRESHOLDED_RELU, OpType.BITWISE_NOT, OpType.CAST,
})
BINARY = frozenset({
    OpType.ADD, OpType.SUB, OpType.MUL, OpType.DIV, OpType.POW, OpType.MOD, OpType.PRELU,
    OpType.EQUAL, OpType.LESS, OpType.GREATER, OpType.LESS_OR_EQUAL, OpType.GREATER_OR_EQUAL,
    OpType.AND, OpType.OR, OpType.XOR, OpType.BITWISE_AND, OpType.BITWISE_OR, OpType.BITWISE_XOR,
})
VARIADIC = frozenset({OpType.MAX, OpType.MIN})
#: Every op a FusedElementwise step may be (Clip only with constant bounds, see ``_step_form``).
FUSIBLE = UNARY | BINARY | VARIADIC | frozenset({OpType.WHERE, OpType.CLIP})
_ARITY = {**{op: 1 for op in UNARY}, **{op: 2 for op in BINARY}, OpType.WHERE: 3}


#: (tensors a step reads, its attrs)
StepForm = tuple[tuple[str, ...], object]


def _clip_bound(graph: Graph, node: Node, slot: int, attr: float | None) -> tuple[bool, float | None]:
    """(known, bound): the attribute, else a constant scalar input, else absent (None)."""
    if attr is not None:
        return True, float(attr)
    name = node.input(slot)
    if not name:
        return True, None
    value = scalar_value(graph.constants.get(name))
    return (value is not None), value


def _step_form(graph: Graph, node: Node) -> StepForm | None:
    """(tensors the step reads, its attrs) when ``node`` can be a step, else ``None``."""
    if node.op not in FUSIBLE or len(node.outputs) != 1 or not node.outputs[0]:
        return None
    out = graph.types.get(node.outputs[0])
    if out is None:
        return None
    if node.op is OpType.CLIP:
        a = node.attrs or ClipAttrs()
        if not node.inputs or not node.inputs[0]:
            return None
        ok_lo, lo = _clip_bound(graph, node, 1, a.min)
        ok_hi, hi = _clip_bound(graph, node, 2, a.max)
        if not (ok_lo and ok_hi):
            return None  # a bound computed at run time
        return (node.inputs[0],), ClipAttrs(lo, hi)
    ins = tuple(node.inputs)
    if not ins or any(not i for i in ins):
        return None
    arity = _ARITY.get(node.op)
    if arity is not None and len(ins) != arity:
        return None
    types = [t for i in ins if (t := graph.types.get(i)) is not None]
    if len(types) != len(ins):
        return None
    try:
        shape = broadcast_shapes(*(t.shape for t in types))
    except ShapeError:
        return None
    if tuple(shape) != tuple(out.shape):
        return None
    return ins, node.attrs


def _groups(graph: Graph, forms: dict[str, StepForm], protected: set[str]) -> list[list[Node]]:
    """Maximal single-output groups of fusible nodes, each in graph order."""
    producers = graph.producers()
    consumers = graph.consumers()
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    assigned: set[str] = set()
    groups = []
    for sink in reversed(graph.nodes):
        if sink.name not in forms or sink.name in assigned:
            continue
        members = {sink.name: sink}
        grown = True
        while grown:
            grown = False
            for m in list(members.values()):
                for t in forms[m.name][0]:
                    p = producers.get(t)
                    if (p is None or p.name in members or p.name in assigned or p.name not in forms
                            or t in protected):
                        continue
                    if all(r.name in members for r in consumers.get(t, [])):
                        members[p.name] = p
                        grown = True
        assigned.update(members)
        if len(members) >= 2:
            groups.append(sorted(members.values(), key=lambda n: index[n.name]))
    return groups


def _fuse(group: list[Node], forms: dict[str, StepForm]) -> Node:
    inputs: list[str] = []
    slot: dict[str, int] = {}
    produced = {n.outputs[0] for n in group}
    for n in group:
        for t in forms[n.name][0]:
            if t not in produced and t not in slot:
                slot[t] = len(inputs)
                inputs.append(t)
    steps = []
    for i, n in enumerate(group):
        reads, attrs = forms[n.name]
        steps.append(FusedStep(n.op, tuple(slot[t] for t in reads), attrs))
        slot[n.outputs[0]] = len(inputs) + i
    origin: list[str] = []
    rules: list[str] = []
    for n in group:
        origin.extend(o for o in n.origin if o not in origin)
        rules.extend(r for r in n.rule.split(" ; ") if r and r not in rules)
    rules.append(RULE)
    return Node(group[0].name, OpType.FUSED_ELEMENTWISE, tuple(inputs), group[-1].outputs,
                FusedElementwiseAttrs(tuple(steps)), tuple(origin), " ; ".join(rules))


@register_pass("fuse_elementwise", Phase.FUSE)
def fuse_elementwise(graph: Graph, ctx: PassContext) -> Graph:
    """Connected elementwise ops computing one tensor -> one FusedElementwise layer."""
    forms: dict[str, StepForm] = {}
    for n in graph.nodes:
        f = _step_form(graph, n)
        if f is not None:
            forms[n.name] = f
    protected = ctx.protected(graph)
    groups = _groups(graph, forms, protected)
    if not groups:
        return graph
    fused_at = {g[-1].name: _fuse(g, forms) for g in groups}
    removed = {n.name for g in groups for n in g}
    nodes = []
    for n in graph.nodes:
        if n.name in fused_at:
            nodes.append(fused_at[n.name])
        elif n.name not in removed:
            nodes.append(n)
    ctx.count(RULE, len(groups))
    out = graph.copy(nodes=nodes)
    return dead_code(out, protected | set(graph.inputs))
