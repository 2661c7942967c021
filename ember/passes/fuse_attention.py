"""Attention: ``softmax(q @ k^T * scale + mask) @ v`` into one FusedAttention.

    MatMul(q, kt) -> Mul/Div by a scalar -> [Add mask] -> Softmax(last axis) -> MatMul(., v)
        => FusedAttention(q, kt, v, mask; scale, k_transposed=True)

Exporters also scale q and k separately (``q * s^0.5 @ (k * s^0.5)^T``); those scalar Muls fold
into ``scale``. The normalizer must be a Softmax over the last axis: a Sigmoid, ReLU or a
Softmax over another axis is not attention as FusedAttention computes it, and stays.

The dynamo exporter writes ``scaled_dot_product_attention`` with a guard after the Softmax,
``Where(IsNaN(p), 0, p)``, which zeroes the rows a mask of -inf hides entirely (PyTorch's SDPA
returns zeros there). With no mask, or a mask that cannot hold -inf (a constant without one, or
``Where(c, a, b)``, casts of integers and shape ops over such values: what Hugging Face models
build), no row is hidden entirely, the guard changes nothing for finite q and k, and it is
absorbed; a mask that may hold -inf keeps the guard and the ops written out.

ONNX's own ``Attention`` op (opset 23, what the dynamo exporter writes for SDPA at that opset)
becomes a FusedAttention too where it is plain attention: 4-D q, k, v with as many key as query
heads, no cache, causal frontier, window or softcap, only its first output read, and no mask or
a float mask that cannot hide a row entirely (the op zeroes such rows).
"""
from __future__ import annotations

import math

import numpy as np

from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import AttentionAttrs, FusedAttentionAttrs
from ember.passes.edit import scalar_value
from ember.passes.manager import PassContext, Phase, register_pass
from ember.passes.rewrite import Const, Match, Op, Rule, Var, View, alt, apply_rules


def _scalar(name: str) -> Const:
    return Const(name, lambda v: v.size == 1)


def _last_axis_softmax(node: Node, view: View) -> bool:
    rank = view.type(node.inputs[0]).rank
    axis = node.attrs.axis if node.attrs is not None else -1
    return (axis + rank if axis < 0 else axis) == rank - 1


#: Ops that move or pick elements without computing new values: finite in, finite out.
_MOVES = frozenset({OpType.RESHAPE, OpType.UNSQUEEZE, OpType.SQUEEZE, OpType.FLATTEN, OpType.EXPAND,
                    OpType.TRANSPOSE, OpType.SLICE, OpType.IDENTITY, OpType.CONCAT, OpType.TILE})
_MAX_DEPTH = 16


def finite_values(tensor: str, view: View, depth: int = 0) -> bool:
    """Whether ``tensor`` provably holds no infinity or NaN (at build time, whatever the inputs):
    a finite constant, an integer or boolean tensor, a float cast of one, a ``Where`` of finite
    values or a shape op (reshape, slice, transpose, expand, concat, gather) over finite values."""
    if not tensor or depth > _MAX_DEPTH:
        return False
    value = view.const(tensor)
    if value is not None:
        return bool(value.dtype.kind in "biu" or np.isfinite(value).all())
    if not view.type(tensor).dtype.is_float:
        return True
    node = view.producer(tensor)
    if node is None:
        return False
    if node.op is OpType.CAST:
        src = view.type(node.inputs[0]).dtype
        return _cast_keeps_finite(src, view.type(tensor).dtype) and finite_values(node.inputs[0], view, depth + 1)
    if node.op is OpType.WHERE:
        return all(finite_values(i, view, depth + 1) for i in node.inputs[1:3])
    if node.op is OpType.GATHER:
        return finite_values(node.inputs[0], view, depth + 1)
    if node.op in _MOVES:
        data = node.inputs if node.op is OpType.CONCAT else node.inputs[:1]
        return all(finite_values(i, view, depth + 1) for i in data if i)
    return False


#: Float types by range: a cast to a type of the same or a higher rank keeps finite values finite.
_FLOAT_RANGE = {DType.FLOAT16: 0, DType.BFLOAT16: 1, DType.FLOAT32: 2, DType.FLOAT64: 3}


def _cast_keeps_finite(src: DType, dst: DType) -> bool:
    """Whether every finite ``src`` value is finite as ``dst`` (int64's largest is 9.2e18, past
    float16's 65504 but within bfloat16's range)."""
    if src is DType.BOOL or src in (DType.INT8, DType.UINT8):
        return dst in _FLOAT_RANGE
    if src.is_int:
        return dst in _FLOAT_RANGE and dst is not DType.FLOAT16
    return src in _FLOAT_RANGE and dst in _FLOAT_RANGE and _FLOAT_RANGE[dst] >= _FLOAT_RANGE[src]


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
    if m.has("nan_guard") and mask and not finite_values(mask, m.view):
        return None  # a row the mask hides entirely is zeros through the guard, NaN without it
    return [m.fuse(OpType.FUSED_ATTENTION, [q, k, v, mask], FusedAttentionAttrs(scale, True),
                   name=m.node("qk").name)]


def _attention_pattern() -> Op:
    q = alt(Op(OpType.MUL, (Var("q"), _scalar("sq")), name="q_scale"), Var("q"))
    k = alt(Op(OpType.MUL, (Var("k"), _scalar("sk")), name="k_scale"), Var("k"))
    qk = Op(OpType.MATMUL, (q, k), name="qk")
    scaled = alt(Op(frozenset({OpType.MUL, OpType.DIV}), (qk, _scalar("s")), name="scale"), qk)
    masked = alt(Op(OpType.ADD, (scaled, Var("mask")), name="mask_add"), scaled)
    probs = Op(OpType.SOFTMAX, (masked,), name="softmax", where=_last_axis_softmax)
    guarded = Op(OpType.WHERE, (Op(OpType.IS_NAN, (probs,)), Const("zero", _is_zero), probs), name="nan_guard")
    return Op(OpType.MATMUL, (alt(guarded, probs), Var("v")))


def _is_zero(value: np.ndarray) -> bool:
    return value.size == 1 and float(value.reshape(-1)[0]) == 0.0


ATTENTION = Rule("softmax(q @ k^T * s + mask) @ v => attention(q, k, v, mask)",
                 _attention_pattern(), _attention)


def _plain_attention(m: Match) -> list[Node] | None:
    node = m.root
    a: AttentionAttrs = node.attrs
    q, k, v = node.inputs[:3]
    qt, kt, vt = m.type(q), m.type(k), m.type(v)
    if any(node.inputs[4:]) or any(node.outputs[1:]) or not qt.dtype.is_float:
        return None  # a KV cache, padding lengths or extra outputs: the op's own kernel
    if a.is_causal or a.softcap or a.left_window_size >= 0 or a.right_window_size >= 0 \
            or (a.softmax_precision is not None and a.softmax_precision is not qt.dtype):
        return None
    if not qt.rank == kt.rank == vt.rank == 4 or qt.shape[1] != kt.shape[1] or kt.shape[1] != vt.shape[1]:
        return None  # 3-D packed heads or grouped-query attention
    mask = _additive_mask(m, node.input(3), qt.dtype.to_numpy())
    if mask is None or (mask and (m.type(mask).shape[-1:] != kt.shape[-2:-1]
                                  or not (mask in m.new_constants or finite_values(mask, m.view)))):
        return None  # a boolean mask, one padded to the key length, or one that may hide a row
    head = qt.shape[3]
    if a.scale is None and not isinstance(head, int):
        return None
    scale = float(a.scale) if a.scale is not None else 1.0 / math.sqrt(float(head))
    return [m.fuse(OpType.FUSED_ATTENTION, [q, k, v, mask], FusedAttentionAttrs(scale, False),
                   outputs=node.outputs[:1])]


def _additive_mask(m: Match, mask: str, dtype: np.dtype) -> str | None:
    """The float mask to add to the scores: ``mask`` itself (float), ``""`` for none (absent or
    a constant boolean mask that keeps everything), a new constant of 0 / -inf for a constant
    boolean mask that leaves every row something (``None`` otherwise)."""
    if not mask:
        return ""
    value = m.view.const(mask)
    if m.type(mask).dtype.is_float:
        return mask if m.type(mask).dtype.to_numpy() == dtype else None
    if value is None or value.dtype != np.bool_ or value.ndim < 1:
        return None
    if value.all():
        return ""
    if not value.any(axis=-1).all():
        return None
    return m.add_constant(f"{m.root.name}_mask", np.where(value, 0.0, -np.inf).astype(dtype))


ONNX_ATTENTION = Rule("attention op without cache, causal frontier or softcap => fused_attention(q, k, v, mask)",
                      Op(OpType.ATTENTION, extra_inputs=True), _plain_attention)


@register_pass("fuse_attention", Phase.FUSE)
def fuse_attention(graph: Graph, ctx: PassContext) -> Graph:
    """MatMul-scale-mask-Softmax-MatMul, and ONNX Attention ops of plain attention -> FusedAttention."""
    return apply_rules(graph, [ATTENTION, ONNX_ATTENTION], ctx)
