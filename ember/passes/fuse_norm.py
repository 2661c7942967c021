"""Recognizing LayerNorm and GELU written out in elementary ops.

LayerNorm, as exporters write ``(x - mean) / sqrt(var + eps) * gamma + beta``::

    d = x - ReduceMean(x);  v = ReduceMean(d ** 2)  (or d * d)
    y = d / Sqrt(v + eps)   (or d * Reciprocal(Sqrt(v + eps)))  => LayerNormalization(x, 1)
    LayerNormalization(x, s, b) * g  => LayerNormalization(x, s * g, b * g)
    LayerNormalization(x, s, b) + c  => LayerNormalization(x, s, b + c)

so ``* gamma + beta`` compose into one node. A residual Add before it whose sum nothing else
reads is absorbed (``fuse_skip_layernorm``, after the GEMM and conv fusions took their bias
adds)::

    LayerNormalization(a + b, s, bias)  => SkipLayerNormalization(a, b, s, bias)

so the sum is formed in fp32 inside the normalization's kernel, never stored (ONNX Runtime's
contrib op of that name does the same).

GELU, in the erf and tanh spellings, in any association of the outer product::

    x * 0.5 * (1 + Erf(x / sqrt(2)))                              => Gelu(x)
    0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x ** 3)))    => Gelu(x, approximate=tanh)
"""
from __future__ import annotations

import math

import numpy as np

from ember.errors import GraphError
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import GeluApproximate, GeluAttrs, LayerNormAttrs
from ember.passes.edit import is_scalar, scalar_value, static_dims
from ember.passes.manager import PassContext, Phase, register_pass
from ember.passes.rewrite import Alt, Build, Const, Match, Op, Rule, Var, alt, apply_rules


def _scalar() -> Const:
    return Const("eps", lambda v: v.size == 1)


def _reduce_axes(node: Node, m: Match) -> tuple[int, ...] | None:
    a = node.attrs
    if a is not None and not a.keepdims:
        return None
    axes = a.axes if a is not None else None
    if axes is None and node.input(1):
        value = m.view.const(node.input(1))
        if value is None:
            return None
        axes = tuple(int(v) for v in value.reshape(-1))
    rank = m.type(node.inputs[0]).rank
    if not axes:
        return None
    return tuple(sorted(a + rank if a < 0 else a for a in axes))


def _layer_norm(m: Match) -> list[Node] | None:
    x = m["x"]
    xt = m.type(x)
    axes = _reduce_axes(m.node("mean"), m)
    if axes is None or axes != _reduce_axes(m.node("var"), m) or not xt.dtype.is_float \
            or xt.dtype is DType.BFLOAT16:
        return None
    axis = axes[0]
    norm_shape = static_dims(xt.shape[axis:])
    if axes != tuple(range(axis, xt.rank)) or norm_shape is None:
        return None
    if m.type(m.root.outputs[0]) != xt:
        return None
    eps = scalar_value(m.const("eps"))
    if eps is None:  # the pattern's Const("eps") only matches one-element constants
        raise GraphError(f"rule {m.rule.name!r} at node {m.node('mean').name!r}: eps "
                         f"{m['eps']!r} is not a one-element constant")
    dtype = xt.dtype.to_numpy()
    scale = m.add_constant(f"{m.node('mean').name}_scale", np.ones(norm_shape, dtype))
    return [m.fuse(OpType.LAYER_NORM, [x, scale], LayerNormAttrs(axis - xt.rank, float(eps)),
                   name=m.node("mean").name)]


def _ln_pattern(root_div: bool) -> Op:
    x = Var("x")
    mean = Op(OpType.REDUCE_MEAN, (x,), name="mean", extra_inputs=True)
    d = Op(OpType.SUB, (x, mean), name="d")
    sq = alt(Op(OpType.POW, (d, Const("two", lambda v: is_scalar(v, 2.0)))), Op(OpType.MUL, (d, d)))
    var = Op(OpType.REDUCE_MEAN, (sq,), name="var", extra_inputs=True)
    std = Op(OpType.SQRT, (Op(OpType.ADD, (var, _scalar())),))
    if root_div:
        return Op(OpType.DIV, (d, std))
    return Op(OpType.MUL, (d, Op(OpType.RECIPROCAL, (std,))))


def _normalized(m: Match, ln: Node, value: np.ndarray) -> np.ndarray | None:
    """``value`` broadcast to the normalized shape of ``ln`` if it varies only within it."""
    out_t = m.type(ln.outputs[0])
    axis = ln.attrs.axis + out_t.rank if ln.attrs.axis < 0 else ln.attrs.axis
    shape = (1,) * (out_t.rank - value.ndim) + value.shape
    norm_shape = static_dims(out_t.shape[axis:])
    if len(shape) != out_t.rank or any(d != 1 for d in shape[:axis]) or norm_shape is None:
        return None
    try:
        return np.broadcast_to(value.reshape(shape[axis:]), norm_shape)
    except ValueError:
        return None


def _ln_affine(m: Match) -> list[Node] | None:
    ln = m.node("ln")
    if m.type(m.root.outputs[0]) != m.type(ln.outputs[0]):
        return None
    c = _normalized(m, ln, m.const("c"))
    scale = m.view.const(ln.input(1))
    bias = m.view.const(ln.input(2)) if ln.input(2) else None
    if c is None or scale is None or (ln.input(2) and bias is None):
        return None
    dtype = scale.dtype
    bias = np.zeros_like(scale) if bias is None else bias
    if m.root.op is OpType.MUL:
        scale, bias = scale * c, bias * c
    else:
        bias = bias + c
    s = m.add_constant(f"{ln.name}_scale", np.asarray(scale, dtype))
    b = m.add_constant(f"{ln.name}_bias", np.asarray(bias, dtype))
    return [m.fuse(OpType.LAYER_NORM, [ln.inputs[0], s, b], ln.attrs)]


LAYER_NORM_DIV = Rule("(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) => layer_norm(x)",
                      _ln_pattern(True), _layer_norm)
LAYER_NORM_RECIP = Rule("(x - mean(x)) * 1/sqrt(mean((x - mean(x))^2) + eps) => layer_norm(x)",
                        _ln_pattern(False), _layer_norm)
LAYER_NORM_SCALE = Rule("layer_norm(x, s, b) * g => layer_norm(x, s * g, b * g)",
                        Op(OpType.MUL, (Op(OpType.LAYER_NORM, name="ln"), Const("c"))), _ln_affine)
LAYER_NORM_SHIFT = Rule("layer_norm(x, s, b) + c => layer_norm(x, s, b + c)",
                        Op(OpType.ADD, (Op(OpType.LAYER_NORM, name="ln"), Const("c"))), _ln_affine)


@register_pass("fuse_layernorm", Phase.FUSE)
def fuse_layernorm(graph: Graph, ctx: PassContext) -> Graph:
    """Decomposed LayerNorm (mean, variance, sqrt, divide, scale, shift) -> LayerNormalization."""
    return apply_rules(graph, [LAYER_NORM_DIV, LAYER_NORM_RECIP, LAYER_NORM_SCALE, LAYER_NORM_SHIFT], ctx)


def _skip_layer_norm(m: Match) -> list[Node] | None:
    ln = m.root
    if any(ln.outputs[1:]):  # Mean / InvStdDev asked for
        return None
    t = m.type(m.node("add").outputs[0])
    if not t.dtype.is_float or m.type(m["a"]) != t or m.type(m["b"]) != t:
        return None  # a broadcasting add stays an Add
    return [m.fuse(OpType.SKIP_LAYER_NORM, [m["a"], m["b"], *ln.inputs[1:]], ln.attrs,
                   outputs=ln.outputs[:1], name=ln.name)]


SKIP_LAYER_NORM = Rule("layer_norm(a + b, s, bias) => skip_layer_norm(a, b, s, bias)",
                       Op(OpType.LAYER_NORM, (Op(OpType.ADD, (Var("a"), Var("b")), name="add"),),
                          extra_inputs=True),
                       _skip_layer_norm)


@register_pass("fuse_skip_layernorm", Phase.FUSE)
def fuse_skip_layernorm(graph: Graph, ctx: PassContext) -> Graph:
    """A residual Add read only by a LayerNorm -> SkipLayerNormalization."""
    return apply_rules(graph, [SKIP_LAYER_NORM], ctx)


# ---- GELU --------------------------------------------------------------------------------------
def _product_leaves(m: Match, t: str, reader: Node, leaves: list[str]) -> None:
    """Flattens single-reader Mul subtrees under ``t`` into ``leaves`` (absorbing them)."""
    node = m.view.producer(t)
    if node is not None and node.op is OpType.MUL and m.view.readers(t) == [reader] \
            and t not in m.graph.outputs:
        m.absorb(node)
        for i in node.inputs:
            _product_leaves(m, i, node, leaves)
    else:
        leaves.append(t)


def _is_half_x(m: Match, leaves: list[str]) -> bool:
    consts = [m.view.const(t) for t in leaves if t in m.graph.constants]
    others = [t for t in leaves if t not in m.graph.constants]
    product = math.prod(scalar_value(c) or math.nan for c in consts)
    return others == [m["x"]] and len(consts) >= 1 and abs(product - 0.5) < 1e-6


def _gelu_outer(m: Match, gate: Node) -> Node | None:
    """From ``gate`` (Erf or Tanh) up: ``1 + gate`` times ``x`` times 0.5; the last Mul."""
    readers = m.view.readers(gate.outputs[0])
    if len(readers) != 1 or readers[0].op is not OpType.ADD:
        return None
    plus1 = readers[0]
    one = plus1.inputs[1] if plus1.inputs[0] == gate.outputs[0] else plus1.inputs[0]
    if not is_scalar(m.view.const(one), 1.0):
        return None
    m.absorb(plus1)
    cur = plus1
    leaves: list[str] = []
    for _ in range(4):
        readers = m.view.readers(cur.outputs[0])
        if len(readers) != 1 or readers[0].op is not OpType.MUL or cur.outputs[0] in m.graph.outputs:
            return None
        mul = readers[0]
        other = [i for i in mul.inputs if i != cur.outputs[0]]
        if len(other) != 1:
            return None
        m.absorb(mul)
        _product_leaves(m, other[0], mul, leaves)
        if _is_half_x(m, leaves):
            return mul
        cur = mul
    return None


def _gelu(approximate: GeluApproximate) -> Build:
    def build(m: Match) -> list[Node] | None:
        k = scalar_value(m.const("k"))
        scale_in = m.node("scale_in")
        if approximate is GeluApproximate.NONE:
            target = math.sqrt(2.0) if scale_in.op is OpType.DIV else 1.0 / math.sqrt(2.0)
            if k is None or abs(k - target) > 1e-4 * target:
                return None
        elif k is None or abs(k - math.sqrt(2.0 / math.pi)) > 1e-4 or \
                abs((scalar_value(m.const("c")) or 0.0) - 0.044715) > 1e-6:
            return None
        outer = _gelu_outer(m, m.root)
        if outer is None:
            return None
        return [m.fuse(OpType.GELU, [m["x"]], GeluAttrs(approximate), outputs=outer.outputs,
                       name=m.root.name)]

    return build


def _cube(x: Var) -> Alt:
    return alt(Op(OpType.POW, (x, Const("three", lambda v: is_scalar(v, 3.0)))),
               Op(OpType.MUL, (Op(OpType.MUL, (x, x)), x)))


_X = Var("x")
GELU_ERF = Rule("x * 0.5 * (1 + erf(x / sqrt(2))) => gelu(x)",
                Op(OpType.ERF, (Op(frozenset({OpType.DIV, OpType.MUL}), (_X, Const("k")),
                                   name="scale_in"),)),
                _gelu(GeluApproximate.NONE))
GELU_TANH = Rule("x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) => gelu_tanh(x)",
                 Op(OpType.TANH, (Op(OpType.MUL, (Op(OpType.ADD, (_X, Op(OpType.MUL, (
                     _cube(_X), Const("c"))))), Const("k")), name="scale_in"),)),
                 _gelu(GeluApproximate.TANH))


@register_pass("fuse_gelu", Phase.FUSE)
def fuse_gelu(graph: Graph, ctx: PassContext) -> Graph:
    """The erf and tanh spellings of GELU -> one Gelu node."""
    return apply_rules(graph, [GELU_ERF, GELU_TANH], ctx)
