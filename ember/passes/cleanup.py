"""Cleanup passes: no-op removal, transpose and reshape chains, common subexpressions, dead code."""
from __future__ import annotations

from typing import Any

import numpy as np

from ember.errors import ShapeError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import ReshapeAttrs, TransposeAttrs
from ember.passes.edit import all_equal, dead_code, remove_forwarding, rename_inputs, resolve
from ember.passes.manager import PassContext, Phase, register_pass
from ember.passes.rewrite import Match, Op, Rule, Var, apply_rules

_SHAPE_ONLY = frozenset({OpType.RESHAPE, OpType.FLATTEN, OpType.SQUEEZE, OpType.UNSQUEEZE,
                         OpType.EXPAND, OpType.CAST})
_RESHAPE_LIKE = frozenset({OpType.RESHAPE, OpType.FLATTEN, OpType.SQUEEZE, OpType.UNSQUEEZE})
#: op -> (neutral constant, operand positions the constant may take)
_NEUTRAL = {OpType.ADD: (0.0, (0, 1)), OpType.SUB: (0.0, (1,)), OpType.MUL: (1.0, (0, 1)),
            OpType.DIV: (1.0, (1,)), OpType.POW: (1.0, (1,))}


def _same_type(g: Graph, a: str, b: str) -> bool:
    ta, tb = g.types.get(a), g.types.get(b)
    return ta is not None and ta == tb


def _unused(users: dict[str, list[Node]], protected: set[str], names: tuple[str, ...]) -> bool:
    return all(not o or (o not in users and o not in protected) for o in names)


def _identity_perm(node: Node, g: Graph) -> bool:
    rank = g.type_of(node.inputs[0]).rank
    perm = node.attrs.perm if node.attrs is not None else None
    return tuple(perm) == tuple(range(rank)) if perm is not None else rank <= 1


def _dropout_is_noop(node: Node, g: Graph) -> bool:
    training = node.input(2)
    if not training:
        return True
    value = g.constant(training)
    return value is not None and not bool(np.asarray(value).reshape(-1)[0])


def _slice_is_noop(node: Node, g: Graph) -> bool:
    """A Slice that keeps every element: step 1 and the input's own static type, or on each
    sliced symbolic dim from 0 to the end (``x[:, None]`` of a dynamic batch, as the dynamo
    exporter writes it: ``Slice(x, 0, INT64_MAX, axis 0)``)."""
    from ember.ops.shape import HUGE, slice_params

    t = g.types.get(node.inputs[0])
    if t is None or not _same_type(g, node.inputs[0], node.outputs[0]):
        return False
    if t.is_static:
        a = node.attrs
        steps = a.steps if a is not None else None
        if steps is None and node.input(4):
            value = g.constant(node.input(4))
            if value is None:
                return False
            steps = tuple(int(s) for s in value.reshape(-1))
        return all(s == 1 for s in (steps or ()))
    try:
        params = slice_params(node.attrs, [g.constant(i) if i else None for i in node.inputs], t.rank)
    except ShapeError:
        return False
    if params is None:
        return False
    for start, end, axis, step in zip(*params):
        dim = t.shape[axis]
        if step != 1:
            return False
        if isinstance(dim, int):
            continue  # step 1 and the same static length: the whole axis
        if start != 0 or not (end == dim or (isinstance(end, int) and end >= HUGE)):
            return False
    return True


def _neutral_operand(node: Node, g: Graph) -> str | None:
    """For ``x + 0``, ``x * 1``, ``x / 1``, ``x ** 1``: the input ``x`` (else ``None``)."""
    neutral, positions = _NEUTRAL[node.op]
    for pos in positions:
        other = node.inputs[1 - pos]
        if all_equal(g.constant(node.inputs[pos]), neutral) and _same_type(g, other, node.outputs[0]):
            return other
    return None


def _chosen_branch(node: Node, g: Graph) -> str | None:
    """For ``Where(c, a, b)`` with a constant ``c`` all true (all false): ``a`` (``b``), where it
    already has the output's type (broadcasting does not widen it). ONNX's Attention function
    body ends with one: ``Where(row fully masked, 0, softmax)``, the mask a constant of the model."""
    cond = g.constant(node.inputs[0])
    if cond is None or cond.size == 0:
        return None
    c = np.asarray(cond).astype(bool)
    branch = node.inputs[1] if c.all() else node.inputs[2] if not c.any() else None
    return branch if branch and _same_type(g, branch, node.outputs[0]) else None


def forwarded_input(node: Node, g: Graph, users: dict[str, list[Node]],
                    protected: set[str]) -> str | None:
    """The input that ``node`` passes through unchanged to its output, or ``None``."""
    op, out = node.op, node.outputs[0] if node.outputs else ""
    if not out or not node.inputs or not node.inputs[0]:
        return None
    x = node.inputs[0]
    if op is OpType.IDENTITY:
        return x
    if op is OpType.DROPOUT:
        ok = _dropout_is_noop(node, g) and _unused(users, protected, node.outputs[1:])
        return x if ok else None
    if op in _SHAPE_ONLY:
        return x if _same_type(g, x, out) else None
    if op is OpType.TRANSPOSE:
        return x if _identity_perm(node, g) else None
    if op in (OpType.CONCAT, OpType.MAX, OpType.MIN) and len([i for i in node.inputs if i]) == 1:
        return x
    if op is OpType.SPLIT and len([o for o in node.outputs if o]) == 1 and _same_type(g, x, out):
        return x
    if op is OpType.SLICE:
        return x if _slice_is_noop(node, g) else None
    if op is OpType.PAD and node.attrs is not None and node.attrs.pads is not None:
        return x if not any(node.attrs.pads) and _same_type(g, x, out) else None
    if op in _NEUTRAL and len(node.inputs) == 2:
        return _neutral_operand(node, g)
    if op is OpType.WHERE and len(node.inputs) == 3:
        return _chosen_branch(node, g)
    return None


@register_pass("eliminate_noops", Phase.CLEANUP)
def eliminate_noops(graph: Graph, ctx: PassContext) -> Graph:
    """Removes Identity, Dropout, no-op Cast/Reshape/Expand/Squeeze/Transpose/Slice/Pad, x+0, x*1,
    and Where with a constant, uniform condition."""
    protected = ctx.protected(graph)
    users = graph.consumers()
    forwards: dict[str, tuple[str, str]] = {}
    for node in graph.nodes:
        src = forwarded_input(node, graph, users, protected)
        if src is not None:
            forwards[node.name] = (src, node.outputs[0])
    if not forwards:
        return graph
    out, removed = remove_forwarding(graph, protected, forwards)
    ctx.count("x -> noop(x) => x", removed)
    return dead_code(out, protected | set(graph.inputs)) if removed else graph


# ---- transpose and reshape chains -------------------------------------------------------------
def _perm(node: Node, rank: int) -> tuple[int, ...]:
    perm = node.attrs.perm if node.attrs is not None else None
    return tuple(perm) if perm is not None else tuple(reversed(range(rank)))


def _compose_transposes(m: Match) -> list[Node] | None:
    inner, outer = m.node("inner"), m.root
    rank = m.type(m["x"]).rank
    p, q = _perm(inner, rank), _perm(outer, rank)
    perm = tuple(p[i] for i in q)
    if perm == tuple(range(rank)):
        return [m.fuse(OpType.IDENTITY, [m["x"]], None, name=outer.name)]
    return [m.fuse(OpType.TRANSPOSE, [m["x"]], TransposeAttrs(perm), name=outer.name)]


TRANSPOSE_PAIR = Rule(
    "transpose(transpose(x, p), q) => transpose(x, p[q])",
    Op(OpType.TRANSPOSE, (Op(OpType.TRANSPOSE, (Var("x"),), name="inner", absorb=False),)),
    _compose_transposes)


def _swap_via_reshapes(m: Match) -> list[Node] | None:
    x, inner, outer = m.type(m["x"]), m.type(m.node("inner").outputs[0]), m.type(m.root.outputs[0])
    perm = _perm(m.node("swap"), inner.rank)
    if x.rank < 3 or inner.rank != 3 or perm != (0, 2, 1):
        return None
    lead, (a, b) = x.shape[:-2], x.shape[-2:]
    if inner.shape[1:] != (a, b) or outer.shape != (*lead, b, a) or outer.dtype != x.dtype:
        return None  # the first reshape must only merge the leading dims, the last restore them
    swap = tuple(range(x.rank - 2)) + (x.rank - 1, x.rank - 2)
    return [m.fuse(OpType.TRANSPOSE, [m["x"]], TransposeAttrs(swap), name=m.root.name)]


#: The dynamo exporter's ``k.transpose(-2, -1)`` inside ``scaled_dot_product_attention``:
#: ``Reshape(Transpose(Reshape(k, [-1, s, d]), (0, 2, 1)), [b, h, d, s])``.
SWAP_VIA_RESHAPES = Rule(
    "reshape(transpose(reshape(x, [-1, a, b]), (0, 2, 1)), [..., b, a]) => transpose(x, swap last two)",
    Op(OpType.RESHAPE, (Op(OpType.TRANSPOSE, (Op(OpType.RESHAPE, (Var("x"),), name="inner",
                                                 extra_inputs=True),), name="swap"),),
       extra_inputs=True),
    _swap_via_reshapes)


def _merge_reshape(m: Match) -> list[Node] | None:
    outer = m.root
    out_t = m.type(outer.outputs[0])
    if out_t.is_static:
        shape = m.add_constant(f"{outer.name}_shape", np.asarray(out_t.shape, dtype=np.int64))
    elif outer.op is OpType.RESHAPE and outer.input(1) in m.graph.constants:
        target = m.graph.constants[outer.input(1)]
        if (target == 0).any() and not (outer.attrs and outer.attrs.allowzero):
            return None  # its zeros copy dims of the inner output, which we skip
        shape = outer.inputs[1]
    else:
        return None
    return [m.fuse(OpType.RESHAPE, [m["x"], shape], ReshapeAttrs(), name=outer.name)]


RESHAPE_CHAIN = Rule(
    "reshape(reshape(x)) => reshape(x)",
    Op(_RESHAPE_LIKE, (Op(_RESHAPE_LIKE, (Var("x"),), name="inner", absorb=False, extra_inputs=True),),
       extra_inputs=True),
    _merge_reshape)


#: Elementwise ops of one tensor: a Transpose commutes with them.
UNARY_ELEMENTWISE = frozenset({
    OpType.RELU, OpType.LEAKY_RELU, OpType.SIGMOID, OpType.TANH, OpType.HARD_SIGMOID,
    OpType.HARD_SWISH, OpType.GELU, OpType.ERF, OpType.SQRT, OpType.EXP, OpType.LOG, OpType.NEG,
    OpType.ABS, OpType.RECIPROCAL, OpType.NOT, OpType.CAST})


def _sink_through_unary(m: Match) -> list[Node] | None:
    inner, unary, outer = m.node("inner"), m.node("unary"), m.root
    if unary.op is OpType.CLIP and any(unary.inputs[1:]):
        return None
    rank = m.type(m["x"]).rank
    p, q = _perm(inner, rank), _perm(outer, rank)
    perm = tuple(p[i] for i in q)
    if perm == tuple(range(rank)):
        return [m.fuse(unary.op, [m["x"]], unary.attrs, name=unary.name)]
    moved = m.add_tensor(f"{outer.outputs[0]}_t", m.type(m["x"]).with_shape(
        tuple(m.type(m["x"]).shape[i] for i in perm)).with_dtype(m.type(inner.outputs[0]).dtype))
    return [m.fuse(OpType.TRANSPOSE, [m["x"]], TransposeAttrs(perm), outputs=[moved], name=outer.name),
            m.fuse(unary.op, [moved], unary.attrs, name=unary.name)]


TRANSPOSE_AROUND_UNARY = Rule(
    "transpose(f(transpose(x, p)), q) => f(transpose(x, p[q]))",
    Op(OpType.TRANSPOSE, (Op(UNARY_ELEMENTWISE, (Op(OpType.TRANSPOSE, (Var("x"),), name="inner",
                                                    absorb=False),), name="unary"),)),
    _sink_through_unary)


def _global_pool(m: Match) -> list[Node] | None:
    node = m.root
    x = m.type(m["x"])
    a = node.attrs
    axes = a.axes if a is not None else None
    if axes is None and node.input(1):
        value = m.view.const(node.input(1))
        axes = tuple(int(v) for v in value.reshape(-1)) if value is not None else None
    if a is None or not a.keepdims or axes is None or x.rank < 4 or not x.dtype.is_float:
        return None  # (rank 3 is a sequence: a mean over its last axis is a LayerNorm part)
    if sorted(v + x.rank if v < 0 else v for v in axes) != list(range(2, x.rank)):
        return None
    return [m.fuse(OpType.GLOBAL_AVERAGE_POOL, [m["x"]])]


MEAN_TO_GLOBAL_POOL = Rule("reduce_mean(x, spatial axes) => global_average_pool(x)",
                           Op(OpType.REDUCE_MEAN, (Var("x"),), extra_inputs=True), _global_pool)


@register_pass("cancel_transposes", Phase.CLEANUP)
def cancel_transposes(graph: Graph, ctx: PassContext) -> Graph:
    """Composes Transpose pairs into one, also across a one-input elementwise op between them
    (an identity pair becomes Identity, removed next); a swap of the last two axes written with
    reshapes around a 3-D transpose becomes one Transpose."""
    return apply_rules(graph, [TRANSPOSE_PAIR, TRANSPOSE_AROUND_UNARY, SWAP_VIA_RESHAPES], ctx)


@register_pass("canonicalize", Phase.CLEANUP)
def canonicalize(graph: Graph, ctx: PassContext) -> Graph:
    """Rewrites equivalent spellings into the one kernels know best (mean over H, W ->
    GlobalAveragePool, as the dynamo exporter writes it)."""
    return apply_rules(graph, [MEAN_TO_GLOBAL_POOL], ctx)


@register_pass("merge_reshapes", Phase.CLEANUP)
def merge_reshapes(graph: Graph, ctx: PassContext) -> Graph:
    """Collapses chains of Reshape/Flatten/Squeeze/Unsqueeze into one Reshape."""
    return apply_rules(graph, [RESHAPE_CHAIN], ctx)


# ---- common subexpressions and dead code ------------------------------------------------------
_CSE_CONST_BYTES = 1 << 16


_ConstKey = tuple[str, tuple[int, ...], bytes]  # dtype, shape, bytes
_NodeKey = tuple[OpType, tuple[str, ...], Any, int]  # op, inputs, attrs, number of outputs


def _dedup_constants(graph: Graph, protected: set[str]) -> dict[str, str]:
    canon: dict[_ConstKey, str] = {}
    subst: dict[str, str] = {}
    for name, value in graph.constants.items():
        if value.nbytes > _CSE_CONST_BYTES:
            continue
        key = (value.dtype.str, value.shape, value.tobytes())
        if key in canon and name not in protected:
            subst[name] = canon[key]
        else:
            canon.setdefault(key, name)
    return subst


def _node_key(node: Node) -> _NodeKey | None:
    key: _NodeKey = (node.op, node.inputs, node.attrs, len(node.outputs))
    try:
        hash(key)
    except TypeError:
        return None
    return key


@register_pass("cse", Phase.CLEANUP)
def cse(graph: Graph, ctx: PassContext) -> Graph:
    """Merges identical small constants, then nodes with the same op, inputs and attributes."""
    protected = ctx.protected(graph)
    subst = _dedup_constants(graph, protected)
    merged_consts = len(subst)
    seen: dict[_NodeKey, Node] = {}
    nodes: list[Node] = []
    merged = 0
    for node in graph.nodes:
        node = rename_inputs(node, {i: resolve(subst, i) for i in node.inputs if i in subst})
        key = _node_key(node)
        twin = seen.get(key) if key is not None else None
        if twin is not None and not any(o in protected for o in node.outputs):
            for mine, theirs in zip(node.outputs, twin.outputs):
                if mine:
                    subst[mine] = theirs
            merged += 1
            continue
        if key is not None:
            seen.setdefault(key, node)
        nodes.append(node)
    if not subst:
        return graph
    ctx.count("f(x) twice => f(x) once", merged)
    ctx.count("duplicate constants => one", merged_consts)
    return dead_code(graph.copy(nodes=nodes), protected | set(graph.inputs))


@register_pass("dce", Phase.CLEANUP)
def dce(graph: Graph, ctx: PassContext) -> Graph:
    """Removes nodes and constants no graph output (or kept tensor) depends on."""
    out = dead_code(graph, ctx.protected(graph) | set(graph.inputs))
    removed = len(graph.nodes) - len(out.nodes)
    if removed:
        ctx.count("unused => removed", removed)
    if removed or len(out.constants) != len(graph.constants):
        return out
    return graph
