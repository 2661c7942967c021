"""Attention and MultiHeadAttention: the projections, the heads and

    softmax(q @ k^T * scale + mask [+ attention_bias]) @ v

written as built-in ops in the shape ``fuse_attention`` turns into one FusedAttention. The mask
follows ONNX Runtime: masked positions (a 0 in a raw mask, past a 1-D length, after the query
position when ``unidirectional``) get ``mask_filter_value`` (-10000) added to their score.
"""
from __future__ import annotations

import math

import numpy as np

from ember.frontends.contrib_ms.common import contrib, dim_scalar, float_attr, int_attr, need, out, positions
from ember.ir.dtype import DType
from ember.ir.optype import OpType
from ember.ir.types import Dim
from ember.ops.attrs import (
    AxesAttrs,
    AxisAttrs,
    CastAttrs,
    ReshapeAttrs,
    SliceAttrs,
    SoftmaxAttrs,
    SplitAttrs,
    TransposeAttrs,
)
from ember.ops.plugin import Lowering, PluginAttrs


def _heads(lo: Lowering, x: str, num_heads: int, what: str) -> str:
    """[B, S, D] -> [B, N, S, D / N]."""
    shape = lo.constant(np.array([0, 0, num_heads, -1], np.int64), f"{what}_heads_shape")
    (r,) = lo.op(OpType.RESHAPE, [x, shape], ReshapeAttrs(), suffix=f"{what}_heads")
    (t,) = lo.op(OpType.TRANSPOSE, [r], TransposeAttrs(perm=(0, 2, 1, 3)), suffix=f"{what}_bnsh")
    return t


def _head_size(lo: Lowering, x: str, num_heads: int, what: str) -> int:
    d = lo.type(x).shape[-1]
    if not isinstance(d, int):
        raise lo.reject(f"the hidden size of {what} is symbolic ({d}); it must be known")
    if d % num_heads:
        raise lo.reject(f"the hidden size {d} of {what} is not a multiple of num_heads={num_heads}")
    return d // num_heads


def _num_heads(lo: Lowering, a: PluginAttrs) -> int:
    n = int_attr(a, "num_heads", 0)
    if n <= 0:
        raise lo.reject("num_heads is missing (it is required) or not positive")
    return n


def _keep_from_mask(lo: Lowering, mask: str, batch: Dim, t_pos: str) -> str:
    """A boolean keep-mask broadcastable to [B, N, S, T] from a mask input."""
    mt = lo.type(mask)
    zero = lo.scalar(0, mt.dtype, "mask_zero")
    if mt.rank == 1:
        n = mt.shape[0]
        if isinstance(n, int) and isinstance(batch, int) and n == 2 * batch and batch > 0:
            (end,) = lo.op(OpType.SLICE, [mask], SliceAttrs(starts=(0,), ends=(batch,), axes=(0,)), suffix="mask_end")
            (start,) = lo.op(OpType.SLICE, [mask], SliceAttrs(starts=(batch,), ends=(2 * batch,), axes=(0,)),
                            suffix="mask_start")
            before = _lengths_keep(lo, end, t_pos, "mask_end")
            (s64,) = lo.op(OpType.CAST, [start], CastAttrs(to=DType.INT64), suffix="mask_start_i64")
            (s2,) = lo.op(OpType.UNSQUEEZE, [s64], AxesAttrs(axes=(1,)), suffix="mask_start_col")
            (after,) = lo.op(OpType.GREATER_OR_EQUAL, [t_pos, s2], None, suffix="mask_after_start")
            (keep,) = lo.op(OpType.AND, [before, after], None, suffix="mask_keep")
        elif isinstance(n, int) and isinstance(batch, int) and n != batch:
            raise lo.reject(f"a 1-D mask of {n} entries for batch {batch} (only (batch) lengths and "
                           f"(2 * batch) end/start positions are supported)")
        else:
            keep = _lengths_keep(lo, mask, t_pos, "mask")
        (k4,) = lo.op(OpType.UNSQUEEZE, [keep], AxesAttrs(axes=(1, 2)), suffix="mask_bn")
        return k4
    if mt.rank in (2, 3):
        (keep,) = lo.op(OpType.GREATER, [mask, zero], None, suffix="mask_keep")
        axes = (1, 2) if mt.rank == 2 else (1,)
        (k4,) = lo.op(OpType.UNSQUEEZE, [keep], AxesAttrs(axes=axes), suffix="mask_bn")
        return k4
    raise lo.reject(f"a mask of rank {mt.rank} ({mt}); supported: (batch) lengths, (2 * batch), "
                   f"(batch, total_length) and (batch, length, total_length)")


def _lengths_keep(lo: Lowering, lengths: str, t_pos: str, what: str) -> str:
    (n64,) = lo.op(OpType.CAST, [lengths], CastAttrs(to=DType.INT64), suffix=f"{what}_i64")
    (col,) = lo.op(OpType.UNSQUEEZE, [n64], AxesAttrs(axes=(1,)), suffix=f"{what}_col")
    (keep,) = lo.op(OpType.LESS, [t_pos, col], None, suffix=f"{what}_keep")
    return keep


def _causal_keep(lo: Lowering, q: str, k: str) -> str:
    """[S, T] keep-mask: key position t <= past length + query position s (q, k in BNSH)."""
    qs, ks = lo.type(q).shape[2], lo.type(k).shape[2]
    if isinstance(qs, int) and isinstance(ks, int):
        table = np.arange(ks)[None, :] <= (ks - qs) + np.arange(qs)[:, None]
        return lo.constant(table, "causal_keep")
    offset = None
    if qs != ks:
        (offset,) = lo.op(OpType.SUB, [dim_scalar(lo, k, 2, "total_len"), dim_scalar(lo, q, 2, "query_len")],
                         None, suffix="past_len")
    s_pos = positions(lo, q, 2, "query_pos", offset)
    (col,) = lo.op(OpType.UNSQUEEZE, [s_pos], AxesAttrs(axes=(1,)), suffix="query_col")
    (keep,) = lo.op(OpType.LESS_OR_EQUAL, [positions(lo, k, 2, "key_pos"), col], None, suffix="causal_keep")
    return keep


def _attend(lo: Lowering, q: str, k: str, v: str, a: PluginAttrs, mask: str, attn_bias: str,
            head_size: int, output: list[str] | int) -> None:
    """softmax(q k^T * scale + mask) v on BNSH q, k, v; the result as [B, S, N * Hv]."""
    dtype = lo.type(q).dtype
    scale = float_attr(a, "scale", 0.0) or 1.0 / math.sqrt(head_size)
    keeps = []
    if mask:
        t_pos = positions(lo, k, 2, "key_pos")
        keeps.append(_keep_from_mask(lo, mask, lo.type(q).shape[0], t_pos))
    if int_attr(a, "unidirectional", 0):
        keeps.append(_causal_keep(lo, q, k))
    (kt,) = lo.op(OpType.TRANSPOSE, [k], TransposeAttrs(perm=(0, 1, 3, 2)), suffix="k_t")
    (scores,) = lo.op(OpType.MATMUL, [q, kt], None, suffix="qk")
    (scores,) = lo.op(OpType.MUL, [scores, lo.scalar(scale, dtype, "scale")], None, suffix="scale")
    additive = ""
    if keeps:
        keep = keeps[0]
        if len(keeps) == 2:
            (keep,) = lo.op(OpType.AND, keeps, None, suffix="keep")
        filt = float_attr(a, "mask_filter_value", -10000.0)
        (additive,) = lo.op(OpType.WHERE, [keep, lo.scalar(0.0, dtype, "keep_value"),
                                          lo.scalar(filt, dtype, "mask_filter_value")], None, suffix="mask")
    if attn_bias:
        if additive:
            (additive,) = lo.op(OpType.ADD, [additive, attn_bias], None, suffix="mask_bias")
        else:
            additive = attn_bias
    if additive:
        (scores,) = lo.op(OpType.ADD, [scores, additive], None, suffix="add_mask")
    (probs,) = lo.op(OpType.SOFTMAX, [scores], SoftmaxAttrs(axis=-1), suffix="softmax")
    (ctx,) = lo.op(OpType.MATMUL, [probs, v], None, suffix="pv")
    (t,) = lo.op(OpType.TRANSPOSE, [ctx], TransposeAttrs(perm=(0, 2, 1, 3)), suffix="bsnh")
    shape = lo.constant(np.array([0, 0, -1], np.int64), "merge_shape")
    lo.op(OpType.RESHAPE, [t, shape], ReshapeAttrs(), outputs=output, suffix="merge_heads")


def _with_past(lo: Lowering, past: str, x: str, what: str) -> str:
    if not past:
        return x
    (full,) = lo.op(OpType.CONCAT, [past, x], AxisAttrs(axis=2), suffix=f"{what}_with_past")
    return full


def _reject_unsupported(lo: Lowering, a: PluginAttrs, inputs: dict[int, str]) -> None:
    for name in ("do_rotary", "past_present_share_buffer"):
        if int_attr(a, name, 0):
            raise lo.reject(f"{name}=1 is not supported")
    for i, what in inputs.items():
        if lo.input(i):
            raise lo.reject(f"input {i} ({what}) is not supported")


@contrib("Attention")
def attention(lo: Lowering, a: PluginAttrs) -> None:
    """Self-attention with merged Q/K/V weights: input @ weights + bias, split (qkv_hidden_sizes,
    else thirds), heads, optional past state (2, B, N, P, H) and present output."""
    _reject_unsupported(lo, a, {6: "past_sequence_length"})
    n = _num_heads(lo, a)
    x, w, bias, mask, past, attn_bias = (need(lo, 0, "input"), need(lo, 1, "weights"), lo.input(2),
                                         lo.input(3), lo.input(4), lo.input(5))
    total = lo.type(w).shape[-1]
    sizes = tuple(int(s) for s in a.get("qkv_hidden_sizes", ()))
    if not sizes:
        if not isinstance(total, int) or total % 3:
            raise lo.reject(f"weights of {total} columns cannot be split into three equal parts; give "
                           f"qkv_hidden_sizes")
        sizes = (total // 3,) * 3
    if len(sizes) != 3 or (isinstance(total, int) and sum(sizes) != total):
        raise lo.reject(f"qkv_hidden_sizes {sizes} do not add up to the weights' {total} columns")
    (qkv,) = lo.op(OpType.MATMUL, [x, w], None, suffix="qkv")
    if bias:
        (qkv,) = lo.op(OpType.ADD, [qkv, bias], None, suffix="qkv_bias")
    q3, k3, v3 = lo.op(OpType.SPLIT, [qkv], SplitAttrs(axis=-1, split=sizes), outputs=3, suffix="split")
    head = _head_size(lo, q3, n, "Q")
    q, k, v = (_heads(lo, t, n, what) for t, what in ((q3, "q"), (k3, "k"), (v3, "v")))
    if past:
        if len(set(sizes)) != 1:
            raise lo.reject("a past state needs equal Q, K and V hidden sizes")
        pk, pv = (lo.op(OpType.GATHER, [past, lo.scalar(i, DType.INT64, f"past_{w}")], AxisAttrs(axis=0),
                       suffix=f"past_{w}")[0] for i, w in ((0, "key"), (1, "value")))
        k, v = _with_past(lo, pk, k, "k"), _with_past(lo, pv, v, "v")
    if lo.is_used(1):
        (k5,) = lo.op(OpType.UNSQUEEZE, [k], AxesAttrs(axes=(0,)), suffix="present_k")
        (v5,) = lo.op(OpType.UNSQUEEZE, [v], AxesAttrs(axes=(0,)), suffix="present_v")
        lo.op(OpType.CONCAT, [k5, v5], AxisAttrs(axis=0), outputs=out(lo, 1), suffix="present")
    _attend(lo, q, k, v, a, mask, attn_bias, head, out(lo, 0))


def _split_packed(lo: Lowering, x: str, parts: int, what: str) -> list[str]:
    """[B, S, N, parts, H] -> ``parts`` tensors [B, S, N * H]."""
    outs = lo.op(OpType.SPLIT, [x], SplitAttrs(axis=3, split=(1,) * parts), outputs=parts, suffix=f"{what}_unpack")
    shape = lo.constant(np.array([0, 0, -1], np.int64), f"{what}_packed_shape")
    return [lo.op(OpType.RESHAPE, [t, shape], ReshapeAttrs(), suffix=f"{what}_{i}")[0] for i, t in enumerate(outs)]


def _bias_parts(lo: Lowering, bias: str, q: str, k: str, v: str) -> list[str]:
    dims = [lo.type(t).shape[-1] for t in (q, k, v)]
    if not all(isinstance(d, int) for d in dims):
        raise lo.reject("a bias with symbolic hidden sizes")
    return list(lo.op(OpType.SPLIT, [bias], SplitAttrs(axis=0, split=tuple(int(d) for d in dims)),
                     outputs=3, suffix="bias_split"))


@contrib("MultiHeadAttention")
def multi_head_attention(lo: Lowering, a: PluginAttrs) -> None:
    """Self or cross attention on projected Q, K, V ([B, S, D]; packed QKV [B, S, N, 3, H];
    packed KV [B, L, N, 2, H]; or K, V already [B, N, L, H]), optional bias, key padding
    mask, attention bias and past key/value (with present outputs)."""
    _reject_unsupported(lo, a, {8: "past_sequence_length", 9: "cache_indirection"})
    if lo.is_used(3):
        raise lo.reject("its qk output is read; it is not supported")
    n = _num_heads(lo, a)
    query, key, value, bias = need(lo, 0, "query"), lo.input(1), lo.input(2), lo.input(3)
    mask, attn_bias, past_k, past_v = lo.input(4), lo.input(5), lo.input(6), lo.input(7)
    qr = lo.type(query).rank
    if qr == 5:
        if key or value:
            raise lo.reject("packed QKV query together with key or value")
        query, key, value = _split_packed(lo, query, 3, "qkv")
    elif qr != 3:
        raise lo.reject(f"a query of rank {qr}; expected [B, S, D] or packed [B, S, N, 3, H]")
    elif key and lo.type(key).rank == 5:
        if value:
            raise lo.reject("packed KV key together with value")
        key, value = _split_packed(lo, key, 2, "kv")
    elif not key or not value:
        raise lo.reject("key and value are required unless the query packs them")
    k_bnsh = lo.type(key).rank == 4
    if k_bnsh and lo.type(value).rank != 4:
        raise lo.reject("key of rank 4 needs a value of rank 4 ([B, N, L, H])")
    if bias:
        if k_bnsh:
            raise lo.reject("a bias with key and value given as [B, N, L, H]")
        qb, kb, vb = _bias_parts(lo, bias, query, key, value)
        query, key, value = (lo.op(OpType.ADD, [t, b], None, suffix=f"{w}_bias")[0]
                             for t, b, w in ((query, qb, "q"), (key, kb, "k"), (value, vb, "v")))
    head = _head_size(lo, query, n, "query")
    q = _heads(lo, query, n, "q")
    k = key if k_bnsh else _heads(lo, key, n, "k")
    v = value if k_bnsh else _heads(lo, value, n, "v")
    if bool(past_k) != bool(past_v):
        raise lo.reject("past_key and past_value must be given together")
    k, v = _with_past(lo, past_k, k, "k"), _with_past(lo, past_v, v, "v")
    for i, t in ((1, k), (2, v)):
        if lo.is_used(i):
            lo.op(OpType.IDENTITY, [t], None, outputs=out(lo, i), suffix=f"present_{i}")
    _attend(lo, q, k, v, a, mask, attn_bias, head, out(lo, 0))
