"""Gemm, MatMul (numpy matmul semantics: batch broadcasting, 1-D operands) and Einsum."""
from __future__ import annotations

from typing import Optional, Sequence

from ember.errors import ShapeError
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType
from ember.ops.attrs import AttentionAttrs, EinsumAttrs, GemmAttrs, LinearAttentionAttrs, RotaryEmbeddingAttrs
from ember.ops.common import (
    Consts,
    Types,
    add_dims,
    broadcast_shapes,
    div_dim,
    input_at,
    mul_dims,
    need,
    require,
    same_dtype,
)
from ember.ops.registry import register_op


def _inner(a: Dim, b: Dim, what: str) -> None:
    if isinstance(a, int) and isinstance(b, int) and a != b:
        raise ShapeError(f"{what}: inner dims {a} and {b} differ")


def matmul_shape(a: tuple[Dim, ...], b: tuple[Dim, ...], what: str = "MatMul") -> tuple[Dim, ...]:
    """Output shape of ``np.matmul(a, b)`` for shapes with possibly symbolic dims."""
    require(len(a) >= 1 and len(b) >= 1, f"{what} operands must have rank >= 1, got {a} and {b}")
    a2 = (1, a[0]) if len(a) == 1 else a
    b2 = (b[0], 1) if len(b) == 1 else b
    _inner(a2[-1], b2[-2], what)
    batch = broadcast_shapes(tuple(a2[:-2]), tuple(b2[:-2]))
    out: tuple[Dim, ...] = (*batch, a2[-2], b2[-1])
    if len(b) == 1:
        out = out[:-1]
    if len(a) == 1:
        out = out[:-2] + out[-1:] if len(b) > 1 else out[:-1]
    return out


@register_op(OpType.MATMUL)
def infer_matmul(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    require(len(in_types) == 2, f"MatMul takes 2 inputs, got {len(in_types)}")
    a, b = need(in_types[0], "A"), need(in_types[1], "B")
    dtype = same_dtype([a, b], "MatMul inputs")
    return [TensorType(dtype, matmul_shape(a.shape, b.shape))]


def gemm_shape(a: TensorType, b: TensorType, c: Optional[TensorType], attrs: GemmAttrs,
               what: str = "Gemm") -> tuple[Dim, ...]:
    """Gemm: op(a)[M, K] @ op(b)[K, N] (+ c broadcast to [M, N]) -> [M, N]."""
    require(a.rank == 2 and b.rank == 2, f"{what} needs 2-D A and B, got {a} and {b}")
    m, k = (a.shape[1], a.shape[0]) if attrs.trans_a else a.shape
    k2, n = (b.shape[1], b.shape[0]) if attrs.trans_b else b.shape
    _inner(k, k2, what)
    if c is not None:
        require(c.rank <= 2, f"{what} C must have rank <= 2, got {c}")
        out = broadcast_shapes((m, n), c.shape)
        require(len(out) == 2, f"{what} C {c} does not broadcast to [{m}, {n}]")
        for want, got in zip((m, n), out):
            if isinstance(want, int) and isinstance(got, int) and want != got:
                raise ShapeError(f"{what} C {c} does not broadcast to [{m}, {n}]")
    return (m, n)


@register_op(OpType.GEMM, attrs=GemmAttrs)
def infer_gemm(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    a, b = need(in_types[0], "A"), need(in_types[1] if len(in_types) > 1 else None, "B")
    c = in_types[2] if len(in_types) > 2 else None
    dtype = same_dtype([a, b, c], "Gemm inputs")
    return [TensorType(dtype, gemm_shape(a, b, c, node.attrs))]


def parse_einsum(equation: str, ranks: Sequence[int]) -> tuple[list[str], str]:
    """Operand subscripts and output subscripts with ``...`` expanded to capital letters.

    The implicit form (no ``->``) outputs the ellipsis dims, then the letters that appear once,
    in alphabetical order, as ONNX and numpy do.
    """
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ShapeError(f"Einsum equation {equation!r} has {len(terms)} operands, the node has {len(ranks)}")
    ell = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks) if "..." in t), default=0)
    fill = "".join(chr(ord("A") + i) for i in range(ell))
    out_terms = []
    for t, r in zip(terms, ranks):
        n = r - len(t.replace("...", ""))
        out_terms.append(t.replace("...", fill[ell - n:] if n else "") if "..." in t else t)
        if len(out_terms[-1]) != r or (out_terms[-1] and not out_terms[-1].isalpha()):
            raise ShapeError(f"Einsum term {t!r} does not match an operand of rank {r}")
    if arrow:
        out = rhs.replace("...", fill)
    else:
        letters = "".join(out_terms)
        out = fill + "".join(sorted(c for c in set(letters) if c.islower() and letters.count(c) == 1))
    return out_terms, out


@register_op(OpType.EINSUM, attrs=EinsumAttrs)
def infer_einsum(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    types = [need(t, f"Inputs[{i}]") for i, t in enumerate(in_types)]
    require(len(types) >= 1, "Einsum needs at least one input")
    dtype = same_dtype(types, "Einsum inputs")
    terms, out = parse_einsum(node.attrs.equation, [t.rank for t in types])
    sizes: dict[str, Dim] = {}
    for term, t in zip(terms, types):
        for letter, d in zip(term, t.shape):
            sizes[letter] = broadcast_shapes((sizes.get(letter, 1),), (d,))[0]
    missing = [c for c in out if c not in sizes]
    require(not missing, f"Einsum output subscripts {missing} appear in no operand")
    return [TensorType(dtype, tuple(sizes[c] for c in out))]


def _heads(t: TensorType, heads: Optional[int], what: str) -> tuple[Dim, Dim, Dim]:
    """(heads, sequence, head size) of a 3-D ``[B, S, H * D]`` or 4-D ``[B, H, S, D]`` input."""
    if t.rank == 4:
        return t.shape[1], t.shape[2], t.shape[3]
    require(heads is not None and heads > 0,
            f"Attention {what} {t} is 3-D, so q_num_heads and kv_num_heads are required")
    size = div_dim(t.shape[2], heads)  # type: ignore[arg-type]
    require(size is not None, f"Attention {what} hidden size {t.shape[2]} is not a multiple of {heads} heads")
    return heads, t.shape[1], size  # type: ignore[return-value]


@register_op(OpType.ATTENTION, attrs=AttentionAttrs)
def infer_attention(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Attention(Q, K, V, mask?, past_key?, past_value?, nonpad_kv_seqlen?) ->
    (Y, present_key, present_value, qk_matmul_output), as ONNX's Attention (23-25)."""
    a: AttentionAttrs = node.attrs
    q, k, v = (need(input_at(in_types, i), n) for i, n in enumerate(("Q", "K", "V")))
    require(q.rank in (3, 4) and k.rank == q.rank and v.rank == q.rank,
            f"Attention needs Q, K, V all 3-D or all 4-D, got {q}, {k}, {v}")
    dtype = same_dtype([q, k, v], "Attention Q, K, V")
    hq, sq, _ = _heads(q, a.q_num_heads, "Q")
    hkv, skv, _ = _heads(k, a.kv_num_heads, "K")
    _, _, dv = _heads(v, a.kv_num_heads, "V")
    past = input_at(in_types, 4)
    total = skv if past is None else add_dims(past.shape[2], skv)
    batch = q.shape[0]
    y: tuple[Dim, ...] = (batch, sq, mul_dims((hq, dv))) if q.rank == 3 else (batch, hq, sq, dv)
    _, _, dk = _heads(k, a.kv_num_heads, "K")
    return [TensorType(dtype, y), TensorType(dtype, (batch, hkv, total, dk)),
            TensorType(dtype, (batch, hkv, total, dv)), TensorType(dtype, (batch, hq, sq, total))]


@register_op(OpType.LINEAR_ATTENTION, attrs=LinearAttentionAttrs)
def infer_linear_attention(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """LinearAttention(query[B, T, Hq*dk], key[B, T, Hkv*dk], value[B, T, Hkv*dv], past_state?,
    decay?, beta?) -> (output[B, T, Hq*dv], present_state[B, Hkv, dk, dv])."""
    a: LinearAttentionAttrs = node.attrs
    q, k, v = (need(input_at(in_types, i), n) for i, n in enumerate(("query", "key", "value")))
    require(q.rank == 3 and k.rank == 3 and v.rank == 3,
            f"LinearAttention needs 3-D packed query, key, value, got {q}, {k}, {v}")
    require(q.dtype.is_float, f"LinearAttention needs floating-point inputs, got {q}")
    _, _, dk = _heads(q, a.q_num_heads, "query")
    _, _, dk2 = _heads(k, a.kv_num_heads, "key")
    _, _, dv = _heads(v, a.kv_num_heads, "value")
    require(not (isinstance(dk, int) and isinstance(dk2, int)) or dk == dk2,
            f"LinearAttention query head size {dk} differs from key head size {dk2}")
    names = ("past_state", "decay", "beta")
    given = {name: input_at(in_types, 3 + i) for i, name in enumerate(names)}
    require((given["decay"] is not None) == a.gated,
            f"LinearAttention update_rule {a.update_rule.value!r} "
            f"{'requires' if a.gated else 'forbids'} the decay input")
    require((given["beta"] is not None) == a.delta,
            f"LinearAttention update_rule {a.update_rule.value!r} "
            f"{'requires' if a.delta else 'forbids'} the beta input")
    past = given["past_state"]
    state_dtype = past.dtype if past is not None else q.dtype
    return [TensorType(q.dtype, (q.shape[0], q.shape[1], mul_dims((a.q_num_heads, dv)))),
            TensorType(state_dtype, (q.shape[0], a.kv_num_heads, dk, dv))]


@register_op(OpType.ROTARY_EMBEDDING, attrs=RotaryEmbeddingAttrs)
def infer_rotary_embedding(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """RotaryEmbedding(input, cos_cache, sin_cache, position_ids?) -> the input's type."""
    a: RotaryEmbeddingAttrs = node.attrs
    x = need(input_at(in_types, 0), "input")
    require(x.rank in (3, 4), f"RotaryEmbedding needs a 3-D or 4-D input, got {x}")
    require(x.dtype.is_float, f"RotaryEmbedding needs a floating-point input, got {x}")
    require(x.rank == 4 or a.num_heads > 0, f"RotaryEmbedding input {x} is 3-D, so num_heads is required")
    require(a.rotary_embedding_dim % 2 == 0 and a.rotary_embedding_dim >= 0,
            f"RotaryEmbedding rotary_embedding_dim {a.rotary_embedding_dim} must be even")
    need(input_at(in_types, 1), "cos_cache")
    need(input_at(in_types, 2), "sin_cache")
    return [x]
