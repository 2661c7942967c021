"""Fused layers made by the optimizer: FusedConv, FusedGemm, FusedAttention, FusedElementwise."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops.attrs import (
    FusedAttentionAttrs,
    FusedConvAttrs,
    FusedElementwiseAttrs,
    FusedGemmAttrs,
)
from ember.ops.common import Consts, Types, broadcast_shapes, input_at, need, require, same_dtype
from ember.ops.conv import infer_conv
from ember.ops.linalg import gemm_shape, matmul_shape
from ember.ops.registry import infer_node, register_op


def _check_epilogue_operand(out: TensorType, t: Optional[TensorType], what: str) -> None:
    if t is None:
        return
    shape = broadcast_shapes(out.shape, t.shape)
    require(len(shape) == out.rank, f"{what} {t} does not broadcast to the output {out}")


@register_op(OpType.FUSED_CONV, attrs=FusedConvAttrs)
def infer_fused_conv(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """FusedConv(x, w, b?, residual?): the conv's output type; residual must match it."""
    a: FusedConvAttrs = node.attrs
    conv = Node(node.name, OpType.CONV, node.inputs[:3], node.outputs, a.conv)
    out = infer_conv(conv, list(in_types[:3]), list(consts[:3]))[0]
    residual = input_at(in_types, 3)
    require(a.has_residual == (residual is not None),
            f"FusedConv has_residual={a.has_residual} but the residual input is "
            f"{'present' if residual is not None else 'absent'}")
    _check_epilogue_operand(out, residual, "FusedConv residual")
    return [out]


@register_op(OpType.FUSED_GEMM, attrs=FusedGemmAttrs)
def infer_fused_gemm(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """FusedGemm(a, b, c?): Gemm rules for 2-D operands, else batched matmul of op(a), op(b)."""
    g = node.attrs.gemm
    a, b = need(input_at(in_types, 0), "A"), need(input_at(in_types, 1), "B")
    c = input_at(in_types, 2)
    dtype = same_dtype([a, b, c], "FusedGemm inputs")
    if a.rank == 2 and b.rank == 2:
        return [TensorType(dtype, gemm_shape(a, b, c, g, "FusedGemm"))]
    sa = a.shape[:-2] + (a.shape[-1], a.shape[-2]) if g.trans_a and a.rank >= 2 else a.shape
    sb = b.shape[:-2] + (b.shape[-1], b.shape[-2]) if g.trans_b and b.rank >= 2 else b.shape
    out = TensorType(dtype, matmul_shape(sa, sb, "FusedGemm"))
    _check_epilogue_operand(out, c, "FusedGemm C")
    return [out]


@register_op(OpType.FUSED_ATTENTION, attrs=FusedAttentionAttrs)
def infer_fused_attention(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """FusedAttention(q[.., s, d], k[.., sk, d] or [.., d, sk], v[.., sk, dv], mask?) -> [.., s, dv]."""
    q, k, v = (need(input_at(in_types, i), n) for i, n in enumerate(("Q", "K", "V")))
    dtype = same_dtype([q, k, v], "FusedAttention Q, K, V")
    kt = k.shape if node.attrs.k_transposed else k.shape[:-2] + (k.shape[-1], k.shape[-2])
    scores = matmul_shape(q.shape, kt, "FusedAttention Q @ K^T")
    mask = input_at(in_types, 3)
    if mask is not None:
        scores = broadcast_shapes(scores, mask.shape)
    return [TensorType(dtype, matmul_shape(scores, v.shape, "FusedAttention P @ V"))]


@register_op(OpType.FUSED_ELEMENTWISE, attrs=FusedElementwiseAttrs)
def infer_fused_elementwise(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Runs each step's own inference in order; the output is the last step's type."""
    steps = node.attrs.steps
    require(len(steps) >= 1, "FusedElementwise has no steps")
    types: list[Optional[TensorType]] = list(in_types)
    values: list[Optional[np.ndarray]] = list(consts)
    for i, step in enumerate(steps):
        require(all(0 <= o < len(types) for o in step.operands),
                f"FusedElementwise step {i} ({step.op}) reads operand(s) {step.operands} "
                f"but only {len(types)} exist before it")
        sub = Node(f"{node.name}/step{i}", step.op, tuple(f"%{o}" for o in step.operands),
                   (f"{node.outputs[0]}/step{i}",), step.attrs)
        out = infer_node(sub, [types[o] for o in step.operands], [values[o] for o in step.operands])
        types.append(out[0])
        values.append(None)
    return [out[0]]
