"""Gemm, MatMul, Einsum, Attention, LinearAttention and RotaryEmbedding."""
from __future__ import annotations

from ember.frontends.onnx.context import ImportContext, OnnxNode, onnx_dtype
from ember.frontends.onnx.handlers.common import choice, direct, reject, strip_trailing_empty
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import (
    AttentionAttrs,
    EinsumAttrs,
    GemmAttrs,
    LinearAttentionAttrs,
    LinearAttentionRule,
    RotaryEmbeddingAttrs,
)


@onnx_op("Gemm", since=7)
def import_gemm(ctx: ImportContext, n: OnnxNode) -> None:
    """Gemm with ONNX defaults (alpha = beta = 1, no transposes); C optional from opset 11."""
    attrs = GemmAttrs(alpha=float(n.attr("alpha", 1.0)), beta=float(n.attr("beta", 1.0)),
                      trans_a=bool(n.attr("transA", 0)), trans_b=bool(n.attr("transB", 0)))
    inputs = n.inputs[:3] if n.input(2) else n.inputs[:2]
    ctx.emit(n, OpType.GEMM, inputs, n.outputs[:1], attrs)


onnx_op("Gemm", since=1)(import_gemm)  # before 7: C broadcasts only with broadcast=1, as it may from 7
onnx_op("MatMul", since=1)(direct(OpType.MATMUL, nin=2))


@onnx_op("Einsum", since=12)
def import_einsum(ctx: ImportContext, n: OnnxNode) -> None:
    equation = n.attr("equation")
    if not equation:
        raise reject("equation is missing (it is required)")
    ctx.emit(n, OpType.EINSUM, n.inputs, n.outputs[:1], EinsumAttrs(equation=str(equation)))


@onnx_op("Attention", since=23)
def import_attention(ctx: ImportContext, n: OnnxNode) -> None:
    """Attention 23 (24 adds the nonpad_kv_seqlen input, 25 the window attributes): every
    attribute kept as given; the outputs present_key/value and qk_matmul_output when named."""
    def opt_int(name: str) -> int | None:
        v = n.attr(name)
        return None if v is None else int(v)

    code = n.attr("softmax_precision")
    scale = n.attr("scale")
    attrs = AttentionAttrs(
        is_causal=bool(n.attr("is_causal", 0)), q_num_heads=opt_int("q_num_heads"),
        kv_num_heads=opt_int("kv_num_heads"), qk_matmul_output_mode=int(n.attr("qk_matmul_output_mode", 0)),
        scale=None if scale is None else float(scale), softcap=float(n.attr("softcap", 0.0)),
        softmax_precision=None if code is None else onnx_dtype(int(code), f"{n.label} softmax_precision"),
        left_window_size=int(n.attr("left_window_size", -1)), right_window_size=int(n.attr("right_window_size", -1)))
    if attrs.qk_matmul_output_mode not in (0, 1, 2, 3):
        raise reject(f"qk_matmul_output_mode={attrs.qk_matmul_output_mode} is not 0, 1, 2 or 3")
    if (n.input(4) == "") != (n.input(5) == ""):
        raise reject("it has one of past_key / past_value without the other")
    ctx.emit(n, OpType.ATTENTION, strip_trailing_empty(n.inputs[:7]), n.outputs[:4], attrs)


@onnx_op("LinearAttention", since=27)
def import_linear_attention(ctx: ImportContext, n: OnnxNode) -> None:
    """LinearAttention 27: every update rule (linear, gated, delta, gated_delta), GQA heads."""
    q_heads, kv_heads = n.attr("q_num_heads"), n.attr("kv_num_heads")
    if q_heads is None or kv_heads is None:
        raise reject("q_num_heads and kv_num_heads are required")
    if int(q_heads) <= 0 or int(kv_heads) <= 0 or int(q_heads) % int(kv_heads):
        raise reject(f"q_num_heads ({q_heads}) is not a positive multiple of kv_num_heads ({kv_heads})")
    rule = choice(n, "update_rule", LinearAttentionRule.GATED_DELTA)
    attrs = LinearAttentionAttrs(q_num_heads=int(q_heads), kv_num_heads=int(kv_heads), update_rule=rule,
                                 scale=float(n.attr("scale", 0.0)), chunk_size=int(n.attr("chunk_size", 64)))
    ctx.emit(n, OpType.LINEAR_ATTENTION, strip_trailing_empty(n.inputs[:6]), n.outputs[:2], attrs)


@onnx_op("RotaryEmbedding", since=23)
def import_rotary_embedding(ctx: ImportContext, n: OnnxNode) -> None:
    attrs = RotaryEmbeddingAttrs(interleaved=bool(int(n.attr("interleaved", 0))),
                                 rotary_embedding_dim=int(n.attr("rotary_embedding_dim", 0)),
                                 num_heads=int(n.attr("num_heads", 0)))
    ctx.emit(n, OpType.ROTARY_EMBEDDING, strip_trailing_empty(n.inputs[:4]), n.outputs[:1], attrs)
