"""Linear-algebra kernels (generic tactics): Gemm, MatMul, FusedGemm, FusedAttention, Einsum."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.backends.activations import activation_fn
from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.common import Inputs, Tensor, arg
from ember.backends.cpu.registry import register_kernel
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import FusedAttentionAttrs, FusedGemmAttrs, GemmAttrs


def _op(x: Tensor, trans: bool) -> Tensor:
    return x.transpose(-1, -2) if trans else x


def gemm_value(a: Tensor, b: Tensor, c: Tensor | None, g: GemmAttrs) -> Tensor:
    """``alpha * op(a) @ op(b) + beta * c``; ``a`` may carry batch dims (MatMul-born FusedGemm)."""
    a, b = _op(a, g.trans_a), _op(b, g.trans_b)
    alpha, beta = float(g.alpha), float(g.beta)
    if c is not None and beta != 0 and a.dim() == 2 and b.dim() == 2 and a.is_floating_point():
        return torch.addmm(c, a, b, beta=beta, alpha=alpha)
    y = torch.matmul(a, b)
    if alpha != 1.0:
        y = y * (alpha if y.is_floating_point() else int(alpha))
    if c is not None and beta != 0:
        y = y + (c if beta == 1.0 else c * (beta if c.is_floating_point() else int(beta)))
    return y


@register_kernel(OpType.GEMM)
def gemm(node: Node, ctx: CompileContext) -> Kernel:
    g = node.attrs or GemmAttrs()

    def run(inputs: Inputs) -> list:
        return [gemm_value(inputs[0], inputs[1], arg(inputs, 2), g)]

    return run


@register_kernel(OpType.MATMUL)
def matmul(node: Node, ctx: CompileContext) -> Kernel:
    """MatMul with numpy semantics: 1-D operands promoted and squeezed, batch dims broadcast."""
    return lambda inputs: [torch.matmul(inputs[0], inputs[1])]


@register_kernel(OpType.FUSED_GEMM)
def fused_gemm(node: Node, ctx: CompileContext) -> Kernel:
    a = node.attrs or FusedGemmAttrs()
    act = activation_fn(a.activation, a.act_params)

    def run(inputs: Inputs) -> list:
        y = gemm_value(inputs[0], inputs[1], arg(inputs, 2), a.gemm)
        return [act(y) if act is not None else y]

    return run


def attention_math(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float,
                   k_transposed: bool) -> Tensor:
    """``softmax(q @ k^T * scale + mask) @ v`` written out (the reference composition)."""
    kt = k if k_transposed else k.transpose(-1, -2)
    s = torch.matmul(q, kt) * scale
    if mask is not None:
        s = s + mask
    return torch.matmul(torch.softmax(s, dim=-1), v)


def _sdpa_ok(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> bool:
    if q.dim() < 2 or not (q.dim() == k.dim() == v.dim()) or not q.is_floating_point():
        return False
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        return False
    if mask is not None:
        if mask.dtype is not q.dtype:
            return False
        try:
            torch.broadcast_shapes(mask.shape, tuple(q.shape[:-1]) + (k.shape[-2],))
        except RuntimeError:
            return False
    return True


@register_kernel(OpType.FUSED_ATTENTION)
def fused_attention(node: Node, ctx: CompileContext) -> Kernel:
    """Attention through ``scaled_dot_product_attention`` where it applies, else written out."""
    a: FusedAttentionAttrs = node.attrs
    scale, kt = float(a.scale), bool(a.k_transposed)

    def run(inputs: Inputs) -> list:
        q, k, v, mask = inputs[0], inputs[1], inputs[2], arg(inputs, 3)
        kk = k.transpose(-1, -2) if kt else k
        if mask is not None and mask.dim() < 2:
            mask = mask.reshape((1,) * (2 - mask.dim()) + tuple(mask.shape))  # SDPA wants >= 2-D
        if _sdpa_ok(q, kk, v, mask):
            return [F.scaled_dot_product_attention(q, kk, v, attn_mask=mask, scale=scale)]
        return [attention_math(q, k, v, mask, scale, kt)]

    return run


@register_kernel(OpType.FUSED_ATTENTION, tactic="math", rank=110)
def fused_attention_math(node: Node, ctx: CompileContext) -> Kernel:
    a: FusedAttentionAttrs = node.attrs
    scale, kt = float(a.scale), bool(a.k_transposed)
    return lambda inputs: [attention_math(inputs[0], inputs[1], inputs[2], arg(inputs, 3), scale, kt)]




@register_kernel(OpType.EINSUM)
def einsum(node: Node, ctx: CompileContext) -> Kernel:
    equation = node.attrs.equation.replace(" ", "")

    def run(inputs: Inputs) -> list:
        return [torch.einsum(equation, *inputs)]

    return run
