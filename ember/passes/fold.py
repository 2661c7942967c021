"""Constant folding, including shape subgraphs.

A node whose inputs are all constants is run once with the CPU backend's generic kernels
(``ember.backends.cpu.evaluate``) and replaced by its result. ``Shape`` of a tensor with a static
shape is a constant; with a partly symbolic shape (a dynamic batch) the known dims are tracked
through ``Gather``/``Slice``/``Concat``/``Unsqueeze``/``Squeeze``/``Cast`` so that e.g. the
sequence length of a dynamic-batch BERT still folds. A ``Reshape``/``Expand``/
``ConstantOfShape`` whose shape input is computed but whose output type is static gets that
shape as a constant, which leaves the shape arithmetic dead. Types are re-inferred after each
round, since folded shapes make downstream types static; rounds repeat until nothing folds.
"""
from __future__ import annotations

import numpy as np

from ember.errors import BuildError
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import ReshapeAttrs
from ember.passes.edit import const_type, contiguous, dead_code, static_dims
from ember.passes.manager import PassContext, Phase, register_pass

#: Ops whose shape input (index 1, or 0 for ConstantOfShape) equals their static output shape.
_SHAPE_INPUT = {OpType.RESHAPE: 1, OpType.EXPAND: 1, OpType.CONSTANT_OF_SHAPE: 0}
_PARTIAL_OPS = frozenset({OpType.GATHER, OpType.SLICE, OpType.CONCAT, OpType.UNSQUEEZE,
                          OpType.SQUEEZE, OpType.CAST, OpType.IDENTITY})
_MAX_ROUNDS = 8

Partial = np.ndarray  # 0-D or 1-D object array: int where known, the dim's symbol (str) where not


def _shape_partial(node: Node, g: Graph) -> Partial | None:
    t = g.types.get(node.inputs[0])
    if t is None:
        return None
    dims = list(t.shape)
    r = len(dims)
    a = node.attrs
    start = 0 if a is None else a.start
    end = r if a is None or a.end is None else a.end
    start = min(max(start + r if start < 0 else start, 0), r)
    end = min(max(end + r if end < 0 else end, 0), r)
    vals = dims[start:end]
    out = np.empty(len(vals), dtype=object)
    out[:] = vals
    return out


def _operand(name: str, g: Graph, partial: dict[str, Partial]) -> np.ndarray | None:
    if name in partial:
        return partial[name]
    value = g.constants.get(name)
    if value is None or value.dtype.kind not in "iu" or value.ndim > 1:
        return None
    out = np.empty(value.shape, dtype=object)
    out[...] = value.astype(np.int64).tolist() if value.ndim else int(value)
    return out


def _propagate(node: Node, g: Graph, partial: dict[str, Partial]) -> Partial | None:
    """The partly known value of ``node``'s output from partly known 0-D/1-D int inputs."""
    if not any(i in partial for i in node.inputs):
        return None
    ins = [_operand(i, g, partial) if i else None for i in node.inputs]
    x = ins[0]
    out_t = g.types.get(node.outputs[0])
    out_shape = static_dims(out_t.shape) if out_t is not None else None
    if x is None or out_t is None or out_shape is None:
        return None
    op = node.op
    if op in (OpType.UNSQUEEZE, OpType.SQUEEZE, OpType.IDENTITY):
        return x.reshape(out_shape)
    if op is OpType.CAST:
        return x if out_t.dtype.is_int else None
    if op is OpType.GATHER and x.ndim == 1 and ins[1] is not None and _known(ins[1]):
        if node.attrs is not None and node.attrs.axis not in (0, -1):
            return None
        idx = np.asarray(ins[1].tolist(), dtype=np.int64)
        picked = np.take(x, np.where(idx < 0, idx + len(x), idx), axis=0)
        return np.asarray(picked, dtype=object).reshape(idx.shape)
    if op is OpType.CONCAT:
        vals = [v for v, name in zip(ins, node.inputs) if name]
        vectors = [v for v in vals if v is not None and v.ndim == 1]
        if len(vectors) == len(vals):
            return np.concatenate(vectors)
        return None
    if op is OpType.SLICE and x.ndim == 1:
        return _slice_partial(node, g, x)
    return None


def _slice_partial(node: Node, g: Graph, x: Partial) -> Partial | None:
    from ember.ops.shape import slice_params

    consts = [g.constants.get(i) if i else None for i in node.inputs]
    params = slice_params(node.attrs, consts, 1)
    if params is None:
        return None
    (start,), (end,), _, (step,) = params
    n = len(x)
    start, end = max(min(start, n), -n), max(min(end, n), -n - 1)
    return x[slice(start, end if end != -n - 1 else None, step)]


def _known(value: Partial) -> bool:
    return all(isinstance(v, int) for v in value.reshape(-1))


def _to_constant(value: Partial, dtype: DType) -> np.ndarray:
    return np.asarray(value.tolist(), dtype=dtype.to_numpy())


def _too_big(node: Node, g: Graph, ctx: PassContext) -> bool:
    in_bytes = sum(g.constants[i].nbytes for i in node.inputs if i)
    out_bytes = 0
    for o in node.outputs:
        t = g.types.get(o) if o else None
        if t is not None and t.is_static:
            out_bytes += t.nbytes()
    if node.op is OpType.CONSTANT_OF_SHAPE and node.inputs and node.inputs[0]:
        out_bytes = max(out_bytes, int(np.prod(g.constants[node.inputs[0]])) * 8)
    return out_bytes > ctx.max_fold_bytes and out_bytes > in_bytes


def _evaluate(node: Node, g: Graph) -> list[np.ndarray | None] | None:
    from ember.backends.cpu import evaluate
    from ember.backends.cpu.registry import has_kernel

    if not has_kernel(node.op):
        return None
    try:
        # writable copies: the backend's input conversion turns a read-only 0-d array 1-d
        return evaluate(node, [np.array(g.constants[i]) if i else None for i in node.inputs], g)
    except BuildError:
        return None  # the backend declines this node's attributes; leave it to run time


def _coerce(value: np.ndarray, name: str, g: Graph) -> np.ndarray:
    t = g.types.get(name)
    if t is not None and t.dtype is not DType.BFLOAT16 and value.dtype != t.dtype.to_numpy():
        value = value.astype(t.dtype.to_numpy())
    return contiguous(value)


def _fold_round(graph: Graph, ctx: PassContext) -> tuple[Graph, int]:
    g = graph.copy()
    partial: dict[str, Partial] = {}
    nodes: list[Node] = []
    folded = 0
    for node in graph.nodes:
        outs = _fold_node(node, g, ctx, partial)
        if outs is None:
            nodes.append(_constant_shape_input(node, g, ctx, partial))
            continue
        for name, value in zip(node.outputs, outs):
            if name and value is not None:
                value = _coerce(value, name, g)
                g.constants[name] = value
                g.types[name] = const_type(value)
        folded += 1
    g.nodes = nodes
    return g, folded


def _fold_node(node: Node, g: Graph, ctx: PassContext,
               partial: dict[str, Partial]) -> list[np.ndarray | None] | None:
    """The node's output values when it folds, else ``None`` (recording partial values)."""
    if node.op is OpType.SHAPE:
        value = _shape_partial(node, g)
    elif node.op in _PARTIAL_OPS and any(i in partial for i in node.inputs):
        value = _propagate(node, g, partial)
    else:
        ins = [i for i in node.inputs if i]
        if not all(i in g.constants for i in ins) or _too_big(node, g, ctx):
            return None
        outs = _evaluate(node, g)
        if outs is not None:
            ctx.count("f(constants) => constant")
        return outs
    if value is None:
        return None
    if not _known(value):
        partial[node.outputs[0]] = value
        return None
    ctx.count("shape arithmetic on static dims => constant")
    return [_to_constant(value, g.type_of(node.outputs[0]).dtype)]


def _symbolic_target(node: Node, g: Graph, value: Partial) -> list[int] | None:
    """A constant target for a Reshape/Expand whose target shape is known up to symbols: a
    symbol equal to the input's dim at that place becomes 0 (Reshape: copy the dim) or 1
    (Expand: keep the dim); one remaining symbol of a Reshape becomes -1.

    A Reshape with ``allowzero`` (the dynamo exporter writes every Reshape so) takes a 0 as a
    literal zero-sized dim; its target is then written for ``allowzero=0``
    (``_constant_shape_input`` clears the flag), which a known 0 in the target forbids."""
    x = g.types.get(node.inputs[0])
    if x is None or value.ndim != 1:
        return None
    vals = list(value)
    if node.op is OpType.RESHAPE and _allowzero(node) and any(v == 0 for v in vals if isinstance(v, int)):
        return None
    offset = len(vals) - x.rank  # Expand aligns from the right
    out: list[int] = []
    for i, v in enumerate(vals):
        if isinstance(v, int):
            out.append(v)
        elif node.op is OpType.RESHAPE and i < x.rank and x.shape[i] == v:
            out.append(0)
        elif node.op is OpType.EXPAND and 0 <= i - offset < x.rank and x.shape[i - offset] == v:
            out.append(1)
        elif node.op is OpType.RESHAPE and -1 not in vals and -1 not in out:
            out.append(-1)
        else:
            return None
    return out


def _allowzero(node: Node) -> bool:
    return node.op is OpType.RESHAPE and node.attrs is not None and bool(node.attrs.allowzero)


def _constant_shape_input(node: Node, g: Graph, ctx: PassContext, partial: dict[str, Partial]) -> Node:
    """A Reshape/Expand/ConstantOfShape whose shape is computed: the shape becomes a constant
    when the output type is static, or (Reshape, Expand) when it is known up to symbols that
    the input's own dims carry (a dynamic batch)."""
    slot = _SHAPE_INPUT.get(node.op)
    if slot is None or slot >= len(node.inputs) or not node.inputs[slot] \
            or node.inputs[slot] in g.constants:
        return node
    t = g.types.get(node.outputs[0])
    static = static_dims(t.shape) if t is not None else None
    attrs = node.attrs
    if static is not None:
        target: list[int] | None = list(static)
        if node.op is OpType.RESHAPE and 0 in static:
            attrs = ReshapeAttrs(allowzero=True)  # a zero-sized dim, not a copied one
    elif node.inputs[slot] in partial and node.op is not OpType.CONSTANT_OF_SHAPE:
        target = _symbolic_target(node, g, partial[node.inputs[slot]])
        if target is not None and _allowzero(node):
            attrs = ReshapeAttrs(allowzero=False)  # its 0s copy the input's dims
    else:
        target = None
    if target is None:
        return node
    name = g.fresh_name(f"{node.name}_shape")
    g.constants[name] = np.asarray(target, dtype=np.int64)
    g.types[name] = const_type(g.constants[name])
    ctx.count("op(x, shape(...)) with static output => op(x, constant shape)")
    ins = list(node.inputs)
    ins[slot] = name
    return node.with_(inputs=tuple(ins), attrs=attrs)


@register_pass("fold_constants", Phase.FOLD)
def fold_constants(graph: Graph, ctx: PassContext) -> Graph:
    """Evaluates nodes with constant inputs and shape arithmetic on static dims."""
    from ember.ops.infer import infer_graph

    protected = ctx.protected(graph) | set(graph.inputs)
    for _ in range(_MAX_ROUNDS):
        before = len(graph.constants)
        out, folded = _fold_round(graph, ctx)
        if not folded and len(out.constants) == before:
            break
        graph = infer_graph(dead_code(out, protected))
    return graph
